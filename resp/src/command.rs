//! The command table: a request's arguments become a typed [`Command`], or the error Redis
//! gives for them (unknown command, wrong arity, syntax, a number that is not one). Pure: no
//! I/O, so every rule is unit-tested here and the server only runs what parsed.

use crate::frame::Reply;
use crate::limits::{STREAMS_PER_READ_MAX, XCLAIM_IDS_MAX};
use crate::sorted_sets::{AddQuery, RangeBy, RangeQuery};
use crate::stream_ids::{
    parse_range_end, parse_range_start, ClaimOptions, DeliveredAt, PendingQuery, RangeEnd, ReadFrom, StreamId,
    INVALID_ID,
};
use crate::typed::{parse_score, AddRules, ScoreBound};

pub type Bytes = Vec<u8>;

/// How `XTRIM`, or `XADD` after its entry, trims a stream: the rule (`MAXLEN n`: keep the
/// newest `n`; `MINID id`: keep the entries from `id` on) and `LIMIT` (at most this many
/// entries removed; `None`: no limit). Trimming is exact with `~` as with `=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTrim {
    pub rule: basalt_client::TrimRule,
    pub limit: Option<u64>,
}

/// When a key expires, as a command gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// In this many milliseconds (`EX`, `PX`, `SETEX`, `EXPIRE`, `PEXPIRE`).
    In(i64),
    /// At this Unix time in milliseconds (`EXAT`, `PXAT`, `EXPIREAT`, `PEXPIREAT`).
    At(i64),
}

/// `SET`'s condition on the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCondition {
    /// `NX`: only if absent.
    Absent,
    /// `XX`: only if present.
    Present,
}

/// `EXPIRE`'s condition on the key's current expiry (Redis 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireCondition {
    /// `NX`: only if it has none.
    NoExpiry,
    /// `XX`: only if it has one.
    HasExpiry,
    /// `GT`: only if the new one is later (no expiry counts as infinite).
    Later,
    /// `LT`: only if the new one is sooner.
    Sooner,
}

/// `GETEX`'s change to the expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetExChange {
    Keep,
    Set(Expiry),
    Persist,
}

/// What `XINFO` asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XInfo {
    /// `XINFO STREAM key`.
    Stream(Bytes),
    /// `XINFO GROUPS key`.
    Groups(Bytes),
    /// `XINFO CONSUMERS key group`.
    Consumers(Bytes, Bytes),
}

/// One parsed command. Names are Redis's; what each does on Basalt is in `docs/redis.md`.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    // Connection and server.
    Ping(Option<Bytes>),
    Echo(Bytes),
    Quit,
    Select(i64),
    Hello {
        protocol: Option<i64>,
        auth: Option<(Bytes, Bytes)>,
        name: Option<Bytes>,
    },
    Auth {
        user: Option<Bytes>,
        password: Bytes,
    },
    ClientSetName(Bytes),
    ClientGetName,
    ClientId,
    /// `CLIENT SETINFO` (library name and version, which clients send on connect): accepted.
    ClientSetInfo,
    ReadOnly,
    ReadWrite,
    Info(Vec<String>),
    CommandCount,
    CommandDocs(Vec<String>),
    /// `COMMAND` and `COMMAND INFO`: the table of supported commands.
    CommandList(Vec<String>),
    DbSize,
    FlushDb,
    Time,
    // Strings and keys.
    Get(Bytes),
    Set {
        key: Bytes,
        value: Bytes,
        expiry: Option<Expiry>,
        keep_ttl: bool,
        condition: Option<SetCondition>,
        get: bool,
    },
    SetNx(Bytes, Bytes),
    MGet(Vec<Bytes>),
    MSet(Vec<(Bytes, Bytes)>),
    MSetNx(Vec<(Bytes, Bytes)>),
    Del(Vec<Bytes>),
    Exists(Vec<Bytes>),
    Expire {
        key: Bytes,
        expiry: Expiry,
        condition: Option<ExpireCondition>,
    },
    Ttl {
        key: Bytes,
        millis: bool,
    },
    Persist(Bytes),
    GetDel(Bytes),
    GetEx {
        key: Bytes,
        change: GetExChange,
    },
    Append(Bytes, Bytes),
    StrLen(Bytes),
    Type(Bytes),
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: Option<u64>,
        kind: Option<String>,
    },
    Keys(Bytes),
    IncrBy(Bytes, i64),
    IncrByFloat(Bytes, f64),
    // Hashes.
    HSet {
        key: Bytes,
        pairs: Vec<(Bytes, Bytes)>,
        /// `HMSET`: answers `OK` instead of the count of new fields.
        answer_ok: bool,
    },
    HSetNx(Bytes, Bytes, Bytes),
    HGet(Bytes, Bytes),
    HMGet(Bytes, Vec<Bytes>),
    HGetAll(Bytes),
    HDel(Bytes, Vec<Bytes>),
    HIncrBy(Bytes, Bytes, i64),
    HIncrByFloat(Bytes, Bytes, f64),
    HExists(Bytes, Bytes),
    HLen(Bytes),
    /// `HKEYS` (false) and `HVALS` (true).
    HKeys(Bytes, bool),
    HStrLen(Bytes, Bytes),
    // Sorted sets.
    ZAdd(Bytes, AddQuery),
    ZIncrBy(Bytes, f64, Bytes),
    ZRem(Bytes, Vec<Bytes>),
    ZCard(Bytes),
    ZCount(Bytes, ScoreBound, ScoreBound),
    ZScore(Bytes, Bytes),
    ZRange(Bytes, RangeQuery),
    ZRemRangeByScore(Bytes, ScoreBound, ScoreBound),
    // Transactions.
    Multi,
    Exec,
    Discard,
    Watch(Vec<Bytes>),
    Unwatch,
    // Pub/sub.
    Publish(Bytes, Bytes),
    Subscribe(Vec<Bytes>),
    PSubscribe(Vec<Bytes>),
    Unsubscribe(Vec<Bytes>),
    PUnsubscribe(Vec<Bytes>),
    // Streams (topics of one partition, `streams`).
    XAdd {
        key: Bytes,
        pairs: Vec<(Bytes, Bytes)>,
        /// False with `NOMKSTREAM`.
        create: bool,
        /// `MAXLEN` / `MINID`: how the stream is trimmed once the entry is in.
        trim: Option<StreamTrim>,
    },
    /// `XTRIM key MAXLEN|MINID [=|~] threshold [LIMIT count]`.
    XTrim {
        key: Bytes,
        trim: StreamTrim,
    },
    XLen(Bytes),
    XRange {
        key: Bytes,
        start: RangeEnd,
        end: RangeEnd,
        count: Option<usize>,
        /// `XREVRANGE`.
        rev: bool,
    },
    XRead {
        count: Option<usize>,
        block: Option<u64>,
        streams: Vec<(Bytes, ReadFrom)>,
    },
    XReadGroup {
        group: Bytes,
        consumer: Bytes,
        count: Option<usize>,
        block: Option<u64>,
        no_ack: bool,
        streams: Vec<(Bytes, ReadFrom)>,
    },
    XGroupCreate {
        key: Bytes,
        group: Bytes,
        from: ReadFrom,
        create: bool,
    },
    XGroupDestroy(Bytes, Bytes),
    /// `XGROUP SETID key group id|$ [ENTRIESREAD n]`.
    XGroupSetId {
        key: Bytes,
        group: Bytes,
        from: ReadFrom,
    },
    /// `XGROUP DELCONSUMER key group consumer`.
    XGroupDelConsumer(Bytes, Bytes, Bytes),
    XInfo(XInfo),
    XAck(Bytes, Bytes, Vec<StreamId>),
    /// `XPENDING key group` (the summary, `None`) or its extended form.
    XPending(Bytes, Bytes, Option<PendingQuery>),
    XClaim {
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
        min_idle_ms: u64,
        ids: Vec<StreamId>,
        options: ClaimOptions,
    },
    XAutoClaim {
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
        min_idle_ms: u64,
        start: StreamId,
        count: usize,
        just_id: bool,
    },
}

