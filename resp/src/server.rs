//! The listener: accepts connections (as many as its listener's budget of the node's client
//! connections allows: `basalt_tls::ConnectionBudget`, which also answers Redis's "max number of
//! clients reached" to one beyond it), serves each on its own task, and answers the server-wide
//! commands (`INFO`, `COMMAND`, `FLUSHDB`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use basalt_client::{Client, TxnOp, TxnOutcome};

use crate::command::{Bytes, COMMANDS};
use crate::frame::Reply;
use crate::keys::{op_refusal, Keys};
use crate::limits::TXN_OPS_MAX;
use crate::reply_error::client_error;

/// The Redis version Basalt answers as (`HELLO`, `INFO`): client libraries pick features by
/// it, and the commands here behave as Redis 7.2's do.
pub const REDIS_VERSION: &str = "7.2.0";

/// How a node serves RESP.
#[derive(Clone, Debug, Default)]
pub struct RespConfig {
    /// The `default` user's password (`AUTH`, `HELLO ... AUTH`); none: every connection is
    /// authenticated from the start, as Redis without `requirepass`.
    pub password: Option<String>,
    /// Whether `FLUSHDB` / `FLUSHALL` may delete every key (`basalt dev` sets it; a production
    /// node refuses them).
    pub allow_flush: bool,
    /// Whether clients authenticate with the node's bearer tokens (the node runs with `[auth]`):
    /// `AUTH [user] <token>` (and `HELLO ... AUTH user <token>`) makes every later command of
    /// the connection run as that token's identity, checked by the same rules as gRPC; before it,
    /// only `AUTH`, `HELLO` and `QUIT` are served.
    pub token_auth: bool,
    /// This node's id, for `INFO`.
    pub node_id: u64,
    /// Basalt's version, for `INFO`.
    pub basalt_version: String,
}

/// Whom a connection's commands run as: an SDK client (with its credentials) and the combiners
/// that merge concurrent commands into shared requests. Commands of different identities never
/// share one: a merged request goes with one identity's credentials.
#[derive(Default)]
pub struct Caller {
    /// The SDK client the commands go through: it starts at this node and follows the leader,
    /// so a command sent to a follower is carried to the leader.
    pub client: Option<Client>,
    pub combiner: crate::combine::Combiner,
    pub appender: crate::stream_append::Appender,
    pub readers: crate::combine::ReadCombiner,
}

impl Caller {
    pub fn new(client: Client) -> Caller {
        Caller {
            client: Some(client),
            ..Caller::default()
        }
    }

    /// The caller's client. Every `Caller` a connection runs commands with has one (the
    /// `Default` exists only to build the others' fields).
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("a connection's caller has a client")
    }
}

/// What every connection of one listener shares.
pub struct Shared {
    /// The SDK client with the node's own credentials: the caller of every connection when
    /// clients do not authenticate with tokens, and what a token's client is made from.
    pub anonymous: Arc<Caller>,
    pub config: RespConfig,
    started: Instant,
    port: u16,
    next_id: AtomicU64,
    open: AtomicUsize,
    /// The most client connections the node holds at once, over all its client doors (`INFO`'s
    /// `maxclients`).
    max_clients: usize,
}

/// Serves RESP on `listener` until `stop` turns true, each command through `client`.
pub async fn serve(
    mut listener: basalt_tls::Listener,
    client: Client,
    config: RespConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let port = listener.local_addr().port();
    let shared = Arc::new(Shared {
        anonymous: Arc::new(Caller::new(client)),
        config,
        started: Instant::now(),
        port,
        next_id: AtomicU64::new(1),
        open: AtomicUsize::new(0),
        max_clients: listener.budget().capacity(),
    });
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Some(accepted) => accepted,
                // The TLS handshakes ended: the node is stopping.
                None => return,
            },
            () = stopped(&mut stop) => return,
        };
        shared.open.fetch_add(1, Ordering::SeqCst);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            crate::connection::serve(stream, Arc::clone(&shared), id, stop).await;
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Resolves once `stop` turns true (or its sender is gone). Holds no borrow of the value past
/// its own end, so a task awaiting it stays `Send`.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

