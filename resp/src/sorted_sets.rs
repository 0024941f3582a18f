//! Sorted-set queries as the sliding-window limiters and leaderboards use them: what `ZADD`
//! and `ZRANGE` (by rank or `BYSCORE`, `REV`, `LIMIT`, `WITHSCORES`, and the older
//! `ZRANGEBYSCORE` / `ZREVRANGEBYSCORE`) take, the members a range selects and how its reply is
//! shaped. The sorted set itself is in [`crate::typed`]; each command's decision in
//! [`crate::decide`].

use crate::command::Bytes;
use crate::frame::Reply;
use crate::typed::{AddRules, Ranked, ScoreBound, SortedSet};

/// What `ZRANGE` selects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RangeBy {
    /// Ranks `start..=stop` (negative from the end).
    Rank(i64, i64),
    /// Scores from `min` to `max` (as given after `REV`'s swap: always low, then high).
    Score(ScoreBound, ScoreBound),
}

/// A parsed `ZRANGE` (and `ZRANGEBYSCORE`, `ZREVRANGEBYSCORE`).
#[derive(Clone, Debug, PartialEq)]
pub struct RangeQuery {
    pub by: RangeBy,
    pub rev: bool,
    /// `LIMIT offset count` (a negative count: all from the offset).
    pub limit: Option<(i64, i64)>,
    pub with_scores: bool,
}

/// A parsed `ZADD`.
#[derive(Clone, Debug, PartialEq)]
pub struct AddQuery {
    pub rules: AddRules,
    /// `CH`: count updated members too.
    pub count_changed: bool,
    /// `INCR`: add the score to the member's (one pair), answer the new score.
    pub incr: bool,
    pub pairs: Vec<(f64, Bytes)>,
}

/// The members a range query selects, in the order it answers them. Pure.
pub fn select(set: &SortedSet, query: &RangeQuery) -> Vec<(f64, Vec<u8>)> {
    let picked: Vec<&Ranked> = match query.by {
        // `LIMIT` goes with `BYSCORE` only (the parser refuses it here).
        RangeBy::Rank(start, stop) => set.by_rank(start, stop, query.rev),
        RangeBy::Score(min, max) => {
            let in_range = set.by_score(min, max);
            let ordered: Vec<&Ranked> = if query.rev {
                in_range.rev().collect()
            } else {
                in_range.collect()
            };
            match query.limit {
                None => ordered,
                Some((offset, _)) if offset < 0 => Vec::new(),
                Some((offset, count)) => {
                    let rest = ordered.into_iter().skip(offset as usize);
                    if count < 0 {
                        rest.collect()
                    } else {
                        rest.take(count as usize).collect()
                    }
                }
            }
        }
    };
    picked.into_iter().map(|r| (r.score, r.member.clone())).collect()
}

/// The reply of a range: members, with scores if asked (RESP3: a pair per member; RESP2: member
/// and score in turn).
pub fn range_reply(items: Vec<(f64, Vec<u8>)>, with_scores: bool, resp3: bool) -> Reply {
    if !with_scores {
        return Reply::Array(items.into_iter().map(|(_, m)| Reply::Bulk(m)).collect());
    }
    if resp3 {
        return Reply::Array(
            items
                .into_iter()
                .map(|(s, m)| Reply::Array(vec![Reply::Bulk(m), Reply::Double(s)]))
                .collect(),
        );
    }
    Reply::Array(
        items
            .into_iter()
            .flat_map(|(s, m)| [Reply::Bulk(m), Reply::Double(s)])
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> SortedSet {
        let mut set = SortedSet::default();
        for (m, s) in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)] {
            set.add(m.as_bytes(), s, AddRules::default());
        }
        set
    }

    fn names(items: Vec<(f64, Vec<u8>)>) -> Vec<String> {
        items
            .into_iter()
            .map(|(_, m)| String::from_utf8_lossy(&m).into_owned())
            .collect()
    }

    fn query(by: RangeBy, rev: bool, limit: Option<(i64, i64)>) -> RangeQuery {
        RangeQuery {
            by,
            rev,
            limit,
            with_scores: false,
        }
    }

    fn bound(score: f64) -> ScoreBound {
        ScoreBound {
            score,
            exclusive: false,
        }
    }

    /// The selections below are what redis-server 7 answers for the same set.
    #[test]
    fn ranges_select_as_redis_does() {
        let s = set();
        assert_eq!(
            names(select(&s, &query(RangeBy::Rank(0, -1), false, None))),
            ["a", "b", "c", "d"]
        );
        assert_eq!(names(select(&s, &query(RangeBy::Rank(1, 2), false, None))), ["b", "c"]);
        assert_eq!(names(select(&s, &query(RangeBy::Rank(0, 1), true, None))), ["d", "c"]);
        assert_eq!(names(select(&s, &query(RangeBy::Rank(-2, -1), true, None))), ["b", "a"]);
        assert_eq!(
            names(select(&s, &query(RangeBy::Rank(0, -1), true, None))),
            ["d", "c", "b", "a"]
        );
        assert_eq!(
            names(select(&s, &query(RangeBy::Rank(5, 10), false, None))),
            Vec::<String>::new()
        );
        let by_score = RangeBy::Score(bound(2.0), bound(4.0));
        assert_eq!(names(select(&s, &query(by_score, false, None))), ["b", "c", "d"]);
        assert_eq!(names(select(&s, &query(by_score, true, None))), ["d", "c", "b"]);
        assert_eq!(names(select(&s, &query(by_score, false, Some((1, 1))))), ["c"]);
        assert_eq!(names(select(&s, &query(by_score, true, Some((1, -1))))), ["c", "b"]);
        assert_eq!(
            names(select(&s, &query(by_score, false, Some((-1, 5))))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn scores_come_in_pairs_in_resp3_and_in_turn_in_resp2() {
        let items = vec![(1.5, b"a".to_vec())];
        assert_eq!(
            range_reply(items.clone(), true, false),
            Reply::Array(vec![Reply::Bulk(b"a".to_vec()), Reply::Double(1.5)])
        );
        assert_eq!(
            range_reply(items, true, true),
            Reply::Array(vec![Reply::Array(vec![Reply::Bulk(b"a".to_vec()), Reply::Double(1.5)])])
        );
    }
}
