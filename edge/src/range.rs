//! Range requests on a stored object (RFC 9110 §14): one byte range gets 206 with that part, a
//! range past the end gets 416, and anything else (no `Range`, another unit, several ranges, a
//! malformed one, an `If-Range` that does not match) gets the whole object, as RFC 9110 allows a
//! server to ignore `Range`.

use std::time::SystemTime;

use http::{header, HeaderMap};

use crate::conditional::{strong_eq, Validators};
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

/// Evaluates `Range` and `If-Range` against a stored object of `len` bytes with `stored`
/// validators. `If-Range` matches by strong ETag comparison or by exact date equality with the
/// stored `Last-Modified`.
pub fn evaluate(request: &HeaderMap, len: u64, stored: &Validators, last_modified: Option<SystemTime>) -> RangeAnswer {
    let Some(range) = request.get(header::RANGE) else {
        return RangeAnswer::Full;
    };
    if request.get_all(header::RANGE).iter().count() > 1 {
        return RangeAnswer::Full;
    }
    if let Some(if_range) = request.get(header::IF_RANGE) {
        let bytes = if_range.as_bytes().trim_ascii();
        let matches = if bytes.starts_with(b"\"") || bytes.starts_with(b"W/") {
            stored
                .etag
                .as_ref()
                .is_some_and(|etag| strong_eq(bytes, etag.as_bytes()))
        } else {
            matches!((http_date(request, header::IF_RANGE), last_modified), (Some(Ok(a)), Some(b)) if a == b)
        };
        if !matches {
            return RangeAnswer::Full;
        }
    }
    parse(range.as_bytes(), len)
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
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    fn plain() -> Validators {
        Validators {
            etag: Some(HeaderValue::from_static("\"v1\"")),
            modified: UNIX_EPOCH,
        }
    }

    fn range(spec: &str, len: u64) -> RangeAnswer {
        evaluate(&map(&[("range", spec)]), len, &plain(), None)
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
        assert_eq!(range("bytes=0-", 0), RangeAnswer::Unsatisfiable);
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
        assert_eq!(evaluate(&HeaderMap::new(), 10, &plain(), None), RangeAnswer::Full);
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(modified);
        let with = |if_range: &str| {
            evaluate(
                &map(&[("range", "bytes=0-0"), ("if-range", if_range)]),
                10,
                &plain(),
                Some(modified),
            )
        };
        assert_eq!(with("\"v1\""), RangeAnswer::Partial { start: 0, end: 0 });
        assert_eq!(with("W/\"v1\""), RangeAnswer::Full, "a weak tag never matches");
        assert_eq!(with("\"v0\""), RangeAnswer::Full);
        assert_eq!(with(&date), RangeAnswer::Partial { start: 0, end: 0 });
        assert_eq!(
            with(&httpdate::fmt_http_date(modified + Duration::from_secs(1))),
            RangeAnswer::Full
        );
        assert_eq!(with("nonsense"), RangeAnswer::Full);
    }

    proptest! {
        /// A partial answer always lies within the object and is never empty.
        #[test]
        fn partial_answers_lie_within_the_object(a in 0u64..2000, b in 0u64..2000, len in 0u64..1500, form in 0u8..3) {
            let spec = match form { 0 => format!("bytes={a}-{b}"), 1 => format!("bytes={a}-"), _ => format!("bytes=-{b}") };
            if let RangeAnswer::Partial { start, end } = range(&spec, len) {
                prop_assert!(start <= end && end < len);
            }
        }
    }
}
