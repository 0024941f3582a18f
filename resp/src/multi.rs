//! `MULTI` / `EXEC` / `WATCH` as one Basalt transaction.
//!
//! `EXEC` reads every key the block names (and every watched key), runs the block's commands in
//! order over those values as Redis would run them back to back (each one's decision from
//! `decide`, so `INCR`, `HSET`, `ZADD`, `GET` of a key the block just wrote all behave as
//! alone), and commits every key's final value as one transaction conditioned on each key still
//! being at the revision read. If another client wrote one of them in between, nothing was
//! applied and the block runs again from a new read (at most `CAS_ATTEMPTS_MAX` times, then
//! `TRYAGAIN`): the block's effect is atomic and its replies are those of one instant, the
//! commit's. A watched key found changed since `WATCH` aborts the block with a null array, as
//! in Redis.
//!
//! An error of one command (`WRONGTYPE`, a value that is not an integer) is its reply in the
//! array and the others still apply, as in Redis. A command that cannot be queued (`SCAN`,
//! `SUBSCRIBE`, ...) is refused when queued, which discards the block (`EXECABORT`).

use std::collections::HashMap;
use std::time::Duration;

use basalt_client::txn::{Compare, Condition};
use basalt_client::{Client, KvEntry, ReadConsistency, TxnOp, TxnOutcome};

use crate::command::{Bytes, Command, XInfo};
use crate::decide::{single_key, Change, KeyState};
use crate::frame::Reply;
use crate::keys::{check_key, check_storable, now_ms, op_refusal, put_op, string_of, NewTtl};
use crate::limits::{CAS_ATTEMPTS_MAX, REPLY_BYTES_MAX, TXN_CONDITIONS_MAX, TXN_WRITE_BYTES_MAX};
use crate::reply_error::client_error;
use basalt_client::limits::GET_MANY_KEYS_MAX;

/// A command accepted into a block.
pub struct Queued(Command);

/// Whether `command` can be part of a block, decided when it is queued: a command of keys the
/// cluster takes.
pub fn queue(command: &Command, name: &str) -> Result<Queued, Reply> {
    for key in keys_of(command) {
        check_key(key)?;
    }
    match command {
        Command::Ping(_)
        | Command::Echo(_)
        | Command::MGet(_)
        | Command::MSet(_)
        | Command::MSetNx(_)
        | Command::Del(_)
        | Command::Exists(_) => Ok(Queued(command.clone())),
        other if single_key(other).is_some() => Ok(Queued(command.clone())),
        _ => Err(Reply::error(format!(
            "ERR {} cannot be queued in MULTI on Basalt: a block runs commands of keys as one transaction (see docs/redis.md)",
            name.to_ascii_uppercase()
        ))),
    }
}

/// Every key a command reads or writes.
pub fn keys_of(command: &Command) -> Vec<&Bytes> {
    match command {
        Command::MGet(keys) | Command::Del(keys) | Command::Exists(keys) | Command::Watch(keys) => {
            keys.iter().collect()
        }
        Command::MSet(pairs) | Command::MSetNx(pairs) => pairs.iter().map(|(k, _)| k).collect(),
        Command::XAdd { key, .. }
        | Command::XTrim { key, .. }
        | Command::XLen(key)
        | Command::XRange { key, .. }
        | Command::XGroupCreate { key, .. }
        | Command::XGroupDestroy(key, _)
        | Command::XGroupSetId { key, .. }
        | Command::XGroupDelConsumer(key, _, _)
        | Command::XInfo(XInfo::Stream(key) | XInfo::Groups(key) | XInfo::Consumers(key, _))
        | Command::XAck(key, _, _)
        | Command::XPending(key, _, _)
        | Command::XClaim { key, .. }
        | Command::XAutoClaim { key, .. } => vec![key],
        Command::XRead { streams, .. } | Command::XReadGroup { streams, .. } => {
            streams.iter().map(|(key, _)| key).collect()
        }
        other => single_key(other).into_iter().collect(),
    }
}

/// The block's keys as it leaves them.
#[derive(Default)]
struct Block {
    keys: HashMap<Bytes, KeyState>,
}

