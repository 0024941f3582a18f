//! Every command of one key as a pure decision over the key as read: its reply, and the change
//! it makes (none, a new value with its expiry, or a deletion).
//!
//! One function serves every way a command runs: alone, as a read of the key (a reader), or in
//! a group of writes of the key from many connections applied in order over the key as read and
//! written once, conditioned on the revision read (a writer, see `combine`); and inside `MULTI`,
//! where `EXEC` runs the block's decisions in order over the keys as read once and commits all
//! their changes as one transaction conditioned on those reads (see `multi`). [`KeyState`]
//! carries a key through such a sequence. Pure, so each command's rules are tested without a
//! cluster.

use basalt_client::KvEntry;

use crate::command::{errors, Bytes, Command, ExpireCondition, Expiry, GetExChange, SetCondition};
use crate::frame::{format_double, Reply};
use crate::keys::{
    check_storable, checked_ttl, incremented, incremented_float, string_of, type_name, value_of, NewTtl, Ttl, WRONGTYPE,
};
use crate::limits::REPLY_BYTES_MAX;
use crate::sorted_sets::{range_reply, select};
use crate::typed::{encode, AddRules, Added, Hash, SortedSet, Value};

/// What a command decided, given the key as read.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Write this value with this expiry, and answer the reply.
    Put(Vec<u8>, NewTtl, Reply),
    Delete(Reply),
    /// Leave the key as it is.
    Keep(Reply),
}

impl Change {
    pub fn reply(&self) -> &Reply {
        match self {
            Change::Put(_, _, reply) | Change::Delete(reply) | Change::Keep(reply) => reply,
        }
    }
}

/// A key as a sequence of decisions leaves it: what it holds, and, once written, the expiry its
/// last write gives it as the write must say it (`Keep`: as the cluster has it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyState {
    pub entry: Option<KvEntry>,
    /// `None`: nothing written, the key is as read.
    pub written: Option<NewTtl>,
    /// `entry`'s hash or sorted set decoded, once a command of the group decoded it.
    memo: Option<Value>,
}

impl KeyState {
    pub fn new(entry: Option<KvEntry>) -> KeyState {
        KeyState {
            entry,
            written: None,
            memo: None,
        }
    }

    /// Runs one command of this key over it: its reply (an error is the command's own). A hash
    /// or sorted set is decoded once for the commands of a group, not once per command.
    pub fn run(&mut self, command: &Command, now: i64, resp3: bool) -> Reply {
        let mut memo = self.memo.take();
        match decide_memo(command, self.entry.as_ref(), &mut memo, now, resp3) {
            Ok(change) => {
                let reply = self.apply(change, now);
                // `apply` forgot any memo; what the decision left matches the new value.
                self.memo = memo;
                reply
            }
            Err(reply) => reply,
        }
    }

    /// Applies one decision and gives back its reply. A new expiry (`After`) is reckoned from
    /// `now` for the commands after it; the write tells the cluster the duration, which it
    /// counts from when it applies.
    pub fn apply(&mut self, change: Change, now: i64) -> Reply {
        self.memo = None;
        match change {
            Change::Keep(reply) => reply,
            Change::Delete(reply) => {
                self.entry = None;
                self.written = Some(NewTtl::Never);
                reply
            }
            Change::Put(value, ttl, reply) => {
                let before = self.entry.as_ref().and_then(|e| e.expires_at_ms);
                let expires_at_ms = match ttl {
                    NewTtl::Keep => before,
                    NewTtl::Never => None,
                    NewTtl::After(d) => {
                        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                        Some(u64::try_from(now.max(0)).unwrap_or(0).saturating_add(ms))
                    }
                };
                self.entry = Some(KvEntry {
                    value,
                    create_revision: 0,
                    mod_revision: 0,
                    version: 0,
                    expires_at_ms,
                });
                // A kept expiry after a new one keeps the new one; after a deletion, none.
                self.written = Some(match (ttl, self.written) {
                    (NewTtl::Keep, Some(earlier)) => earlier,
                    (spec, _) => spec,
                });
                reply
            }
        }
    }
}