impl Shared {
    /// `INFO [section ...]`: the server, clients, replication and keyspace sections Redis
    /// tools read, with Basalt's figures.
    pub async fn info(&self, caller: &Caller, sections: &[String], keys: &Keys<'_>) -> Reply {
        let all = sections.is_empty()
            || sections
                .iter()
                .any(|s| matches!(s.as_str(), "all" | "everything" | "default"));
        let wants = |name: &str| all || sections.iter().any(|s| s == name);
        // Counting keys is a scan of the keyspace here, not a figure in memory: only when asked
        // by name (or by `all` / `everything`), never for a plain `INFO`.
        let wants_keyspace = sections
            .iter()
            .any(|s| matches!(s.as_str(), "keyspace" | "all" | "everything"));
        let mut text = String::new();
        if wants("server") {
            text.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nbasalt_version:{}\r\nbasalt_node_id:{}\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                self.config.basalt_version,
                self.config.node_id,
                std::env::consts::OS,
                std::process::id(),
                self.port,
                self.started.elapsed().as_secs(),
            ));
        }
        if wants("clients") {
            text.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
                self.open.load(Ordering::Relaxed),
                self.max_clients
            ));
        }
        if wants("replication") {
            match caller.client().cluster_status().await {
                Ok(status) => {
                    // The node the SDK reached first is this one unless it followed a leader.
                    let leader = status.leader_id;
                    text.push_str(&format!(
                        "# Replication\r\nrole:{}\r\nbasalt_leader_id:{}\r\nbasalt_leader_addr:{}\r\nbasalt_term:{}\r\nbasalt_members:{}\r\nbasalt_applied_index:{}\r\n\r\n",
                        if leader == Some(self.config.node_id) { "master" } else { "slave" },
                        leader.map_or_else(|| "none".to_string(), |id| id.to_string()),
                        status.leader_addr,
                        status.term,
                        status.members.len(),
                        status.applied_index.unwrap_or(0),
                    ));
                }
                Err(e) => return client_error(&e),
            }
        }
        if wants_keyspace {
            text.push_str("# Keyspace\r\n");
            // expires and avg_ttl are not tracked: always 0 (docs/redis.md).
            match keys.count("INFO keyspace").await {
                Ok(0) => {}
                Ok(count) => text.push_str(&format!("db0:keys={count},expires=0,avg_ttl=0\r\n")),
                Err(reply) => return reply,
            }
        }
        Reply::Bulk(text.into_bytes())
    }

    /// `FLUSHDB`: deletes every key, a transaction of up to 256 deletes at a time (not one
    /// atomic step, unlike Redis); only where the node allows it.
    pub async fn flush(&self, caller: &Caller, keys: &Keys<'_>) -> Reply {
        if !self.config.allow_flush {
            return Reply::error(
                "ERR FLUSHDB and FLUSHALL are refused: this node does not run in dev mode (--resp-allow-flush)",
            );
        }
        let (streams, all): (Vec<_>, Vec<_>) = match keys.walk(None, "FLUSHDB").await {
            Ok(all) => all.into_iter().partition(|(_, kind)| *kind == "stream"),
            Err(reply) => return reply,
        };
        let all: Vec<Bytes> = all.into_iter().map(|(key, _)| key).collect();
        let mut deleted = 0usize;
        for chunk in all.chunks(TXN_OPS_MAX) {
            let mut txn = caller.client().txn();
            for key in chunk {
                txn = txn.then(TxnOp::delete(key.clone()));
            }
            let failed = match txn.commit().await {
                Ok(TxnOutcome::Committed { .. }) => None,
                Ok(TxnOutcome::Aborted { reason, .. }) => Some(op_refusal(reason)),
                Err(e) => Some(client_error(&e)),
            };
            if let Some(Reply::Error(text)) = failed {
                // Earlier parts are deleted: say so rather than pass on "nothing was applied".
                return Reply::error(format!(
                    "ERR FLUSHDB stopped after deleting {deleted} of {} keys: {text}",
                    all.len()
                ));
            }
            deleted += chunk.len();
        }
        // Then the streams RESP created, each with its groups.
        let stream_commands = crate::streams::Streams {
            client: caller.client(),
            appender: &caller.appender,
            reads: basalt_client::ReadConsistency::Linearizable,
        };
        for (name, _) in &streams {
            match stream_commands.delete(name).await {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(reply) => {
                    let text = match reply {
                        Reply::Error(text) => text,
                        other => format!("{other:?}"),
                    };
                    return Reply::error(format!(
                        "ERR FLUSHDB stopped after deleting {deleted} keys and streams: {text}"
                    ));
                }
            }
        }
        Reply::ok()
    }
}

fn group_of(name: &str) -> &'static str {
    match name {
        "auth" | "client" | "echo" | "hello" | "ping" | "quit" | "select" | "readonly" | "readwrite" => "connection",
        "command" | "dbsize" | "flushall" | "flushdb" | "info" | "time" => "server",
        "multi" | "exec" | "discard" | "watch" | "unwatch" => "transactions",
        "publish" | "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" => "pubsub",
        "del" | "unlink" | "exists" | "expire" | "pexpire" | "expireat" | "pexpireat" | "ttl" | "pttl" | "persist"
        | "type" | "scan" | "keys" => "generic",
        _ => "string",
    }
}

/// `COMMAND DOCS [name ...]`: a summary and group per command (what redis-cli shows).
pub fn command_docs(names: &[String]) -> Reply {
    Reply::Map(
        COMMANDS
            .iter()
            .filter(|(name, _, _)| names.is_empty() || names.iter().any(|n| n == name))
            .map(|(name, _, summary)| {
                (
                    Reply::bulk(*name),
                    Reply::Map(vec![
                        (Reply::bulk("summary"), Reply::bulk(*summary)),
                        (Reply::bulk("since"), Reply::bulk("1.0.0")),
                        (Reply::bulk("group"), Reply::bulk(group_of(name))),
                    ]),
                )
            })
            .collect(),
    )
}

/// `COMMAND` and `COMMAND INFO`: name, arity, flags and key positions per command.
pub fn command_list(names: &[String]) -> Reply {
    let entry = |name: &str, arity: i32| {
        let keyed = !matches!(group_of(name), "connection" | "server" | "transactions" | "pubsub") || name == "watch";
        let (first, last, step) = match name {
            _ if !keyed => (0, 0, 0),
            "mset" | "msetnx" => (1, -1, 2),
            "mget" | "del" | "unlink" | "exists" | "watch" => (1, -1, 1),
            "scan" | "keys" => (0, 0, 0),
            _ => (1, 1, 1),
        };
        Reply::Array(vec![
            Reply::bulk(name),
            Reply::Integer(i64::from(arity)),
            Reply::Set(Vec::new()),
            Reply::Integer(first),
            Reply::Integer(last),
            Reply::Integer(step),
        ])
    };
    if names.is_empty() {
        return Reply::Array(COMMANDS.iter().map(|(name, arity, _)| entry(name, *arity)).collect());
    }
    Reply::Array(
        names
            .iter()
            .map(|n| {
                COMMANDS
                    .iter()
                    .find(|(name, _, _)| name == n)
                    .map_or(Reply::NullArray, |(name, arity, _)| entry(name, *arity))
            })
            .collect(),
    )
}