/// Every command name the table knows, with Redis's arity (positive: exactly that many
/// arguments counting the name; negative: at least that many) and a one-line summary for
/// `COMMAND DOCS`.
pub const COMMANDS: &[(&str, i32, &str)] = &[
    (
        "append",
        3,
        "Appends a string to the value of a key. Creates the key if it doesn't exist.",
    ),
    ("auth", -2, "Authenticates the connection."),
    ("client", -2, "A container for client connection commands."),
    ("command", -1, "Returns detailed information about all commands."),
    ("dbsize", 1, "Returns the number of keys in the database."),
    ("decr", 2, "Decrements the integer value of a key by one."),
    ("decrby", 3, "Decrements a number from the integer value of a key."),
    ("del", -2, "Deletes one or more keys."),
    ("discard", 1, "Discards a transaction."),
    ("echo", 2, "Returns the given string."),
    ("exec", 1, "Executes all commands in a transaction."),
    ("exists", -2, "Determines whether one or more keys exist."),
    ("expire", -3, "Sets the expiration time of a key in seconds."),
    ("expireat", -3, "Sets the expiration time of a key to a Unix timestamp."),
    ("flushall", -1, "Removes all keys from all databases (dev mode only)."),
    (
        "flushdb",
        -1,
        "Remove all keys from the current database (dev mode only).",
    ),
    ("get", 2, "Returns the string value of a key."),
    ("getdel", 2, "Returns the string value of a key after deleting the key."),
    (
        "getex",
        -2,
        "Returns the string value of a key after setting its expiration time.",
    ),
    ("hdel", -3, "Deletes one or more fields and their values from a hash."),
    ("hello", -1, "Handshakes with the server."),
    ("hexists", 3, "Determines whether a field exists in a hash."),
    ("hget", 3, "Returns the value of a field in a hash."),
    ("hgetall", 2, "Returns all fields and values in a hash."),
    (
        "hincrby",
        4,
        "Increments the integer value of a field in a hash by a number.",
    ),
    (
        "hincrbyfloat",
        4,
        "Increments the floating point value of a field by a number.",
    ),
    ("hkeys", 2, "Returns all fields in a hash."),
    ("hlen", 2, "Returns the number of fields in a hash."),
    ("hmget", -3, "Returns the values of all fields in a hash."),
    ("hmset", -4, "Sets the values of multiple fields."),
    ("hset", -4, "Creates or modifies the value of a field in a hash."),
    (
        "hsetnx",
        4,
        "Sets the value of a field in a hash only when the field doesn't exist.",
    ),
    ("hstrlen", 3, "Returns the length of the value of a field."),
    ("hvals", 2, "Returns all values in a hash."),
    ("incr", 2, "Increments the integer value of a key by one."),
    ("incrby", 3, "Increments the integer value of a key by a number."),
    (
        "incrbyfloat",
        3,
        "Increment the floating point value of a key by a number.",
    ),
    ("info", -1, "Returns information and statistics about the server."),
    ("keys", 2, "Returns all key names that match a pattern."),
    ("mget", -2, "Atomically returns the string values of one or more keys."),
    (
        "mset",
        -3,
        "Atomically creates or modifies the string values of one or more keys.",
    ),
    (
        "msetnx",
        -3,
        "Atomically modifies the string values of one or more keys only when all keys don't exist.",
    ),
    ("multi", 1, "Starts a transaction."),
    ("persist", 2, "Removes the expiration time of a key."),
    ("pexpire", -3, "Sets the expiration time of a key in milliseconds."),
    (
        "pexpireat",
        -3,
        "Sets the expiration time of a key to a Unix milliseconds timestamp.",
    ),
    ("ping", -1, "Returns the server's liveliness response."),
    (
        "psetex",
        4,
        "Sets both string value and expiration time in milliseconds of a key.",
    ),
    (
        "psubscribe",
        -2,
        "Listens for messages published to channels that match one or more patterns.",
    ),
    ("pttl", 2, "Returns the expiration time in milliseconds of a key."),
    ("publish", 3, "Posts a message to a channel."),
    (
        "punsubscribe",
        -1,
        "Stops listening to messages published to channels that match one or more patterns.",
    ),
    ("quit", -1, "Closes the connection."),
    ("readonly", 1, "Enables stale reads for the connection."),
    (
        "readwrite",
        1,
        "Enables linearizable reads for the connection (the default).",
    ),
    ("scan", -2, "Iterates over the key names in the database."),
    ("select", 2, "Changes the selected database (only 0 exists)."),
    ("set", -3, "Sets the string value of a key, ignoring its type."),
    ("setex", 4, "Sets the string value and expiration time of a key."),
    (
        "setnx",
        3,
        "Set the string value of a key only when the key doesn't exist.",
    ),
    ("strlen", 2, "Returns the length of a string value."),
    ("subscribe", -2, "Listens for messages published to channels."),
    ("time", 1, "Returns the server time."),
    ("ttl", 2, "Returns the expiration time in seconds of a key."),
    ("type", 2, "Determines the type of value stored at a key."),
    ("unlink", -2, "Asynchronously deletes one or more keys."),
    ("unsubscribe", -1, "Stops listening to messages posted to channels."),
    ("unwatch", 1, "Forgets about watched keys of a transaction."),
    (
        "watch",
        -2,
        "Monitors changes to keys to determine the execution of a transaction.",
    ),
    (
        "xack",
        -4,
        "Returns the number of messages that were successfully acknowledged by the consumer group member of a stream.",
    ),
    (
        "xadd",
        -5,
        "Appends a new message to a stream. Creates the key if it doesn't exist.",
    ),
    (
        "xautoclaim",
        -6,
        "Changes, or acquires, ownership of messages in a consumer group, as if the messages were delivered to as consumer group member.",
    ),
    (
        "xclaim",
        -6,
        "Changes, or acquires, ownership of a message in a consumer group, as if the message was delivered a consumer group member.",
    ),
    ("xgroup", -2, "A container for consumer groups commands."),
    ("xinfo", -2, "A container for stream introspection commands."),
    ("xlen", 2, "Return the number of messages in a stream."),
    (
        "xpending",
        -3,
        "Returns the information and entries from a stream consumer group's pending entries list.",
    ),
    (
        "xrange",
        -4,
        "Returns the messages from a stream within a range of IDs.",
    ),
    (
        "xread",
        -4,
        "Returns messages from multiple streams with IDs greater than the ones requested.",
    ),
    (
        "xreadgroup",
        -7,
        "Returns new or historical messages from a stream for a consumer in a group.",
    ),
    (
        "xrevrange",
        -4,
        "Returns the messages from a stream within a range of IDs in reverse order.",
    ),
    (
        "xtrim",
        -4,
        "Deletes messages from the beginning of a stream.",
    ),
    (
        "zadd",
        -4,
        "Adds one or more members to a sorted set, or updates their scores.",
    ),
    ("zcard", 2, "Returns the number of members in a sorted set."),
    (
        "zcount",
        4,
        "Returns the count of members in a sorted set that have scores within a range.",
    ),
    ("zincrby", 4, "Increments the score of a member in a sorted set."),
    (
        "zrange",
        -4,
        "Returns members in a sorted set within a range of indexes or scores.",
    ),
    (
        "zrangebyscore",
        -4,
        "Returns members in a sorted set within a range of scores.",
    ),
    ("zrem", -3, "Removes one or more members from a sorted set."),
    (
        "zremrangebyscore",
        4,
        "Removes members in a sorted set within a range of scores.",
    ),
    (
        "zrevrangebyscore",
        -4,
        "Returns members in a sorted set within a range of scores in reverse order.",
    ),
    ("zscore", 3, "Returns the score of a member in a sorted set."),
];

/// Redis's error texts, one place.
pub mod errors {
    pub const SYNTAX: &str = "ERR syntax error";
    pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
    pub const NOT_FLOAT: &str = "ERR value is not a valid float";
    pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
    pub const NAN_OR_INFINITY: &str = "ERR increment would produce NaN or Infinity";
    pub const DB_INDEX: &str = "ERR DB index is out of range";
    pub const INVALID_CURSOR: &str = "ERR invalid cursor";
    pub const NO_PROTO: &str = "NOPROTO unsupported protocol version";
    pub const NOAUTH: &str = "NOAUTH Authentication required.";
    pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
    pub const AUTH_NOT_CONFIGURED: &str = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?";
    pub const MULTI_NESTED: &str = "ERR MULTI calls can not be nested";
    pub const EXEC_WITHOUT_MULTI: &str = "ERR EXEC without MULTI";
    pub const DISCARD_WITHOUT_MULTI: &str = "ERR DISCARD without MULTI";
    pub const WATCH_IN_MULTI: &str = "ERR WATCH inside MULTI is not allowed";
    pub const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";
}

/// Why a request is not a command to run: the reply Redis gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Refusal {
    pub fn reply(self) -> Reply {
        Reply::Error(self.0)
    }
}

fn refuse<T>(text: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(text.into()))
}

fn arity(name: &str) -> Refusal {
    Refusal(format!("ERR wrong number of arguments for '{name}' command"))
}

/// Redis's reply to a command it does not know: the name as sent, then the first arguments.
pub fn unknown_command(args: &[Bytes]) -> Refusal {
    let name = String::from_utf8_lossy(&args[0]);
    let name: String = name.chars().take(128).collect();
    let mut listed = String::new();
    for arg in &args[1..] {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        let text = String::from_utf8_lossy(arg);
        let text: String = text.chars().take(room).collect();
        listed.push_str(&format!("'{text}' "));
    }
    Refusal(format!(
        "ERR unknown command '{name}', with args beginning with: {listed}"
    ))
}

/// An integer as Redis's `string2ll` reads it: an optional `-`, then digits without a leading
/// zero (`0` alone aside), nothing else; `-0`, `+1`, `01` and ` 1` are not integers.
pub fn strict_int(arg: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(arg).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let leading_zero = digits.starts_with('0') && (digits.len() > 1 || text.starts_with('-'));
    if digits.is_empty() || leading_zero || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn int(arg: &[u8]) -> Result<i64, Refusal> {
    strict_int(arg).ok_or_else(|| Refusal(errors::NOT_INTEGER.into()))
}

/// A float as Redis's `getLongDoubleFromObject` takes it: no spaces, not NaN.
pub fn float(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    let value: f64 = match text.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => text.parse().ok()?,
    };
    (!value.is_nan()).then_some(value)
}