/// The one key a command reads or writes, when it has exactly one (and `decide` takes it).
pub fn single_key(command: &Command) -> Option<&Bytes> {
    use Command::*;
    match command {
        Get(key)
        | Set { key, .. }
        | SetNx(key, _)
        | Expire { key, .. }
        | Ttl { key, .. }
        | Persist(key)
        | GetDel(key)
        | GetEx { key, .. }
        | Append(key, _)
        | StrLen(key)
        | Type(key)
        | IncrBy(key, _)
        | IncrByFloat(key, _)
        | HSet { key, .. }
        | HSetNx(key, _, _)
        | HGet(key, _)
        | HMGet(key, _)
        | HGetAll(key)
        | HDel(key, _)
        | HIncrBy(key, _, _)
        | HIncrByFloat(key, _, _)
        | HExists(key, _)
        | HLen(key)
        | HKeys(key, _)
        | HStrLen(key, _)
        | ZAdd(key, _)
        | ZIncrBy(key, _, _)
        | ZRem(key, _)
        | ZCard(key)
        | ZCount(key, _, _)
        | ZScore(key, _)
        | ZRange(key, _)
        | ZRemRangeByScore(key, _, _) => Some(key),
        _ => None,
    }
}

/// Whether a command works on a hash or a sorted set (and so may use a decoded memo of it).
fn of_a_collection(command: &Command) -> bool {
    use Command::*;
    matches!(
        command,
        HSet { .. }
            | HSetNx(..)
            | HGet(..)
            | HMGet(..)
            | HGetAll(_)
            | HDel(..)
            | HIncrBy(..)
            | HIncrByFloat(..)
            | HExists(..)
            | HLen(_)
            | HKeys(..)
            | HStrLen(..)
            | ZAdd(..)
            | ZIncrBy(..)
            | ZRem(..)
            | ZCard(_)
            | ZCount(..)
            | ZScore(..)
            | ZRange(..)
            | ZRemRangeByScore(..)
    )
}

/// Whether a command of one key only reads it (so it runs as a read, not a conditioned write).
pub fn only_reads(command: &Command) -> bool {
    use Command::*;
    matches!(
        command,
        Get(_)
            | Ttl { .. }
            | StrLen(_)
            | Type(_)
            | HGet(..)
            | HMGet(..)
            | HGetAll(_)
            | HExists(..)
            | HLen(_)
            | HKeys(..)
            | HStrLen(..)
            | ZCard(_)
            | ZCount(..)
            | ZScore(..)
            | ZRange(..)
    )
}

/// `command`'s decision on its key as read (`entry`), at Unix time `now` (ms); `resp3` shapes
/// replies that differ by protocol. A command that is not of one key is refused.
pub fn decide(command: &Command, entry: Option<&KvEntry>, now: i64, resp3: bool) -> Result<Change, Reply> {
    decide_memo(command, entry, &mut None, now, resp3)
}

