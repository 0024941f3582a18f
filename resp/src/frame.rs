//! The RESP wire format: reading requests and writing replies.
//!
//! A request is either an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what every
//! client library sends) or an inline command (`GET k\r\n`, what a person types into a socket).
//! [`parse_request`] reads one from the front of a buffer: any bytes either give a request,
//! ask for more bytes, or give a [`ProtocolError`] with Redis's own message, never a panic and
//! never an unbounded buffer (see `limits`). After a protocol error Redis answers it and closes
//! the connection; so does the server here.
//!
//! A [`Reply`] is written in the protocol the connection chose with `HELLO`: RESP2 folds
//! RESP3's maps, sets, pushes, doubles, booleans and null into its five types as Redis does.

use std::io::Write;

use crate::limits::{BULK_BYTES_MAX, INLINE_BYTES_MAX, REQUEST_ARGS_MAX, REQUEST_BYTES_MAX};

/// Why a request could not be read. The display is Redis's text after `-ERR `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: too big mbulk count string")]
    CountLineTooBig,
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: too big bulk count string")]
    BulkLineTooBig,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// Basalt's own bound on one request's size (Redis has none below its 512 MiB bulk limit).
    #[error("Protocol error: request larger than {REQUEST_BYTES_MAX} bytes")]
    RequestTooLarge,
}

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request: its arguments, and how many bytes it took. No arguments: an empty line
    /// or `*0`, which Redis skips without a reply.
    Request { args: Vec<Vec<u8>>, consumed: usize },
    /// Not a whole request yet: nothing is worth trying again before the buffer holds
    /// `at_least` bytes.
    Incomplete { at_least: usize },
}

/// The line starting at `from`, without its `\r\n`, and where the next one starts; `None` when
/// the buffer does not hold a whole line yet.
fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(from..)?;
    let at = rest.iter().position(|&b| b == b'\n')?;
    let content = &rest[..at];
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    Some((content, from + at + 1))
}

/// A length or count line's number, as Redis's `string2ll`: optional `-`, digits, no spaces.
fn number(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if negative { -value } else { value })
}

/// The bounds a request is read under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    pub args_max: usize,
    pub bulk_bytes_max: usize,
}

impl ReadLimits {
    /// An authenticated connection's (or any, without a password).
    pub const AUTHENTICATED: ReadLimits = ReadLimits {
        args_max: REQUEST_ARGS_MAX,
        bulk_bytes_max: BULK_BYTES_MAX,
    };
    /// Before `AUTH` when a password is set, Redis's own: 10 arguments of at most 16 KiB, so a
    /// stranger cannot make the node buffer or parse much.
    pub const UNAUTHENTICATED: ReadLimits = ReadLimits {
        args_max: 10,
        bulk_bytes_max: 16 * 1024,
    };
}

/// A multibulk request read so far: how many arguments it has, those read, where the next
/// starts, and the bytes it claims up to there.
#[derive(Debug)]
struct Partial {
    count: usize,
    /// Where each argument read so far lies in the buffer: copied out only once the request is
    /// whole, so a partial request is held once (in the buffer), not twice.
    args: Vec<(usize, usize)>,
    at: usize,
    claimed: usize,
}

/// Reads the requests of one connection from the front of its buffer, keeping a multibulk
/// request's progress between reads, so a large request arriving in many reads is parsed once,
/// not again from its start on every read. The caller drains the buffer only by the bytes a
/// whole request consumed.
#[derive(Debug, Default)]
pub struct RequestReader {
    partial: Option<Partial>,
}

impl RequestReader {
    /// The next request at the front of `buf` (the same bytes as the last call's, and more).
    pub fn read(&mut self, buf: &[u8], limits: ReadLimits) -> Result<Parsed, ProtocolError> {
        let read = self.read_inner(buf, limits);
        if read.is_err() {
            self.partial = None;
        }
        read
    }

