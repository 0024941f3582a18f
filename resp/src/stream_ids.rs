//! The pure half of Redis streams on Basalt topics: stream ids and how they map onto a topic's
//! offsets, the stored form of an entry's fields, and the KV rows that hold consumer groups and
//! their pending entries. No I/O: the commands that use them are in [`crate::streams`].
//!
//! A Redis stream `key` is partition 0 of the one-partition topic named `key`. The record at
//! offset `o`, stamped `t` (its batch's time, which never decreases along the partition), has
//! the id `t-o`: ids grow with offsets, as Redis requires, and an id's time is the entry's.

use std::fmt;

use crate::command::Bytes;
use crate::typed::TYPE_MARKER;

/// A Redis stream id: milliseconds, then a sequence number (here the record's offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Redis's error for an id that does not parse.
pub const INVALID_ID: &str = "ERR Invalid stream ID specified as stream command argument";

impl StreamId {
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// `ms-seq`, or `ms` alone (its sequence is `missing_seq`: 0 for a start, `u64::MAX` for an
    /// end), as Redis's `streamParseID` reads them.
    pub fn parse(arg: &[u8], missing_seq: u64) -> Option<StreamId> {
        let text = std::str::from_utf8(arg).ok()?;
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match text.split_once('-') {
            Some((ms, seq)) => Some(StreamId {
                ms: number(ms)?,
                seq: number(seq)?,
            }),
            None => Some(StreamId {
                ms: number(text)?,
                seq: missing_seq,
            }),
        }
    }

    /// The id right after this one, if any.
    pub fn next(self) -> Option<StreamId> {
        match (self.seq.checked_add(1), self.ms.checked_add(1)) {
            (Some(seq), _) => Some(StreamId { ms: self.ms, seq }),
            (None, Some(ms)) => Some(StreamId { ms, seq: 0 }),
            (None, None) => None,
        }
    }

    /// The id right before this one, if any.
    pub fn previous(self) -> Option<StreamId> {
        match (self.seq.checked_sub(1), self.ms.checked_sub(1)) {
            (Some(seq), _) => Some(StreamId { ms: self.ms, seq }),
            (None, Some(ms)) => Some(StreamId { ms, seq: u64::MAX }),
            (None, None) => None,
        }
    }

    pub fn bulk(self) -> Bytes {
        self.to_string().into_bytes()
    }
}

/// One end of an `XRANGE`: `-` and `+`, an id, or (Redis 6.2) `(id` leaving the id out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// The first id in the range (`-` resolves to [`StreamId::MIN`]).
    From(StreamId),
    /// The last id in the range (`+` resolves to [`StreamId::MAX`]).
    To(StreamId),
    /// A range that holds nothing (`(` of the smallest or largest id).
    Empty,
}

/// The start of a range as `XRANGE` takes it.
pub fn parse_range_start(arg: &[u8]) -> Result<RangeEnd, &'static str> {
    match arg {
        b"-" => Ok(RangeEnd::From(StreamId::MIN)),
        b"+" => Ok(RangeEnd::From(StreamId::MAX)),
        [b'(', rest @ ..] => match StreamId::parse(rest, 0).ok_or(INVALID_ID)?.next() {
            Some(id) => Ok(RangeEnd::From(id)),
            None => Ok(RangeEnd::Empty),
        },
        _ => Ok(RangeEnd::From(StreamId::parse(arg, 0).ok_or(INVALID_ID)?)),
    }
}

/// The end of a range as `XRANGE` takes it.
pub fn parse_range_end(arg: &[u8]) -> Result<RangeEnd, &'static str> {
    match arg {
        b"-" => Ok(RangeEnd::To(StreamId::MIN)),
        b"+" => Ok(RangeEnd::To(StreamId::MAX)),
        [b'(', rest @ ..] => match StreamId::parse(rest, u64::MAX).ok_or(INVALID_ID)?.previous() {
            Some(id) => Ok(RangeEnd::To(id)),
            None => Ok(RangeEnd::Empty),
        },
        _ => Ok(RangeEnd::To(StreamId::parse(arg, u64::MAX).ok_or(INVALID_ID)?)),
    }
}

/// Where a read of a stream starts, as `XREAD` and `XREADGROUP` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries after this id.
    After(StreamId),
    /// `$`: entries added from now on.
    End,
    /// `>` (groups only): entries never delivered to the group.
    Undelivered,
}