/// [`decide`] with `memo`, the decoded form of `entry`'s hash or sorted set when the caller has
/// it (a group of commands of one key: decoded once, not once per command). A collection
/// command takes it (or decodes `entry`) and leaves there the collection as its decision leaves
/// it; any other command leaves it empty, and after an error the caller drops it.
pub fn decide_memo(
    command: &Command,
    entry: Option<&KvEntry>,
    memo: &mut Option<Value>,
    now: i64,
    resp3: bool,
) -> Result<Change, Reply> {
    use Command::*;
    if !of_a_collection(command) {
        // A string or key-wide command: whatever it does, a memo would no longer match.
        *memo = None;
    }
    match command {
        Get(_) => Ok(Change::Keep(Reply::optional(string_of(entry)?))),
        Set {
            value,
            expiry,
            keep_ttl,
            condition,
            get,
            ..
        } => set(entry, now, value, *expiry, *keep_ttl, *condition, *get),
        SetNx(_, value) => {
            set(entry, now, value, None, false, Some(SetCondition::Absent), false).map(|change| match change {
                Change::Keep(_) => Change::Keep(Reply::Integer(0)),
                Change::Put(value, ttl, _) => Change::Put(value, ttl, Reply::Integer(1)),
                other => other,
            })
        }
        Expire { expiry, condition, .. } => expire(entry, now, *expiry, *condition),
        Ttl { millis, .. } => Ok(Change::Keep(match entry {
            None => Reply::Integer(-2),
            Some(entry) => match entry.expires_at_ms {
                None => Reply::Integer(-1),
                Some(at) => {
                    let left = (at as i64).saturating_sub(now).max(0);
                    // Redis rounds a TTL in seconds to the nearest second.
                    Reply::Integer(if *millis { left } else { (left + 500) / 1000 })
                }
            },
        })),
        Persist(_) => Ok(match entry {
            Some(e) if e.expires_at_ms.is_some() => Change::Put(e.value.clone(), NewTtl::Never, Reply::Integer(1)),
            _ => Change::Keep(Reply::Integer(0)),
        }),
        // A key of another type is left as it is.
        GetDel(_) => Ok(match string_of(entry)? {
            Some(value) => Change::Delete(Reply::Bulk(value)),
            None => Change::Keep(Reply::Null),
        }),
        GetEx { change, .. } => getex(entry, now, *change),
        Append(_, suffix) => {
            let mut value = string_of(entry)?.unwrap_or_default();
            value.extend_from_slice(suffix);
            check_storable(&value)?;
            let length = value.len() as i64;
            Ok(Change::Put(value, NewTtl::Keep, Reply::Integer(length)))
        }
        StrLen(_) => Ok(Change::Keep(Reply::Integer(
            string_of(entry)?.map_or(0, |v| v.len() as i64),
        ))),
        Type(_) => Ok(Change::Keep(Reply::Simple(type_name(entry).into()))),
        IncrBy(_, by) => {
            let n = incremented(string_of(entry)?.as_deref(), *by).map_err(Reply::error)?;
            Ok(Change::Put(n.to_string().into_bytes(), NewTtl::Keep, Reply::Integer(n)))
        }
        IncrByFloat(_, by) => {
            let text = incremented_float(string_of(entry)?.as_deref(), *by).map_err(Reply::error)?;
            Ok(Change::Put(
                text.clone().into_bytes(),
                NewTtl::Keep,
                Reply::Bulk(text.into_bytes()),
            ))
        }
        HSet { pairs, answer_ok, .. } => {
            let mut hash = hash_of(entry, memo)?;
            let mut added = 0;
            for (field, value) in pairs {
                if hash.fields.insert(field.clone(), value.clone()).is_none() {
                    added += 1;
                }
            }
            let reply = if *answer_ok { Reply::ok() } else { Reply::Integer(added) };
            store_hash(memo, hash, entry.is_some(), reply)
        }
        HSetNx(_, field, value) => {
            let mut hash = hash_of(entry, memo)?;
            if hash.fields.contains_key(field) {
                return keep(memo, Value::Hash(hash), Reply::Integer(0));
            }
            hash.fields.insert(field.clone(), value.clone());
            store_hash(memo, hash, entry.is_some(), Reply::Integer(1))
        }
        HDel(_, fields) => {
            let mut hash = hash_of(entry, memo)?;
            let removed = fields.iter().filter(|f| hash.fields.remove(*f).is_some()).count() as i64;
            if removed == 0 {
                return keep(memo, Value::Hash(hash), Reply::Integer(0));
            }
            store_hash(memo, hash, entry.is_some(), Reply::Integer(removed))
        }
        HIncrBy(_, field, by) => {
            let mut hash = hash_of(entry, memo)?;
            let current = match hash.fields.get(field) {
                None => 0,
                Some(bytes) => {
                    crate::command::strict_int(bytes).ok_or_else(|| Reply::error("ERR hash value is not an integer"))?
                }
            };
            let next = current.checked_add(*by).ok_or_else(|| Reply::error(errors::OVERFLOW))?;
            hash.fields.insert(field.clone(), next.to_string().into_bytes());
            store_hash(memo, hash, entry.is_some(), Reply::Integer(next))
        }
        HIncrByFloat(_, field, by) => {
            let mut hash = hash_of(entry, memo)?;
            let current = match hash.fields.get(field) {
                None => 0.0,
                Some(bytes) => {
                    crate::command::float(bytes).ok_or_else(|| Reply::error("ERR hash value is not a float"))?
                }
            };
            let next = current + by;
            if next.is_nan() || next.is_infinite() {
                return Err(Reply::error(errors::NAN_OR_INFINITY));
            }
            let text = format_double(next);
            hash.fields.insert(field.clone(), text.clone().into_bytes());
            store_hash(memo, hash, entry.is_some(), Reply::Bulk(text.into_bytes()))
        }
        HGet(_, field) => read_hash(entry, memo, |h| Ok(Reply::optional(h.fields.get(field).cloned()))),
        HMGet(_, fields) => read_hash(entry, memo, |hash| {
            // A field named many times is copied each time: counted as the reply is built.
            let mut bytes = 0usize;
            let mut values = Vec::with_capacity(fields.len().min(1024));
            for field in fields {
                let value = hash.fields.get(field).cloned();
                bytes += value.as_ref().map_or(0, Vec::len);
                if bytes > REPLY_BYTES_MAX {
                    return Err(Reply::error(format!(
                        "ERR HMGET's reply would pass {REPLY_BYTES_MAX} bytes; ask for fewer fields"
                    )));
                }
                values.push(Reply::optional(value));
            }
            Ok(Reply::Array(values))
        }),
        // A map in RESP3, fields and values in turn in RESP2.
        HGetAll(_) => read_hash(entry, memo, |h| {
            Ok(Reply::Map(
                h.fields
                    .iter()
                    .map(|(f, v)| (Reply::Bulk(f.clone()), Reply::Bulk(v.clone())))
                    .collect(),
            ))
        }),
        HExists(_, field) => read_hash(entry, memo, |h| {
            Ok(Reply::Integer(i64::from(h.fields.contains_key(field))))
        }),
        HLen(_) => read_hash(entry, memo, |h| Ok(Reply::Integer(h.fields.len() as i64))),
        HKeys(_, values) => read_hash(entry, memo, |h| {
            Ok(Reply::Array(
                h.fields
                    .iter()
                    .map(|(f, v)| Reply::Bulk(if *values { v.clone() } else { f.clone() }))
                    .collect(),
            ))
        }),
        HStrLen(_, field) => read_hash(entry, memo, |h| {
            Ok(Reply::Integer(h.fields.get(field).map_or(0, |v| v.len() as i64)))
        }),
        ZAdd(_, query) => {
            let mut set = set_of(entry, memo)?;
            if query.incr {
                let Some((by, member)) = query.pairs.first() else {
                    return Err(Reply::error(errors::SYNTAX));
                };
                let current = set.score(member);
                if (query.rules.only_new && current.is_some()) || (query.rules.only_existing && current.is_none()) {
                    // Held back before any arithmetic, as Redis does.
                    return keep(memo, Value::SortedSet(set), Reply::Null);
                }
                // A new member takes the increment itself (`-0` stays `-0`).
                let next = current.map_or(*by, |s| s + by);
                if next.is_nan() {
                    return Err(Reply::error("ERR resulting score is not a number (NaN)"));
                }
                // A score already there is answered as Redis does; only NX/XX/GT/LT answer null.
                return match set.add(member, next, query.rules) {
                    Added::Refused => keep(memo, Value::SortedSet(set), Reply::Null),
                    Added::Unchanged => keep(memo, Value::SortedSet(set), Reply::Double(next)),
                    Added::New | Added::Updated => store_set(memo, set, entry.is_some(), Reply::Double(next)),
                };
            }
            let (mut added, mut updated) = (0, 0);
            for (score, member) in &query.pairs {
                match set.add(member, *score, query.rules) {
                    Added::New => added += 1,
                    Added::Updated => updated += 1,
                    Added::Unchanged | Added::Refused => {}
                }
            }
            let reply = Reply::Integer(if query.count_changed { added + updated } else { added });
            if added + updated == 0 {
                return keep(memo, Value::SortedSet(set), reply);
            }
            store_set(memo, set, entry.is_some(), reply)
        }
        ZIncrBy(_, by, member) => {
            let mut set = set_of(entry, memo)?;
            let next = set.score(member).map_or(*by, |s| s + by);
            if next.is_nan() {
                return Err(Reply::error("ERR resulting score is not a number (NaN)"));
            }
            if set.add(member, next, AddRules::default()) == Added::Unchanged {
                return keep(memo, Value::SortedSet(set), Reply::Double(next));
            }
            store_set(memo, set, entry.is_some(), Reply::Double(next))
        }
        ZRem(_, members) => {
            let mut set = set_of(entry, memo)?;
            let removed = members.iter().filter(|m| set.remove(m)).count() as i64;
            if removed == 0 {
                return keep(memo, Value::SortedSet(set), Reply::Integer(0));
            }
            store_set(memo, set, entry.is_some(), Reply::Integer(removed))
        }
        ZRemRangeByScore(_, min, max) => {
            let mut set = set_of(entry, memo)?;
            let removed = set.remove_by_score(*min, *max) as i64;
            if removed == 0 {
                return keep(memo, Value::SortedSet(set), Reply::Integer(0));
            }
            store_set(memo, set, entry.is_some(), Reply::Integer(removed))
        }
        ZCard(_) => read_set(entry, memo, |s| Reply::Integer(s.len() as i64)),
        ZCount(_, min, max) => read_set(entry, memo, |s| Reply::Integer(s.by_score(*min, *max).count() as i64)),
        ZScore(_, member) => read_set(entry, memo, |s| s.score(member).map_or(Reply::Null, Reply::Double)),
        ZRange(_, query) => read_set(entry, memo, |s| range_reply(select(s, query), query.with_scores, resp3)),
        _ => Err(Reply::error("ERR not a command of one key")),
    }
}