fn upper(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

/// Expire times as Redis checks them: positive, and not so large the milliseconds overflow.
fn expire_ms(amount: i64, unit_ms: i64, name: &str) -> Result<i64, Refusal> {
    match amount.checked_mul(unit_ms) {
        Some(ms) if amount > 0 => Ok(ms),
        _ => refuse(format!("ERR invalid expire time in '{name}' command")),
    }
}

/// Parses a request. `args` is never empty (an empty request is skipped before this).
pub fn parse(args: &[Bytes]) -> Result<Command, Refusal> {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let Some(&(name, expected, _)) = COMMANDS.iter().find(|(known, _, _)| *known == name) else {
        return Err(unknown_command(args));
    };
    let n = args.len() as i32;
    if (expected > 0 && n != expected) || (expected < 0 && n < -expected) {
        return Err(arity(name));
    }
    let a = &args[1..];
    let key = || a[0].clone();
    Ok(match name {
        "ping" => match a {
            [] => Command::Ping(None),
            [message] => Command::Ping(Some(message.clone())),
            _ => return Err(arity(name)),
        },
        "echo" => Command::Echo(key()),
        "quit" => Command::Quit,
        "select" => Command::Select(int(&a[0])?),
        "hello" => parse_hello(a)?,
        "auth" => match a {
            [password] => Command::Auth {
                user: None,
                password: password.clone(),
            },
            [user, password] => Command::Auth {
                user: Some(user.clone()),
                password: password.clone(),
            },
            _ => return refuse(errors::SYNTAX),
        },
        "client" => parse_client(a)?,
        "readonly" => Command::ReadOnly,
        "readwrite" => Command::ReadWrite,
        "info" => Command::Info(
            a.iter()
                .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
                .collect(),
        ),
        "command" => {
            let rest = || {
                a[1..]
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
                    .collect()
            };
            match a.first().map(|s| upper(s)).as_deref() {
                None => Command::CommandList(Vec::new()),
                Some("COUNT") => Command::CommandCount,
                Some("DOCS") => Command::CommandDocs(rest()),
                Some("INFO") => Command::CommandList(rest()),
                Some(other) => {
                    return refuse(format!(
                        "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                        other.to_ascii_lowercase()
                    ))
                }
            }
        }
        "dbsize" => Command::DbSize,
        "flushdb" | "flushall" => match a.first().map(|s| upper(s)).as_deref() {
            None | Some("SYNC") | Some("ASYNC") if a.len() <= 1 => Command::FlushDb,
            _ => return refuse(errors::SYNTAX),
        },
        "time" => Command::Time,
        "get" => Command::Get(key()),
        "set" => parse_set(a)?,
        "setnx" => Command::SetNx(key(), a[1].clone()),
        "setex" | "psetex" => {
            let unit = if name == "setex" { 1000 } else { 1 };
            let ms = expire_ms(int(&a[1])?, unit, name)?;
            Command::Set {
                key: key(),
                value: a[2].clone(),
                expiry: Some(Expiry::In(ms)),
                keep_ttl: false,
                condition: None,
                get: false,
            }
        }
        "mget" => Command::MGet(a.to_vec()),
        "mset" | "msetnx" => {
            if !a.len().is_multiple_of(2) {
                return Err(arity(name));
            }
            let pairs = a.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
            if name == "mset" {
                Command::MSet(pairs)
            } else {
                Command::MSetNx(pairs)
            }
        }
        "del" | "unlink" => Command::Del(a.to_vec()),
        "exists" => Command::Exists(a.to_vec()),
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            let amount = int(&a[1])?;
            let unit = if name.starts_with('p') { 1 } else { 1000 };
            // A time in the past deletes the key, as in Redis; only overflow is refused.
            let ms = amount
                .checked_mul(unit)
                .ok_or_else(|| Refusal(format!("ERR invalid expire time in '{name}' command")))?;
            let expiry = if name.ends_with("at") {
                Expiry::At(ms)
            } else {
                Expiry::In(ms)
            };
            Command::Expire {
                key: key(),
                expiry,
                condition: parse_expire_condition(&a[2..])?,
            }
        }
        "ttl" | "pttl" => Command::Ttl {
            key: key(),
            millis: name == "pttl",
        },
        "persist" => Command::Persist(key()),
        "getdel" => Command::GetDel(key()),
        "getex" => parse_getex(a)?,
        "append" => Command::Append(key(), a[1].clone()),
        "strlen" => Command::StrLen(key()),
        "type" => Command::Type(key()),
        "scan" => parse_scan(a)?,
        "keys" => Command::Keys(key()),
        "incr" => Command::IncrBy(key(), 1),
        "decr" => Command::IncrBy(key(), -1),
        "incrby" => Command::IncrBy(key(), int(&a[1])?),
        "decrby" => {
            let by = int(&a[1])?;
            Command::IncrBy(
                key(),
                by.checked_neg()
                    .ok_or_else(|| Refusal("ERR decrement would overflow".into()))?,
            )
        }
        "incrbyfloat" => Command::IncrByFloat(key(), float(&a[1]).ok_or_else(|| Refusal(errors::NOT_FLOAT.into()))?),
        "hset" | "hmset" => {
            let rest = &a[1..];
            if !rest.len().is_multiple_of(2) {
                return Err(arity(name));
            }
            Command::HSet {
                key: key(),
                pairs: rest.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect(),
                answer_ok: name == "hmset",
            }
        }
        "hsetnx" => Command::HSetNx(key(), a[1].clone(), a[2].clone()),
        "hget" => Command::HGet(key(), a[1].clone()),
        "hmget" => Command::HMGet(key(), a[1..].to_vec()),
        "hgetall" => Command::HGetAll(key()),
        "hdel" => Command::HDel(key(), a[1..].to_vec()),
        "hincrby" => Command::HIncrBy(key(), a[1].clone(), int(&a[2])?),
        "hincrbyfloat" => Command::HIncrByFloat(
            key(),
            a[1].clone(),
            float(&a[2]).ok_or_else(|| Refusal(errors::NOT_FLOAT.into()))?,
        ),
        "hexists" => Command::HExists(key(), a[1].clone()),
        "hlen" => Command::HLen(key()),
        "hkeys" | "hvals" => Command::HKeys(key(), name == "hvals"),
        "hstrlen" => Command::HStrLen(key(), a[1].clone()),
        "zadd" => Command::ZAdd(key(), parse_zadd(&a[1..])?),
        "zincrby" => Command::ZIncrBy(
            key(),
            parse_score(&a[1]).ok_or_else(|| Refusal(errors::NOT_FLOAT.into()))?,
            a[2].clone(),
        ),
        "zrem" => Command::ZRem(key(), a[1..].to_vec()),
        "zcard" => Command::ZCard(key()),
        "zcount" => {
            let (min, max) = score_range(&a[1], &a[2])?;
            Command::ZCount(key(), min, max)
        }
        "zscore" => Command::ZScore(key(), a[1].clone()),
        "zrange" => Command::ZRange(key(), parse_zrange(&a[1..])?),
        "zrangebyscore" | "zrevrangebyscore" => {
            let rev = name == "zrevrangebyscore";
            // The old forms: `min max` (`max min` reversed), then WITHSCORES and LIMIT.
            let mut query = parse_range_options(&a[3..], false)?;
            let (low, high) = if rev { (&a[2], &a[1]) } else { (&a[1], &a[2]) };
            let (min, max) = score_range(low, high)?;
            query.by = RangeBy::Score(min, max);
            query.rev = rev;
            Command::ZRange(key(), query)
        }
        "zremrangebyscore" => {
            let (min, max) = score_range(&a[1], &a[2])?;
            Command::ZRemRangeByScore(key(), min, max)
        }
        "multi" => Command::Multi,
        "exec" => Command::Exec,
        "discard" => Command::Discard,
        "watch" => Command::Watch(a.to_vec()),
        "unwatch" => Command::Unwatch,
        "publish" => Command::Publish(key(), a[1].clone()),
        "subscribe" => Command::Subscribe(a.to_vec()),
        "psubscribe" => Command::PSubscribe(a.to_vec()),
        "unsubscribe" => Command::Unsubscribe(a.to_vec()),
        "punsubscribe" => Command::PUnsubscribe(a.to_vec()),
        "xadd" => parse_xadd(a)?,
        "xtrim" => parse_xtrim(a)?,
        "xlen" => Command::XLen(key()),
        "xrange" | "xrevrange" => {
            let rev = name == "xrevrange";
            let (low, high) = if rev { (&a[2], &a[1]) } else { (&a[1], &a[2]) };
            let start = parse_range_start(low).map_err(Refusal::from)?;
            let end = parse_range_end(high).map_err(Refusal::from)?;
            let count = match &a[3..] {
                [] => None,
                [word, n] if upper(word) == "COUNT" => Some(usize::try_from(int(n)?).unwrap_or(0)),
                _ => return refuse(errors::SYNTAX),
            };
            Command::XRange {
                key: key(),
                start,
                end,
                count,
                rev,
            }
        }
        "xread" | "xreadgroup" => parse_xread(a, name == "xreadgroup")?,
        "xgroup" => parse_xgroup(a)?,
        "xinfo" => parse_xinfo(a)?,
        "xack" => Command::XAck(
            key(),
            a[1].clone(),
            a[2..]
                .iter()
                .map(|id| StreamId::parse(id, 0).ok_or_else(|| Refusal(INVALID_ID.into())))
                .collect::<Result<_, _>>()?,
        ),
        "xpending" => parse_xpending(a)?,
        "xclaim" => parse_xclaim(a)?,
        "xautoclaim" => parse_xautoclaim(a)?,
        other => return Err(unknown_command(&[other.as_bytes().to_vec()])),
    })
}

/// A min-idle-time as Redis reads it: an integer, a negative one counting as 0.
fn min_idle(arg: &[u8], command: &str) -> Result<u64, Refusal> {
    strict_int(arg)
        .map(|ms| ms.max(0) as u64)
        .ok_or_else(|| Refusal(format!("ERR Invalid min-idle-time argument for {command}")))
}

