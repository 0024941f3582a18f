//! Redis's hashes and sorted sets as Basalt KV values.
//!
//! A Redis key is one Basalt KV key, whatever its type, so the commands every type shares
//! (`DEL`, `EXISTS`, `EXPIRE`, `TTL`, `PERSIST`, `SCAN`, `KEYS`, `DBSIZE`) need nothing of their
//! own, a write that replaces a key replaces it whole in one step (`SET` over a hash, as in Redis),
//! and a key never has two types at once. A string is stored as its bytes, exactly, so the SDK
//! and the CLI read what RESP wrote. A hash or a sorted set is stored as [`TYPE_MARKER`] followed
//! by a type byte and its encoded contents ([`encode`]); that is how a command tells the type of
//! what it read (`WRONGTYPE` for a string command on a hash, and back).
//!
//! The marker is 16 bytes no text holds (it starts with 0xFF, never in UTF-8, and holds a NUL).
//! RESP refuses to store a string beginning with it (`ERR ... reserved`), so a Redis string
//! never reads as another type; a value written through the SDK beginning with it is read by
//! RESP as the type it announces (or refused as undecodable).
//!
//! The whole collection is one value: a field change reads it, changes it and writes it back,
//! conditioned on the revision read (see `combine`), so it is atomic as in
//! Redis, bounded by the largest value the cluster stores (1 MiB), and costs the collection's
//! size per change. That fits the uses the ten systems have (a record's fields, a sliding
//! window's recent timestamps); a collection of millions of members does not fit.
//!
//! Pure: encoding, decoding and every change and query of the types, tested without a cluster.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use crate::limits::VALUE_BYTES_MAX;

/// What starts every stored hash or sorted set (then one [`Tag`] byte).
pub const TYPE_MARKER: &[u8; 16] = b"\xffbasalt\x00rtype\x00v1";

/// The type byte after the marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    Hash = 1,
    SortedSet = 2,
}

/// A stored value, by type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(Vec<u8>),
    Hash(Hash),
    SortedSet(SortedSet),
}

impl Value {
    /// Redis's name of the type, as `TYPE` answers it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Hash(_) => "hash",
            Value::SortedSet(_) => "zset",
        }
    }
}

/// Why stored bytes are not a value of any type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ERR the stored value is marked as a Basalt Redis type but does not decode: {0}")]
pub struct Undecodable(&'static str);

/// Why a collection cannot be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ERR the {kind} would pass {VALUE_BYTES_MAX} bytes, the largest value Basalt stores")]
pub struct TooLarge {
    kind: &'static str,
}

/// Redis's name of the type stored bytes hold, read from the marker and type byte alone (no
/// decoding: `SCAN ... TYPE` and `TYPE` stay cheap on large values); `unknown` for a marked
/// value of no known type.
pub fn type_name_of(stored: &[u8]) -> &'static str {
    match stored.strip_prefix(TYPE_MARKER).map(|rest| rest.first().copied()) {
        None => "string",
        Some(Some(t)) if t == Tag::Hash as u8 => "hash",
        Some(Some(t)) if t == Tag::SortedSet as u8 => "zset",
        Some(_) => "unknown",
    }
}

/// Whether `value` may be stored as a string: it must not read as another type.
pub fn is_storable_string(value: &[u8]) -> bool {
    !value.starts_with(TYPE_MARKER)
}

/// The error a string write answers when [`is_storable_string`] says no.
pub const RESERVED_PREFIX: &str =
    "ERR the value begins with Basalt's reserved type marker (0xFF 'basalt' 0x00 ...) and cannot be stored as a string";