impl Block {
    fn entry(&self, key: &[u8]) -> Option<&KvEntry> {
        self.keys.get(key).and_then(|k| k.entry.as_ref())
    }

    fn state(&mut self, key: &[u8]) -> &mut KeyState {
        self.keys.entry(key.to_vec()).or_default()
    }

    /// The keys the block changed, with the expiry each one's write gives it.
    fn written(&self) -> impl Iterator<Item = (&Bytes, Option<&KvEntry>, NewTtl)> {
        self.keys
            .iter()
            .filter_map(|(key, k)| k.written.map(|ttl| (key, k.entry.as_ref(), ttl)))
    }

    /// Runs one queued command and gives back its reply.
    fn run(&mut self, command: &Command, now: i64, resp3: bool) -> Reply {
        match command {
            Command::Ping(message) => message
                .clone()
                .map_or_else(|| Reply::Simple("PONG".into()), Reply::Bulk),
            Command::Echo(message) => Reply::Bulk(message.clone()),
            Command::MGet(keys) => {
                // A key named many times is copied each time: counted as it is built.
                let mut values = Vec::with_capacity(keys.len().min(1024));
                let mut bytes = 0usize;
                for key in keys {
                    let value = string_of(self.entry(key)).ok().flatten();
                    bytes += value.as_ref().map_or(0, Vec::len) + REPLY_FRAMING_BYTES;
                    if bytes > REPLY_BYTES_MAX {
                        return Reply::Error(REPLY_TOO_LARGE.into());
                    }
                    values.push(Reply::optional(value));
                }
                Reply::Array(values)
            }
            Command::Exists(keys) => Reply::Integer(keys.iter().filter(|k| self.entry(k).is_some()).count() as i64),
            Command::Del(keys) => {
                let mut deleted = 0;
                for key in keys {
                    if self.entry(key).is_some() {
                        deleted += 1;
                        self.state(key).apply(Change::Delete(Reply::Null), now);
                    }
                }
                Reply::Integer(deleted)
            }
            Command::MSet(pairs) | Command::MSetNx(pairs) => {
                if let Some(Err(reply)) = pairs.iter().map(|(_, v)| check_storable(v)).find(Result::is_err) {
                    return reply;
                }
                let only_if_absent = matches!(command, Command::MSetNx(_));
                if only_if_absent && pairs.iter().any(|(k, _)| self.entry(k).is_some()) {
                    return Reply::Integer(0);
                }
                for (key, value) in pairs {
                    self.state(key)
                        .apply(Change::Put(value.clone(), NewTtl::Never, Reply::Null), now);
                }
                if only_if_absent {
                    Reply::Integer(1)
                } else {
                    Reply::ok()
                }
            }
            other => {
                let Some(key) = single_key(other) else {
                    return Reply::error("ERR not a command this block can run");
                };
                self.state(key).run(other, now, resp3)
            }
        }
    }
}

/// Bytes counted for each reply of a block beyond its payload (type, length, line ends).
const REPLY_FRAMING_BYTES: usize = 16;

/// Bytes counted for each op and condition of a block's transaction beyond its key and value.
const TXN_ITEM_FRAMING_BYTES: usize = 64;

/// A block whose replies would pass [`REPLY_BYTES_MAX`] is refused whole.
const REPLY_TOO_LARGE: &str = "EXECABORT Transaction discarded, nothing applied: its reply would pass 64 MiB";

const _: () = assert!(REPLY_BYTES_MAX == 64 * 1024 * 1024);

/// About the bytes a reply takes on the wire (its payload and framing), to bound what a block
/// holds.
fn reply_size(reply: &Reply) -> usize {
    REPLY_FRAMING_BYTES
        + match reply {
            Reply::Simple(text) | Reply::Error(text) => text.len(),
            Reply::Bulk(bytes) => bytes.len(),
            Reply::Array(items) | Reply::Set(items) | Reply::Push(items) | Reply::Sequence(items) => {
                items.iter().map(reply_size).sum()
            }
            Reply::Map(pairs) => pairs.iter().map(|(k, v)| reply_size(k) + reply_size(v)).sum(),
            Reply::Integer(_) | Reply::Null | Reply::NullArray | Reply::Double(_) | Reply::Boolean(_) => 0,
        }
}

