//! Strings and keys: each command as calls of the SDK, so it takes the path every Basalt client
//! takes (sessions and exactly-once retries, the leader's merging of concurrent writes, Raft
//! commit before the answer).
//!
//! A Redis string is a Basalt KV key with the same name and value, so what one side writes the
//! other reads. Every command of one key is a decision over the key as read (`decide`); readers
//! read it, writers join the key's next group of writes (`combine`), applied in order and
//! written once, conditioned on the revision read: atomic as in Redis, and one Raft round for
//! many connections' writes of a hot key.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use basalt_client::limits::{GET_MANY_KEYS_MAX, KEY_BYTES_MAX, NAME_BYTES_MAX};
use basalt_client::txn::Condition;
use basalt_client::{Client, KvEntry, ReadConsistency, TxnOp, TxnOpResult, TxnOutcome};

use crate::combine::{Combiner, KeyWrite, ReadCombiner};
use crate::command::{errors, Bytes, Command, Expiry, SetCondition};
use crate::decide::{decide, only_reads, single_key};
use crate::frame::{format_double, Reply};
use crate::glob::Glob;
use crate::limits::{
    KEYSPACE_WALK_KEYS_MAX, REPLY_BYTES_MAX, SCAN_PAGE_KEYS, TTL_MS_MAX, TXN_CONDITIONS_MAX, TXN_OPS_MAX,
    VALUE_BYTES_MAX,
};
use crate::reply_error::client_error;
use crate::stream_ids::{stream_row, RESERVED_KEY_PREFIX};
use crate::typed::{self, Value};

/// This node's wall clock in Unix milliseconds: what `EXAT` times and `TTL` answers are read
/// against (a key's expiry is kept in the cluster's HLC time, which follows the wall clocks).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What an expiry means now: a time to live, or "already past" (the key goes away).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    Live(Duration),
    Past,
}

pub fn ttl_of(expiry: Expiry, now_ms: i64) -> Ttl {
    let ms = match expiry {
        Expiry::In(ms) => ms,
        Expiry::At(at) => at.saturating_sub(now_ms),
    };
    if ms <= 0 {
        Ttl::Past
    } else {
        Ttl::Live(Duration::from_millis(ms as u64))
    }
}

/// [`ttl_of`], refusing a time to live longer than the cluster keeps a key: the command that
/// asked for it fails alone, instead of its whole group of writes being refused by the cluster.
pub fn checked_ttl(expiry: Expiry, now_ms: i64) -> Result<Ttl, Reply> {
    match ttl_of(expiry, now_ms) {
        Ttl::Live(ttl) if ttl.as_millis() > u128::from(TTL_MS_MAX) => Err(Reply::error(format!(
            "ERR a time to live of {} ms is longer than the {TTL_MS_MAX} ms (365 days) Basalt keeps a key",
            ttl.as_millis()
        ))),
        ttl => Ok(ttl),
    }
}

/// The expiry a write gives its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewTtl {
    /// The key's expiry as it is when the write applies (Redis's `INCR`, `APPEND`, `KEEPTTL`):
    /// kept by the cluster itself, so a rewrite never moves the deadline.
    Keep,
    Never,
    After(Duration),
}

/// A put of `value` with the expiry `ttl` says.
pub fn put_op(key: &[u8], value: Vec<u8>, ttl: NewTtl) -> TxnOp {
    match ttl {
        NewTtl::Keep => TxnOp::put_keep_ttl(key.to_vec(), value),
        NewTtl::Never => TxnOp::put(key.to_vec(), value),
        NewTtl::After(ttl) => TxnOp::put_with_ttl(key.to_vec(), value, ttl),
    }
}

/// Redis's INCRBY arithmetic on a stored value: the new value, or the error Redis answers.
pub fn incremented(current: Option<&[u8]>, by: i64) -> Result<i64, &'static str> {
    let value = match current {
        None => 0,
        Some(bytes) => crate::command::strict_int(bytes).ok_or(errors::NOT_INTEGER)?,
    };
    value.checked_add(by).ok_or(errors::OVERFLOW)
}

