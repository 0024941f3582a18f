//! One client connection: reads requests (pipelined or not), runs them in order, writes the
//! replies in order, and keeps the connection's state (protocol, name, authentication, stale
//! reads, a `MULTI` block and its `WATCH`es, open `SCAN` cursors).
//!
//! Commands of one connection run one after the other, as Redis runs them, so a pipelined `GET`
//! always sees the `SET` before it. One exception keeps pipelines fast without changing what a
//! client can see: a run of plain `SET`s in a row (no options but a time to live) goes as one
//! transaction, all applied at one revision, in order.

use std::collections::VecDeque;
use std::sync::Arc;

use basalt_client::{ReadConsistency, TxnOp, TxnOutcome};
use bytes::BufMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::command::{self, errors, Bytes, Command, Refusal};
use crate::frame::{Parsed, Protocol, ReadLimits, Reply, RequestReader};
use crate::glob::Glob;
use crate::keys::{check_key, check_storable, checked_ttl, now_ms, pipelined_write_key, ttl_of, Keys, Ttl};
use crate::limits::{
    CERTIFICATE_CHECK_TIMEOUT, MULTI_QUEUED_MAX, PIPELINE_KEY_WRITES_MAX, PIPELINE_ROUND_REQUESTS_MAX,
    PUSH_BUFFER_MESSAGES, REPLY_FLUSH_BYTES, REQUEST_BYTES_MAX, SCAN_CURSORS_MAX, SET_RUN_BYTES_MAX,
    TXN_CONDITIONS_MAX, TXN_OPS_MAX,
};
use crate::multi::{self, Queued};
use crate::pubsub::{Kind, Subscriptions};
use crate::reply_error::client_error;
use crate::server::{stopped, Caller, Shared};
use crate::stream_ids::RESERVED_KEY_PREFIX;
use crate::streams::Streams;
/// A connection's reading half, plain TCP or TLS.
type Reader = dyn tokio::io::AsyncRead + Send + Unpin;

/// What the connection does after a command.
#[derive(PartialEq, Eq)]
enum Next {
    Go,
    Close,
}

struct Connection {
    shared: Arc<Shared>,
    /// Whom the commands run as: the shared caller, or, with token authentication, the
    /// token's own (set by `AUTH`).
    caller: Arc<Caller>,
    id: u64,
    protocol: Protocol,
    authenticated: bool,
    /// The client certificate the connection is authenticated by (until an `AUTH` with a
    /// token decides instead): checked before each round of commands, as it may expire while
    /// the connection lasts.
    certificate: Option<basalt_tls::ConnectInfo>,
    name: Option<Bytes>,
    reads: ReadConsistency,
    /// Inside `MULTI`: the queued commands, and whether one was refused (`EXECABORT`).
    multi: Option<(Vec<Queued>, bool)>,
    /// Watched keys and the revision each had when watched (0: absent).
    watched: Vec<(Bytes, u64)>,
    /// Open `SCAN` cursors: number → the key the scan goes on after.
    cursors: VecDeque<(u64, Bytes)>,
    next_cursor: u64,
    subscriptions: Subscriptions,
    /// Turns true when the node stops: ends a blocking read.
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Finishes when the client closes its connection or the node stops, for a blocking read to
/// end on. Bytes the client sends meanwhile (pipelined commands) are read into `buf`, the
/// connection's input, and run after the blocking read, up to [`REQUEST_BYTES_MAX`]; past that
/// only the node stopping (or an entry) ends the wait: the client is paced by its socket, and a
/// close behind the unread bytes is seen once they are read. Cancel safe: a read that did not
/// finish took no bytes.
async fn client_gone(reader: &mut Reader, buf: &mut Vec<u8>, stop: &mut tokio::sync::watch::Receiver<bool>) {
    while buf.len() < REQUEST_BYTES_MAX {
        buf.reserve(16 * 1024);
        let room = REQUEST_BYTES_MAX - buf.len();
        let mut limited = (&mut *buf).limit(room);
        tokio::select! {
            read = reader.read_buf(&mut limited) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            () = stopped(stop) => return,
        }
    }
    stopped(stop).await;
}

/// The stream commands on `shared` (a function of the fields it borrows, so a blocking read can
/// hold them while it watches the connection's other fields).
fn streams_of(caller: &Caller, reads: ReadConsistency) -> Streams<'_> {
    Streams {
        client: caller.client(),
        appender: &caller.appender,
        reads,
    }
}

/// Whether `command` may wait (`XREAD` / `XREADGROUP` with `BLOCK`): the replies before it are
/// written first, so a pipelined write is not held back by a read that waits.
fn blocks(command: &Command) -> bool {
    matches!(
        command,
        Command::XRead { block: Some(_), .. } | Command::XReadGroup { block: Some(_), .. }
    )
}