    fn read_inner(&mut self, buf: &[u8], limits: ReadLimits) -> Result<Parsed, ProtocolError> {
        if self.partial.is_none() {
            match buf.first() {
                None => return Ok(Parsed::Incomplete { at_least: 1 }),
                Some(b'*') => {}
                Some(_) => return parse_inline(buf),
            }
            let Some((count_line, at)) = line(buf, 1) else {
                if buf.len() > INLINE_BYTES_MAX {
                    return Err(ProtocolError::CountLineTooBig);
                }
                return Ok(Parsed::Incomplete {
                    at_least: buf.len() + 1,
                });
            };
            let count = number(count_line).ok_or(ProtocolError::InvalidMultibulkLength)?;
            if count > limits.args_max as i64 {
                return Err(if limits.args_max < REQUEST_ARGS_MAX {
                    ProtocolError::UnauthenticatedMultibulkLength
                } else {
                    ProtocolError::InvalidMultibulkLength
                });
            }
            if count <= 0 {
                return Ok(Parsed::Request {
                    args: Vec::new(),
                    consumed: at,
                });
            }
            self.partial = Some(Partial {
                count: count as usize,
                args: Vec::with_capacity((count as usize).min(1024)),
                at,
                claimed: at,
            });
        }
        let Some(p) = self.partial.as_mut() else {
            return Ok(Parsed::Incomplete { at_least: 1 });
        };
        while p.args.len() < p.count {
            let at = p.at;
            match buf.get(at) {
                None => return Ok(Parsed::Incomplete { at_least: at + 1 }),
                Some(b'$') => {}
                Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
            }
            let Some((length_line, data_at)) = line(buf, at + 1) else {
                if buf.len() - at > INLINE_BYTES_MAX {
                    return Err(ProtocolError::BulkLineTooBig);
                }
                return Ok(Parsed::Incomplete {
                    at_least: buf.len() + 1,
                });
            };
            let length = number(length_line).ok_or(ProtocolError::InvalidBulkLength)?;
            if length < 0 || length as usize > limits.bulk_bytes_max {
                return Err(if length >= 0 && limits.bulk_bytes_max < BULK_BYTES_MAX {
                    ProtocolError::UnauthenticatedBulkLength
                } else {
                    ProtocolError::InvalidBulkLength
                });
            }
            let length = length as usize;
            let claimed = p.claimed + (data_at - at) + length + 2;
            if claimed > REQUEST_BYTES_MAX {
                return Err(ProtocolError::RequestTooLarge);
            }
            let end = data_at + length;
            if buf.len() < end + 2 {
                return Ok(Parsed::Incomplete { at_least: end + 2 });
            }
            // Redis takes the two bytes after the data as the line end without looking at them.
            p.args.push((data_at, end));
            p.at = end + 2;
            p.claimed = claimed;
        }
        match self.partial.take() {
            Some(p) => Ok(Parsed::Request {
                args: p.args.iter().map(|&(start, end)| buf[start..end].to_vec()).collect(),
                consumed: p.at,
            }),
            None => Ok(Parsed::Incomplete { at_least: 1 }),
        }
    }
}

/// Reads one request from the front of `buf`, from scratch, under an authenticated
/// connection's limits.
pub fn parse_request(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    RequestReader::default().read(buf, ReadLimits::AUTHENTICATED)
}