/// Redis's INCRBYFLOAT arithmetic: the new value's text, or the error Redis answers.
pub fn incremented_float(current: Option<&[u8]>, by: f64) -> Result<String, &'static str> {
    let value = match current {
        None => 0.0,
        Some(bytes) => crate::command::float(bytes).ok_or(errors::NOT_FLOAT)?,
    };
    let sum = value + by;
    if sum.is_nan() || sum.is_infinite() {
        return Err(errors::NAN_OR_INFINITY);
    }
    Ok(format_double(sum))
}

/// Redis's answer to a command on a key of another type.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// What a stored key holds, by type (`None`: absent); an undecodable typed value is an error.
pub fn value_of(entry: Option<&KvEntry>) -> Result<Option<Value>, Reply> {
    match entry {
        None => Ok(None),
        Some(entry) => typed::decode(&entry.value)
            .map(Some)
            .map_err(|e| Reply::error(e.to_string())),
    }
}

/// The string a stored key holds (`None`: absent), or `WRONGTYPE` for another type (told by
/// the marker alone: a large hash is never decoded to be refused).
pub fn string_of(entry: Option<&KvEntry>) -> Result<Option<Vec<u8>>, Reply> {
    match entry {
        None => Ok(None),
        Some(entry) if typed::is_storable_string(&entry.value) => Ok(Some(entry.value.clone())),
        Some(_) => Err(Reply::error(WRONGTYPE)),
    }
}

/// Refuses a string value the cluster would not store, or that would read as another type
/// (see `typed`), with the error the command answers.
pub fn check_storable(value: &[u8]) -> Result<(), Reply> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Reply::error(format!(
            "ERR a value of {} bytes is larger than the {VALUE_BYTES_MAX} bytes Basalt stores",
            value.len()
        )));
    }
    if typed::is_storable_string(value) {
        Ok(())
    } else {
        Err(Reply::error(typed::RESERVED_PREFIX))
    }
}

/// Refuses a key the cluster would not take, with the error a command on it answers.
pub fn check_key(key: &[u8]) -> Result<(), Reply> {
    if key.is_empty() {
        return Err(Reply::error(
            "ERR empty keys are not supported: Basalt keys are 1 to 4096 bytes",
        ));
    }
    if key.starts_with(RESERVED_KEY_PREFIX) {
        return Err(Reply::error(
            "ERR keys beginning with 0xFF 'basalt' 0x00 are reserved for Basalt's own rows (stream consumer groups)",
        ));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Reply::error(format!(
            "ERR a key of {} bytes is larger than the {KEY_BYTES_MAX} bytes Basalt takes",
            key.len()
        )));
    }
    Ok(())
}

/// The commands of one connection on the cluster.
pub struct Keys<'a> {
    pub client: &'a Client,
    /// Where plain `SET`s and increments of one key from many connections meet.
    pub combiner: &'a Combiner,
    /// Where linearizable reads of one key from many connections meet.
    pub readers: &'a ReadCombiner,
    /// `READONLY` switches a connection to stale reads (served by the node it talks to).
    pub reads: ReadConsistency,
}

