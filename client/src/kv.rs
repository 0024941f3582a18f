//! The KV API.

use std::time::Duration;

use crate::client::{Client, ReadConsistency};
use crate::coalesce;
use crate::error::{ClientError, ErrorCode};
use crate::limits::{GET_MANY_KEYS_MAX, SCAN_KEYS_DEFAULT};
use crate::pb;
use crate::pb::kv_client::KvClient;

/// A stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    /// Milliseconds since the Unix epoch (cluster HLC time) at which the key expires.
    pub expires_at_ms: Option<u64>,
}

/// Options of a put.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    pub ttl: Option<Duration>,
}

/// The result of a compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The condition held; the write has this revision.
    Written { revision: u64 },
    /// The condition did not hold; nothing changed. `current` is the key's revision (None: absent).
    Conflict { current: Option<u64> },
}

/// What [`Kv::put_if_absent`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutIfAbsent {
    /// The key was absent and now holds the value, written at `revision`.
    Created { revision: u64 },
    /// The key existed: nothing was written; this is what it holds (the first attempt's record).
    Exists(KvEntry),
}

/// One page of [`Kv::scan_page`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys under the prefix are left after the last item.
    pub more: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteOutcome {
    pub deleted: bool,
    pub revision: u64,
}

/// A batch answer that is not the write's own: a refusal of this write, or a protocol error.
fn unexpected_write_result(result: Option<pb::kv_write_result::Result>) -> ClientError {
    match result {
        Some(pb::kv_write_result::Result::Error(e)) => coalesce::write_refused(e),
        other => ClientError::Protocol(format!("unexpected batch answer {other:?}")),
    }
}

/// The entry a get's answer holds, if any.
pub(crate) fn entry_of(reply: pb::KvGetResponse) -> Option<KvEntry> {
    reply.found.then(|| KvEntry {
        value: reply.value,
        create_revision: reply.create_revision,
        mod_revision: reply.mod_revision,
        version: reply.version,
        expires_at_ms: (reply.expires_at_ms > 0).then_some(reply.expires_at_ms),
    })
}

/// KV operations. Get one with [`Client::kv`].
#[derive(Clone)]
pub struct Kv {
    pub(crate) client: Client,
}

fn expect_of(expected_revision: Option<u64>) -> pb::Expect {
    pb::Expect {
        condition: Some(match expected_revision {
            None => pb::expect::Condition::Absent(true),
            Some(r) => pb::expect::Condition::Revision(r),
        }),
    }
}