impl ReadFrom {
    pub fn parse(arg: &[u8]) -> Result<ReadFrom, &'static str> {
        match arg {
            b"$" => Ok(ReadFrom::End),
            b">" => Ok(ReadFrom::Undelivered),
            _ => StreamId::parse(arg, 0).map(ReadFrom::After).ok_or(INVALID_ID),
        }
    }
}

/// The first offset whose id is at or after `id`, given `at_ms` (the first offset stamped at
/// or after `id.ms`) and `after_ms` (the first stamped after it): the records stamped `id.ms`
/// are the offsets `at_ms..after_ms`, and their ids are `id.ms-offset`.
pub fn first_offset_from(id: StreamId, at_ms: u64, after_ms: u64) -> u64 {
    id.seq.max(at_ms).min(after_ms)
}

/// The tag after [`TYPE_MARKER`] that marks a record's value as a Redis stream entry's fields.
pub const ENTRY_TAG: u8 = 3;

/// An entry's fields as a record's value: the marker, the tag, then each field and value as a
/// 4-byte big-endian length and its bytes. A reader of the topic through the SDK sees these
/// bytes; [`entry_fields`] reads them back.
pub fn encode_entry(pairs: &[(Bytes, Bytes)]) -> Vec<u8> {
    let body: usize = pairs.iter().map(|(f, v)| 8 + f.len() + v.len()).sum();
    let mut out = Vec::with_capacity(TYPE_MARKER.len() + 1 + body);
    out.extend_from_slice(TYPE_MARKER);
    out.push(ENTRY_TAG);
    for (field, value) in pairs {
        for part in [field, value] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The fields of a record, flat (field, value, field, value ...): an entry [`encode_entry`]
/// wrote, or for a record produced otherwise (the SDK, the CLI) `key` (when it has one),
/// `value`, then each header's name and value.
pub fn entry_fields(key: &[u8], value: &[u8], headers: &[(String, Vec<u8>)]) -> Vec<Bytes> {
    if let Some(fields) = decode_entry(value) {
        return fields;
    }
    let mut fields = Vec::with_capacity(4 + 2 * headers.len());
    if !key.is_empty() {
        fields.push(b"key".to_vec());
        fields.push(key.to_vec());
    }
    fields.push(b"value".to_vec());
    fields.push(value.to_vec());
    for (name, value) in headers {
        fields.push(name.as_bytes().to_vec());
        fields.push(value.clone());
    }
    fields
}

fn decode_entry(value: &[u8]) -> Option<Vec<Bytes>> {
    let mut rest = value.strip_prefix(TYPE_MARKER)?.strip_prefix(&[ENTRY_TAG])?;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (length, tail) = rest.split_first_chunk::<4>()?;
        let length = u32::from_be_bytes(*length) as usize;
        if tail.len() < length {
            return None;
        }
        fields.push(tail[..length].to_vec());
        rest = &tail[length..];
    }
    fields.len().is_multiple_of(2).then_some(fields)
}

/// Keys beginning with this are Basalt's own rows (consumer groups of Redis streams): RESP
/// refuses them as keys and leaves them out of `SCAN`, `KEYS` and `DBSIZE`.
pub const RESERVED_KEY_PREFIX: &[u8] = b"\xffbasalt\x00";

const STREAM_ROW: &[u8] = b"\xffbasalt\x00xstream\x00";
const GROUP_ROW: &[u8] = b"\xffbasalt\x00xgroup\x00";
const PENDING_ROW: &[u8] = b"\xffbasalt\x00xpending\x00";

fn named(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
}

/// The KV row marking topic `stream` as a stream RESP created: only such topics are Redis keys
/// to `TYPE`, `EXISTS` and `DEL` (a topic the SDK or CLI created is read and written by the
/// stream commands, but never deleted by a `DEL` of its name).
pub fn stream_row(stream: &[u8]) -> Vec<u8> {
    let mut key = STREAM_ROW.to_vec();
    key.extend_from_slice(stream);
    key
}

/// The KV row of consumer group `group` of stream `stream`.
pub fn group_row(stream: &[u8], group: &[u8]) -> Vec<u8> {
    let mut key = GROUP_ROW.to_vec();
    named(&mut key, stream);
    named(&mut key, group);
    key
}

/// Where every group row of `stream` starts.
pub fn group_rows_of(stream: &[u8]) -> Vec<u8> {
    let mut key = GROUP_ROW.to_vec();
    named(&mut key, stream);
    key
}

/// The group a group row (under `prefix`, from [`group_rows_of`]) is of.
pub fn group_name(row: &[u8], prefix: &[u8]) -> Option<Bytes> {
    let rest = row.strip_prefix(prefix)?;
    let (len, name) = rest.split_first_chunk::<4>()?;
    (name.len() == u32::from_be_bytes(*len) as usize).then(|| name.to_vec())
}

/// Where the pending rows of `group` of `stream` start; each then has the id's sequence and
/// milliseconds (8 bytes each, big-endian), so they sort by offset.
pub fn pending_rows(stream: &[u8], group: &[u8]) -> Vec<u8> {
    let mut key = PENDING_ROW.to_vec();
    named(&mut key, stream);
    named(&mut key, group);
    key
}

/// Where the pending rows of every group of `stream` start.
pub fn pending_rows_of(stream: &[u8]) -> Vec<u8> {
    let mut key = PENDING_ROW.to_vec();
    named(&mut key, stream);
    key
}

/// Where a scan of `group`'s pending rows starts (exclusive) to see every row of an offset at
/// or past `offset` (rows sort by offset, then stamp).
pub fn pending_rows_from(stream: &[u8], group: &[u8], offset: u64) -> Vec<u8> {
    let mut key = pending_rows(stream, group);
    if let Some(before) = offset.checked_sub(1) {
        key.extend_from_slice(&before.to_be_bytes());
        key.extend_from_slice(&u64::MAX.to_be_bytes());
    }
    key
}

/// The row saying entry `id` was delivered to a member of `group` and not acknowledged.
pub fn pending_row(stream: &[u8], group: &[u8], id: StreamId) -> Vec<u8> {
    let mut key = pending_rows(stream, group);
    key.extend_from_slice(&id.seq.to_be_bytes());
    key.extend_from_slice(&id.ms.to_be_bytes());
    key
}

/// The id a pending row (under `prefix`, from [`pending_rows`]) is of.
pub fn pending_id(row: &[u8], prefix: &[u8]) -> Option<StreamId> {
    let rest = row.strip_prefix(prefix)?;
    let (seq, ms) = rest.split_first_chunk::<8>()?;
    let ms: [u8; 8] = ms.try_into().ok()?;
    Some(StreamId {
        ms: u64::from_be_bytes(ms),
        seq: u64::from_be_bytes(*seq),
    })
}

/// `XPENDING key group [[IDLE ms] start end count [consumer]]`'s extended form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingQuery {
    pub min_idle_ms: u64,
    pub start: RangeEnd,
    pub end: RangeEnd,
    pub count: usize,
    pub consumer: Option<Bytes>,
}