fn set(
    entry: Option<&KvEntry>,
    now: i64,
    value: &[u8],
    expiry: Option<Expiry>,
    keep_ttl: bool,
    condition: Option<SetCondition>,
    get: bool,
) -> Result<Change, Reply> {
    check_storable(value)?;
    // `SET ... GET` answers the old string: on another type it fails and sets nothing.
    let old = if get { string_of(entry)? } else { None };
    let holds = match condition {
        None => true,
        Some(SetCondition::Absent) => entry.is_none(),
        Some(SetCondition::Present) => entry.is_some(),
    };
    let reply = if get { Reply::optional(old) } else { Reply::ok() };
    if !holds {
        return Ok(Change::Keep(if get { reply } else { Reply::Null }));
    }
    let ttl = match expiry.map(|e| checked_ttl(e, now)).transpose()? {
        Some(Ttl::Past) => return Ok(Change::Delete(reply)),
        Some(Ttl::Live(ttl)) => NewTtl::After(ttl),
        None if keep_ttl => NewTtl::Keep,
        None => NewTtl::Never,
    };
    Ok(Change::Put(value.to_vec(), ttl, reply))
}

fn expire(
    entry: Option<&KvEntry>,
    now: i64,
    expiry: Expiry,
    condition: Option<ExpireCondition>,
) -> Result<Change, Reply> {
    let Some(entry) = entry else {
        return Ok(Change::Keep(Reply::Integer(0)));
    };
    let new_at = match expiry {
        Expiry::In(ms) => now.saturating_add(ms),
        Expiry::At(at) => at,
    };
    let current = entry.expires_at_ms.map(|at| at as i64);
    let holds = match condition {
        None => true,
        Some(ExpireCondition::NoExpiry) => current.is_none(),
        Some(ExpireCondition::HasExpiry) => current.is_some(),
        // No expiry counts as infinite.
        Some(ExpireCondition::Later) => current.is_some_and(|at| new_at > at),
        Some(ExpireCondition::Sooner) => current.is_none_or(|at| new_at < at),
    };
    if !holds {
        return Ok(Change::Keep(Reply::Integer(0)));
    }
    Ok(match checked_ttl(Expiry::At(new_at), now)? {
        Ttl::Past => Change::Delete(Reply::Integer(1)),
        Ttl::Live(ttl) => Change::Put(entry.value.clone(), NewTtl::After(ttl), Reply::Integer(1)),
    })
}