/// `XPENDING key group [[IDLE min-idle-time] start end count [consumer]]`.
fn parse_xpending(a: &[Bytes]) -> Result<Command, Refusal> {
    let (key, group) = (a[0].clone(), a[1].clone());
    let mut rest = &a[2..];
    if rest.is_empty() {
        return Ok(Command::XPending(key, group, None));
    }
    let mut min_idle_ms = 0;
    if upper(&rest[0]) == "IDLE" {
        let Some(ms) = rest.get(1) else {
            return refuse(errors::SYNTAX);
        };
        min_idle_ms = int(ms)?.max(0) as u64;
        rest = &rest[2..];
    }
    let (start, end, count, consumer) = match rest {
        [start, end, count] => (start, end, count, None),
        [start, end, count, consumer] => (start, end, count, Some(consumer.clone())),
        _ => return refuse(errors::SYNTAX),
    };
    let start = parse_range_start(start).map_err(Refusal::from)?;
    let end = parse_range_end(end).map_err(Refusal::from)?;
    let count = usize::try_from(int(count)?).unwrap_or(0);
    Ok(Command::XPending(
        key,
        group,
        Some(PendingQuery {
            min_idle_ms,
            start,
            end,
            count,
            consumer,
        }),
    ))
}

/// `XCLAIM key group consumer min-idle-time id [id ...] [IDLE ms] [TIME unix-ms] [RETRYCOUNT n]
/// [FORCE] [JUSTID] [LASTID id]`: the ids, then the options from the first argument that is
/// not an id.
fn parse_xclaim(a: &[Bytes]) -> Result<Command, Refusal> {
    let min_idle_ms = min_idle(&a[3], "XCLAIM")?;
    let mut at = 4;
    let mut ids = Vec::new();
    while let Some(id) = a.get(at).and_then(|arg| StreamId::parse(arg, 0)) {
        ids.push(id);
        at += 1;
    }
    if ids.len() > XCLAIM_IDS_MAX {
        return refuse(format!("ERR at most {XCLAIM_IDS_MAX} ids per XCLAIM on Basalt"));
    }
    let mut options = ClaimOptions::default();
    while let Some(arg) = a.get(at) {
        let word = upper(arg);
        let with_value = matches!(word.as_str(), "IDLE" | "TIME" | "RETRYCOUNT" | "LASTID");
        if with_value && a.get(at + 1).is_none() {
            return refuse(format!(
                "ERR Unrecognized XCLAIM option '{}'",
                String::from_utf8_lossy(arg)
            ));
        }
        let number = |name: &str| -> Result<i64, Refusal> {
            a.get(at + 1)
                .and_then(|n| strict_int(n))
                .ok_or_else(|| Refusal(format!("ERR Invalid {name} option argument for XCLAIM")))
        };
        match word.as_str() {
            "FORCE" => options.force = true,
            "JUSTID" => options.just_id = true,
            "IDLE" => {
                options.delivered_at = Some(DeliveredAt::Idle(number("IDLE")?));
                at += 1;
            }
            "TIME" => {
                options.delivered_at = Some(DeliveredAt::Time(number("TIME")?));
                at += 1;
            }
            "RETRYCOUNT" => {
                options.retry_count = u64::try_from(number("RETRYCOUNT")?).ok();
                at += 1;
            }
            // The group's last delivered id, which Redis's replication sends; taken and left.
            "LASTID" => {
                let Some(id) = a.get(at + 1) else {
                    return refuse(errors::SYNTAX);
                };
                StreamId::parse(id, 0).ok_or_else(|| Refusal(INVALID_ID.into()))?;
                at += 1;
            }
            _ => {
                return refuse(format!(
                    "ERR Unrecognized XCLAIM option '{}'",
                    String::from_utf8_lossy(arg)
                ))
            }
        }
        at += 1;
    }
    Ok(Command::XClaim {
        key: a[0].clone(),
        group: a[1].clone(),
        consumer: a[2].clone(),
        min_idle_ms,
        ids,
        options,
    })
}

/// `XAUTOCLAIM key group consumer min-idle-time start [COUNT count] [JUSTID]`.
fn parse_xautoclaim(a: &[Bytes]) -> Result<Command, Refusal> {
    let min_idle_ms = min_idle(&a[3], "XAUTOCLAIM")?;
    // `-`, `+` and `(id` as XRANGE reads a start; past the last id, nothing is left to claim.
    let start = match parse_range_start(&a[4]).map_err(Refusal::from)? {
        RangeEnd::From(id) => id,
        RangeEnd::To(_) | RangeEnd::Empty => StreamId::MAX,
    };
    let (mut count, mut just_id) = (100, false);
    let mut at = 5;
    while let Some(arg) = a.get(at) {
        match (upper(arg).as_str(), a.get(at + 1)) {
            ("COUNT", Some(n)) => {
                count = match strict_int(n) {
                    Some(n) if n > 0 => n as usize,
                    _ => return refuse("ERR COUNT must be > 0"),
                };
                at += 2;
            }
            ("JUSTID", _) => {
                just_id = true;
                at += 1;
            }
            _ => return refuse(errors::SYNTAX),
        }
    }
    Ok(Command::XAutoClaim {
        key: a[0].clone(),
        group: a[1].clone(),
        consumer: a[2].clone(),
        min_idle_ms,
        start,
        count,
        just_id,
    })
}

impl From<&'static str> for Refusal {
    fn from(text: &'static str) -> Refusal {
        Refusal(text.into())
    }
}

/// The trimming options of `XADD` and `XTRIM` as Redis reads them (`streamParseAddOrTrimArgs`),
/// in any order: one of `MAXLEN` or `MINID` (either with `=` or `~`), `LIMIT`; checked once all
/// are read, in Redis's order.
#[derive(Default)]
struct TrimOptions {
    rule: Option<basalt_client::TrimRule>,
    approximate: bool,
    /// `LIMIT` as given (0: no limit).
    limit: Option<u64>,
}

impl TrimOptions {
    /// Reads the option at `a[*at]` (moving `at` past it) if it is one; `Ok(false)` if not.
    fn read(&mut self, a: &[Bytes], at: &mut usize) -> Result<bool, Refusal> {
        let Some(word) = a.get(*at).map(|w| upper(w)) else {
            return Ok(false);
        };
        // Redis's `moreargs`: the arguments after the option's name.
        let more = a.len() - *at - 1;
        if !matches!(word.as_str(), "MAXLEN" | "MINID" | "LIMIT") || more == 0 {
            return Ok(false);
        }
        let mut next = *at + 1;
        if word == "LIMIT" {
            let n = int(&a[next])?;
            self.limit = Some(u64::try_from(n).map_err(|_| Refusal("ERR The LIMIT argument must be >= 0.".into()))?);
        } else {
            if self.rule.is_some() {
                return refuse("ERR syntax error, MAXLEN and MINID options at the same time are not compatible");
            }
            // `~` or `=` is a modifier only with a value after it.
            self.approximate = false;
            if more >= 2 && (a[next] == b"~" || a[next] == b"=") {
                self.approximate = a[next] == b"~";
                next += 1;
            }
            self.rule = Some(if word == "MAXLEN" {
                let n = int(&a[next])?;
                basalt_client::TrimRule::MaxLen(
                    u64::try_from(n).map_err(|_| Refusal("ERR The MAXLEN argument must be >= 0.".into()))?,
                )
            } else {
                let id = StreamId::parse(&a[next], 0).ok_or_else(|| Refusal(INVALID_ID.into()))?;
                basalt_client::TrimRule::MinId {
                    timestamp_ms: id.ms,
                    offset: id.seq,
                }
            });
        }
        *at = next + 1;
        Ok(true)
    }

    /// The trim the options ask for (`None`: none) of `XADD` or, `xadd` false, `XTRIM`.
    fn trim(self, xadd: bool) -> Result<Option<StreamTrim>, Refusal> {
        if self.limit.is_some_and(|n| n > 0) && self.rule.is_none() {
            return refuse("ERR syntax error, LIMIT cannot be used without specifying a trimming strategy");
        }
        if !xadd && self.rule.is_none() {
            return refuse("ERR syntax error, XTRIM must be called with a trimming strategy");
        }
        if self.limit.is_some() && !self.approximate {
            return refuse("ERR syntax error, LIMIT cannot be used without the special ~ option");
        }
        Ok(self.rule.map(|rule| StreamTrim {
            rule,
            // `LIMIT 0` turns the limit off.
            limit: self.limit.filter(|&n| n > 0),
        }))
    }
}

/// `XTRIM key MAXLEN|MINID [=|~] threshold [LIMIT count]`.
fn parse_xtrim(a: &[Bytes]) -> Result<Command, Refusal> {
    let mut options = TrimOptions::default();
    let mut at = 1;
    while at < a.len() {
        if !options.read(a, &mut at)? {
            return refuse(errors::SYNTAX);
        }
    }
    match options.trim(false)? {
        Some(trim) => Ok(Command::XTrim {
            key: a[0].clone(),
            trim,
        }),
        None => refuse("ERR syntax error, XTRIM must be called with a trimming strategy"),
    }
}