/// When `XCLAIM` says the claimed entries were delivered (the last of `IDLE` and `TIME` given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveredAt {
    /// `IDLE ms`: this long ago.
    Idle(i64),
    /// `TIME unix-ms`: at this time.
    Time(i64),
}

/// `XCLAIM`'s options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimOptions {
    pub delivered_at: Option<DeliveredAt>,
    /// `RETRYCOUNT n`: the delivery count set to this (a negative count leaves it).
    pub retry_count: Option<u64>,
    /// `FORCE`: entries not pending are claimed too (when they exist).
    pub force: bool,
    /// `JUSTID`: answer ids only, and do not count a delivery.
    pub just_id: bool,
}

impl ClaimOptions {
    /// The pending row a claim by `consumer` at `now` (Unix ms) leaves, from the one it had
    /// (`None`: an entry `FORCE` makes pending, which counts as delivered once). A delivery
    /// time before the epoch or after now reads as now, as in Redis.
    pub fn claimed(&self, consumer: &[u8], before: Option<&Pending>, now: u64) -> Pending {
        let deliveries = before.map_or(1, |p| p.deliveries);
        let at = match self.delivered_at {
            Some(DeliveredAt::Idle(idle)) => (now as i64).saturating_sub(idle),
            Some(DeliveredAt::Time(time)) => time,
            None => now as i64,
        };
        Pending {
            consumer: consumer.to_vec(),
            delivered_ms: u64::try_from(at).ok().filter(|at| *at <= now).unwrap_or(now),
            deliveries: self.retry_count.unwrap_or(if self.just_id {
                deliveries
            } else {
                deliveries.saturating_add(1)
            }),
        }
    }
}

/// A consumer group's place: the next offset `>` delivers, and the last id it delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupState {
    pub next_offset: u64,
    pub last_delivered: StreamId,
}

impl GroupState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.next_offset.to_be_bytes());
        out.extend_from_slice(&self.last_delivered.ms.to_be_bytes());
        out.extend_from_slice(&self.last_delivered.seq.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<GroupState> {
        let bytes: &[u8; 24] = bytes.try_into().ok()?;
        let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        Some(GroupState {
            next_offset: word(0),
            last_delivered: StreamId {
                ms: word(8),
                seq: word(16),
            },
        })
    }
}

