//! Range requests on a stored object (RFC 9110 §14): one byte range of a GET gets 206 with that
//! part, a range past the end gets 416, and anything else (another method, no `Range`, another
//! unit, several ranges, a malformed one, an empty object, an `If-Range` that does not match)
//! gets the whole object, as RFC 9110 allows a server to ignore `Range`.

use std::time::Duration;

use http::{header, HeaderMap, Method};

use crate::conditional::strong_eq;
use crate::freshness::http_date;

/// What a GET gets from a stored object of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole body.
    Full,
    /// 206 with bytes `start..=end` and `Content-Range: bytes start-end/len`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Evaluates `Range` and `If-Range` of a request against a stored object of `len` bytes with
/// `stored` headers. `If-Range` matches by strong ETag comparison, or by a date equal to the
/// stored `Last-Modified` when that is a strong validator (at least a second before the stored
/// `Date`, RFC 9110 §8.8.2.2): otherwise parts of two versions could be put together.
pub fn evaluate(method: &Method, request: &HeaderMap, len: u64, stored: &HeaderMap) -> RangeAnswer {
    if method != Method::GET || len == 0 {
        return RangeAnswer::Full;
    }
    let mut lines = request.get_all(header::RANGE).iter();
    let (Some(range), None) = (lines.next(), lines.next()) else {
        return RangeAnswer::Full;
    };
    let mut if_ranges = request.get_all(header::IF_RANGE).iter();
    match (if_ranges.next(), if_ranges.next()) {
        (None, _) => {}
        (Some(if_range), None) => {
            if !if_range_matches(if_range.as_bytes().trim_ascii(), request, stored) {
                return RangeAnswer::Full;
            }
        }
        (Some(_), Some(_)) => return RangeAnswer::Full,
    }
    parse(range.as_bytes(), len)
}

fn if_range_matches(if_range: &[u8], request: &HeaderMap, stored: &HeaderMap) -> bool {
    if if_range.starts_with(b"\"") || if_range.starts_with(b"W/") {
        let mut etags = stored.get_all(header::ETAG).iter();
        return matches!((etags.next(), etags.next()), (Some(etag), None) if strong_eq(if_range, etag.as_bytes()));
    }
    let date = |headers, name| http_date(headers, name).and_then(Result::ok);
    match (
        date(request, header::IF_RANGE),
        date(stored, header::LAST_MODIFIED),
        date(stored, header::DATE),
    ) {
        (Some(asked), Some(modified), Some(dated)) => asked == modified && modified + Duration::from_secs(1) <= dated,
        _ => false,
    }
}

fn parse(range: &[u8], len: u64) -> RangeAnswer {
    let range = range.trim_ascii();
    let Some(eq) = range.iter().position(|&b| b == b'=') else {
        return RangeAnswer::Full;
    };
    if !range[..eq].trim_ascii().eq_ignore_ascii_case(b"bytes") {
        return RangeAnswer::Full;
    }
    let spec = range[eq + 1..].trim_ascii();
    if spec.contains(&b',') {
        return RangeAnswer::Full; // several ranges: the whole object, in one part
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (spec[..dash].trim_ascii(), spec[dash + 1..].trim_ascii());
    match (number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: len.saturating_sub(suffix),
                    end: len - 1,
                }
            }
        }
        // bytes=A- and bytes=A-B.
        (Some(start), end) if last.is_empty() || end.is_some() => {
            if end.is_some_and(|end| end < start) {
                return RangeAnswer::Full; // invalid: ignored
            }
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                start,
                end: end.map_or(len - 1, |end| end.min(len - 1)),
            }
        }
        _ => RangeAnswer::Full,
    }
}