fn getex(entry: Option<&KvEntry>, now: i64, change: GetExChange) -> Result<Change, Reply> {
    let (Some(value), Some(entry)) = (string_of(entry)?, entry) else {
        return Ok(Change::Keep(Reply::Null));
    };
    let reply = Reply::Bulk(value);
    Ok(match change {
        GetExChange::Keep => Change::Keep(reply),
        GetExChange::Persist if entry.expires_at_ms.is_none() => Change::Keep(reply),
        GetExChange::Persist => Change::Put(entry.value.clone(), NewTtl::Never, reply),
        GetExChange::Set(expiry) => match checked_ttl(expiry, now)? {
            Ttl::Past => Change::Delete(reply),
            Ttl::Live(ttl) => Change::Put(entry.value.clone(), NewTtl::After(ttl), reply),
        },
    })
}

/// The hash a stored key holds (empty when absent), or `WRONGTYPE`: taken from `memo` when it
/// holds one, else decoded.
fn hash_of(entry: Option<&KvEntry>, memo: &mut Option<Value>) -> Result<Hash, Reply> {
    if let Some(Value::Hash(hash)) = memo.take() {
        return Ok(hash);
    }
    match value_of(entry)? {
        None => Ok(Hash::default()),
        Some(Value::Hash(hash)) => Ok(hash),
        Some(_) => Err(Reply::error(WRONGTYPE)),
    }
}

