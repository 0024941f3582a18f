//! Conditional requests (RFC 9110 §13, RFC 9111 §4.3): answering a client's `If-None-Match` /
//! `If-Modified-Since` from a stored object (304 or the whole answer), asking the origin whether
//! a stale object is still good, and folding the origin's 304 into the stored headers.

use std::time::SystemTime;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method};

use crate::freshness::http_date;

/// What a conditional request gets from a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 304 Not Modified: the client's copy is the stored one.
    NotModified,
    /// The stored answer (200, or 206 under a range).
    Full,
}

/// The stored object's validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<HeaderValue>,
    /// `Last-Modified`, else `Date`, else the time the response arrived (RFC 9111 §4.3.2).
    pub modified: SystemTime,
}

impl Validators {
    /// The validators of a stored response that arrived at `response_time`. Two `ETag` lines
    /// are no ETag.
    pub fn of(stored: &HeaderMap, response_time: SystemTime) -> Self {
        let date = |name| http_date(stored, name).and_then(Result::ok);
        let mut etags = stored.get_all(header::ETAG).iter();
        let etag = match (etags.next(), etags.next()) {
            (Some(one), None) => Some(one.clone()),
            _ => None,
        };
        Self {
            etag,
            modified: date(header::LAST_MODIFIED)
                .or_else(|| date(header::DATE))
                .unwrap_or(response_time),
        }
    }
}

/// Evaluates a client's `If-None-Match` (or, without it, `If-Modified-Since`) against a stored
/// object. Only GET and HEAD are ever answered 304; an unreadable date is ignored. Call it only
/// for an object that may be served now (fresh, or stale within an allowance): a 304 says the
/// client's copy may be used.
pub fn evaluate(method: &Method, request: &HeaderMap, stored: &Validators) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        return Answer::Full;
    }
    let mut if_none_match = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if if_none_match.peek().is_some() {
        let matched = if_none_match.any(|line| {
            entity_tags(line.as_bytes())
                .any(|tag| tag == b"*" || stored.etag.as_ref().is_some_and(|etag| weak_eq(tag, etag.as_bytes())))
        });
        return if matched { Answer::NotModified } else { Answer::Full };
    }
    match http_date(request, header::IF_MODIFIED_SINCE) {
        Some(Ok(since)) if stored.modified <= since => Answer::NotModified,
        _ => Answer::Full,
    }
}

/// The headers of a request asking the origin whether a stored object is still good: its ETag as
/// `If-None-Match`, its `Last-Modified` as `If-Modified-Since`. Empty when it has neither (the
/// object is then fetched again whole).
pub fn revalidation_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Some(etag) = stored.get(header::ETAG) {
        out.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(last_modified) = stored.get(header::LAST_MODIFIED) {
        out.insert(header::IF_MODIFIED_SINCE, last_modified.clone());
    }
    out
}

/// Headers a 304 from the origin does not replace in the stored object: they describe the stored
/// body, which the 304 does not carry, or the connection (RFC 9111 §3.2).
const KEPT_ON_NOT_MODIFIED: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::UPGRADE,
];

/// The origin answered 304 with another validator than the stored object's: its 304 is about
/// another representation, so the object must be fetched again whole (RFC 9111 §4.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the origin's 304 names another ETag than the stored object's")]
pub struct ValidatorMismatch;

/// Folds the origin's 304 into the stored headers: every header the 304 carries replaces the
/// stored one of that name (all its lines), except those of [`KEPT_ON_NOT_MODIFIED`]. Refused,
/// changing nothing, when the 304 names an ETag the stored object does not have. Afterwards, run
/// [`crate::freshness::decide`] again on the merged headers: the 304 may have changed freshness,
/// `Vary` or tags, or forbidden storing.
pub fn merge_not_modified(stored: &mut HeaderMap, not_modified: &HeaderMap) -> Result<(), ValidatorMismatch> {
    if let Some(new) = not_modified.get(header::ETAG) {
        let same = stored
            .get(header::ETAG)
            .is_some_and(|old| weak_eq(old.as_bytes(), new.as_bytes()));
        if !same {
            return Err(ValidatorMismatch);
        }
    }
    for name in not_modified.keys() {
        if KEPT_ON_NOT_MODIFIED.contains(name) {
            continue;
        }
        stored.remove(name);
        for value in not_modified.get_all(name) {
            stored.append(name.clone(), value.clone());
        }
    }
    Ok(())
}

/// The elements of an `If-None-Match` line: `*` or entity tags, split at commas outside quotes.
fn entity_tags(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = line;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let element = rest[..end].trim_ascii();
        rest = rest.get(end + 1..).unwrap_or_default();
        if !element.is_empty() {
            return Some(element);
        }
    })
}

/// Weak comparison (RFC 9110 §8.8.3.2): the opaque tags are equal, whether either is weak.
pub fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let strip = |t: &[u8]| t.trim_ascii().strip_prefix(b"W/").unwrap_or(t.trim_ascii()).to_vec();
    strip(a) == strip(b)
}