/// A pending entry: which consumer has it, since when (Unix ms), and how often it was delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub consumer: Bytes,
    pub delivered_ms: u64,
    pub deliveries: u64,
}

impl Pending {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.consumer.len());
        out.extend_from_slice(&self.delivered_ms.to_be_bytes());
        out.extend_from_slice(&self.deliveries.to_be_bytes());
        out.extend_from_slice(&self.consumer);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Pending> {
        let (delivered, rest) = bytes.split_first_chunk::<8>()?;
        let (deliveries, consumer) = rest.split_first_chunk::<8>()?;
        Some(Pending {
            consumer: consumer.to_vec(),
            delivered_ms: u64::from_be_bytes(*delivered),
            deliveries: u64::from_be_bytes(*deliveries),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A group row names its group back, whatever the names; a row of another stream (or
        /// any other bytes) names none under this stream's prefix.
        #[test]
        fn a_group_row_names_its_group(
            stream in proptest::collection::vec(any::<u8>(), 0..20),
            other in proptest::collection::vec(any::<u8>(), 0..20),
            group in proptest::collection::vec(any::<u8>(), 0..20),
            junk in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let prefix = group_rows_of(&stream);
            prop_assert_eq!(group_name(&group_row(&stream, &group), &prefix), Some(group.clone()));
            if other != stream {
                prop_assert_eq!(group_name(&group_row(&other, &group), &prefix), None);
            }
            let _ = group_name(&junk, &prefix);
        }
    }

    #[test]
    fn ids_parse_as_redis_reads_them() {
        assert_eq!(StreamId::parse(b"5-3", 0), Some(StreamId { ms: 5, seq: 3 }));
        assert_eq!(StreamId::parse(b"5", 0), Some(StreamId { ms: 5, seq: 0 }));
        assert_eq!(StreamId::parse(b"5", u64::MAX), Some(StreamId { ms: 5, seq: u64::MAX }));
        for bad in [
            &b""[..],
            b"-",
            b"5-",
            b"-5",
            b"a-1",
            b"1-2-3",
            b"+1",
            b" 1",
            b"18446744073709551616",
        ] {
            assert_eq!(StreamId::parse(bad, 0), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(StreamId { ms: 7, seq: 0 }.to_string(), "7-0");
    }

    #[test]
    fn range_ends_cover_exclusive_and_open_ends() {
        let id = |ms, seq| StreamId { ms, seq };
        assert_eq!(parse_range_start(b"-"), Ok(RangeEnd::From(StreamId::MIN)));
        assert_eq!(parse_range_end(b"+"), Ok(RangeEnd::To(StreamId::MAX)));
        assert_eq!(parse_range_start(b"(5-3"), Ok(RangeEnd::From(id(5, 4))));
        assert_eq!(parse_range_end(b"(5-0"), Ok(RangeEnd::To(id(4, u64::MAX))));
        assert_eq!(parse_range_end(b"5"), Ok(RangeEnd::To(id(5, u64::MAX))));
        assert_eq!(parse_range_end(b"(0-0"), Ok(RangeEnd::Empty));
        assert_eq!(
            parse_range_start(b"(18446744073709551615-18446744073709551615"),
            Ok(RangeEnd::Empty)
        );
        assert_eq!(parse_range_start(b"(x"), Err(INVALID_ID));
    }

    #[test]
    fn the_first_offset_from_an_id_follows_stamps_then_offsets() {
        // Offsets 10..13 are stamped 100, 14.. stamped 200.
        let (at, after) = (10, 14);
        let id = |seq| StreamId { ms: 100, seq };
        assert_eq!(first_offset_from(id(0), at, after), 10, "every record of the ms");
        assert_eq!(first_offset_from(id(12), at, after), 12, "from the record itself");
        assert_eq!(first_offset_from(id(99), at, after), 14, "past the ms's records");
    }

    #[test]
    fn entries_round_trip_and_other_records_show_key_and_value() {
        let pairs = vec![(b"a".to_vec(), b"1".to_vec()), (b"a".to_vec(), Vec::new())];
        let stored = encode_entry(&pairs);
        assert_eq!(
            entry_fields(b"", &stored, &[]),
            vec![b"a".to_vec(), b"1".to_vec(), b"a".to_vec(), Vec::new()]
        );
        let plain = entry_fields(b"k", b"v", &[("h".into(), b"x".to_vec())]);
        assert_eq!(
            plain,
            [&b"key"[..], b"k", b"value", b"v", b"h", b"x"].map(<[u8]>::to_vec)
        );
    }

    #[test]
    fn a_scan_from_an_offset_sees_every_row_of_it() {
        let from = pending_rows_from(b"s", b"g", 7);
        assert!(pending_row(b"s", b"g", StreamId { ms: 0, seq: 7 }) > from);
        assert!(pending_row(b"s", b"g", StreamId { ms: u64::MAX, seq: 6 }) <= from);
        assert_eq!(pending_rows_from(b"s", b"g", 0), pending_rows(b"s", b"g"));
    }

    #[test]
    fn a_claim_sets_time_and_count_as_its_options_say() {
        let before = Pending {
            consumer: b"a".to_vec(),
            delivered_ms: 10,
            deliveries: 2,
        };
        let plain = ClaimOptions::default().claimed(b"b", Some(&before), 1_000);
        assert_eq!(
            (plain.consumer.as_slice(), plain.delivered_ms, plain.deliveries),
            (&b"b"[..], 1_000, 3)
        );
        let just_id = ClaimOptions {
            just_id: true,
            delivered_at: Some(DeliveredAt::Idle(300)),
            ..ClaimOptions::default()
        };
        let claimed = just_id.claimed(b"b", Some(&before), 1_000);
        assert_eq!((claimed.delivered_ms, claimed.deliveries), (700, 2));
        let set = ClaimOptions {
            delivered_at: Some(DeliveredAt::Time(5)),
            retry_count: Some(9),
            ..ClaimOptions::default()
        };
        let claimed = set.claimed(b"b", None, 1_000);
        assert_eq!((claimed.delivered_ms, claimed.deliveries), (5, 9));
        // A forced entry counts its first delivery; times out of range read as now.
        assert_eq!(ClaimOptions::default().claimed(b"b", None, 1_000).deliveries, 2);
        for at in [DeliveredAt::Time(-1), DeliveredAt::Time(2_000), DeliveredAt::Idle(-5)] {
            let options = ClaimOptions {
                delivered_at: Some(at),
                ..ClaimOptions::default()
            };
            assert_eq!(options.claimed(b"b", None, 1_000).delivered_ms, 1_000, "{at:?}");
        }
        let idle_forever = ClaimOptions {
            delivered_at: Some(DeliveredAt::Idle(5_000)),
            ..ClaimOptions::default()
        };
        assert_eq!(idle_forever.claimed(b"b", None, 1_000).delivered_ms, 1_000);
    }

    #[test]
    fn rows_sort_by_offset_and_give_their_ids_back() {
        let prefix = pending_rows(b"s", b"g");
        let a = pending_row(b"s", b"g", StreamId { ms: 900, seq: 2 });
        let b = pending_row(b"s", b"g", StreamId { ms: 5, seq: 10 });
        assert!(a < b, "rows sort by offset");
        assert_eq!(pending_id(&b, &prefix), Some(StreamId { ms: 5, seq: 10 }));
        assert!(a.starts_with(RESERVED_KEY_PREFIX) && group_row(b"s", b"g").starts_with(RESERVED_KEY_PREFIX));
        assert!(
            !pending_row(b"s", b"gx", StreamId::MIN).starts_with(&prefix),
            "group names are length-prefixed"
        );
        let state = GroupState {
            next_offset: 3,
            last_delivered: StreamId { ms: 1, seq: 2 },
        };
        assert_eq!(GroupState::decode(&state.encode()), Some(state));
        let pending = Pending {
            consumer: b"c".to_vec(),
            delivered_ms: 9,
            deliveries: 2,
        };
        assert_eq!(Pending::decode(&pending.encode()), Some(pending));
    }

    proptest! {
        #[test]
        fn any_value_reads_as_fields_without_panicking(value in proptest::collection::vec(any::<u8>(), 0..64),
                                                       tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut marked = TYPE_MARKER.to_vec();
            marked.push(ENTRY_TAG);
            marked.extend_from_slice(&tail);
            for bytes in [value, marked] {
                let fields = entry_fields(b"", &bytes, &[]);
                prop_assert!(fields.len().is_multiple_of(2));
            }
        }

        #[test]
        fn ids_print_and_parse_back(ms in any::<u64>(), seq in any::<u64>()) {
            let id = StreamId { ms, seq };
            prop_assert_eq!(StreamId::parse(id.to_string().as_bytes(), 0), Some(id));
            if let Some(next) = id.next() {
                prop_assert!(next > id);
                prop_assert_eq!(next.previous(), Some(id));
            }
        }
    }
}
