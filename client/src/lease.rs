//! Leases with fencing tokens.

use std::time::{Duration, Instant};

use crate::client::{millis, Client, ReadConsistency};
use crate::error::ClientError;
use crate::pb;
use crate::pb::lease_client::LeaseClient;

/// A grant: the cluster holds it until `expires_at_ms` (cluster time); pass `token` as a fence
/// ([`Client::fenced`]) with every write it protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub token: u64,
    pub expires_at_ms: u64,
    /// Until when the holder may take the lease as its own, judged by its own monotonic clock:
    /// when the request was sent, plus the TTL, less twice the cluster's max clock offset
    /// ([`crate::ClientOptions::max_clock_offset`]). The grant took effect after the request
    /// was sent, and the node that later judges it expired reads its clock at most one max offset
    /// ahead of the one that stamped it, which itself read at most one max offset ahead of true
    /// time: so the lease is still held up to this instant, whatever any wall clock says. Work
    /// outside Basalt that the fence cannot guard should stop by then (or renew first). After a
    /// long [`LeaseHandle::acquire_waiting`] it may already have passed.
    pub deadline: Instant,
}

impl LeaseGrant {
    /// How long the holder may still take the lease as its own ([`LeaseGrant::deadline`]).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// [`LeaseGrant::deadline`] for a grant requested at `sent` for `ttl`.
fn holder_deadline(sent: Instant, ttl: Duration, max_clock_offset: Duration) -> Instant {
    sent + ttl.saturating_sub(max_clock_offset.saturating_mul(2))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    Granted(LeaseGrant),
    /// Someone else holds it until `expires_at_ms`.
    Held {
        holder: Vec<u8>,
        expires_at_ms: u64,
    },
}

/// The current holder of a lease, as [`LeaseHandle::get`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseState {
    pub holder: Vec<u8>,
    pub token: u64,
    pub expires_at_ms: u64,
}

/// One lease. Get one with [`Client::lease`].
#[derive(Clone)]
pub struct LeaseHandle {
    pub(crate) client: Client,
    pub(crate) name: Vec<u8>,
}

impl LeaseHandle {
    /// Tries to take the lease for `ttl`. Re-entrant: the current holder asking again keeps its
    /// token and gets the new expiry.
    ///
    /// # Errors
    /// `EMPTY_KEY`, `INVALID_TTL`, `INVALID_ARGUMENT` (empty holder).
    pub async fn acquire(&self, holder: impl Into<Vec<u8>>, ttl: Duration) -> Result<Acquired, ClientError> {
        self.acquire_waiting(holder, ttl, Duration::ZERO).await
    }

    /// Like [`LeaseHandle::acquire`], but if the lease is held, waits up to `wait` (at most 60 s)
    /// for it to be released or to expire.
    pub async fn acquire_waiting(
        &self,
        holder: impl Into<Vec<u8>>,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Acquired, ClientError> {
        let (header, _guard) = self.client.header();
        let sent = Instant::now();
        let message = pb::LeaseAcquireRequest {
            header: Some(header),
            name: self.name.clone(),
            holder: holder.into(),
            ttl_ms: millis(ttl),
            wait_ms: millis(wait),
        };
        let reply = self
            .client
            .unary_waiting(true, message, wait, Duration::ZERO, |c, r| async move {
                crate::service_client!(LeaseClient, c).acquire(r).await
            })
            .await?;
        Ok(if reply.granted {
            Acquired::Granted(LeaseGrant {
                token: reply.token,
                expires_at_ms: reply.expires_at_ms,
                deadline: holder_deadline(sent, ttl, self.client.max_clock_offset()),
            })
        } else {
            Acquired::Held {
                holder: reply.holder,
                expires_at_ms: reply.expires_at_ms,
            }
        })
    }

    /// Extends a live grant to `ttl` from now.
    ///
    /// # Errors
    /// `LEASE_NOT_HELD` if `token` is not `holder`'s live grant (expired, released, superseded).
    pub async fn renew(
        &self,
        holder: impl Into<Vec<u8>>,
        token: u64,
        ttl: Duration,
    ) -> Result<LeaseGrant, ClientError> {
        let (header, _guard) = self.client.header();
        let sent = Instant::now();
        let message = pb::LeaseRenewRequest {
            header: Some(header),
            name: self.name.clone(),
            holder: holder.into(),
            token,
            ttl_ms: millis(ttl),
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(LeaseClient, c).renew(r).await
            })
            .await?;
        Ok(LeaseGrant {
            token: reply.token,
            expires_at_ms: reply.expires_at_ms,
            deadline: holder_deadline(sent, ttl, self.client.max_clock_offset()),
        })
    }

    /// Gives the lease up; returns false if it had already expired.
    ///
    /// # Errors
    /// `LEASE_NOT_HELD` if `token` is not `holder`'s grant.
    pub async fn release(&self, holder: impl Into<Vec<u8>>, token: u64) -> Result<bool, ClientError> {
        let (header, _guard) = self.client.header();
        let message = pb::LeaseReleaseRequest {
            header: Some(header),
            name: self.name.clone(),
            holder: holder.into(),
            token,
        };
        let reply = self
            .client
            .unary(true, message, |c, r| async move {
                crate::service_client!(LeaseClient, c).release(r).await
            })
            .await?;
        Ok(reply.was_live)
    }

    /// The live grant, if any.
    pub async fn get(&self, consistency: ReadConsistency) -> Result<Option<LeaseState>, ClientError> {
        let message = pb::LeaseGetRequest {
            name: self.name.clone(),
            stale: consistency == ReadConsistency::Stale,
        };
        let reply = self
            .client
            .unary(false, message, |c, r| async move {
                crate::service_client!(LeaseClient, c).get(r).await
            })
            .await?;
        Ok(reply.granted.then_some(LeaseState {
            holder: reply.holder,
            token: reply.token,
            expires_at_ms: reply.expires_at_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_deadline_keeps_twice_the_max_offset_from_the_send_time() {
        let sent = Instant::now();
        let offset = Duration::from_millis(500);
        assert_eq!(
            holder_deadline(sent, Duration::from_secs(30), offset),
            sent + Duration::from_secs(29)
        );
        // A TTL shorter than the margin leaves no time at all.
        assert_eq!(holder_deadline(sent, Duration::from_millis(800), offset), sent);
    }
}