/// Strong comparison: both strong and byte-equal.
pub fn strong_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (a.trim_ascii(), b.trim_ascii());
    !a.starts_with(b"W/") && !b.starts_with(b"W/") && a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers as map;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn stored(etag: Option<&str>, modified: u64) -> Validators {
        Validators {
            etag: etag.map(|e| HeaderValue::from_str(e).expect("etag")),
            modified: at(modified),
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        let v = stored(Some("\"v2\""), 0);
        for matching in ["\"v2\"", "W/\"v2\"", "\"v1\", \"v2\"", "*", "\"a,b\", W/\"v2\""] {
            assert_eq!(
                evaluate(&Method::GET, &map(&[("if-none-match", matching)]), &v),
                Answer::NotModified,
                "{matching}"
            );
        }
        for other in ["\"v1\"", "\"a,\\\"v2\"", ""] {
            assert_eq!(
                evaluate(&Method::GET, &map(&[("if-none-match", other)]), &v),
                Answer::Full,
                "{other}"
            );
        }
        // Several lines are one list.
        let two = map(&[("if-none-match", "\"x\""), ("if-none-match", "\"v2\"")]);
        assert_eq!(evaluate(&Method::HEAD, &two, &v), Answer::NotModified);
        // Only GET and HEAD.
        assert_eq!(
            evaluate(&Method::POST, &map(&[("if-none-match", "*")]), &v),
            Answer::Full
        );
    }

    #[test]
    fn if_modified_since_applies_only_without_if_none_match() {
        let v = stored(Some("\"v2\""), 100);
        let since = |secs| httpdate::fmt_http_date(at(secs));
        assert_eq!(
            evaluate(&Method::GET, &map(&[("if-modified-since", &since(100))]), &v),
            Answer::NotModified
        );
        assert_eq!(
            evaluate(&Method::GET, &map(&[("if-modified-since", &since(99))]), &v),
            Answer::Full
        );
        assert_eq!(
            evaluate(&Method::GET, &map(&[("if-modified-since", "garbage")]), &v),
            Answer::Full
        );
        let both = map(&[("if-none-match", "\"v1\""), ("if-modified-since", &since(500))]);
        assert_eq!(
            evaluate(&Method::GET, &both, &v),
            Answer::Full,
            "If-None-Match decides alone"
        );
    }

    #[test]
    fn validators_fall_back_from_last_modified_to_date_to_arrival() {
        let lm = httpdate::fmt_http_date(at(10));
        let date = httpdate::fmt_http_date(at(20));
        assert_eq!(
            Validators::of(&map(&[("last-modified", &lm), ("date", &date)]), at(30)).modified,
            at(10)
        );
        assert_eq!(Validators::of(&map(&[("date", &date)]), at(30)).modified, at(20));
        assert_eq!(Validators::of(&HeaderMap::new(), at(30)).modified, at(30));
        assert_eq!(
            Validators::of(&map(&[("etag", "\"a\""), ("etag", "\"b\"")]), at(0)).etag,
            None
        );
    }

    #[test]
    fn revalidation_asks_by_etag_and_date_and_a_304_refreshes_headers() {
        let mut kept = map(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 15 Nov 1994 12:45:26 GMT"),
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
            ("x-old", "a"),
        ]);
        let ask = revalidation_headers(&kept);
        assert_eq!(ask.get(header::IF_NONE_MATCH).expect("inm"), "\"v1\"");
        assert_eq!(
            ask.get(header::IF_MODIFIED_SINCE).expect("ims"),
            "Tue, 15 Nov 1994 12:45:26 GMT"
        );
        assert!(revalidation_headers(&HeaderMap::new()).is_empty());

        let other = map(&[("etag", "\"v2\""), ("cache-control", "max-age=99")]);
        assert_eq!(merge_not_modified(&mut kept, &other), Err(ValidatorMismatch));
        assert_eq!(
            kept.get(header::CACHE_CONTROL).expect("cc"),
            "max-age=1",
            "a refused 304 changes nothing"
        );
        merge_not_modified(
            &mut kept,
            &map(&[
                ("etag", "W/\"v1\""),
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("x-new", "b"),
            ]),
        )
        .expect("the same representation");
        assert_eq!(kept.get(header::CACHE_CONTROL).expect("cc"), "max-age=60");
        assert_eq!(
            kept.get(header::CONTENT_LENGTH).expect("len"),
            "5",
            "the body did not change"
        );
        assert_eq!(kept.get("x-new").expect("new"), "b");
        assert_eq!(kept.get("x-old").expect("old"), "a");
    }

    #[test]
    fn comparisons() {
        assert!(weak_eq(b"W/\"a\"", b"\"a\""));
        assert!(!strong_eq(b"W/\"a\"", b"\"a\""));
        assert!(strong_eq(b"\"a\"", b" \"a\""));
        assert!(!weak_eq(b"\"a\"", b"\"b\""));
    }
}