impl Keys<'_> {
    /// The key's entry: linearizable reads of one key are combined across connections.
    pub async fn entry(&self, key: &[u8]) -> Result<Option<KvEntry>, Reply> {
        match self.reads {
            ReadConsistency::Linearizable => self.readers.read(self.client, key).await,
            ReadConsistency::Stale => self
                .client
                .kv()
                .get_with(key, self.reads)
                .await
                .map_err(|e| client_error(&e)),
        }
    }

    /// A command of one key (see `decide`): a reader reads the key (combined with other
    /// connections' reads of it, stale after `READONLY`) and answers; a writer joins the key's
    /// next group of writes (`combine`), applied in order over the key as read and written once,
    /// conditioned on the revision read.
    pub async fn single(&self, command: &Command, resp3: bool) -> Reply {
        let Some(key) = single_key(command) else {
            return Reply::error("ERR not a command of one key");
        };
        if only_reads(command) {
            let entry = match self.entry(key).await {
                Ok(entry) => entry,
                Err(reply) => return reply,
            };
            return match decide(command, entry.as_ref(), now_ms(), resp3) {
                Ok(change) => change.reply().clone(),
                Err(reply) => reply,
            };
        }
        self.combiner
            .write(self.client, key, KeyWrite::Command(command.clone()))
            .await
    }

    pub async fn get(&self, key: &[u8]) -> Reply {
        match self.entry(key).await.and_then(|entry| string_of(entry.as_ref())) {
            Ok(value) => Reply::optional(value),
            Err(reply) => reply,
        }
    }

    pub async fn set(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expiry: Option<Expiry>,
        keep_ttl: bool,
        condition: Option<SetCondition>,
        get: bool,
    ) -> Reply {
        if let Err(reply) = check_storable(&value) {
            return reply;
        }
        let ttl = match expiry.map(|e| checked_ttl(e, now_ms())).transpose() {
            Ok(ttl) => ttl,
            Err(reply) => return reply,
        };
        if condition.is_none() && !get && !keep_ttl {
            // The common case: combined with other connections' writes of the key, and
            // coalesced with writes of other keys by the SDK.
            return match ttl {
                Some(Ttl::Past) => match self.client.kv().delete(key).await {
                    Ok(_) => Reply::ok(),
                    Err(e) => client_error(&e),
                },
                Some(Ttl::Live(ttl)) => {
                    self.combiner
                        .write(self.client, key, KeyWrite::Set { value, ttl: Some(ttl) })
                        .await
                }
                None => {
                    self.combiner
                        .write(self.client, key, KeyWrite::Set { value, ttl: None })
                        .await
                }
            };
        }
        let command = Command::Set {
            key: key.to_vec(),
            value,
            expiry,
            keep_ttl,
            condition,
            get,
        };
        self.single(&command, false).await
    }

    pub async fn set_nx(&self, key: &[u8], value: Vec<u8>) -> Reply {
        if let Err(reply) = check_storable(&value) {
            return reply;
        }
        match self.client.kv().cas(key, None, value).await {
            Ok(basalt_client::CasOutcome::Written { .. }) => Reply::Integer(1),
            Ok(basalt_client::CasOutcome::Conflict { .. }) => Reply::Integer(0),
            Err(e) => client_error(&e),
        }
    }

    /// `MGET`: the keys read [`GET_MANY_KEYS_MAX`] at a time, each group from one point-in-time
    /// view (a transaction moving a value between two keys of a group is seen whole).
    pub async fn mget(&self, keys: &[Bytes]) -> Reply {
        let mut values = Vec::with_capacity(keys.len().min(1024));
        let mut bytes = 0usize;
        for group in keys.chunks(GET_MANY_KEYS_MAX) {
            let entries = match self.client.kv().get_many(group, self.reads).await {
                Ok(entries) => entries,
                Err(e) => return client_error(&e),
            };
            for entry in entries {
                bytes += entry.as_ref().map_or(0, |e| e.value.len());
                if bytes > REPLY_BYTES_MAX {
                    return too_large("MGET");
                }
                // A key of another type reads as null, as in Redis.
                values.push(Reply::optional(string_of(entry.as_ref()).ok().flatten()));
            }
        }
        Reply::Array(values)
    }

    /// `MSET` (and `MSETNX` with `only_if_all_absent`): one transaction, so all or nothing. A
    /// key given twice takes its last value, as in Redis.
    pub async fn mset(&self, pairs: Vec<(Bytes, Bytes)>, only_if_all_absent: bool) -> Reply {
        let mut last: Vec<(Bytes, Bytes)> = Vec::with_capacity(pairs.len());
        let mut seen = HashSet::new();
        for (key, value) in pairs.into_iter().rev() {
            if seen.insert(key.clone()) {
                last.push((key, value));
            }
        }
        last.reverse();
        if last.len() > TXN_OPS_MAX {
            return Reply::error(format!(
                "ERR at most {TXN_OPS_MAX} keys per MSET: Basalt applies it as one transaction"
            ));
        }
        if only_if_all_absent && last.len() > TXN_CONDITIONS_MAX {
            return Reply::error(format!(
                "ERR at most {TXN_CONDITIONS_MAX} keys per MSETNX: each is a condition of one Basalt transaction"
            ));
        }
        if let Some(Err(reply)) = last.iter().map(|(_, value)| check_storable(value)).find(Result::is_err) {
            return reply;
        }
        let mut txn = self.client.txn();
        for (key, value) in last {
            if only_if_all_absent {
                txn = txn.when(Condition::absent(key.clone()));
            }
            txn = txn.then(TxnOp::put(key, value));
        }
        match txn.commit().await {
            Ok(TxnOutcome::Committed { succeeded, .. }) if only_if_all_absent => Reply::Integer(i64::from(succeeded)),
            Ok(TxnOutcome::Committed { .. }) => Reply::ok(),
            Ok(TxnOutcome::Aborted { reason, .. }) => op_refusal(reason),
            Err(e) => client_error(&e),
        }
    }

    /// `DEL` and `UNLINK` of KV keys: one transaction; answers each distinct key with whether
    /// it existed.
    pub async fn del(&self, keys: &[Bytes]) -> Result<Vec<(Bytes, bool)>, Reply> {
        let mut seen = HashSet::new();
        let keys: Vec<&Bytes> = keys.iter().filter(|k| seen.insert(*k)).collect();
        if keys.len() > TXN_OPS_MAX {
            return Err(Reply::error(format!(
                "ERR at most {TXN_OPS_MAX} keys per DEL: Basalt applies it as one transaction"
            )));
        }
        if let [key] = keys.as_slice() {
            return match self.client.kv().delete(key).await {
                Ok(outcome) => Ok(vec![((*key).clone(), outcome.deleted)]),
                Err(e) => Err(client_error(&e)),
            };
        }
        let mut txn = self.client.txn();
        for key in &keys {
            txn = txn.then(TxnOp::delete((*key).clone()));
        }
        match txn.commit().await {
            Ok(TxnOutcome::Committed { results, .. }) => Ok(keys
                .into_iter()
                .zip(results)
                .map(|(key, r)| (key.clone(), matches!(r, TxnOpResult::Deleted { deleted: true, .. })))
                .collect()),
            Ok(TxnOutcome::Aborted { reason, .. }) => Err(op_refusal(reason)),
            Err(e) => Err(client_error(&e)),
        }
    }

    /// Whether each of `keys` holds a KV value (a key named twice answered twice, as Redis
    /// counts it); read as `MGET`.
    pub async fn presence(&self, keys: &[Bytes]) -> Result<Vec<bool>, Reply> {
        if let [key] = keys {
            // One key: combined with other connections' reads of it.
            return Ok(vec![self.entry(key).await?.is_some()]);
        }
        let mut present = Vec::with_capacity(keys.len());
        for group in keys.chunks(GET_MANY_KEYS_MAX) {
            match self.client.kv().get_many(group, self.reads).await {
                Ok(entries) => present.extend(entries.iter().map(Option::is_some)),
                Err(e) => return Err(client_error(&e)),
            }
        }
        Ok(present)
    }

    /// One connection's pipelined writes of `key`, each a command [`pipelined_write_key`]
    /// names with that key, joined to the key's next group together and in order.
    pub async fn write_all(&self, key: &[u8], commands: Vec<Command>) -> Vec<Reply> {
        let writes = commands.into_iter().map(KeyWrite::Command).collect();
        self.combiner.write_all(self.client, key, writes).await
    }

    pub async fn incr_by(&self, key: &[u8], by: i64) -> Reply {
        self.combiner
            .write(self.client, key, KeyWrite::Command(Command::IncrBy(key.to_vec(), by)))
            .await
    }

    pub async fn incr_by_float(&self, key: &[u8], by: f64) -> Reply {
        self.combiner
            .write(
                self.client,
                key,
                KeyWrite::Command(Command::IncrByFloat(key.to_vec(), by)),
            )
            .await
    }

    /// One page of keys from `place` (empty: the start; else a place an earlier page answered)
    /// whose names match `pattern`: the keys with their types' names, and where the next page
    /// starts (`None`: the keyspace is done). Reads about `count` keys, as Redis's COUNT.
    pub async fn scan_page(
        &self,
        place: &[u8],
        pattern: Option<&Glob>,
        count: u64,
    ) -> Result<(Vec<(Bytes, &'static str)>, Option<Bytes>), Reply> {
        let limit = u32::try_from(count).unwrap_or(SCAN_PAGE_KEYS).clamp(1, SCAN_PAGE_KEYS);
        let (keys, next, _) = self.page(place, pattern, limit).await?;
        Ok((keys, next))
    }

    /// Every key matching `pattern`, at most [`KEYSPACE_WALK_KEYS_MAX`] read and
    /// [`REPLY_BYTES_MAX`] of names kept.
    pub async fn walk(&self, pattern: Option<&Glob>, what: &str) -> Result<Vec<(Bytes, &'static str)>, Reply> {
        let mut keys = Vec::new();
        let mut after = Vec::new();
        let mut read = 0usize;
        let mut bytes = 0usize;
        loop {
            let (page, next, page_read) = self.page(&after, pattern, SCAN_PAGE_KEYS).await?;
            read += page_read;
            bytes += page.iter().map(|(k, _)| k.len()).sum::<usize>();
            if bytes > REPLY_BYTES_MAX {
                return Err(too_large(what));
            }
            keys.extend(page);
            match next {
                None => return Ok(keys),
                Some(_) if read >= KEYSPACE_WALK_KEYS_MAX => {
                    return Err(Reply::error(format!(
                        "ERR {what} reads at most {KEYSPACE_WALK_KEYS_MAX} keys on Basalt; use SCAN"
                    )))
                }
                Some(next) => after = next,
            }
        }
    }

    /// How many keys are stored, at most [`KEYSPACE_WALK_KEYS_MAX`] read.
    pub async fn count(&self, what: &str) -> Result<usize, Reply> {
        let mut after = Vec::new();
        let mut count = 0usize;
        let mut read = 0usize;
        loop {
            let (page, next, page_read) = self.page(&after, None, SCAN_PAGE_KEYS).await?;
            count += page.len();
            read += page_read;
            match next {
                None => return Ok(count),
                Some(_) if read >= KEYSPACE_WALK_KEYS_MAX => {
                    return Err(Reply::error(format!(
                        "ERR {what} reads at most {KEYSPACE_WALK_KEYS_MAX} keys on Basalt"
                    )))
                }
                Some(next) => after = next,
            }
        }
    }

    /// One page of at most `limit` keys after `after`: the keys matching `pattern` with their
    /// types' names, where the next page starts (`None`: the keyspace is done), and how many
    /// keys the page read (fewer than asked when the values are large). The keyspace is walked
    /// in two phases: the KV keys (Basalt's own rows left out), then the streams RESP created,
    /// read from their mark rows ([`stream_row`]). A place is empty (the start), or a phase
    /// byte ([`PHASE_KEYS`], [`PHASE_STREAMS`]) and the last row read in that phase: the phase
    /// is said, never guessed from a key (a page of the KV keys may end on a mark row).
    async fn page(
        &self,
        place: &[u8],
        pattern: Option<&Glob>,
        limit: u32,
    ) -> Result<(Vec<(Bytes, &'static str)>, Option<Bytes>, usize), Reply> {
        let literal = pattern.map(Glob::literal_prefix).unwrap_or_default();
        let marks = stream_row(b"");
        let (phase, after) = match place.split_first() {
            Some((&phase, after)) => (phase, after),
            None => (PHASE_KEYS, &[][..]),
        };
        let in_streams = phase == PHASE_STREAMS;
        let (prefix, start_after) = if in_streams {
            (stream_row(&literal), after)
        } else {
            (literal, after)
        };
        let page = self
            .client
            .kv()
            .scan_page(&prefix, start_after, limit, self.reads)
            .await
            .map_err(|e| client_error(&e))?;
        let read = page.items.len();
        let next = match page.items.last() {
            Some((last, _)) if page.more => Some([&[phase][..], last].concat()),
            // The KV keys are done: the streams follow.
            _ if !in_streams => Some(vec![PHASE_STREAMS]),
            _ => None,
        };
        let keys = page
            .items
            .into_iter()
            .filter_map(|(key, value)| {
                if in_streams {
                    let name = key.strip_prefix(marks.as_slice())?.to_vec();
                    // A mark no RESP stream could have (written by another program) is passed.
                    let shown =
                        !name.is_empty() && name.len() <= NAME_BYTES_MAX && pattern.is_none_or(|p| p.matches(&name));
                    shown.then_some((name, "stream"))
                } else {
                    let shown = !key.starts_with(RESERVED_KEY_PREFIX) && pattern.is_none_or(|p| p.matches(&key));
                    shown.then(|| {
                        let kind = typed::type_name_of(&value);
                        (key, kind)
                    })
                }
            })
            .collect();
        Ok((keys, next, read))
    }
}

/// A keyspace walk's first phase: the KV keys.
const PHASE_KEYS: u8 = 0;
/// Its second phase: the streams RESP created.
const PHASE_STREAMS: u8 = 1;

fn too_large(what: &str) -> Reply {
    Reply::error(format!(
        "ERR {what}'s reply would pass {REPLY_BYTES_MAX} bytes; ask for fewer keys"
    ))
}

/// `TYPE`'s answer for a stored key: Redis's name of its type, `none` when absent, `unknown`
/// for a value marked as a type Basalt does not know (not `none`, which would invite
/// overwriting it unseen).
pub fn type_name(entry: Option<&KvEntry>) -> &'static str {
    entry.map_or("none", |entry| typed::type_name_of(&entry.value))
}