/// `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] * field value [field
/// value ...]`. Basalt gives every entry its id (the record's stamp and offset), so an explicit
/// id is refused.
fn parse_xadd(a: &[Bytes]) -> Result<Command, Refusal> {
    let mut create = true;
    let mut options = TrimOptions::default();
    let mut at = 1;
    loop {
        if a.get(at).is_some_and(|w| upper(w) == "NOMKSTREAM") {
            create = false;
            at += 1;
        } else if !options.read(a, &mut at)? {
            break;
        }
    }
    // Redis reads the id within its option loop, so a bad one is refused before the options'
    // checks; the options before a missing or an explicit id.
    let id = a.get(at).map(Vec::as_slice);
    if id.is_some_and(|id| id != b"*" && StreamId::parse(id, 0).is_none()) {
        return refuse(INVALID_ID);
    }
    let trim = options.trim(true)?;
    match id {
        Some(b"*") => {}
        Some(_) => return refuse("ERR Basalt gives stream entries their ids (stamp-offset): XADD takes * as the id"),
        None => return Err(arity("xadd")),
    }
    let rest = &a[at + 1..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(arity("xadd"));
    }
    Ok(Command::XAdd {
        key: a[0].clone(),
        pairs: rest.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect(),
        create,
        trim,
    })
}

/// `XREAD [COUNT n] [BLOCK ms] STREAMS key ... id ...`, and `XREADGROUP GROUP group consumer
/// [COUNT n] [BLOCK ms] [NOACK] STREAMS key ... id ...`.
fn parse_xread(a: &[Bytes], group: bool) -> Result<Command, Refusal> {
    let name = if group { "xreadgroup" } else { "xread" };
    let (mut count, mut block, mut no_ack, mut names) = (None, None, false, None);
    let mut at = 0;
    while at < a.len() {
        let word = upper(&a[at]);
        let value = a.get(at + 1);
        match (word.as_str(), value) {
            ("COUNT", Some(n)) => {
                let n = int(n)?;
                // Redis reads COUNT 0 or less as no limit.
                count = (n > 0).then_some(n as usize);
                at += 2;
            }
            ("BLOCK", Some(ms)) => {
                let ms = int(ms).map_err(|_| Refusal("ERR timeout is not an integer or out of range".into()))?;
                if ms < 0 {
                    return refuse("ERR timeout is negative");
                }
                block = Some(ms as u64);
                at += 2;
            }
            ("NOACK", _) if group => {
                no_ack = true;
                at += 1;
            }
            ("GROUP", Some(g)) if group => match a.get(at + 2) {
                Some(c) => {
                    names = Some((g.clone(), c.clone()));
                    at += 3;
                }
                None => return refuse(errors::SYNTAX),
            },
            ("STREAMS", _) => {
                at += 1;
                break;
            }
            _ => return refuse(errors::SYNTAX),
        }
        if at >= a.len() {
            return refuse(errors::SYNTAX);
        }
    }
    let rest = &a[at..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return refuse(format!(
            "ERR Unbalanced {} list of streams: for each stream key an ID or '$' must be specified.",
            name.to_ascii_uppercase()
        ));
    }
    let half = rest.len() / 2;
    if half > STREAMS_PER_READ_MAX {
        return refuse(format!(
            "ERR at most {STREAMS_PER_READ_MAX} streams per {name} on Basalt"
        ));
    }
    let mut streams = Vec::with_capacity(half);
    for (key, id) in rest[..half].iter().zip(&rest[half..]) {
        let from = ReadFrom::parse(id).map_err(Refusal::from)?;
        match from {
            ReadFrom::Undelivered if !group => return refuse(
                "ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.",
            ),
            ReadFrom::End if group => return refuse(
                "ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.",
            ),
            _ => {}
        }
        streams.push((key.clone(), from));
    }
    if !group {
        return Ok(Command::XRead { count, block, streams });
    }
    let Some((group, consumer)) = names else {
        return refuse("ERR Missing GROUP option for XREADGROUP");
    };
    Ok(Command::XReadGroup {
        group,
        consumer,
        count,
        block,
        no_ack,
        streams,
    })
}

/// `XGROUP CREATE key group id|$ [MKSTREAM] [ENTRIESREAD n]`, `XGROUP SETID key group id|$
/// [ENTRIESREAD n]`, `XGROUP DESTROY key group` and `XGROUP DELCONSUMER key group consumer`.
fn parse_xgroup(a: &[Bytes]) -> Result<Command, Refusal> {
    let sub = upper(&a[0]);
    let place = |id: &Bytes| match ReadFrom::parse(id).map_err(Refusal::from)? {
        ReadFrom::Undelivered => refuse(INVALID_ID),
        from => Ok(from),
    };
    // Taken and checked, not needed: a group's entries-read is its next offset.
    let entries_read = |n: &Bytes| match int(n)? {
        n if n < -1 => refuse("ERR value for ENTRIESREAD must be positive or -1"),
        _ => Ok(()),
    };
    match (sub.as_str(), &a[1..]) {
        ("CREATE", [key, group, id, options @ ..]) => {
            let from = place(id)?;
            let mut create = false;
            let mut at = 0;
            while let Some(option) = options.get(at) {
                match upper(option).as_str() {
                    "MKSTREAM" => at += 1,
                    // The group's entries-read counter is its next offset (entries are numbered
                    // from the stream's first): the option is taken and checked, not needed.
                    "ENTRIESREAD" if options.len() > at + 1 => {
                        entries_read(&options[at + 1])?;
                        at += 2;
                        continue;
                    }
                    _ => return refuse(errors::SYNTAX),
                }
                create = true;
            }
            Ok(Command::XGroupCreate {
                key: key.clone(),
                group: group.clone(),
                from,
                create,
            })
        }
        ("SETID", [key, group, id, options @ ..]) => {
            let from = place(id)?;
            match options {
                [] => {}
                [word, n] if upper(word) == "ENTRIESREAD" => entries_read(n)?,
                _ => {
                    return refuse("ERR unknown subcommand or wrong number of arguments for 'SETID'. Try XGROUP HELP.")
                }
            }
            Ok(Command::XGroupSetId {
                key: key.clone(),
                group: group.clone(),
                from,
            })
        }
        ("DESTROY", [key, group]) => Ok(Command::XGroupDestroy(key.clone(), group.clone())),
        ("DELCONSUMER", [key, group, consumer]) => Ok(Command::XGroupDelConsumer(
            key.clone(),
            group.clone(),
            consumer.clone(),
        )),
        ("CREATECONSUMER", [_, _, _]) => refuse(
            "ERR XGROUP CREATECONSUMER is not served: a consumer exists as the owner of pending entries, made by XREADGROUP",
        ),
        ("CREATE" | "SETID" | "DESTROY" | "DELCONSUMER" | "CREATECONSUMER", _) => Err(Refusal(format!(
            "ERR wrong number of arguments for 'xgroup|{}' command",
            sub.to_ascii_lowercase()
        ))),
        _ => refuse(format!(
            "ERR unknown subcommand '{}'. Try XGROUP HELP.",
            String::from_utf8_lossy(&a[0])
        )),
    }
}

/// `XINFO STREAM key`, `XINFO GROUPS key`, `XINFO CONSUMERS key group`.
fn parse_xinfo(a: &[Bytes]) -> Result<Command, Refusal> {
    let sub = upper(&a[0]);
    let info = match (sub.as_str(), &a[1..]) {
        ("STREAM", [key]) => XInfo::Stream(key.clone()),
        ("STREAM", [_, word, ..]) if upper(word) == "FULL" => {
            return refuse("ERR XINFO STREAM FULL is not served; XINFO STREAM, GROUPS and CONSUMERS are")
        }
        ("STREAM", [_, _, ..]) => return refuse(errors::SYNTAX),
        ("GROUPS", [key]) => XInfo::Groups(key.clone()),
        ("CONSUMERS", [key, group]) => XInfo::Consumers(key.clone(), group.clone()),
        ("STREAM" | "GROUPS" | "CONSUMERS", _) => {
            return Err(Refusal(format!(
                "ERR wrong number of arguments for 'xinfo|{}' command",
                sub.to_ascii_lowercase()
            )))
        }
        _ => {
            return refuse(format!(
                "ERR unknown subcommand '{}'. Try XINFO HELP.",
                String::from_utf8_lossy(&a[0])
            ))
        }
    };
    Ok(Command::XInfo(info))
}

fn score_range(min: &[u8], max: &[u8]) -> Result<(ScoreBound, ScoreBound), Refusal> {
    match (ScoreBound::parse(min), ScoreBound::parse(max)) {
        (Some(min), Some(max)) => Ok((min, max)),
        _ => refuse("ERR min or max is not a float"),
    }
}