/// The sorted set a stored key holds (empty when absent), or `WRONGTYPE`; from `memo` as
/// [`hash_of`].
fn set_of(entry: Option<&KvEntry>, memo: &mut Option<Value>) -> Result<SortedSet, Reply> {
    if let Some(Value::SortedSet(set)) = memo.take() {
        return Ok(set);
    }
    match value_of(entry)? {
        None => Ok(SortedSet::default()),
        Some(Value::SortedSet(set)) => Ok(set),
        Some(_) => Err(Reply::error(WRONGTYPE)),
    }
}

/// A reader of a hash: its reply, the hash left in `memo`.
fn read_hash(
    entry: Option<&KvEntry>,
    memo: &mut Option<Value>,
    read: impl FnOnce(&Hash) -> Result<Reply, Reply>,
) -> Result<Change, Reply> {
    let hash = hash_of(entry, memo)?;
    let reply = read(&hash);
    *memo = Some(Value::Hash(hash));
    reply.map(Change::Keep)
}

/// A reader of a sorted set: its reply, the set left in `memo`.
fn read_set(
    entry: Option<&KvEntry>,
    memo: &mut Option<Value>,
    read: impl FnOnce(&SortedSet) -> Reply,
) -> Result<Change, Reply> {
    let set = set_of(entry, memo)?;
    let reply = read(&set);
    *memo = Some(Value::SortedSet(set));
    Ok(Change::Keep(reply))
}

/// A writer that changed nothing: `value` (unchanged) back in `memo`.
fn keep(memo: &mut Option<Value>, value: Value, reply: Reply) -> Result<Change, Reply> {
    *memo = Some(value);
    Ok(Change::Keep(reply))
}

/// The change storing a collection as the key's value, keeping its expiry: deleted when it is
/// left empty, as in Redis. The collection stays in `memo` as stored.
fn store(memo: &mut Option<Value>, value: Value, empty: bool, existed: bool, reply: Reply) -> Result<Change, Reply> {
    if empty {
        return Ok(if existed {
            Change::Delete(reply)
        } else {
            Change::Keep(reply)
        });
    }
    let bytes = encode(&value).map_err(|e| Reply::error(e.to_string()))?;
    *memo = Some(value);
    Ok(Change::Put(bytes, NewTtl::Keep, reply))
}

fn store_hash(memo: &mut Option<Value>, hash: Hash, existed: bool, reply: Reply) -> Result<Change, Reply> {
    let empty = hash.fields.is_empty();
    store(memo, Value::Hash(hash), empty, existed, reply)
}