/// Serves `stream` until the client leaves, sends `QUIT`, breaks the protocol, or the node
/// stops (`stop` turns true).
pub async fn serve(
    stream: basalt_tls::Conn,
    shared: Arc<Shared>,
    id: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let certificate = stream.tls_info().cloned();
    let (mut reader, mut writer) = stream.into_split();
    let (push_sender, mut pushes) = tokio::sync::mpsc::channel(PUSH_BUFFER_MESSAGES);
    let mut connection = Connection {
        authenticated: shared.config.password.is_none() && !shared.config.token_auth,
        certificate: None,
        caller: Arc::clone(&shared.anonymous),
        shared,
        id,
        protocol: Protocol::Resp2,
        name: None,
        reads: ReadConsistency::Linearizable,
        multi: None,
        watched: Vec::new(),
        cursors: VecDeque::new(),
        next_cursor: 1,
        subscriptions: Subscriptions::new(push_sender),
        stop: stop.clone(),
    };
    if connection.shared.config.token_auth {
        if let Some(certificate) = certificate {
            connection.certificate_auth(certificate).await;
        }
    }
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut requests_reader = RequestReader::default();
    // Bytes the buffer must hold before parsing again is worth it.
    let mut wanted = 1usize;
    loop {
        if buf.len() >= wanted {
            let mut requests = Vec::new();
            let mut consumed = 0;
            let mut broken = None;
            // Whole requests are left in the buffer after this round's share.
            let mut more_ready = false;
            if connection.certificate_expired() {
                out.clear();
                Reply::error("NOAUTH the client certificate has expired").encode(connection.protocol, &mut out);
                let _ = writer.write_all(&out).await;
                let _ = writer.shutdown().await;
                return;
            }
            // Before AUTH, one request a round: the next is read under the limits its result
            // decides (Redis's small unauthenticated ones, or the full ones).
            let (round_max, limits) = if connection.authenticated {
                (PIPELINE_ROUND_REQUESTS_MAX, ReadLimits::AUTHENTICATED)
            } else {
                (1, ReadLimits::UNAUTHENTICATED)
            };
            loop {
                if requests.len() >= round_max {
                    more_ready = true;
                    wanted = 1;
                    break;
                }
                // Offsets are counted from `buf[consumed..]`, which is the buffer's start once
                // the parsed requests are drained below: a partial request's progress and the
                // `at_least` of an incomplete one stay true across the drain.
                match requests_reader.read(&buf[consumed..], limits) {
                    Ok(Parsed::Request { args, consumed: n }) => {
                        consumed += n;
                        if !args.is_empty() {
                            requests.push(args);
                        }
                    }
                    Ok(Parsed::Incomplete { at_least }) => {
                        wanted = at_least;
                        break;
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            buf.drain(..consumed);
            let next = connection
                .run_all(requests, &mut out, &mut writer, &mut reader, &mut buf)
                .await;
            if let Some(e) = &broken {
                Reply::error(format!("ERR {e}")).encode(connection.protocol, &mut out);
            }
            if !out.is_empty() {
                if writer.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                out.shrink_to(64 * 1024);
            }
            if next == Next::Close || broken.is_some() {
                let _ = writer.shutdown().await;
                return;
            }
            if buf.capacity() > 64 * 1024 && buf.len() < 16 * 1024 {
                // A large request is gone: do not keep its buffer for the connection's life.
                buf.shrink_to(16 * 1024);
            }
            // More requests are whole already, or arrived while a blocking read waited.
            if more_ready || buf.len() >= wanted {
                continue;
            }
        }
        buf.reserve(16 * 1024);
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Some(push) = pushes.recv() => {
                // Pub/sub messages, between replies: every one waiting now goes in one write,
                // except those of a subscription dropped since they were queued.
                let mut push = Some(push);
                while let Some(message) = push.take().or_else(|| pushes.try_recv().ok()) {
                    if connection.subscriptions.is_current(&message) {
                        message.reply.encode(connection.protocol, &mut out);
                    }
                }
                if !out.is_empty() {
                    if writer.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            },
            () = stopped(&mut stop) => return,
        }
    }
}

impl Connection {
    fn streams(&self) -> Streams<'_> {
        streams_of(&self.caller, self.reads)
    }

    /// `DEL` and `UNLINK`: KV keys in one transaction, then, for each name no KV key held, the
    /// stream of that name with its groups (a name holds one type).
    async fn del(&self, keys: &[Bytes]) -> Reply {
        let deleted = match self.keys().del(keys).await {
            Ok(deleted) => deleted,
            Err(reply) => return reply,
        };
        let mut count = 0;
        for (key, was_key) in deleted {
            let was_stream = !was_key
                && match self.streams().delete(&key).await {
                    Ok(deleted) => deleted,
                    Err(reply) => return reply,
                };
            count += i64::from(was_key || was_stream);
        }
        Reply::Integer(count)
    }

    /// `EXISTS`: KV keys, then streams for the names no KV key holds.
    async fn exists(&self, keys: &[Bytes]) -> Reply {
        let present = match self.keys().presence(keys).await {
            Ok(present) => present,
            Err(reply) => return reply,
        };
        let absent: Vec<&Bytes> = keys
            .iter()
            .zip(&present)
            .filter(|(_, p)| !**p)
            .map(|(k, _)| k)
            .collect();
        let streams = match self.streams().exist(&absent).await {
            Ok(streams) => streams,
            Err(reply) => return reply,
        };
        let count = present.iter().filter(|p| **p).count() + streams.iter().filter(|s| **s).count();
        Reply::Integer(count as i64)
    }

    fn keys(&self) -> Keys<'_> {
        Keys {
            client: self.caller.client(),
            combiner: &self.caller.combiner,
            readers: &self.caller.readers,
            reads: self.reads,
        }
    }

    /// Runs a read's worth of requests in order, appending each reply to `out`, and writing
    /// `out` to `writer` whenever it passes [`REPLY_FLUSH_BYTES`]: a pipeline of large replies
    /// is paced by the client's reading, not held whole in memory.
    async fn run_all<W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        requests: Vec<Vec<Bytes>>,
        out: &mut Vec<u8>,
        writer: &mut W,
        reader: &mut Reader,
        input: &mut Vec<u8>,
    ) -> Next {
        let mut parsed: VecDeque<(String, Result<Command, Refusal>)> = requests
            .iter()
            .map(|args| (String::from_utf8_lossy(&args[0]).into_owned(), command::parse(args)))
            .collect();
        while let Some((name, command)) = parsed.pop_front() {
            if out.len() >= REPLY_FLUSH_BYTES {
                if writer.write_all(out).await.is_err() {
                    return Next::Close;
                }
                out.clear();
            }
            // Basalt's own rows (stream groups) are not keys a client may name.
            let command = command.and_then(|command| {
                match multi::keys_of(&command)
                    .into_iter()
                    .find(|key| key.starts_with(RESERVED_KEY_PREFIX))
                    .and_then(|key| check_key(key).err())
                {
                    Some(Reply::Error(text)) => Err(Refusal(text)),
                    _ => Ok(command),
                }
            });
            let command = match command {
                Ok(command) => command,
                Err(refusal) => {
                    if let Some((_, failed)) = &mut self.multi {
                        *failed = true;
                    }
                    refusal.reply().encode(self.protocol, out);
                    continue;
                }
            };
            let subscribed = self.subscriptions.count() > 0 && self.protocol == Protocol::Resp2;
            let plain = self.multi.is_none() && self.authenticated && !subscribed;
            if let (true, Command::Get(key)) = (plain, &command) {
                // GETs of one key in a row: one read answers them all, made after all of them
                // arrived and before any is answered.
                let mut count = 1;
                while parsed
                    .front()
                    .is_some_and(|(_, c)| matches!(c, Ok(Command::Get(k)) if k == key))
                {
                    parsed.pop_front();
                    count += 1;
                }
                let reply = self.keys().get(key).await;
                for _ in 0..count {
                    reply.encode(self.protocol, out);
                    // Copies of a large value: written out as they pass the bound, not held.
                    if out.len() >= REPLY_FLUSH_BYTES {
                        if writer.write_all(out).await.is_err() {
                            return Next::Close;
                        }
                        out.clear();
                    }
                }
                continue;
            }
            if plain && plain_set(&command) {
                let mut run = vec![command];
                while run.len() < TXN_OPS_MAX && parsed.front().is_some_and(|(_, c)| matches!(c, Ok(c) if plain_set(c)))
                {
                    if let Some((_, Ok(next))) = parsed.pop_front() {
                        run.push(next);
                    }
                }
                self.set_run(run, out).await;
                continue;
            }
            if let (true, Some(key)) = (plain, pipelined_write_key(&command)) {
                // Writes of one key in a row (a pipeline of INCRs): one group, in order.
                if parsed
                    .front()
                    .is_some_and(|(_, c)| matches!(c, Ok(c) if pipelined_write_key(c) == Some(key)))
                {
                    let key = key.to_vec();
                    let mut run = vec![command];
                    while run.len() < PIPELINE_KEY_WRITES_MAX
                        && parsed
                            .front()
                            .is_some_and(|(_, c)| matches!(c, Ok(c) if pipelined_write_key(c) == Some(&key[..])))
                    {
                        if let Some((_, Ok(next))) = parsed.pop_front() {
                            run.push(next);
                        }
                    }
                    for reply in self.keys().write_all(&key, run).await {
                        reply.encode(self.protocol, out);
                    }
                    continue;
                }
            }
            if blocks(&command) && !out.is_empty() {
                if writer.write_all(out).await.is_err() {
                    return Next::Close;
                }
                out.clear();
            }
            let (reply, next) = self.run(command, &name, reader, input).await;
            reply.encode(self.protocol, out);
            if next == Next::Close {
                return Next::Close;
            }
        }
        Next::Go
    }

    /// A run of plain `SET`s, applied in order as few transactions: cut where the run passes
    /// [`SET_RUN_BYTES_MAX`] or [`TXN_OPS_MAX`], and within each part a key given again keeps
    /// only its last value (the earlier ones are overwritten at the same instant, which no
    /// reader can tell from Redis running them one by one). A part of one key goes through the
    /// combiner. A run holding a `SET` the cluster would refuse on its own (an empty or
    /// oversized key or value) runs one by one, so only that one fails.
    async fn set_run(&mut self, run: Vec<Command>, out: &mut Vec<u8>) {
        let sets: Vec<(Bytes, Bytes, Option<command::Expiry>)> = run
            .into_iter()
            .filter_map(|c| match c {
                Command::Set { key, value, expiry, .. } => Some((key, value, expiry)),
                _ => None,
            })
            .collect();
        let now = now_ms();
        // The checks a lone SET makes (`Keys::set`), so that a run holding a SET it would refuse
        // goes one by one.
        let valid = |(key, value, expiry): &(Bytes, Bytes, Option<command::Expiry>)| {
            check_key(key).is_ok()
                && check_storable(value).is_ok()
                && expiry.is_none_or(|e| checked_ttl(e, now).is_ok())
        };
        if !sets.iter().all(valid) {
            self.sets_one_by_one(sets, out).await;
            return;
        }
        let mut parts: Vec<Vec<(Bytes, Bytes, Option<command::Expiry>)>> = vec![Vec::new()];
        let mut part_bytes = 0usize;
        for set in sets {
            let bytes = set.0.len() + set.1.len();
            let full = parts
                .last()
                .is_some_and(|p| !p.is_empty() && (part_bytes + bytes > SET_RUN_BYTES_MAX || p.len() >= TXN_OPS_MAX));
            if full {
                parts.push(Vec::new());
                part_bytes = 0;
            }
            part_bytes += bytes;
            if let Some(part) = parts.last_mut() {
                part.push(set);
            }
        }
        for part in parts {
            let count = part.len();
            let mut last: Vec<(Bytes, Bytes, Option<command::Expiry>)> = Vec::with_capacity(count);
            for (key, value, expiry) in part.iter().cloned() {
                match last.iter_mut().find(|(k, _, _)| *k == key) {
                    Some(slot) => *slot = (key, value, expiry),
                    None => last.push((key, value, expiry)),
                }
            }
            let reply = if last.len() == 1 {
                let (key, value, expiry) = last.remove(0);
                self.keys().set(&key, value, expiry, false, None, false).await
            } else {
                let now = now_ms();
                let mut txn = self.caller.client().txn();
                for (key, value, expiry) in last {
                    txn = txn.then(match expiry.map(|e| ttl_of(e, now)) {
                        Some(Ttl::Live(ttl)) => TxnOp::put_with_ttl(key, value, ttl),
                        Some(Ttl::Past) => TxnOp::delete(key),
                        None => TxnOp::put(key, value),
                    });
                }
                match txn.commit().await {
                    Ok(TxnOutcome::Committed { .. }) => Reply::ok(),
                    Ok(TxnOutcome::Aborted { .. }) => {
                        // A SET the cluster refuses on its own (a rule checked only there):
                        // nothing of the part applied; run it one by one so only that one fails.
                        self.sets_one_by_one(part, out).await;
                        continue;
                    }
                    Err(e) => client_error(&e),
                }
            };
            for _ in 0..count {
                reply.encode(self.protocol, out);
            }
        }
    }

    /// Plain SETs run alone, each answering for itself.
    async fn sets_one_by_one(&self, sets: Vec<(Bytes, Bytes, Option<command::Expiry>)>, out: &mut Vec<u8>) {
        for (key, value, expiry) in sets {
            self.keys()
                .set(&key, value, expiry, false, None, false)
                .await
                .encode(self.protocol, out);
        }
    }

    /// Runs one command; `name` is its name as the client sent it, for messages.
    /// Runs one command. `reader` and `input` (the connection's unparsed bytes) are for a
    /// blocking read, which watches the client while it waits.
    async fn run(&mut self, command: Command, name: &str, reader: &mut Reader, input: &mut Vec<u8>) -> (Reply, Next) {
        if !self.authenticated && !matches!(command, Command::Auth { .. } | Command::Hello { .. } | Command::Quit) {
            return (Reply::error(errors::NOAUTH), Next::Go);
        }

        // RESP2 has one stream for replies and messages: a subscribed connection may only
        // change its subscriptions (RESP3 pushes messages apart, so anything goes there).
        let subscribed = self.subscriptions.count() > 0 && self.protocol == Protocol::Resp2;
        if subscribed {
            match &command {
                Command::Subscribe(_)
                | Command::PSubscribe(_)
                | Command::Unsubscribe(_)
                | Command::PUnsubscribe(_)
                | Command::Quit => {}
                Command::Ping(message) => {
                    let message = message.clone().unwrap_or_default();
                    return (Reply::Array(vec![Reply::bulk("pong"), Reply::Bulk(message)]), Next::Go);
                }
                _ => {
                    return (
                        Reply::error(format!(
                            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                            name.to_ascii_lowercase()
                        )),
                        Next::Go,
                    )
                }
            }
        }
        if let Some((queued, failed)) = &mut self.multi {
            match command {
                Command::Exec | Command::Discard | Command::Multi | Command::Watch(_) | Command::Quit => {}
                other => {
                    if queued.len() >= MULTI_QUEUED_MAX {
                        *failed = true;
                        return (
                            Reply::error(format!(
                                "ERR at most {MULTI_QUEUED_MAX} commands may be queued in MULTI"
                            )),
                            Next::Go,
                        );
                    }
                    return match multi::queue(&other, name) {
                        Ok(q) => {
                            queued.push(q);
                            (Reply::Simple("QUEUED".into()), Next::Go)
                        }
                        Err(reply) => {
                            *failed = true;
                            (reply, Next::Go)
                        }
                    };
                }
            }
        }
        let reply = match command {
            Command::Ping(None) => Reply::Simple("PONG".into()),
            Command::Ping(Some(message)) | Command::Echo(message) => Reply::Bulk(message),
            Command::Quit => return (Reply::ok(), Next::Close),
            Command::Select(0) => Reply::ok(),
            Command::Select(_) => Reply::error(errors::DB_INDEX),
            Command::Hello { protocol, auth, name } => self.hello(protocol, auth, name).await,
            Command::Auth { user, password } => self.auth(user.as_deref(), &password).await,
            Command::ClientSetName(name) => {
                self.name = (!name.is_empty()).then_some(name);
                Reply::ok()
            }
            Command::ClientGetName => Reply::optional(self.name.clone()),
            Command::ClientId => Reply::Integer(self.id as i64),
            Command::ClientSetInfo => Reply::ok(),
            Command::ReadOnly => {
                self.reads = ReadConsistency::Stale;
                Reply::ok()
            }
            Command::ReadWrite => {
                self.reads = ReadConsistency::Linearizable;
                Reply::ok()
            }
            Command::Info(sections) => self.shared.info(&self.caller, &sections, &self.keys()).await,
            Command::CommandCount => Reply::Integer(command::COMMANDS.len() as i64),
            Command::CommandDocs(names) => crate::server::command_docs(&names),
            Command::CommandList(names) => crate::server::command_list(&names),
            Command::DbSize => match self.keys().count("DBSIZE").await {
                Ok(count) => Reply::Integer(count as i64),
                Err(reply) => reply,
            },
            Command::FlushDb => self.shared.flush(&self.caller, &self.keys()).await,
            Command::Time => {
                let micros = now_ms().saturating_mul(1000);
                Reply::Array(vec![
                    Reply::bulk((micros / 1_000_000).to_string()),
                    Reply::bulk((micros % 1_000_000).to_string()),
                ])
            }
            Command::Get(key) => self.keys().get(&key).await,
            Command::Set {
                key,
                value,
                expiry,
                keep_ttl,
                condition,
                get,
            } => self.keys().set(&key, value, expiry, keep_ttl, condition, get).await,
            Command::SetNx(key, value) => self.keys().set_nx(&key, value).await,
            Command::MGet(keys) => self.keys().mget(&keys).await,
            Command::MSet(pairs) => self.keys().mset(pairs, false).await,
            Command::MSetNx(pairs) => self.keys().mset(pairs, true).await,
            Command::Del(keys) => self.del(&keys).await,
            Command::Exists(keys) => self.exists(&keys).await,
            Command::Type(key) => {
                let resp3 = self.protocol == Protocol::Resp3;
                match self.keys().single(&Command::Type(key.clone()), resp3).await {
                    Reply::Simple(none) if none == "none" => match self.streams().exist(&[&key]).await {
                        Ok(exist) if exist == [true] => Reply::Simple("stream".into()),
                        Ok(_) => Reply::Simple(none),
                        Err(reply) => reply,
                    },
                    other => other,
                }
            }
            Command::XAdd {
                key,
                pairs,
                create,
                trim,
            } => self.streams().xadd(&key, &pairs, create, trim).await,
            Command::XTrim { key, trim } => self.streams().xtrim(&key, trim).await,
            Command::XLen(key) => self.streams().xlen(&key).await,
            Command::XRange {
                key,
                start,
                end,
                count,
                rev,
            } => self.streams().xrange(&key, start, end, count, rev).await,
            Command::XRead { count, block, streams } => {
                let resp3 = self.protocol == Protocol::Resp3;
                let readers = streams_of(&self.caller, self.reads);
                let gone = client_gone(reader, input, &mut self.stop);
                tokio::pin!(gone);
                readers.xread(count, block, &streams, resp3, gone.as_mut()).await
            }
            Command::XReadGroup {
                group,
                consumer,
                count,
                block,
                no_ack,
                streams,
            } => {
                let resp3 = self.protocol == Protocol::Resp3;
                let readers = streams_of(&self.caller, self.reads);
                let gone = client_gone(reader, input, &mut self.stop);
                tokio::pin!(gone);
                readers
                    .xreadgroup(&group, &consumer, count, block, no_ack, &streams, resp3, gone.as_mut())
                    .await
            }
            Command::XGroupCreate {
                key,
                group,
                from,
                create,
            } => self.streams().xgroup_create(&key, &group, from, create).await,
            Command::XGroupDestroy(key, group) => self.streams().xgroup_destroy(&key, &group).await,
            Command::XGroupSetId { key, group, from } => self.streams().xgroup_setid(&key, &group, from).await,
            Command::XGroupDelConsumer(key, group, consumer) => {
                self.streams().xgroup_delconsumer(&key, &group, &consumer).await
            }
            Command::XInfo(info) => self.streams().xinfo(info).await,
            Command::XAck(key, group, ids) => self.streams().xack(&key, &group, &ids).await,
            Command::XPending(key, group, query) => self.streams().xpending(&key, &group, query).await,
            Command::XClaim {
                key,
                group,
                consumer,
                min_idle_ms,
                ids,
                options,
            } => {
                self.streams()
                    .xclaim(&key, &group, &consumer, min_idle_ms, &ids, &options)
                    .await
            }
            Command::XAutoClaim {
                key,
                group,
                consumer,
                min_idle_ms,
                start,
                count,
                just_id,
            } => {
                self.streams()
                    .xautoclaim(&key, &group, &consumer, min_idle_ms, start, count, just_id)
                    .await
            }
            Command::IncrBy(key, by) => self.keys().incr_by(&key, by).await,
            Command::IncrByFloat(key, by) => self.keys().incr_by_float(&key, by).await,
            Command::Scan {
                cursor,
                pattern,
                count,
                kind,
            } => self.scan(cursor, pattern, count, kind).await,
            Command::Keys(pattern) => {
                let glob = Glob::new(&pattern);
                let pattern = (!glob.matches_everything()).then_some(&glob);
                match self.keys().walk(pattern, "KEYS").await {
                    Ok(keys) => Reply::Array(keys.into_iter().map(|(key, _)| Reply::Bulk(key)).collect()),
                    Err(reply) => reply,
                }
            }
            Command::Multi => {
                if self.multi.is_some() {
                    Reply::error(errors::MULTI_NESTED)
                } else {
                    self.multi = Some((Vec::new(), false));
                    Reply::ok()
                }
            }
            Command::Discard => match self.multi.take() {
                Some(_) => {
                    self.watched.clear();
                    Reply::ok()
                }
                None => Reply::error(errors::DISCARD_WITHOUT_MULTI),
            },
            Command::Exec => match self.multi.take() {
                None => Reply::error(errors::EXEC_WITHOUT_MULTI),
                Some((_, true)) => {
                    self.watched.clear();
                    Reply::error(errors::EXECABORT)
                }
                Some((queued, false)) => {
                    let watched = std::mem::take(&mut self.watched);
                    let resp3 = self.protocol == Protocol::Resp3;
                    multi::exec(self.caller.client(), &watched, queued, resp3).await
                }
            },
            Command::Watch(keys) => {
                if self.multi.is_some() {
                    Reply::error(errors::WATCH_IN_MULTI)
                } else {
                    self.watch(keys).await
                }
            }
            Command::Unwatch => {
                self.watched.clear();
                Reply::ok()
            }
            Command::Publish(channel, message) => match self.caller.client().pubsub().publish(channel, message).await {
                Ok(receivers) => Reply::Integer(i64::from(receivers)),
                Err(e) => client_error(&e),
            },
            Command::Subscribe(names) => Reply::Sequence(
                self.subscriptions
                    .subscribe(self.caller.client(), Kind::Channel, names)
                    .await,
            ),
            Command::PSubscribe(names) => Reply::Sequence(
                self.subscriptions
                    .subscribe(self.caller.client(), Kind::Pattern, names)
                    .await,
            ),
            Command::Unsubscribe(names) => Reply::Sequence(self.subscriptions.unsubscribe(Kind::Channel, names)),
            Command::PUnsubscribe(names) => Reply::Sequence(self.subscriptions.unsubscribe(Kind::Pattern, names)),
            // Every other command is of one key: one decision over the key as read (`decide`).
            other => {
                let resp3 = self.protocol == Protocol::Resp3;
                self.keys().single(&other, resp3).await
            }
        };
        (reply, Next::Go)
    }

    async fn hello(&mut self, protocol: Option<i64>, auth: Option<(Bytes, Bytes)>, name: Option<Bytes>) -> Reply {
        let wanted = match protocol {
            None => self.protocol,
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return Reply::error(errors::NO_PROTO),
        };
        if let Some((user, password)) = auth {
            if let Reply::Error(text) = self.auth(Some(&user), &password).await {
                return Reply::Error(text);
            }
        } else if !self.authenticated {
            return Reply::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        self.protocol = wanted;
        if let Some(name) = name {
            self.name = Some(name);
        }
        let version = i64::from(self.protocol == Protocol::Resp3) + 2;
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (Reply::bulk("version"), Reply::bulk(crate::server::REDIS_VERSION)),
            (Reply::bulk("proto"), Reply::Integer(version)),
            (Reply::bulk("id"), Reply::Integer(self.id as i64)),
            (Reply::bulk("mode"), Reply::bulk("standalone")),
            (Reply::bulk("role"), Reply::bulk("master")),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }

    async fn auth(&mut self, user: Option<&[u8]>, password: &[u8]) -> Reply {
        if self.shared.config.token_auth {
            return self.token_auth(user, password).await;
        }
        if self.shared.config.password.is_none() && user.is_none() {
            return Reply::error(errors::AUTH_NOT_CONFIGURED);
        }
        self.check_password(user, password)
    }

    /// A connection whose TLS handshake showed a client certificate of the client CA naming a
    /// user starts authenticated as that user, as a gRPC call does without a token: its
    /// commands run through the node's own client acting as the user (its grants, nothing
    /// more; every command is checked by the node). Only a certificate the node says names no
    /// user (or another) leaves the connection to `AUTH`; when the node cannot be asked now
    /// (an election, a slow leader), the connection is authenticated all the same, and its
    /// commands meet the node's answer.
    async fn certificate_auth(&mut self, certificate: basalt_tls::ConnectInfo) {
        let Ok(Some(name)) = certificate.client_name_at(std::time::SystemTime::now()) else {
            return;
        };
        let Ok(client) = self.shared.anonymous.client().acting_as(&name) else {
            return;
        };
        let asked = tokio::time::timeout(CERTIFICATE_CHECK_TIMEOUT, client.auth().who_am_i()).await;
        match asked {
            Ok(Ok(me)) if me.user != *name => {
                tracing::warn!(certificate = %name, answered = %me.user, "a RESP client certificate's user was answered as another: left to AUTH");
                return;
            }
            Ok(Err(e)) if e.code() == Some(basalt_client::ErrorCode::Unauthenticated) => {
                tracing::debug!(user = %name, error = %e, "a RESP client certificate names no user here");
                return;
            }
            _ => {}
        }
        self.caller = Arc::new(Caller::new(client));
        self.authenticated = true;
        self.certificate = Some(certificate);
    }

    /// Whether the certificate the connection is authenticated by has expired since: the
    /// connection is then closed (its client reconnects, and authenticates anew), whatever it
    /// was doing (a transaction queued, subscriptions).
    fn certificate_expired(&self) -> bool {
        self.certificate
            .as_ref()
            .is_some_and(|c| c.client_name_at(std::time::SystemTime::now()).is_err())
    }

    /// `AUTH [user] <token>` on a node that authenticates with tokens: the node says whose
    /// token it is (the same check as every gRPC request's); from then on the connection's
    /// commands run as that identity, with combiners of their own. `user`, when given, must be
    /// the token's user (or `default`).
    async fn token_auth(&mut self, user: Option<&[u8]>, token: &[u8]) -> Reply {
        let Ok(text) = std::str::from_utf8(token) else {
            return Reply::error(errors::WRONGPASS);
        };
        let token = basalt_client::Token::from_text(text);
        let Ok(client) = self.shared.anonymous.client().with_token(&token) else {
            return Reply::error(errors::WRONGPASS);
        };
        match client.auth().who_am_i().await {
            Ok(me) if user.is_none_or(|u| u == b"default" || u == me.user.as_bytes()) => {
                self.caller = Arc::new(Caller::new(client));
                self.authenticated = true;
                self.certificate = None;
                Reply::ok()
            }
            Ok(_) => Reply::error(errors::WRONGPASS),
            Err(e) if e.code() == Some(basalt_client::ErrorCode::Unauthenticated) => Reply::error(errors::WRONGPASS),
            Err(e) => client_error(&e),
        }
    }

    /// The `default` user's password, compared in time independent of where it differs.
    fn check_password(&mut self, user: Option<&[u8]>, password: &[u8]) -> Reply {
        let user_ok = user.is_none_or(|u| u == b"default");
        let password_ok = match &self.shared.config.password {
            // No password set: the default user takes any, as Redis's `nopass` does.
            None => true,
            Some(expected) => {
                let expected = expected.as_bytes();
                let mut differ = expected.len() ^ password.len();
                for (i, &b) in expected.iter().enumerate() {
                    differ |= usize::from(b ^ password.get(i).copied().unwrap_or(0));
                }
                differ == 0
            }
        };
        if user_ok && password_ok {
            self.authenticated = true;
            Reply::ok()
        } else {
            Reply::error(errors::WRONGPASS)
        }
    }

    async fn watch(&mut self, keys: Vec<Bytes>) -> Reply {
        let mut new: Vec<&Bytes> = keys
            .iter()
            .filter(|k| !self.watched.iter().any(|(w, _)| w == *k))
            .collect();
        new.sort();
        new.dedup();
        let new = new.len();
        if self.watched.len() + new > TXN_CONDITIONS_MAX {
            return Reply::error(format!(
                "ERR at most {TXN_CONDITIONS_MAX} keys may be watched: each is a condition of the EXEC transaction"
            ));
        }
        for key in keys {
            // Linearizable whatever the connection's reads: the condition is only as good as it.
            match self.caller.client().kv().get(&key).await {
                Ok(entry) => {
                    if !self.watched.iter().any(|(k, _)| *k == key) {
                        self.watched.push((key, entry.map_or(0, |e| e.mod_revision)));
                    }
                }
                Err(e) => return client_error(&e),
            }
        }
        Reply::ok()
    }

    async fn scan(&mut self, cursor: u64, pattern: Option<Bytes>, count: Option<u64>, kind: Option<String>) -> Reply {
        let after = if cursor == 0 {
            Vec::new()
        } else {
            match self.cursors.iter().position(|(n, _)| *n == cursor) {
                Some(at) => self.cursors.remove(at).map(|(_, key)| key).unwrap_or_default(),
                // Forgotten or never given: Redis answers garbage cursors without an error too;
                // starting over is the one safe reading.
                None => Vec::new(),
            }
        };
        let glob = pattern.map(|p| Glob::new(&p));
        let (keys, next) = match self
            .keys()
            .scan_page(
                &after,
                glob.as_ref().filter(|g| !g.matches_everything()),
                count.unwrap_or(10),
            )
            .await
        {
            Ok(page) => page,
            Err(reply) => return reply,
        };
        let keys: Vec<Bytes> = keys
            .into_iter()
            .filter(|(_, type_name)| {
                kind.as_deref()
                    .is_none_or(|wanted| wanted.eq_ignore_ascii_case(type_name))
            })
            .map(|(key, _)| key)
            .collect();
        let cursor = match next {
            None => 0,
            Some(last) => {
                let number = self.next_cursor;
                self.next_cursor += 1;
                if self.cursors.len() >= SCAN_CURSORS_MAX {
                    self.cursors.pop_front();
                }
                self.cursors.push_back((number, last));
                number
            }
        };
        Reply::Array(vec![
            Reply::bulk(cursor.to_string()),
            Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
        ])
    }
}

/// A `SET` with no option but a time to live: what a pipeline of them can send as one.
fn plain_set(command: &Command) -> bool {
    matches!(
        command,
        Command::Set {
            keep_ttl: false,
            condition: None,
            get: false,
            ..
        }
    )
}