/// `ZADD`'s options, then its score and member pairs.
fn parse_zadd(a: &[Bytes]) -> Result<AddQuery, Refusal> {
    let mut rules = AddRules::default();
    let (mut count_changed, mut incr) = (false, false);
    let mut at = 0;
    while let Some(arg) = a.get(at) {
        match upper(arg).as_str() {
            "NX" => rules.only_new = true,
            "XX" => rules.only_existing = true,
            "GT" => rules.only_greater = true,
            "LT" => rules.only_less = true,
            "CH" => count_changed = true,
            "INCR" => incr = true,
            _ => break,
        }
        at += 1;
    }
    let rest = &a[at..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return refuse(errors::SYNTAX);
    }
    if rules.only_new && rules.only_existing {
        return refuse("ERR XX and NX options at the same time are not compatible");
    }
    if (rules.only_greater && rules.only_less) || (rules.only_new && (rules.only_greater || rules.only_less)) {
        return refuse("ERR GT, LT, and/or NX options at the same time are not compatible");
    }
    if incr && rest.len() > 2 {
        return refuse("ERR INCR option supports a single increment-element pair");
    }
    let pairs = rest
        .chunks(2)
        .map(|p| {
            parse_score(&p[0])
                .map(|score| (score, p[1].clone()))
                .ok_or_else(|| Refusal(errors::NOT_FLOAT.into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AddQuery {
        rules,
        count_changed,
        incr,
        pairs,
    })
}

/// `ZRANGE key start stop [BYSCORE | BYLEX] [REV] [LIMIT offset count] [WITHSCORES]`.
fn parse_zrange(a: &[Bytes]) -> Result<RangeQuery, Refusal> {
    let mut by_score = false;
    let mut rev = false;
    let mut options = Vec::new();
    for arg in &a[2..] {
        match upper(arg).as_str() {
            "BYSCORE" => by_score = true,
            "BYLEX" => return refuse("ERR ZRANGE BYLEX is not supported on Basalt"),
            "REV" => rev = true,
            _ => options.push(arg.clone()),
        }
    }
    let mut query = parse_range_options(&options, !by_score)?;
    query.rev = rev;
    query.by = if by_score {
        // With REV the range is given from the high end.
        let (low, high) = if rev { (&a[1], &a[0]) } else { (&a[0], &a[1]) };
        let (min, max) = score_range(low, high)?;
        RangeBy::Score(min, max)
    } else {
        RangeBy::Rank(int(&a[0])?, int(&a[1])?)
    };
    Ok(query)
}

/// `WITHSCORES` and `LIMIT offset count`, in any order; `LIMIT` refused for ranks.
fn parse_range_options(a: &[Bytes], by_rank: bool) -> Result<RangeQuery, Refusal> {
    let mut query = RangeQuery {
        by: RangeBy::Rank(0, -1),
        rev: false,
        limit: None,
        with_scores: false,
    };
    let mut at = 0;
    while let Some(arg) = a.get(at) {
        match upper(arg).as_str() {
            "WITHSCORES" => {
                query.with_scores = true;
                at += 1;
            }
            "LIMIT" if a.len() >= at + 3 => {
                if by_rank {
                    return refuse(
                        "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
                    );
                }
                query.limit = Some((int(&a[at + 1])?, int(&a[at + 2])?));
                at += 3;
            }
            _ => return refuse(errors::SYNTAX),
        }
    }
    Ok(query)
}

fn parse_hello(a: &[Bytes]) -> Result<Command, Refusal> {
    let mut protocol = None;
    let mut rest = a;
    if let Some((first, tail)) = a.split_first() {
        let version = std::str::from_utf8(first)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| Refusal("ERR Protocol version is not an integer or out of range".into()))?;
        protocol = Some(version);
        rest = tail;
    }
    let (mut auth, mut name) = (None, None);
    let mut i = 0;
    while i < rest.len() {
        match upper(&rest[i]).as_str() {
            "AUTH" if i + 2 < rest.len() => {
                auth = Some((rest[i + 1].clone(), rest[i + 2].clone()));
                i += 3;
            }
            "SETNAME" if i + 1 < rest.len() => {
                name = Some(rest[i + 1].clone());
                i += 2;
            }
            _ => {
                return refuse(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&rest[i])
                ))
            }
        }
    }
    Ok(Command::Hello { protocol, auth, name })
}

fn parse_client(a: &[Bytes]) -> Result<Command, Refusal> {
    let sub = upper(&a[0]);
    let wrong = || arity(&format!("client|{}", sub.to_ascii_lowercase()));
    Ok(match sub.as_str() {
        "SETNAME" if a.len() == 2 => {
            if a[1].iter().any(|&b| b <= b' ' || b > b'~') {
                return refuse("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            Command::ClientSetName(a[1].clone())
        }
        "GETNAME" if a.len() == 1 => Command::ClientGetName,
        "ID" if a.len() == 1 => Command::ClientId,
        "SETINFO" if a.len() == 3 => Command::ClientSetInfo,
        "SETNAME" | "GETNAME" | "ID" | "SETINFO" => return Err(wrong()),
        _ => {
            return refuse(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&a[0])
            ))
        }
    })
}

fn parse_set(a: &[Bytes]) -> Result<Command, Refusal> {
    let (mut expiry, mut keep_ttl, mut condition, mut get) = (None, false, None, false);
    let mut i = 2;
    while i < a.len() {
        let option = upper(&a[i]);
        let has_value = i + 1 < a.len();
        match option.as_str() {
            "NX" if condition.is_none() => condition = Some(SetCondition::Absent),
            "XX" if condition.is_none() => condition = Some(SetCondition::Present),
            "GET" => get = true,
            "KEEPTTL" if expiry.is_none() => keep_ttl = true,
            "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() && !keep_ttl && has_value => {
                i += 1;
                let unit = if option.starts_with('P') { 1 } else { 1000 };
                let ms = expire_ms(int(&a[i])?, unit, "set")?;
                expiry = Some(if option.ends_with("AT") {
                    Expiry::At(ms)
                } else {
                    Expiry::In(ms)
                });
            }
            _ => return refuse(errors::SYNTAX),
        }
        i += 1;
    }
    Ok(Command::Set {
        key: a[0].clone(),
        value: a[1].clone(),
        expiry,
        keep_ttl,
        condition,
        get,
    })
}

fn parse_expire_condition(a: &[Bytes]) -> Result<Option<ExpireCondition>, Refusal> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in a {
        match upper(option).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            other => return refuse(format!("ERR Unsupported option {other}")),
        }
    }
    if nx && (xx || gt || lt) {
        return refuse("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return refuse("ERR GT and LT options at the same time are not compatible");
    }
    Ok(if nx {
        Some(ExpireCondition::NoExpiry)
    } else if gt {
        Some(ExpireCondition::Later)
    } else if lt {
        Some(ExpireCondition::Sooner)
    } else if xx {
        Some(ExpireCondition::HasExpiry)
    } else {
        None
    })
}

fn parse_getex(a: &[Bytes]) -> Result<Command, Refusal> {
    let change = match &a[1..] {
        [] => GetExChange::Keep,
        [persist] if upper(persist) == "PERSIST" => GetExChange::Persist,
        [option, amount] => {
            let option = upper(option);
            let unit = match option.as_str() {
                "EX" | "EXAT" => 1000,
                "PX" | "PXAT" => 1,
                _ => return refuse(errors::SYNTAX),
            };
            let ms = expire_ms(int(amount)?, unit, "getex")?;
            GetExChange::Set(if option.ends_with("AT") {
                Expiry::At(ms)
            } else {
                Expiry::In(ms)
            })
        }
        _ => return refuse(errors::SYNTAX),
    };
    Ok(Command::GetEx {
        key: a[0].clone(),
        change,
    })
}