/// The value stored bytes hold.
pub fn decode(stored: &[u8]) -> Result<Value, Undecodable> {
    let Some(rest) = stored.strip_prefix(TYPE_MARKER) else {
        return Ok(Value::String(stored.to_vec()));
    };
    let (&tag, body) = rest.split_first().ok_or(Undecodable("no type byte"))?;
    let mut reader = Reader { rest: body };
    let count = reader.u32()? as usize;
    // Each entry takes at least 8 bytes: a count past that is not believed.
    if count > body.len() / 8 {
        return Err(Undecodable("a count larger than the value"));
    }
    let value = match tag {
        // Entries in strictly increasing order of their names, as `encode` writes them: one
        // encoding per value, and a name twice is refused.
        t if t == Tag::Hash as u8 => {
            let mut fields = Vec::with_capacity(count);
            for _ in 0..count {
                let field = reader.bytes()?;
                let value = reader.bytes()?;
                fields.push((field, value));
            }
            if fields.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(Undecodable("hash fields out of order"));
            }
            Value::Hash(Hash {
                fields: fields.into_iter().collect(),
            })
        }
        t if t == Tag::SortedSet as u8 => {
            let mut members = Vec::with_capacity(count);
            for _ in 0..count {
                let score = f64::from_bits(reader.u64()?);
                if score.is_nan() {
                    return Err(Undecodable("a NaN score"));
                }
                members.push((reader.bytes()?, score));
            }
            if members.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(Undecodable("sorted-set members out of order"));
            }
            Value::SortedSet(SortedSet::from_members(members))
        }
        _ => return Err(Undecodable("an unknown type byte")),
    };
    if !reader.rest.is_empty() {
        return Err(Undecodable("bytes after the last entry"));
    }
    Ok(value)
}

/// The bytes that store a hash or a sorted set (a string is stored as itself). Entries in a
/// fixed order (fields, or members, by their bytes), so equal values encode alike.
pub fn encode(value: &Value) -> Result<Vec<u8>, TooLarge> {
    let mut out = Vec::new();
    let kind = match value {
        Value::String(bytes) => return Ok(bytes.clone()),
        Value::Hash(hash) => {
            out.extend_from_slice(TYPE_MARKER);
            out.push(Tag::Hash as u8);
            put_u32(&mut out, hash.fields.len());
            for (field, value) in &hash.fields {
                put_bytes(&mut out, field);
                put_bytes(&mut out, value);
            }
            "hash"
        }
        Value::SortedSet(set) => {
            out.extend_from_slice(TYPE_MARKER);
            out.push(Tag::SortedSet as u8);
            put_u32(&mut out, set.scores.len());
            for (member, score) in &set.scores {
                out.extend_from_slice(&score.to_bits().to_le_bytes());
                put_bytes(&mut out, member);
            }
            "sorted set"
        }
    };
    if out.len() > VALUE_BYTES_MAX {
        return Err(TooLarge { kind });
    }
    Ok(out)
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Every length is bounded by the value's size, far under u32::MAX.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Undecodable> {
        if self.rest.len() < n {
            return Err(Undecodable("cut short"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Undecodable> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, Undecodable> {
        let bytes = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Undecodable> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// A Redis hash: fields and their values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hash {
    pub fields: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A Redis sorted set: members with scores, ordered by score, then by member bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SortedSet {
    /// Each member's score.
    scores: BTreeMap<Vec<u8>, f64>,
    /// The members in rank order.
    ranked: BTreeSet<Ranked>,
}

/// A member at its place in the rank order: by score, then by member bytes. Scores compare as
/// numbers, so `-0` and `0` are one score and their members order by bytes, as in Redis; no
/// score is NaN, so the order is total.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub score: f64,
    pub member: Vec<u8>,
}

impl Eq for Ranked {}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| self.member.cmp(&other.member))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One end of a score range, as `ZCOUNT`, `ZRANGE BYSCORE` and `ZREMRANGEBYSCORE` take it:
/// `1.5`, `(1.5` (exclusive), `-inf`, `+inf`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreBound {
    pub score: f64,
    pub exclusive: bool,
}

impl ScoreBound {
    /// Parses a bound; `None` is Redis's "min or max is not a float".
    pub fn parse(text: &[u8]) -> Option<ScoreBound> {
        let (exclusive, number) = match text.strip_prefix(b"(") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let score = parse_score(number)?;
        Some(ScoreBound { score, exclusive })
    }

    fn admits_from_below(self, score: f64) -> bool {
        if self.exclusive {
            score > self.score
        } else {
            score >= self.score
        }
    }

    fn admits_from_above(self, score: f64) -> bool {
        if self.exclusive {
            score < self.score
        } else {
            score <= self.score
        }
    }
}

/// A score as Redis reads one: a float, `inf`, `+inf`, `-inf` (any case); never NaN.
pub fn parse_score(text: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(text).ok()?;
    let score = match text.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ if text.is_empty() || text.trim() != text => return None,
        _ => text.parse::<f64>().ok()?,
    };
    (!score.is_nan()).then_some(score)
}

/// How `ZADD` treats the members it names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddRules {
    /// `NX`: only add new members. `XX`: only update existing ones.
    pub only_new: bool,
    pub only_existing: bool,
    /// `GT` / `LT`: update an existing member only to a greater / lesser score.
    pub only_greater: bool,
    pub only_less: bool,
}