impl Kv {
    /// Stores `value` under `key`; returns the write's revision.
    ///
    /// # Errors
    /// `EMPTY_KEY`, `KEY_TOO_LARGE`, `VALUE_TOO_LARGE`, `INVALID_TTL` ([`ClientError::Rejected`]),
    /// or [`ClientError::Unavailable`].
    ///
    /// # Durability
    /// Acknowledged once the write is fsynced on a majority of the cluster.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, ClientError> {
        self.put_with(key, value, PutOptions::default()).await
    }

    pub async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: PutOptions,
    ) -> Result<u64, ClientError> {
        match self.write_put(key.as_ref(), value.as_ref(), options.ttl, None).await? {
            CasOutcome::Written { revision } => Ok(revision),
            CasOutcome::Conflict { .. } => Err(ClientError::Protocol("unconditional put reported a conflict".into())),
        }
    }

    /// Writes `value` only if the key's revision is `expected_revision` (`None`: the key must be
    /// absent).
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expected_revision: Option<u64>,
        value: impl AsRef<[u8]>,
    ) -> Result<CasOutcome, ClientError> {
        self.write_put(key.as_ref(), value.as_ref(), None, Some(expect_of(expected_revision)))
            .await
    }

    async fn write_put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        expect: Option<pb::Expect>,
    ) -> Result<CasOutcome, ClientError> {
        let ttl_ms = match ttl {
            Some(ttl) => u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            None => 0,
        };
        let mut message = pb::KvPutRequest {
            header: None,
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms,
            expect,
        };
        let reply = if self.client.coalesces_writes() {
            let write = pb::KvWriteOp {
                op: Some(pb::kv_write_op::Op::Put(message)),
            };
            match coalesce::submit(&self.client, key, write).await?.result {
                Some(pb::kv_write_result::Result::Put(reply)) => reply,
                other => return Err(unexpected_write_result(other)),
            }
        } else {
            let (header, _guard) = self.client.header();
            message.header = Some(header);
            self.client
                .unary(true, message, |c, r| async move {
                    crate::service_client!(KvClient, c).put(r).await
                })
                .await?
        };
        Ok(if reply.succeeded {
            CasOutcome::Written {
                revision: reply.revision,
            }
        } else {
            CasOutcome::Conflict {
                current: reply.current_revision,
            }
        })
    }

    /// Reads a key (linearizable).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<KvEntry>, ClientError> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<Option<KvEntry>, ClientError> {
        let message = pb::KvGetRequest {
            key: key.as_ref().to_vec(),
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(KvClient, c).get(r).await
            })
            .await?;
        Ok(entry_of(reply))
    }

    /// Reads several keys from one point-in-time view: a write applied meanwhile (a transaction
    /// moving a value from one key to another) is seen by every key or by none. One answer per
    /// key, in order.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for more than [`GET_MANY_KEYS_MAX`] keys (checked here, before
    /// sending), `EMPTY_KEY`, `KEY_TOO_LARGE`.
    pub async fn get_many<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        consistency: ReadConsistency,
    ) -> Result<Vec<Option<KvEntry>>, ClientError> {
        if keys.len() > GET_MANY_KEYS_MAX {
            return Err(ClientError::Rejected {
                code: ErrorCode::InvalidArgument,
                message: format!("{} keys exceed the {GET_MANY_KEYS_MAX} one read takes", keys.len()),
            });
        }
        let message = pb::KvGetManyRequest {
            keys: keys.iter().map(|k| k.as_ref().to_vec()).collect(),
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(KvClient, c).get_many(r).await
            })
            .await?;
        if reply.records.len() != keys.len() {
            return Err(ClientError::Protocol(format!(
                "{} records answered for {} keys",
                reply.records.len(),
                keys.len()
            )));
        }
        Ok(reply.records.into_iter().map(entry_of).collect())
    }

    /// Writes `value` under `key` only if the key is absent, or answers what it holds: the
    /// idempotency-key contract of payment APIs (a retried request finds the first attempt's
    /// record). One transaction: the check and the write, or the check and the read, are one
    /// step, so two callers never both create. With regions, uniqueness holds within the region
    /// the call is served in (see `docs/transactions.md`).
    ///
    /// # Errors
    /// As [`Kv::put`] (`EMPTY_KEY`, `KEY_TOO_LARGE`, `VALUE_TOO_LARGE`, `INVALID_TTL`).
    pub async fn put_if_absent(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> Result<PutIfAbsent, ClientError> {
        use crate::txn::{Condition, TxnOp, TxnOpResult, TxnOutcome};
        let key = key.as_ref().to_vec();
        let outcome = self
            .client
            .txn()
            .when(Condition::absent(key.clone()))
            .then(TxnOp::kv_put_raw(key.clone(), value.as_ref().to_vec(), ttl))
            .otherwise(TxnOp::get(key))
            .commit()
            .await?;
        let unexpected = |outcome: TxnOutcome| ClientError::Protocol(format!("put-if-absent answered {outcome:?}"));
        match outcome {
            TxnOutcome::Committed {
                succeeded: true,
                mut results,
            } => match results.pop() {
                Some(TxnOpResult::Written { revision, .. }) if results.is_empty() => {
                    Ok(PutIfAbsent::Created { revision })
                }
                other => Err(ClientError::Protocol(format!("put-if-absent wrote {other:?}"))),
            },
            TxnOutcome::Committed {
                succeeded: false,
                mut results,
            } => match results.pop() {
                Some(TxnOpResult::Read(Some(entry))) if results.is_empty() => Ok(PutIfAbsent::Exists(entry)),
                other => Err(ClientError::Protocol(format!("put-if-absent read {other:?}"))),
            },
            // The put was refused on its own (a bad key, value or TTL): that refusal.
            TxnOutcome::Aborted {
                reason: TxnOpResult::Refused(e),
                ..
            } => Err(e),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a key; `deleted` says whether it existed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<DeleteOutcome, ClientError> {
        let key = key.as_ref();
        let mut message = pb::KvDeleteRequest {
            header: None,
            key: key.to_vec(),
            expect: None,
        };
        let reply = if self.client.coalesces_writes() {
            let write = pb::KvWriteOp {
                op: Some(pb::kv_write_op::Op::Delete(message)),
            };
            match coalesce::submit(&self.client, key, write).await?.result {
                Some(pb::kv_write_result::Result::Delete(reply)) => reply,
                other => return Err(unexpected_write_result(other)),
            }
        } else {
            let (header, _guard) = self.client.header();
            message.header = Some(header);
            self.client
                .unary(true, message, |c, r| async move {
                    crate::service_client!(KvClient, c).delete(r).await
                })
                .await?
        };
        Ok(DeleteOutcome {
            deleted: reply.deleted,
            revision: reply.revision,
        })
    }

    /// One page of a scan: keys starting with `prefix` after `start_after` (empty: from the
    /// first), in order, at most `limit` (0: the server default, 1,000; at most 10,000), from
    /// one point-in-time view, with `more` when keys are left after the page. For callers that
    /// walk a keyspace page by page and keep their place themselves (a RESP `SCAN` cursor).
    pub async fn scan_page(
        &self,
        prefix: impl AsRef<[u8]>,
        start_after: impl AsRef<[u8]>,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<ScanPage, ClientError> {
        let message = pb::KvScanRequest {
            prefix: prefix.as_ref().to_vec(),
            start_after: start_after.as_ref().to_vec(),
            limit,
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(KvClient, c).scan(r).await
            })
            .await?;
        Ok(ScanPage {
            items: reply.items.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            more: reply.more,
        })
    }

    /// Keys starting with `prefix`, in order, at most `limit` (0: the server default, 1,000).
    ///
    /// The server answers at most 16 MiB of keys and values at a time (`SCAN_REPLY_BYTES_MAX`);
    /// a scan larger than that is read in several answers, each going on after the last key of
    /// the one before, each with its own request timeout. A scan that fits one answer is one
    /// point-in-time view. One read in several answers is not: a key deleted after its answer
    /// was read is still returned, and a key written meanwhile behind the answers already read
    /// is missed, so the result may be a state that never existed at one moment.
    pub async fn scan(&self, prefix: impl AsRef<[u8]>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let prefix = prefix.as_ref();
        let mut items: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut wanted = if limit == 0 { SCAN_KEYS_DEFAULT } else { limit };
        loop {
            let message = pb::KvScanRequest {
                prefix: prefix.to_vec(),
                start_after: items.last().map(|(key, _)| key.clone()).unwrap_or_default(),
                limit: wanted,
                stale: false,
            };
            let reply = self
                .client
                .unary(false, message, |c, r| async move {
                    crate::service_client!(KvClient, c).scan(r).await
                })
                .await?;
            let got = reply.items.len() as u32;
            items.extend(reply.items.into_iter().map(|kv| (kv.key, kv.value)));
            wanted = wanted.saturating_sub(got);
            if !reply.more || got == 0 || wanted == 0 {
                return Ok(items);
            }
        }
    }
}