fn parse_scan(a: &[Bytes]) -> Result<Command, Refusal> {
    let cursor = std::str::from_utf8(&a[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Refusal(errors::INVALID_CURSOR.into()))?;
    let (mut pattern, mut count, mut kind) = (None, None, None);
    let mut i = 1;
    while i < a.len() {
        let option = upper(&a[i]);
        if i + 1 >= a.len() {
            return refuse(errors::SYNTAX);
        }
        let value = &a[i + 1];
        match option.as_str() {
            "MATCH" => pattern = Some(value.clone()),
            "COUNT" => {
                let n = int(value)?;
                if n < 1 {
                    return refuse(errors::SYNTAX);
                }
                count = Some(n as u64);
            }
            "TYPE" => kind = Some(String::from_utf8_lossy(value).to_ascii_lowercase()),
            _ => return refuse(errors::SYNTAX),
        }
        i += 2;
    }
    Ok(Command::Scan {
        cursor,
        pattern,
        count,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<Bytes> {
        text.split(' ').map(|s| s.as_bytes().to_vec()).collect()
    }

    fn refused(text: &str) -> String {
        parse(&args(text)).expect_err(text).0
    }

    #[test]
    fn stream_commands_parse_as_redis_reads_them() {
        let id = |ms, seq| StreamId { ms, seq };
        assert_eq!(
            parse(&args("XADD s NOMKSTREAM * f v g w")),
            Ok(Command::XAdd {
                key: b"s".to_vec(),
                pairs: vec![(b"f".to_vec(), b"v".to_vec()), (b"g".to_vec(), b"w".to_vec())],
                create: false,
                trim: None,
            })
        );
        assert_eq!(
            refused("XADD s * f"),
            "ERR wrong number of arguments for 'xadd' command"
        );
        assert_eq!(refused("XADD s bad f v"), INVALID_ID);
        assert!(refused("XADD s 1-1 f v").starts_with("ERR Basalt gives stream entries their ids"));
        let max_len = |n, limit| {
            Some(StreamTrim {
                rule: basalt_client::TrimRule::MaxLen(n),
                limit,
            })
        };
        let xadd = |create, trim| Command::XAdd {
            key: b"s".to_vec(),
            pairs: vec![(b"f".to_vec(), b"v".to_vec())],
            create,
            trim,
        };
        assert_eq!(
            parse(&args("XADD s MAXLEN ~ 5 * f v")),
            Ok(xadd(true, max_len(5, None)))
        );
        assert_eq!(parse(&args("XADD s maxlen 5 * f v")), Ok(xadd(true, max_len(5, None))));
        assert_eq!(
            parse(&args("XADD s MAXLEN ~ 5 NOMKSTREAM LIMIT 10 * f v")),
            Ok(xadd(false, max_len(5, Some(10))))
        );
        assert_eq!(
            parse(&args("XADD s MINID = 7-3 * f v")),
            Ok(xadd(
                true,
                Some(StreamTrim {
                    rule: basalt_client::TrimRule::MinId {
                        timestamp_ms: 7,
                        offset: 3
                    },
                    limit: None
                })
            ))
        );
        assert_eq!(
            refused("XADD s MAXLEN -1 * f v"),
            "ERR The MAXLEN argument must be >= 0."
        );
        assert_eq!(refused("XADD s MAXLEN x * f v"), errors::NOT_INTEGER);
        assert_eq!(
            refused("XADD s MAXLEN 5 LIMIT 10 * f v"),
            "ERR syntax error, LIMIT cannot be used without the special ~ option"
        );
        assert_eq!(
            refused("XADD s MAXLEN 5 MINID 1 * f v"),
            "ERR syntax error, MAXLEN and MINID options at the same time are not compatible"
        );
        assert_eq!(refused("XADD s MINID bad * f v"), INVALID_ID);
        assert_eq!(refused("XADD s LIMIT 5 FOO f v"), INVALID_ID);
        assert_eq!(
            refused("XADD s MAXLEN 5 LIMIT 10 1-1 f v"),
            "ERR syntax error, LIMIT cannot be used without the special ~ option"
        );
        assert_eq!(
            parse(&args("XTRIM s MAXLEN ~ 0 LIMIT 0")),
            Ok(Command::XTrim {
                key: b"s".to_vec(),
                trim: StreamTrim {
                    rule: basalt_client::TrimRule::MaxLen(0),
                    limit: None
                }
            })
        );
        assert_eq!(
            parse(&args("XTRIM s MINID 5")),
            Ok(Command::XTrim {
                key: b"s".to_vec(),
                trim: StreamTrim {
                    rule: basalt_client::TrimRule::MinId {
                        timestamp_ms: 5,
                        offset: 0
                    },
                    limit: None
                }
            })
        );
        assert_eq!(
            refused("XTRIM s LIMIT 5"),
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy"
        );
        assert_eq!(
            refused("XTRIM s LIMIT 0"),
            "ERR syntax error, XTRIM must be called with a trimming strategy"
        );
        assert_eq!(refused("XTRIM s MAXLEN 5 extra"), errors::SYNTAX);
        assert_eq!(refused("XTRIM s MAXLEN ~"), errors::NOT_INTEGER);
        assert_eq!(
            refused("XADD s LIMIT 5 * f v"),
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy"
        );
        assert_eq!(
            refused("XADD s LIMIT 0 * f v"),
            "ERR syntax error, LIMIT cannot be used without the special ~ option"
        );
        assert_eq!(
            refused("XADD s MAXLEN 5 MAXLEN 4 * f v"),
            "ERR syntax error, MAXLEN and MINID options at the same time are not compatible"
        );
        assert_eq!(
            refused("XTRIM s MAXLEN ~ 5 MAXLEN 4 LIMIT 1"),
            "ERR syntax error, MAXLEN and MINID options at the same time are not compatible"
        );
        assert_eq!(
            refused("XTRIM s MAXLEN"),
            "ERR wrong number of arguments for 'xtrim' command"
        );
        assert_eq!(
            refused("XTRIM s LIMIT -1 MAXLEN ~ 1"),
            "ERR The LIMIT argument must be >= 0."
        );
        assert_eq!(refused("XTRIM s"), "ERR wrong number of arguments for 'xtrim' command");
        assert_eq!(
            parse(&args("XREVRANGE s + (5-1 COUNT 2")),
            Ok(Command::XRange {
                key: b"s".to_vec(),
                start: RangeEnd::From(id(5, 2)),
                end: RangeEnd::To(StreamId::MAX),
                count: Some(2),
                rev: true,
            })
        );
        assert_eq!(refused("XRANGE s - + LIMIT 2"), errors::SYNTAX);
        assert_eq!(
            parse(&args("XREAD COUNT 0 BLOCK 10 STREAMS a b $ 3")),
            Ok(Command::XRead {
                count: None,
                block: Some(10),
                streams: vec![
                    (b"a".to_vec(), ReadFrom::End),
                    (b"b".to_vec(), ReadFrom::After(id(3, 0)))
                ],
            })
        );
        assert_eq!(refused("XREAD BLOCK -1 STREAMS a 0"), "ERR timeout is negative");
        assert!(refused("XREAD STREAMS a >").starts_with("ERR The > ID can be specified only"));
        assert!(refused("XREAD STREAMS a b 0").starts_with("ERR Unbalanced XREAD list of streams"));
        assert_eq!(
            parse(&args("XREADGROUP GROUP g c NOACK COUNT 5 STREAMS a >")),
            Ok(Command::XReadGroup {
                group: b"g".to_vec(),
                consumer: b"c".to_vec(),
                count: Some(5),
                block: None,
                no_ack: true,
                streams: vec![(b"a".to_vec(), ReadFrom::Undelivered)],
            })
        );
        assert!(refused("XREADGROUP GROUP g c STREAMS a $").starts_with("ERR The $ ID is meaningless"));
        assert_eq!(
            refused("XREADGROUP COUNT 1 BLOCK 1 STREAMS a >"),
            "ERR Missing GROUP option for XREADGROUP"
        );
        assert_eq!(
            parse(&args("XGROUP CREATE s g $ MKSTREAM ENTRIESREAD 3")),
            Ok(Command::XGroupCreate {
                key: b"s".to_vec(),
                group: b"g".to_vec(),
                from: ReadFrom::End,
                create: true,
            })
        );
        assert_eq!(
            refused("XGROUP CREATE s g"),
            "ERR wrong number of arguments for 'xgroup|create' command"
        );
        assert_eq!(
            parse(&args("XGROUP SETID s g 5-1 ENTRIESREAD 3")),
            Ok(Command::XGroupSetId {
                key: b"s".to_vec(),
                group: b"g".to_vec(),
                from: ReadFrom::After(id(5, 1)),
            })
        );
        assert_eq!(refused("XGROUP SETID s g >"), INVALID_ID);
        assert_eq!(
            refused("XGROUP SETID s g $ ENTRIESREAD"),
            "ERR unknown subcommand or wrong number of arguments for 'SETID'. Try XGROUP HELP."
        );
        assert_eq!(
            refused("XGROUP SETID s g $ ENTRIESREAD -2"),
            "ERR value for ENTRIESREAD must be positive or -1"
        );
        assert_eq!(
            refused("XGROUP CREATE s g $ ENTRIESREAD -5"),
            "ERR value for ENTRIESREAD must be positive or -1"
        );
        assert_eq!(
            refused("XGROUP SETID s g"),
            "ERR wrong number of arguments for 'xgroup|setid' command"
        );
        assert_eq!(
            parse(&args("XGROUP DELCONSUMER s g alice")),
            Ok(Command::XGroupDelConsumer(
                b"s".to_vec(),
                b"g".to_vec(),
                b"alice".to_vec()
            ))
        );
        assert!(refused("XGROUP CREATECONSUMER s g alice").contains("not served"));
        assert_eq!(
            refused("XGROUP NOPE s g"),
            "ERR unknown subcommand 'NOPE'. Try XGROUP HELP."
        );
        assert_eq!(
            parse(&args("XINFO STREAM s")),
            Ok(Command::XInfo(XInfo::Stream(b"s".to_vec())))
        );
        assert_eq!(
            parse(&args("xinfo groups s")),
            Ok(Command::XInfo(XInfo::Groups(b"s".to_vec())))
        );
        assert_eq!(
            parse(&args("XINFO CONSUMERS s g")),
            Ok(Command::XInfo(XInfo::Consumers(b"s".to_vec(), b"g".to_vec())))
        );
        assert!(refused("XINFO STREAM s FULL").contains("not served"));
        assert_eq!(
            refused("XINFO CONSUMERS s"),
            "ERR wrong number of arguments for 'xinfo|consumers' command"
        );
        assert_eq!(
            refused("XINFO NOPE s"),
            "ERR unknown subcommand 'NOPE'. Try XINFO HELP."
        );
        assert_eq!(
            parse(&args("XACK s g 1-2 3")),
            Ok(Command::XAck(b"s".to_vec(), b"g".to_vec(), vec![id(1, 2), id(3, 0)]))
        );
        assert_eq!(refused("XACK s g x"), INVALID_ID);
        assert_eq!(
            parse(&args("XPENDING s g")),
            Ok(Command::XPending(b"s".to_vec(), b"g".to_vec(), None))
        );
        assert_eq!(
            parse(&args("XPENDING s g IDLE 5 - + 3 alice")),
            Ok(Command::XPending(
                b"s".to_vec(),
                b"g".to_vec(),
                Some(PendingQuery {
                    min_idle_ms: 5,
                    start: RangeEnd::From(StreamId::MIN),
                    end: RangeEnd::To(StreamId::MAX),
                    count: 3,
                    consumer: Some(b"alice".to_vec()),
                })
            ))
        );
        assert_eq!(refused("XPENDING s g - +"), errors::SYNTAX);
        assert_eq!(refused("XPENDING s g - + x"), errors::NOT_INTEGER);
        assert_eq!(
            parse(&args("XCLAIM s g c -5 1-1 2 JUSTID IDLE 500 RETRYCOUNT 5 LASTID 3-3")),
            Ok(Command::XClaim {
                key: b"s".to_vec(),
                group: b"g".to_vec(),
                consumer: b"c".to_vec(),
                min_idle_ms: 0,
                ids: vec![id(1, 1), id(2, 0)],
                options: ClaimOptions {
                    delivered_at: Some(DeliveredAt::Idle(500)),
                    retry_count: Some(5),
                    just_id: true,
                    ..ClaimOptions::default()
                },
            })
        );
        assert_eq!(
            refused("XCLAIM s g c x 1-1"),
            "ERR Invalid min-idle-time argument for XCLAIM"
        );
        assert_eq!(refused("XCLAIM s g c 0 bad"), "ERR Unrecognized XCLAIM option 'bad'");
        assert_eq!(refused("XAUTOCLAIM s g c 0 0 COUNT 0"), "ERR COUNT must be > 0");
        assert_eq!(refused("XAUTOCLAIM s g c 0 bad"), INVALID_ID);
        assert_eq!(refused("XAUTOCLAIM s g c 0 0 COUNT x"), "ERR COUNT must be > 0");
        assert_eq!(
            refused("XCLAIM s g c 0 1-1 IDLE"),
            "ERR Unrecognized XCLAIM option 'IDLE'"
        );
        match parse(&args("XCLAIM s g c 0 1-1 TIME 5 IDLE 7 RETRYCOUNT -5")) {
            Ok(Command::XClaim { options, .. }) => {
                assert_eq!(
                    options.delivered_at,
                    Some(DeliveredAt::Idle(7)),
                    "the last of IDLE and TIME"
                );
                assert_eq!(options.retry_count, None, "a negative count leaves it");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&args("XAUTOCLAIM s g c 10 0-0 JUSTID")),
            Ok(Command::XAutoClaim {
                key: b"s".to_vec(),
                group: b"g".to_vec(),
                consumer: b"c".to_vec(),
                min_idle_ms: 10,
                start: StreamId::MIN,
                count: 100,
                just_id: true,
            })
        );
    }

    #[test]
    fn unknown_commands_and_wrong_arity_read_as_redis_writes_them() {
        assert_eq!(
            refused("FOO a b"),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            refused("nosuch"),
            "ERR unknown command 'nosuch', with args beginning with: "
        );
        assert_eq!(refused("GET"), "ERR wrong number of arguments for 'get' command");
        assert_eq!(refused("get a b"), "ERR wrong number of arguments for 'get' command");
        assert_eq!(
            refused("MSET a 1 b"),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(
            refused("client setname"),
            "ERR wrong number of arguments for 'client|setname' command"
        );
        assert_eq!(
            refused("CLIENT nope"),
            "ERR unknown subcommand 'nope'. Try CLIENT HELP."
        );
        let long: String = "x".repeat(300);
        let text = refused(&format!("FOO {long} {long}"));
        assert!(text.len() < 300, "{text}");
    }

    /// The hash and sorted-set commands parse as Redis 7 reads them (each error text was
    /// checked against redis-server with scripts/redis-compat.py).
    #[test]
    fn hash_and_sorted_set_commands_parse_as_redis_reads_them() {
        let parsed = |text: &str| parse(&args(text)).expect(text);
        assert_eq!(
            parsed("HSET h a 1 b 2"),
            Command::HSet {
                key: b"h".to_vec(),
                pairs: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())],
                answer_ok: false,
            }
        );
        assert_eq!(refused("HSET h a"), "ERR wrong number of arguments for 'hset' command");
        assert_eq!(refused("HINCRBY h f x"), errors::NOT_INTEGER);
        let Command::ZAdd(_, add) = parsed("ZADD z gt CH 1 a 2.5 b") else {
            panic!("not ZADD");
        };
        assert!(add.rules.only_greater && add.count_changed && !add.incr);
        assert_eq!(add.pairs, vec![(1.0, b"a".to_vec()), (2.5, b"b".to_vec())]);
        assert_eq!(
            refused("ZADD z NX XX 1 a"),
            "ERR XX and NX options at the same time are not compatible"
        );
        assert_eq!(
            refused("ZADD z NX GT 1 a"),
            "ERR GT, LT, and/or NX options at the same time are not compatible"
        );
        assert_eq!(
            refused("ZADD z INCR 1 a 2 b"),
            "ERR INCR option supports a single increment-element pair"
        );
        assert_eq!(refused("ZADD z 1 a 2"), errors::SYNTAX);
        assert_eq!(refused("ZADD z nan a"), errors::NOT_FLOAT);
        let Command::ZRange(_, range) = parsed("ZRANGE z (5 1 BYSCORE REV LIMIT 0 3 WITHSCORES") else {
            panic!("not ZRANGE");
        };
        let bound = |score, exclusive| ScoreBound { score, exclusive };
        assert_eq!(
            range.by,
            RangeBy::Score(bound(1.0, false), bound(5.0, true)),
            "REV gives max first"
        );
        assert!(range.rev && range.with_scores);
        assert_eq!(range.limit, Some((0, 3)));
        let Command::ZRange(_, old_form) = parsed("ZREVRANGEBYSCORE z +inf -inf WITHSCORES") else {
            panic!("not ZRANGE");
        };
        assert_eq!(
            old_form.by,
            RangeBy::Score(bound(f64::NEG_INFINITY, false), bound(f64::INFINITY, false))
        );
        assert!(old_form.rev);
        assert_eq!(refused("ZRANGE z a b"), errors::NOT_INTEGER);
        assert_eq!(
            refused("ZRANGE z 0 1 LIMIT 0 1"),
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
        );
        assert_eq!(refused("ZRANGEBYSCORE z 0 1 LIMIT 0"), errors::SYNTAX);
        assert_eq!(refused("ZCOUNT z x 1"), "ERR min or max is not a float");
    }

    #[test]
    fn set_takes_its_options_in_any_order_and_refuses_conflicts() {
        assert_eq!(
            parse(&args("SET k v px 1500 NX GET")),
            Ok(Command::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                expiry: Some(Expiry::In(1500)),
                keep_ttl: false,
                condition: Some(SetCondition::Absent),
                get: true,
            })
        );
        assert!(matches!(
            parse(&args("set k v EXAT 10")),
            Ok(Command::Set {
                expiry: Some(Expiry::At(10_000)),
                ..
            })
        ));
        for bad in [
            "SET k v NX XX",
            "SET k v EX 1 PX 1",
            "SET k v KEEPTTL EX 1",
            "SET k v EX",
            "SET k v BOGUS",
        ] {
            assert_eq!(refused(bad), errors::SYNTAX, "{bad}");
        }
        assert_eq!(refused("SET k v EX 0"), "ERR invalid expire time in 'set' command");
        assert_eq!(refused("SET k v EX -5"), "ERR invalid expire time in 'set' command");
        assert_eq!(
            refused("SET k v EX 9223372036854775807"),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(refused("SET k v EX ten"), errors::NOT_INTEGER);
        assert_eq!(refused("SETEX k 0 v"), "ERR invalid expire time in 'setex' command");
    }

    #[test]
    fn integers_are_read_as_strictly_as_redis_reads_them() {
        assert_eq!(parse(&args("INCRBY k -7")), Ok(Command::IncrBy(b"k".to_vec(), -7)));
        for bad in [
            "INCRBY k 1.5",
            "INCRBY k +1",
            "INCRBY k 01",
            "INCRBY k -",
            "INCRBY k 99999999999999999999",
        ] {
            assert_eq!(refused(bad), errors::NOT_INTEGER, "{bad}");
        }
        assert_eq!(refused("DECRBY k -9223372036854775808"), "ERR decrement would overflow");
        assert_eq!(refused("INCRBYFLOAT k abc"), errors::NOT_FLOAT);
        assert_eq!(refused("INCRBYFLOAT k nan"), errors::NOT_FLOAT);
        assert_eq!(
            parse(&args("INCRBYFLOAT k 2.5e1")),
            Ok(Command::IncrByFloat(b"k".to_vec(), 25.0))
        );
    }

    #[test]
    fn expire_conditions_and_scan_options() {
        assert!(matches!(
            parse(&args("EXPIRE k 10 GT")),
            Ok(Command::Expire {
                expiry: Expiry::In(10_000),
                condition: Some(ExpireCondition::Later),
                ..
            })
        ));
        assert!(matches!(
            parse(&args("PEXPIREAT k 5")),
            Ok(Command::Expire {
                expiry: Expiry::At(5),
                ..
            })
        ));
        assert_eq!(
            refused("EXPIRE k 10 NX XX"),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            refused("EXPIRE k 10 GT LT"),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(
            parse(&args("SCAN 0 MATCH user:* COUNT 100")),
            Ok(Command::Scan {
                cursor: 0,
                pattern: Some(b"user:*".to_vec()),
                count: Some(100),
                kind: None
            })
        );
        assert_eq!(refused("SCAN x"), errors::INVALID_CURSOR);
        assert_eq!(refused("SCAN 0 COUNT 0"), errors::SYNTAX);
        assert_eq!(refused("SCAN 0 MATCH"), errors::SYNTAX);
    }

    #[test]
    fn hello_and_auth_forms() {
        assert_eq!(
            parse(&args("HELLO 3 AUTH default secret SETNAME app")),
            Ok(Command::Hello {
                protocol: Some(3),
                auth: Some((b"default".to_vec(), b"secret".to_vec())),
                name: Some(b"app".to_vec()),
            })
        );
        assert_eq!(
            refused("HELLO three"),
            "ERR Protocol version is not an integer or out of range"
        );
        assert_eq!(refused("HELLO 3 AUTH x"), "ERR Syntax error in HELLO option 'AUTH'");
        assert_eq!(refused("AUTH a b c"), errors::SYNTAX);
    }

    #[test]
    fn every_table_entry_parses_with_its_minimum_arguments_or_refuses_cleanly() {
        for (name, arity, _) in COMMANDS {
            let n = arity.unsigned_abs() as usize;
            let mut request = vec![name.as_bytes().to_vec()];
            request.extend((1..n).map(|i| i.to_string().into_bytes()));
            // Either it parses or it gets an error reply; never a panic.
            let _ = parse(&request);
        }
    }
}