/// ASCII digits as a number; `None` when empty, not digits, or past `u64`.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers as map;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn plain() -> HeaderMap {
        HeaderMap::from_iter([(header::ETAG, HeaderValue::from_static("\"v1\""))])
    }

    fn range(spec: &str, len: u64) -> RangeAnswer {
        evaluate(&Method::GET, &map(&[("range", spec)]), len, &plain())
    }

    #[test]
    fn one_range_of_each_form() {
        assert_eq!(range("bytes=0-99", 1000), RangeAnswer::Partial { start: 0, end: 99 });
        assert_eq!(range("bytes=900-", 1000), RangeAnswer::Partial { start: 900, end: 999 });
        assert_eq!(range("bytes=-100", 1000), RangeAnswer::Partial { start: 900, end: 999 });
        assert_eq!(range("bytes=-5000", 1000), RangeAnswer::Partial { start: 0, end: 999 });
        assert_eq!(
            range("bytes=990-5000", 1000),
            RangeAnswer::Partial { start: 990, end: 999 }
        );
        assert_eq!(range("BYTES = 1-1", 10), RangeAnswer::Partial { start: 1, end: 1 });
    }

    #[test]
    fn past_the_end_is_416_and_nonsense_is_the_whole_object() {
        assert_eq!(range("bytes=1000-", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(range("bytes=-0", 1000), RangeAnswer::Unsatisfiable);
        // An empty object is answered whole: no range of it exists, and 200 with nothing is safe.
        assert_eq!(range("bytes=0-", 0), RangeAnswer::Full);
        assert_eq!(range("bytes=-1", 0), RangeAnswer::Full);
        for ignored in [
            "items=0-1",
            "bytes=5-1",
            "bytes=0-1,5-6",
            "bytes=a-b",
            "bytes",
            "bytes=-",
            "bytes=1-2-3",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(range(ignored, 1000), RangeAnswer::Full, "{ignored}");
        }
        assert_eq!(
            evaluate(&Method::GET, &HeaderMap::new(), 10, &plain()),
            RangeAnswer::Full
        );
        // Only GET: a HEAD with a range gets the whole object's headers.
        assert_eq!(
            evaluate(&Method::HEAD, &map(&[("range", "bytes=0-0")]), 10, &plain()),
            RangeAnswer::Full
        );
        // Two Range lines: ignored.
        let two = map(&[("range", "bytes=0-0"), ("range", "bytes=1-1")]);
        assert_eq!(evaluate(&Method::GET, &two, 10, &plain()), RangeAnswer::Full);
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(modified);
        let mut stored = plain();
        stored.insert(header::LAST_MODIFIED, HeaderValue::from_str(&date).expect("date"));
        let later = httpdate::fmt_http_date(modified + Duration::from_secs(5));
        stored.insert(header::DATE, HeaderValue::from_str(&later).expect("date"));
        let with = |if_range: &str, stored: &HeaderMap| {
            evaluate(
                &Method::GET,
                &map(&[("range", "bytes=0-0"), ("if-range", if_range)]),
                10,
                stored,
            )
        };
        let part = RangeAnswer::Partial { start: 0, end: 0 };
        assert_eq!(with("\"v1\"", &stored), part);
        assert_eq!(with("W/\"v1\"", &stored), RangeAnswer::Full, "a weak tag never matches");
        assert_eq!(with("\"v0\"", &stored), RangeAnswer::Full);
        assert_eq!(with(&date, &stored), part);
        assert_eq!(with(&later, &stored), RangeAnswer::Full);
        assert_eq!(with("nonsense", &stored), RangeAnswer::Full);
        // A Last-Modified within a second of the Date is weak: no date If-Range matches it.
        let mut weak = stored.clone();
        weak.insert(header::DATE, HeaderValue::from_str(&date).expect("date"));
        assert_eq!(with(&date, &weak), RangeAnswer::Full);
    }

    proptest! {
        /// A partial answer is exactly the asked bytes, cut at the end of the object.
        #[test]
        fn partial_answers_are_the_asked_bytes(a in 0u64..2000, b in 0u64..2000, len in 0u64..1500, form in 0u8..3) {
            let spec = match form { 0 => format!("bytes={a}-{b}"), 1 => format!("bytes={a}-"), _ => format!("bytes=-{b}") };
            let expected = match form {
                _ if len == 0 => RangeAnswer::Full,
                0 if b < a => RangeAnswer::Full,
                0 | 1 if a >= len => RangeAnswer::Unsatisfiable,
                0 => RangeAnswer::Partial { start: a, end: b.min(len - 1) },
                1 => RangeAnswer::Partial { start: a, end: len - 1 },
                _ if b == 0 => RangeAnswer::Unsatisfiable,
                _ => RangeAnswer::Partial { start: len.saturating_sub(b), end: len - 1 },
            };
            prop_assert_eq!(range(&spec, len), expected);
        }
    }
}