/// A transaction op the cluster refused at apply: nothing of the command was applied.
pub fn op_refusal(reason: TxnOpResult) -> Reply {
    match reason {
        TxnOpResult::Refused(e) => client_error(&e),
        other => Reply::error(format!("ERR the transaction was refused: {other:?}")),
    }
}

/// The key of a command that runs as a write of one key through the combiner exactly as
/// `KeyWrite::Command` (the connection sends these to [`Keys::single`], `incr_by` or
/// `incr_by_float`, which do just that), so that a pipeline's run of them on one key may join
/// one group together ([`Keys::write_all`]). `SET` is not here (its runs go as transactions),
/// nor is `GETEX`, which answers with the value (a run of them would hold a copy of a large
/// value per command at once); `GETDEL` and `APPEND` run one by one too.
pub fn pipelined_write_key(command: &Command) -> Option<&[u8]> {
    use Command::*;
    match command {
        Expire { key, .. } | HSet { key, .. } => Some(key),
        Persist(key)
        | IncrBy(key, _)
        | IncrByFloat(key, _)
        | HSetNx(key, ..)
        | HDel(key, _)
        | HIncrBy(key, ..)
        | HIncrByFloat(key, ..)
        | ZAdd(key, _)
        | ZIncrBy(key, ..)
        | ZRem(key, _)
        | ZRemRangeByScore(key, ..) => Some(key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a pipeline joins as one group is exactly what runs through the combiner one by
    /// one: a write (not a read) of the key `single_key` names.
    #[test]
    fn pipelined_writes_are_the_combined_writes_of_one_key() {
        let parsed = |line: &str| {
            let args: Vec<Bytes> = line.split(' ').map(|a| a.as_bytes().to_vec()).collect();
            crate::command::parse(&args).unwrap_or_else(|e| panic!("{line}: {e:?}"))
        };
        let joined = [
            "INCR k",
            "INCRBY k 2",
            "DECR k",
            "INCRBYFLOAT k 1.5",
            "EXPIRE k 10",
            "PERSIST k",
            "HSET k f v",
            "HSETNX k f v",
            "HDEL k f",
            "HINCRBY k f 1",
            "HINCRBYFLOAT k f 1",
            "ZADD k 1 m",
            "ZINCRBY k 1 m",
            "ZREM k m",
            "ZREMRANGEBYSCORE k 0 1",
        ];
        for line in joined {
            let command = parsed(line);
            assert_eq!(pipelined_write_key(&command), Some(&b"k"[..]), "{line}");
            assert!(!crate::decide::only_reads(&command), "{line}");
            assert_eq!(
                crate::decide::single_key(&command).map(Vec::as_slice),
                Some(&b"k"[..]),
                "{line}"
            );
        }
        let alone = [
            "GET k",
            "SET k v",
            "SETNX k v",
            "DEL k",
            "HGET k f",
            "ZSCORE k m",
            "XADD k * f v",
            "TTL k",
            "APPEND k v",
            "GETDEL k",
            "GETEX k EX 5",
        ];
        for line in alone {
            assert_eq!(pipelined_write_key(&parsed(line)), None, "{line}");
        }
    }

    #[test]
    fn incr_reads_values_as_redis_does() {
        assert_eq!(incremented(None, 5), Ok(5));
        assert_eq!(incremented(Some(b"10"), -11), Ok(-1));
        assert_eq!(incremented(Some(b"-3"), 3), Ok(0));
        for bad in [
            &b"abc"[..],
            b"1.5",
            b" 1",
            b"+1",
            b"01",
            b"",
            b"-0",
            b"99999999999999999999",
        ] {
            assert_eq!(incremented(Some(bad), 1), Err(errors::NOT_INTEGER), "{bad:?}");
        }
        assert_eq!(incremented(Some(b"9223372036854775807"), 1), Err(errors::OVERFLOW));
        assert_eq!(incremented(Some(b"-9223372036854775808"), -1), Err(errors::OVERFLOW));
    }

    #[test]
    fn incrbyfloat_reads_and_writes_as_redis_does() {
        assert_eq!(incremented_float(None, 1.5).as_deref(), Ok("1.5"));
        assert_eq!(incremented_float(Some(b"10.5"), 0.1).as_deref(), Ok("10.6"));
        assert_eq!(incremented_float(Some(b"3"), 2.0).as_deref(), Ok("5"));
        assert_eq!(incremented_float(Some(b"x"), 1.0), Err(errors::NOT_FLOAT));
        assert_eq!(incremented_float(Some(b"inf"), 1.0), Err(errors::NAN_OR_INFINITY));
    }

    #[test]
    fn an_expiry_is_a_ttl_or_already_past() {
        assert_eq!(ttl_of(Expiry::In(1500), 0), Ttl::Live(Duration::from_millis(1500)));
        assert_eq!(ttl_of(Expiry::At(10_000), 9_000), Ttl::Live(Duration::from_secs(1)));
        assert_eq!(ttl_of(Expiry::At(10_000), 10_000), Ttl::Past);
        assert_eq!(ttl_of(Expiry::In(-1), 0), Ttl::Past);
    }
}