/// Runs a block: `watched` keys must still be at the revisions recorded (0: absent).
pub async fn exec(client: &Client, watched: &[(Bytes, u64)], queued: Vec<Queued>, resp3: bool) -> Reply {
    let commands: Vec<Command> = queued.into_iter().map(|Queued(c)| c).collect();
    let mut keys: Vec<Bytes> = watched.iter().map(|(k, _)| k.clone()).collect();
    for command in &commands {
        keys.extend(keys_of(command).into_iter().cloned());
    }
    keys.sort();
    keys.dedup();
    if keys.len() > TXN_CONDITIONS_MAX {
        return Reply::error(format!(
            "EXECABORT Transaction discarded: the block names {} keys, more than the {TXN_CONDITIONS_MAX} one Basalt transaction conditions on",
            keys.len()
        ));
    }
    for attempt in 0..CAS_ATTEMPTS_MAX {
        // The keys as they are now, each with the revision the commit is conditioned on.
        let mut read: Vec<(Bytes, Option<KvEntry>)> = Vec::with_capacity(keys.len());
        for group in keys.chunks(GET_MANY_KEYS_MAX) {
            match client.kv().get_many(group, ReadConsistency::Linearizable).await {
                Ok(entries) => read.extend(group.iter().cloned().zip(entries)),
                Err(e) => return client_error(&e),
            }
        }
        let revision = |key: &[u8]| {
            read.iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, e)| e.as_ref())
                .map_or(0, |e| e.mod_revision)
        };
        if watched.iter().any(|(key, at_watch)| revision(key) != *at_watch) {
            return Reply::NullArray;
        }
        let now = now_ms();
        let mut block = Block {
            keys: read
                .iter()
                .map(|(key, entry)| (key.clone(), KeyState::new(entry.clone())))
                .collect(),
        };
        let mut replies = Vec::with_capacity(commands.len());
        let mut reply_bytes = 0usize;
        for command in &commands {
            let reply = block.run(command, now, resp3);
            reply_bytes += reply_size(&reply);
            if reply_bytes > REPLY_BYTES_MAX || matches!(&reply, Reply::Error(text) if text == REPLY_TOO_LARGE) {
                return Reply::error(REPLY_TOO_LARGE);
            }
            replies.push(reply);
        }
        if block.written().next().is_none() && keys.len() <= GET_MANY_KEYS_MAX {
            // Read only, from one point-in-time view (one `get_many`): nothing to commit.
            return Reply::Array(replies);
        }
        // What the transaction carries: each written key and value, each condition's key, and
        // the framing of each, counted generously so the server's own bound is never the one hit.
        let written_bytes: usize = block
            .written()
            .map(|(key, entry, _)| key.len() + entry.map_or(0, |e| e.value.len()) + TXN_ITEM_FRAMING_BYTES)
            .sum::<usize>()
            + keys.iter().map(|key| key.len() + TXN_ITEM_FRAMING_BYTES).sum::<usize>();
        if written_bytes > TXN_WRITE_BYTES_MAX {
            return Reply::error(format!(
                "EXECABORT Transaction discarded, nothing applied: the block writes {written_bytes} bytes, more than the {TXN_WRITE_BYTES_MAX} of one Basalt transaction"
            ));
        }
        let mut txn = client.txn();
        for key in &keys {
            txn = txn.when(Condition::mod_revision(key.clone(), Compare::Eq, revision(key)));
        }
        let mut ops = 0;
        for (key, entry, ttl) in block.written() {
            txn = txn.then(match entry {
                Some(entry) => put_op(key, entry.value.clone(), ttl),
                None => TxnOp::delete(key.clone()),
            });
            ops += 1;
        }
        if ops == 0 {
            // Nothing to write, but the reads must be of one instant: a read carries the
            // conditions.
            txn = txn.then(TxnOp::get(keys[0].clone()));
        }
        match txn.commit().await {
            Ok(TxnOutcome::Committed { succeeded: true, .. }) => return Reply::Array(replies),
            Ok(TxnOutcome::Committed { succeeded: false, .. }) => {
                // A key changed since the read: run the block again from a new one.
                tokio::time::sleep(Duration::from_micros(50 * u64::from(attempt.min(40)))).await;
            }
            Ok(TxnOutcome::Aborted { reason, .. }) => {
                return match op_refusal(reason) {
                    Reply::Error(text) => {
                        Reply::error(format!("EXECABORT Transaction discarded, nothing applied: {text}"))
                    }
                    other => other,
                }
            }
            Err(e) => return client_error(&e),
        }
    }
    Reply::error(format!(
        "TRYAGAIN the block's keys changed under {CAS_ATTEMPTS_MAX} attempts in a row; nothing was applied"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse;

    fn command(text: &str) -> Command {
        let args: Vec<Bytes> = text.split(' ').map(|s| s.as_bytes().to_vec()).collect();
        parse(&args).expect("a command")
    }

    fn run(block: &mut Block, text: &str) -> Reply {
        block.run(&command(text), 1_000, false)
    }

    /// A block runs as Redis runs its commands back to back: each sees the earlier ones'
    /// writes, an error is one command's reply, and the final value of each key is what the
    /// commit writes, with the expiry its last write gave it.
    #[test]
    fn a_block_runs_its_commands_in_order_over_the_keys_as_read() {
        let mut block = Block::default();
        assert_eq!(run(&mut block, "INCR n"), Reply::Integer(1));
        assert_eq!(run(&mut block, "INCRBY n 41"), Reply::Integer(42));
        assert_eq!(run(&mut block, "GET n"), Reply::Bulk(b"42".to_vec()));
        assert_eq!(run(&mut block, "ZADD z 10 a"), Reply::Integer(1));
        assert_eq!(
            run(&mut block, "INCR z"),
            Reply::error(crate::keys::WRONGTYPE),
            "an error is the command's own reply"
        );
        assert_eq!(run(&mut block, "PEXPIRE z 5000"), Reply::Integer(1));
        assert_eq!(run(&mut block, "ZADD z 20 b"), Reply::Integer(1));
        assert_eq!(run(&mut block, "ZCARD z"), Reply::Integer(2));
        assert_eq!(run(&mut block, "PTTL z"), Reply::Integer(5000));
        assert_eq!(
            block.keys[b"z".as_slice()].written,
            Some(NewTtl::After(Duration::from_millis(5000)))
        );
        assert_eq!(run(&mut block, "DEL n z"), Reply::Integer(2));
        assert_eq!(run(&mut block, "EXISTS n z"), Reply::Integer(0));
        assert_eq!(run(&mut block, "MSETNX n 1 z 2"), Reply::Integer(1));
        assert_eq!(
            run(&mut block, "MGET n z"),
            Reply::Array(vec![Reply::Bulk(b"1".to_vec()), Reply::Bulk(b"2".to_vec())])
        );
        assert_eq!(block.keys[b"n".as_slice()].written, Some(NewTtl::Never));
    }

    /// `MGET k k k ...` of a large value in a block is bounded as its reply is built.
    #[test]
    fn a_block_reply_past_the_bound_is_refused_as_it_is_built() {
        let mut block = Block::default();
        let value = vec![b'x'; 1024 * 1024];
        block
            .state(b"k")
            .apply(Change::Put(value, NewTtl::Never, Reply::ok()), 0);
        let mget = Command::MGet(vec![b"k".to_vec(); REPLY_BYTES_MAX / (1024 * 1024) + 1]);
        assert_eq!(block.run(&mget, 0, false), Reply::Error(REPLY_TOO_LARGE.into()));
        assert!(queue(&command("GET a"), "get").is_ok());
        assert!(
            queue(&Command::Get(Vec::new()), "get").is_err(),
            "an empty key is refused when queued"
        );
    }

    #[test]
    fn commands_that_are_not_of_keys_cannot_be_queued() {
        assert!(queue(&command("SCAN 0"), "scan").is_err());
        assert!(queue(&command("SUBSCRIBE c"), "subscribe").is_err());
        assert!(queue(&command("HSET h f v"), "hset").is_ok());
        assert!(queue(&command("GETDEL k"), "getdel").is_ok());
    }
}