fn store_set(memo: &mut Option<Value>, set: SortedSet, existed: bool, reply: Reply) -> Result<Change, Reply> {
    let empty = set.is_empty();
    store(memo, Value::SortedSet(set), empty, existed, reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse;
    use crate::typed::TYPE_MARKER;

    fn command(text: &str) -> Command {
        let args: Vec<Bytes> = text.split(' ').map(|s| s.as_bytes().to_vec()).collect();
        parse(&args).expect("a command")
    }

    fn entry(value: &[u8], expires_at_ms: Option<u64>) -> KvEntry {
        KvEntry {
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            expires_at_ms,
        }
    }

    /// `text` over `held` at time 1000 (RESP2).
    fn run(text: &str, held: Option<&KvEntry>) -> Result<Change, Reply> {
        decide(&command(text), held, 1_000, false)
    }

    fn hash(fields: &[(&str, &str)]) -> KvEntry {
        let hash = Hash {
            fields: fields
                .iter()
                .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        };
        entry(&encode(&Value::Hash(hash)).expect("encode"), Some(5_000))
    }

    #[test]
    fn string_commands_refuse_other_types_and_keep_what_they_keep() {
        let h = hash(&[("f", "v")]);
        let wrong = Err(Reply::error(WRONGTYPE));
        for text in [
            "GET k",
            "INCR k",
            "APPEND k x",
            "STRLEN k",
            "GETDEL k",
            "SET k v GET",
            "GETEX k PERSIST",
        ] {
            assert_eq!(run(text, Some(&h)), wrong, "{text}");
        }
        // Key-wide commands work on any type and keep its value.
        assert_eq!(run("TYPE k", Some(&h)), Ok(Change::Keep(Reply::Simple("hash".into()))));
        assert_eq!(
            run("PERSIST k", Some(&h)),
            Ok(Change::Put(h.value.clone(), NewTtl::Never, Reply::Integer(1)))
        );
        assert_eq!(run("PTTL k", Some(&h)), Ok(Change::Keep(Reply::Integer(4_000))));
        // SET replaces any type; SET NX does not.
        assert_eq!(
            run("SET k v", Some(&h)),
            Ok(Change::Put(b"v".to_vec(), NewTtl::Never, Reply::ok()))
        );
        assert_eq!(run("SET k v NX", Some(&h)), Ok(Change::Keep(Reply::Null)));
        assert_eq!(
            run("SETNX k v", None),
            Ok(Change::Put(b"v".to_vec(), NewTtl::Never, Reply::Integer(1)))
        );
        // A string may not look like another type, nor pass the value bound.
        let mut marked = TYPE_MARKER.to_vec();
        marked.push(1);
        let set_marked = Command::Set {
            key: b"k".to_vec(),
            value: marked,
            expiry: None,
            keep_ttl: false,
            condition: None,
            get: false,
        };
        assert!(decide(&set_marked, None, 0, false).is_err());
        let big = Command::Append(b"k".to_vec(), vec![b'x'; 1024 * 1024 + 1]);
        assert!(decide(&big, None, 0, false).is_err());
        // A time to live past what the cluster keeps fails the command alone.
        let too_long = "ERR a time to live of";
        for text in ["EXPIRE k 40000000", "SET k v EX 40000000", "GETEX k EX 40000000"] {
            assert!(
                matches!(run(text, Some(&entry(b"v", None))), Err(Reply::Error(e)) if e.starts_with(too_long)),
                "{text}"
            );
        }
        // A change of a string keeps its deadline (put_keep_ttl).
        let n = entry(b"41", Some(9_000));
        assert_eq!(
            run("INCR k", Some(&n)),
            Ok(Change::Put(b"42".to_vec(), NewTtl::Keep, Reply::Integer(42)))
        );
    }

    #[test]
    fn hash_commands_change_the_whole_value_and_delete_an_empty_hash() {
        let h = hash(&[("a", "1"), ("b", "x")]);
        let Ok(Change::Put(stored, NewTtl::Keep, Reply::Integer(1))) = run("HSET k c 3 a 2", Some(&h)) else {
            panic!("HSET");
        };
        let Ok(Value::Hash(after)) = crate::typed::decode(&stored) else {
            panic!("a hash");
        };
        assert_eq!(after.fields.len(), 3);
        assert_eq!(after.fields.get(b"a".as_slice()), Some(&b"2".to_vec()));
        assert_eq!(
            run("HINCRBY k b 1", Some(&h)),
            Err(Reply::error("ERR hash value is not an integer"))
        );
        assert_eq!(run("HDEL k a b", Some(&h)), Ok(Change::Delete(Reply::Integer(2))));
        assert_eq!(run("HDEL k none", None), Ok(Change::Keep(Reply::Integer(0))));
        assert_eq!(run("HLEN k", Some(&h)), Ok(Change::Keep(Reply::Integer(2))));
        assert_eq!(
            run("HGET k a", Some(&entry(b"text", None))),
            Err(Reply::error(WRONGTYPE))
        );
    }

    /// A group run through one KeyState decodes a collection once, and what it remembers never
    /// outlives a change by another kind of command.
    #[test]
    fn a_key_state_remembers_the_decoded_collection_only_while_it_matches() {
        let mut state = KeyState::new(None);
        assert_eq!(state.run(&command("HSET k a 1"), 0, false), Reply::Integer(1));
        assert!(matches!(state.memo, Some(Value::Hash(_))));
        assert_eq!(state.run(&command("HINCRBY k a 2"), 0, false), Reply::Integer(3));
        assert_eq!(state.run(&command("HGET k a"), 0, false), Reply::Bulk(b"3".to_vec()));
        // A string replaces the hash: the memo goes with it.
        assert_eq!(state.run(&command("SET k text"), 0, false), Reply::ok());
        assert!(state.memo.is_none());
        assert_eq!(state.run(&command("HGET k a"), 0, false), Reply::error(WRONGTYPE));
        // A sorted set: a command of another type is refused (its memo dropped: the next
        // command decodes again).
        let mut state = KeyState::new(None);
        assert_eq!(state.run(&command("ZADD k 1 m"), 0, false), Reply::Integer(1));
        assert_eq!(state.run(&command("HSET k a 1"), 0, false), Reply::error(WRONGTYPE));
        assert_eq!(state.run(&command("ZSCORE k m"), 0, false), Reply::Double(1.0));
        assert_eq!(state.run(&command("ZREM k m"), 0, false), Reply::Integer(1));
        assert!(
            state.entry.is_none() && state.memo.is_none(),
            "the emptied set is deleted"
        );
        // Every step's stored bytes decode to what the memo held.
        let mut state = KeyState::new(None);
        for text in ["ZADD k 1 a 2 b", "ZINCRBY k 5 a", "ZREMRANGEBYSCORE k -inf 2"] {
            state.run(&command(text), 0, false);
            let stored = crate::typed::decode(&state.entry.as_ref().expect("stored").value).expect("decode");
            assert_eq!(Some(stored), state.memo.clone(), "{text}");
        }
    }

    /// A field named again and again is copied each time: the reply is bounded as it is built.
    #[test]
    fn hmget_of_one_large_field_many_times_is_refused_past_the_reply_bound() {
        let big = "x".repeat(1024 * 1024 - 64);
        let h = hash(&[("f", big.as_str())]);
        let fields = vec![b"f".to_vec(); REPLY_BYTES_MAX / big.len() + 1];
        let hmget = Command::HMGet(b"k".to_vec(), fields);
        let refused = decide(&hmget, Some(&h), 0, false);
        assert!(matches!(refused, Err(Reply::Error(text)) if text.contains("HMGET's reply would pass")));
        let few = Command::HMGet(b"k".to_vec(), vec![b"f".to_vec(); 3]);
        assert!(decide(&few, Some(&h), 0, false).is_ok());
    }

    #[test]
    fn zadd_answers_each_of_its_cases_as_redis_does() {
        let Ok(Change::Put(stored, _, Reply::Integer(2))) = run("ZADD k 1 a 2 b", None) else {
            panic!("ZADD");
        };
        let z = entry(&stored, None);
        assert_eq!(run("ZADD k 1 a", Some(&z)), Ok(Change::Keep(Reply::Integer(0))));
        assert_eq!(
            run("ZADD k CH 1 a 5 b", Some(&z)).map(|c| c.reply().clone()),
            Ok(Reply::Integer(1))
        );
        // INCR by 0 answers the score (nothing to write); a refused rule answers null.
        assert_eq!(run("ZADD k INCR 0 a", Some(&z)), Ok(Change::Keep(Reply::Double(1.0))));
        assert_eq!(run("ZADD k XX INCR 1 none", Some(&z)), Ok(Change::Keep(Reply::Null)));
        assert_eq!(run("ZADD k GT INCR -1 a", Some(&z)), Ok(Change::Keep(Reply::Null)));
        assert_eq!(run("ZINCRBY k 0 a", Some(&z)), Ok(Change::Keep(Reply::Double(1.0))));
        assert_eq!(run("ZREM k a b", Some(&z)), Ok(Change::Delete(Reply::Integer(2))));
        // A new member takes the increment itself; NX holds an existing member back before any
        // arithmetic (so no NaN error for +inf + -inf).
        assert_eq!(
            run("ZINCRBY k -0 m", None).map(|c| c.reply().clone()),
            Ok(Reply::Double(-0.0))
        );
        let Ok(Change::Put(stored, _, _)) = run("ZADD k +inf m", None) else {
            panic!("ZADD");
        };
        assert_eq!(
            run("ZADD k NX INCR -inf m", Some(&entry(&stored, None))),
            Ok(Change::Keep(Reply::Null))
        );
        assert_eq!(
            run("ZREMRANGEBYSCORE k -inf (2", Some(&z)).map(|c| c.reply().clone()),
            Ok(Reply::Integer(1))
        );
    }
}