fn parse_inline(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    let Some((text, consumed)) = line(buf, 0) else {
        if buf.len() > INLINE_BYTES_MAX {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(Parsed::Incomplete {
            at_least: buf.len() + 1,
        });
    };
    if consumed > INLINE_BYTES_MAX {
        return Err(ProtocolError::InlineTooBig);
    }
    let args = split_args(text).ok_or(ProtocolError::UnbalancedQuotes)?;
    Ok(Parsed::Request { args, consumed })
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Splits an inline command as Redis's `sdssplitargs`: words separated by spaces, `"double
/// quotes"` with `\n`, `\xHH` and other escapes, `'single quotes'` with only `\'`. `None` when a
/// quote is left open or a closing quote is followed by something other than a space.
pub fn split_args(text: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < text.len() && text[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= text.len() {
            return Some(args);
        }
        let mut current = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let c = text.get(i).copied();
            if in_double {
                match c {
                    None => return None,
                    Some(b'\\') if text.get(i + 1) == Some(&b'x') => {
                        match (
                            text.get(i + 2).copied().and_then(hex_digit),
                            text.get(i + 3).copied().and_then(hex_digit),
                        ) {
                            (Some(high), Some(low)) => {
                                current.push(high * 16 + low);
                                i += 3;
                            }
                            _ => current.push(b'\\'),
                        }
                    }
                    Some(b'\\') if i + 1 < text.len() => {
                        i += 1;
                        current.push(match text[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        // A closing quote must end the word.
                        if text.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else if in_single {
                match c {
                    None => return None,
                    Some(b'\\') if text.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        current.push(b'\'');
                    }
                    Some(b'\'') => {
                        if text.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if b.is_ascii_whitespace() => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(other) => current.push(other),
                }
            }
            i += 1;
        }
        args.push(current);
    }
}

/// The protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// One reply, in RESP3's types; [`Reply::encode`] folds it into RESP2 when asked.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`: a simple string (no `\r` or `\n` inside).
    Simple(String),
    /// `-ERR ...`: the whole text, starting with its code (`ERR`, `WRONGTYPE`, `NOAUTH`, ...).
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A missing value: `$-1` in RESP2.
    Null,
    /// A missing array (an `EXEC` a `WATCH` aborted, an `XREAD` that timed out): `*-1` in RESP2.
    NullArray,
    Array(Vec<Reply>),
    /// RESP2: a flat array of keys and values.
    Map(Vec<(Reply, Reply)>),
    /// RESP2: an array.
    Set(Vec<Reply>),
    /// RESP2: a bulk string of the number.
    Double(f64),
    /// RESP2: the integer 1 or 0.
    Boolean(bool),
    /// Out-of-band data (a pub/sub message): an array in RESP2.
    Push(Vec<Reply>),
    /// Several replies in a row, for a command Redis answers more than once (`SUBSCRIBE a b`
    /// answers once per channel). Never nested inside another reply.
    Sequence(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".to_string())
    }

    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    /// A bulk string, or null when absent.
    pub fn optional(bytes: Option<Vec<u8>>) -> Reply {
        bytes.map_or(Reply::Null, Reply::Bulk)
    }

    /// Appends the reply's bytes in `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Reply::Simple(text) => line_of(out, b'+', text.as_bytes()),
            Reply::Error(text) => line_of(out, b'-', text.as_bytes()),
            Reply::Integer(n) => {
                let _ = write!(out, ":{n}\r\n");
            }
            Reply::Bulk(bytes) => bulk_of(out, bytes),
            Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                let _ = write!(out, "*{}\r\n", items.len());
                items.iter().for_each(|item| item.encode(protocol, out));
            }
            Reply::Set(items) => {
                let _ = write!(out, "{}{}\r\n", if resp3 { '~' } else { '*' }, items.len());
                items.iter().for_each(|item| item.encode(protocol, out));
            }
            Reply::Sequence(replies) => replies.iter().for_each(|reply| reply.encode(protocol, out)),
            Reply::Push(items) => {
                let _ = write!(out, "{}{}\r\n", if resp3 { '>' } else { '*' }, items.len());
                items.iter().for_each(|item| item.encode(protocol, out));
            }
            Reply::Map(pairs) => {
                if resp3 {
                    let _ = write!(out, "%{}\r\n", pairs.len());
                } else {
                    let _ = write!(out, "*{}\r\n", pairs.len() * 2);
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
            Reply::Double(value) => {
                let text = format_double(*value);
                if resp3 {
                    line_of(out, b',', text.as_bytes());
                } else {
                    bulk_of(out, text.as_bytes());
                }
            }
            Reply::Boolean(value) if resp3 => out.extend_from_slice(if *value { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Boolean(value) => {
                let _ = write!(out, ":{}\r\n", i64::from(*value));
            }
        }
    }
}

/// A double as Redis writes it: the shortest text that reads back as the same number, `inf`,
/// `-inf` or `nan`.
pub fn format_double(value: f64) -> String {
    if value.is_nan() {
        "nan".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{value}")
    }
}

/// A simple string or error line. `\r` and `\n` inside would end the line early and desync the
/// client, so they are replaced by spaces, as Redis does for error texts.
fn line_of(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

fn bulk_of(out: &mut Vec<u8>, bytes: &[u8]) {
    let _ = write!(out, "${}\r\n", bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// A request as a client library writes it: an array of bulk strings.
pub fn encode_request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        bulk_of(&mut out, arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(buf: &[u8]) -> (Vec<Vec<u8>>, usize) {
        match parse_request(buf) {
            Ok(Parsed::Request { args, consumed }) => (args, consumed),
            other => panic!("not a request: {other:?}"),
        }
    }

    fn strings(args: &[Vec<u8>]) -> Vec<&str> {
        args.iter().map(|a| std::str::from_utf8(a).expect("utf-8")).collect()
    }

    #[test]
    fn a_multibulk_request_and_what_follows_it() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let (args, consumed) = request(buf);
        assert_eq!(strings(&args), ["GET", "k"]);
        let (next, rest) = request(&buf[consumed..]);
        assert_eq!(strings(&next), ["PING"]);
        assert_eq!(consumed + rest, buf.len());
    }

    #[test]
    fn a_bulk_may_hold_any_bytes_including_line_ends() {
        let (args, _) = request(b"*1\r\n$4\r\na\r\nb\r\n");
        assert_eq!(args, vec![b"a\r\nb".to_vec()]);
    }

    #[test]
    fn inline_commands_split_like_redis() {
        assert_eq!(strings(&request(b"SET k v\r\n").0), ["SET", "k", "v"]);
        assert_eq!(strings(&request(b"  PING  \n").0), ["PING"]);
        let (args, _) = request(b"SET \"a b\" 'c\\'d' \"\\x41\\n\"\r\n");
        assert_eq!(
            args,
            vec![b"SET".to_vec(), b"a b".to_vec(), b"c'd".to_vec(), b"A\n".to_vec()]
        );
        assert_eq!(request(b"\r\n").0, Vec::<Vec<u8>>::new());
        assert_eq!(parse_request(b"SET \"open\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse_request(b"SET \"a\"b\r\n"), Err(ProtocolError::UnbalancedQuotes));
    }

    #[test]
    fn malformed_requests_get_redis_errors() {
        assert_eq!(parse_request(b"*x\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse_request(b"*2\r\n:1\r\n"), Err(ProtocolError::ExpectedBulk(b':')));
        assert_eq!(parse_request(b"*1\r\n$-3\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse_request(b"*1\r\n$ 3\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(
            ProtocolError::ExpectedBulk(b':').to_string(),
            "Protocol error: expected '$', got ':'"
        );
        // *0 and negative counts are skipped without a reply, as Redis does.
        assert_eq!(request(b"*0\r\n"), (vec![], 4));
        assert_eq!(request(b"*-1\r\n"), (vec![], 5));
    }

    #[test]
    fn oversized_requests_are_refused_before_they_are_buffered() {
        let claim = format!("*1\r\n${}\r\n", BULK_BYTES_MAX + 1);
        assert_eq!(parse_request(claim.as_bytes()), Err(ProtocolError::InvalidBulkLength));
        let many = format!("*{}\r\n", REQUEST_ARGS_MAX + 1);
        assert_eq!(
            parse_request(many.as_bytes()),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        // Three bulks that each fit but together exceed the request bound.
        let third = BULK_BYTES_MAX;
        let total = format!("*3\r\n${third}\r\n");
        let mut buf = total.into_bytes();
        buf.extend(std::iter::repeat_n(b'a', third));
        buf.extend_from_slice(format!("\r\n${third}\r\n").as_bytes());
        buf.extend(std::iter::repeat_n(b'a', third));
        buf.extend_from_slice(format!("\r\n${third}\r\n").as_bytes());
        assert_eq!(parse_request(&buf), Err(ProtocolError::RequestTooLarge));
        // A line that never ends.
        assert_eq!(
            parse_request(&vec![b'a'; INLINE_BYTES_MAX + 1]),
            Err(ProtocolError::InlineTooBig)
        );
        let mut count = b"*".to_vec();
        count.extend(vec![b'1'; INLINE_BYTES_MAX + 1]);
        assert_eq!(parse_request(&count), Err(ProtocolError::CountLineTooBig));
    }

    #[test]
    fn before_auth_requests_are_held_to_redis_s_small_limits() {
        let mut reader = RequestReader::default();
        assert_eq!(
            reader.read(b"*11\r\n", ReadLimits::UNAUTHENTICATED),
            Err(ProtocolError::UnauthenticatedMultibulkLength)
        );
        assert_eq!(
            reader.read(b"*1\r\n$16385\r\n", ReadLimits::UNAUTHENTICATED),
            Err(ProtocolError::UnauthenticatedBulkLength)
        );
        assert!(matches!(
            reader.read(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n", ReadLimits::UNAUTHENTICATED),
            Ok(Parsed::Request { .. })
        ));
    }

    #[test]
    fn an_incomplete_request_says_how_many_bytes_are_worth_waiting_for() {
        assert_eq!(parse_request(b""), Ok(Parsed::Incomplete { at_least: 1 }));
        assert_eq!(
            parse_request(b"*1\r\n$5\r\nhe"),
            Ok(Parsed::Incomplete { at_least: 4 + 4 + 7 })
        );
        assert_eq!(parse_request(b"PIN"), Ok(Parsed::Incomplete { at_least: 4 }));
    }

    fn encoded(reply: &Reply, protocol: Protocol) -> String {
        let mut out = Vec::new();
        reply.encode(protocol, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn replies_in_resp2_and_resp3() {
        use Protocol::*;
        assert_eq!(encoded(&Reply::ok(), Resp2), "+OK\r\n");
        assert_eq!(encoded(&Reply::error("ERR bad\r\nthing"), Resp2), "-ERR bad  thing\r\n");
        assert_eq!(encoded(&Reply::Null, Resp2), "$-1\r\n");
        assert_eq!(encoded(&Reply::Null, Resp3), "_\r\n");
        assert_eq!(encoded(&Reply::NullArray, Resp2), "*-1\r\n");
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        assert_eq!(encoded(&map, Resp2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(&map, Resp3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(&Reply::Double(1.5), Resp2), "$3\r\n1.5\r\n");
        assert_eq!(encoded(&Reply::Double(f64::INFINITY), Resp3), ",inf\r\n");
        assert_eq!(encoded(&Reply::Boolean(true), Resp2), ":1\r\n");
        assert_eq!(encoded(&Reply::Boolean(false), Resp3), "#f\r\n");
        let push = Reply::Push(vec![Reply::bulk("message")]);
        assert_eq!(encoded(&push, Resp2), "*1\r\n$7\r\nmessage\r\n");
        assert_eq!(encoded(&push, Resp3), ">1\r\n$7\r\nmessage\r\n");
    }

    proptest! {
        /// Any bytes: a request, a wait for more, or a protocol error; never a panic, and a
        /// request never claims more bytes than there are.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            match parse_request(&buf) {
                Ok(Parsed::Request { consumed, .. }) => prop_assert!(consumed <= buf.len() && consumed > 0),
                Ok(Parsed::Incomplete { at_least }) => prop_assert!(at_least > buf.len()),
                Err(_) => {}
            }
        }

        /// Read a few bytes at a time, as a socket delivers them, a stream of requests gives the
        /// same requests as read whole, and the reader never re-reads what it already parsed.
        #[test]
        fn reading_in_pieces_gives_the_same_requests(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..5), 1..4),
            step in 1usize..17,
        ) {
            let mut stream = Vec::new();
            for args in &requests {
                let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                stream.extend(encode_request(&refs));
            }
            let mut reader = RequestReader::default();
            let mut buf: Vec<u8> = Vec::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                buf.extend_from_slice(chunk);
                loop {
                    match reader.read(&buf, ReadLimits::AUTHENTICATED) {
                        Ok(Parsed::Request { args, consumed }) => {
                            buf.drain(..consumed);
                            got.push(args);
                        }
                        Ok(Parsed::Incomplete { at_least }) => {
                            prop_assert!(at_least > buf.len());
                            break;
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
            }
            prop_assert_eq!(got, requests);
            prop_assert!(buf.is_empty());
        }

        /// Bytes that look like a request (a protocol prefix, then noise) reach deeper paths.
        #[test]
        fn protocol_shaped_noise_parses_or_fails_cleanly(
            prefix in prop::sample::select(vec!["*", "*2\r\n", "*2\r\n$", "*1\r\n$3\r\n", "*3\r\n$1\r\na\r\n", "\"", "'"]),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = prefix.as_bytes().to_vec();
            buf.extend(noise);
            if let Ok(Parsed::Request { consumed, .. }) = parse_request(&buf) {
                prop_assert!(consumed <= buf.len());
            }
        }

        /// What a client writes reads back whole, however the bytes arrive: every prefix is
        /// incomplete with a truthful wait, and the whole gives the arguments back.
        #[test]
        fn encoded_requests_read_back_whole_from_any_prefix(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
        ) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let buf = encode_request(&refs);
            for cut in 0..buf.len() {
                match parse_request(&buf[..cut]) {
                    Ok(Parsed::Incomplete { at_least }) => prop_assert!(at_least > cut && at_least <= buf.len()),
                    other => prop_assert!(false, "prefix {cut} gave {other:?}"),
                }
            }
            prop_assert_eq!(parse_request(&buf), Ok(Parsed::Request { args, consumed: buf.len() }));
        }
    }
}