/// What `ZADD` did with one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    New,
    Updated,
    /// The member already had that score.
    Unchanged,
    /// `NX`, `XX`, `GT` or `LT` held it back.
    Refused,
}

impl SortedSet {
    /// A set of these members, each named once.
    fn from_members(members: Vec<(Vec<u8>, f64)>) -> SortedSet {
        let ranked = members
            .iter()
            .map(|(member, score)| Ranked {
                score: *score,
                member: member.clone(),
            })
            .collect();
        SortedSet {
            scores: members.into_iter().collect(),
            ranked,
        }
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).copied()
    }

    fn insert(&mut self, member: Vec<u8>, score: f64) {
        if let Some(old) = self.scores.insert(member.clone(), score) {
            self.ranked.remove(&Ranked {
                score: old,
                member: member.clone(),
            });
        }
        self.ranked.insert(Ranked { score, member });
    }

    /// Removes `member`; whether it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(score) => {
                self.ranked.remove(&Ranked {
                    score,
                    member: member.to_vec(),
                });
                true
            }
            None => false,
        }
    }

    /// `ZADD`'s change for one member.
    pub fn add(&mut self, member: &[u8], score: f64, rules: AddRules) -> Added {
        match self.scores.get(member).copied() {
            None if rules.only_existing => Added::Refused,
            None => {
                self.insert(member.to_vec(), score);
                Added::New
            }
            Some(_) if rules.only_new => Added::Refused,
            Some(old) if rules.only_greater && score <= old => Added::Refused,
            Some(old) if rules.only_less && score >= old => Added::Refused,
            Some(old) if old == score => Added::Unchanged,
            Some(_) => {
                self.insert(member.to_vec(), score);
                Added::Updated
            }
        }
    }

    /// The members with scores within `min..max`, in rank order.
    pub fn by_score(&self, min: ScoreBound, max: ScoreBound) -> impl DoubleEndedIterator<Item = &Ranked> {
        self.ranked
            .iter()
            .filter(move |r| min.admits_from_below(r.score) && max.admits_from_above(r.score))
    }

    /// The members at ranks `start..=stop` (negative ranks count from the end, as in Redis), in
    /// rank order, or from the highest score with `rev`.
    pub fn by_rank(&self, start: i64, stop: i64, rev: bool) -> Vec<&Ranked> {
        let len = self.ranked.len() as i64;
        let start = if start < 0 { (len + start).max(0) } else { start };
        let stop = if stop < 0 { len + stop } else { stop.min(len - 1) };
        if start > stop || start >= len {
            return Vec::new();
        }
        let count = (stop - start + 1) as usize;
        if rev {
            self.ranked.iter().rev().skip(start as usize).take(count).collect()
        } else {
            self.ranked.iter().skip(start as usize).take(count).collect()
        }
    }

    /// Removes the members with scores within `min..max`; how many.
    pub fn remove_by_score(&mut self, min: ScoreBound, max: ScoreBound) -> usize {
        let doomed: Vec<Ranked> = self.by_score(min, max).cloned().collect();
        for ranked in &doomed {
            self.scores.remove(&ranked.member);
            self.ranked.remove(ranked);
        }
        doomed.len()
    }

    /// Every member in rank order.
    pub fn ranked(&self) -> impl DoubleEndedIterator<Item = &Ranked> {
        self.ranked.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bound(score: f64, exclusive: bool) -> ScoreBound {
        ScoreBound { score, exclusive }
    }

    fn set_of(members: &[(&str, f64)]) -> SortedSet {
        let mut set = SortedSet::default();
        for (m, s) in members {
            set.add(m.as_bytes(), *s, AddRules::default());
        }
        set
    }

    fn members<'a>(items: impl IntoIterator<Item = &'a Ranked>) -> Vec<String> {
        items
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.member).into_owned())
            .collect()
    }

    #[test]
    fn strings_are_stored_as_themselves_and_the_marker_is_reserved() {
        assert_eq!(decode(b"plain").expect("decode"), Value::String(b"plain".to_vec()));
        assert_eq!(encode(&Value::String(b"x".to_vec())).expect("encode"), b"x");
        assert!(is_storable_string(b"\xffbasalt"), "a prefix of the marker is a string");
        let mut marked = TYPE_MARKER.to_vec();
        marked.extend_from_slice(b"anything");
        assert!(!is_storable_string(&marked));
        // No text holds the marker: 0xFF is never part of UTF-8.
        assert_eq!(TYPE_MARKER[0], 0xff);
    }

    #[test]
    fn a_sorted_set_orders_by_score_then_member_and_ranges_as_redis_does() {
        let mut set = set_of(&[("c", 2.0), ("b", 1.0), ("a", 1.0), ("d", 3.0)]);
        assert_eq!(members(set.ranked()), ["a", "b", "c", "d"]);
        assert_eq!(members(set.by_score(bound(1.0, true), bound(3.0, false))), ["c", "d"]);
        assert_eq!(
            members(set.by_score(bound(f64::NEG_INFINITY, false), bound(2.0, true))),
            ["a", "b"]
        );
        assert_eq!(
            members(set.by_score(bound(5.0, false), bound(1.0, false))),
            Vec::<String>::new()
        );
        assert_eq!(members(set.by_rank(-2, -1, false)), ["c", "d"]);
        assert_eq!(members(set.by_rank(0, 100, false)), ["a", "b", "c", "d"]);
        assert_eq!(members(set.by_rank(0, 1, true)), ["d", "c"]);
        assert!(set.by_rank(3, 1, false).is_empty());
        // An update moves the member; rules hold back what they say.
        assert_eq!(set.add(b"a", 10.0, AddRules::default()), Added::Updated);
        assert_eq!(set.add(b"a", 10.0, AddRules::default()), Added::Unchanged);
        assert_eq!(members(set.ranked()), ["b", "c", "d", "a"]);
        let gt = AddRules {
            only_greater: true,
            ..AddRules::default()
        };
        assert_eq!(set.add(b"a", 5.0, gt), Added::Refused);
        assert_eq!(set.add(b"new", 5.0, gt), Added::New, "GT still adds new members");
        let xx = AddRules {
            only_existing: true,
            ..AddRules::default()
        };
        assert_eq!(set.add(b"other", 1.0, xx), Added::Refused);
        assert_eq!(set.remove_by_score(bound(2.0, false), bound(5.0, false)), 3);
        assert_eq!(members(set.ranked()), ["b", "a"]);
        // -0 and 0 are one score: their members order by bytes, as in Redis.
        let zeros = set_of(&[("b", -0.0), ("a", 0.0)]);
        assert_eq!(members(zeros.ranked()), ["a", "b"]);
    }

    #[test]
    fn scores_and_bounds_parse_as_redis_reads_them() {
        assert_eq!(parse_score(b"1.5"), Some(1.5));
        assert_eq!(parse_score(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_score(b"+INF"), Some(f64::INFINITY));
        assert_eq!(parse_score(b"1e3"), Some(1000.0));
        for bad in [&b"nan"[..], b"", b" 1", b"abc", b"1.5x"] {
            assert_eq!(parse_score(bad), None, "{bad:?}");
        }
        assert_eq!(ScoreBound::parse(b"(5"), Some(bound(5.0, true)));
        assert_eq!(ScoreBound::parse(b"(x"), None);
    }

    #[test]
    fn undecodable_values_are_errors() {
        let mut value = TYPE_MARKER.to_vec();
        assert!(decode(&value).is_err(), "no type byte");
        value.push(9);
        value.extend_from_slice(&0u32.to_le_bytes());
        assert!(decode(&value).is_err(), "unknown type");
        let hash = encode(&Value::Hash(Hash {
            fields: [(b"f".to_vec(), b"v".to_vec())].into(),
        }))
        .expect("encode");
        assert!(decode(&hash[..hash.len() - 1]).is_err(), "cut short");
        let mut longer = hash.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing bytes");
    }

    #[test]
    fn a_collection_past_the_value_limit_is_refused() {
        let big = Hash {
            fields: [(b"f".to_vec(), vec![0u8; VALUE_BYTES_MAX])].into(),
        };
        assert!(encode(&Value::Hash(big)).is_err());
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..12);
        prop_oneof![
            proptest::collection::btree_map(bytes(), bytes(), 0..8).prop_map(|fields| Value::Hash(Hash { fields })),
            proptest::collection::vec((bytes(), -1e6f64..1e6), 0..8).prop_map(|members| {
                let mut set = SortedSet::default();
                for (m, s) in members {
                    set.add(&m, s, AddRules::default());
                }
                Value::SortedSet(set)
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_collection_decodes_to_itself(value in value_strategy()) {
            let stored = encode(&value).expect("encode");
            prop_assert_eq!(decode(&stored).expect("decode"), value);
        }

        /// Any bytes after the marker decode or give an error, never a panic; what decodes
        /// encodes back to the same bytes (one encoding per value).
        #[test]
        fn any_marked_bytes_decode_or_are_refused(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut stored = TYPE_MARKER.to_vec();
            stored.extend_from_slice(&tail);
            if let Ok(value) = decode(&stored) {
                prop_assert_eq!(encode(&value).expect("encode"), stored);
            }
        }

        /// A mutated encoding of a real value decodes or is refused, never panics.
        #[test]
        fn mutated_encodings_decode_or_are_refused(
            value in value_strategy(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut stored = encode(&value).expect("encode");
            for (at, byte) in flips {
                let at = TYPE_MARKER.len() + at % (stored.len() - TYPE_MARKER.len());
                stored[at] = byte;
            }
            if let Ok(decoded) = decode(&stored) {
                prop_assert_eq!(encode(&decoded).expect("encode"), stored);
            }
        }

        /// The ranked order and the score map always agree, whatever the adds and removes.
        #[test]
        fn a_sorted_set_stays_ordered(ops in proptest::collection::vec((0u8..6, -3i32..3, any::<bool>()), 0..40)) {
            let mut set = SortedSet::default();
            for (member, score, remove) in ops {
                let member = [member];
                if remove {
                    set.remove(&member);
                } else {
                    set.add(&member, f64::from(score), AddRules::default());
                }
                let ranked: Vec<&Ranked> = set.ranked().collect();
                prop_assert_eq!(ranked.len(), set.len());
                prop_assert!(ranked.windows(2).all(|w| (w[0].score, &w[0].member) < (w[1].score, &w[1].member)));
                for r in ranked {
                    prop_assert_eq!(set.score(&r.member), Some(r.score));
                }
            }
        }
    }
}
