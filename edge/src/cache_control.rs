//! A response's `Cache-Control` (RFC 9111 §5.2.2, RFC 5861), read the way a shared cache needs it.
//!
//! Directive names are case-insensitive; values are tokens or quoted strings; several header
//! lines are one list. Unknown directives are ignored. A freshness directive (`max-age`,
//! `s-maxage`) whose value is not delta-seconds, or that is given twice with different values,
//! makes the response stale on arrival (RFC 9111 §4.2.1: "invalid freshness information"), never
//! fresher than the origin meant.

use crate::limits::DELTA_SECONDS_MAX;

/// What a response's `Cache-Control` says to a shared cache. Times in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseCacheControl {
    pub no_store: bool,
    /// `no-cache`, with or without field names (taken as the whole response: conservative).
    pub no_cache: bool,
    /// `private`, with or without field names (a shared cache stores none of it).
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age_secs: Option<u64>,
    pub s_maxage_secs: Option<u64>,
    pub stale_while_revalidate_secs: Option<u64>,
    pub stale_if_error_secs: Option<u64>,
    /// A `max-age` or `s-maxage` was unreadable or contradicted itself: the response is stale
    /// from the start.
    pub invalid_freshness: bool,
}

/// Reads every `Cache-Control` line of a response, in order.
pub fn parse_response<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> ResponseCacheControl {
    let mut cc = ResponseCacheControl::default();
    for line in lines {
        // The words that forbid storing count wherever they appear, even in text the directive
        // grammar cannot read (`public no-store`, an unclosed quote): as nginx does, a cache errs
        // on the side of not storing.
        let lower = line.to_ascii_lowercase();
        let mentions = |word: &[u8]| lower.windows(word.len()).any(|w| w == word);
        cc.no_store |= mentions(b"no-store");
        cc.private |= mentions(b"private");
        cc.no_cache |= mentions(b"no-cache");
        for (name, value) in directives(line) {
            let name = name.to_ascii_lowercase();
            match name.as_slice() {
                b"no-store" => cc.no_store = true,
                b"no-cache" => cc.no_cache = true,
                b"private" => cc.private = true,
                b"public" => cc.public = true,
                b"must-revalidate" => cc.must_revalidate = true,
                b"proxy-revalidate" => cc.proxy_revalidate = true,
                b"max-age" => set_freshness(&mut cc.max_age_secs, &mut cc.invalid_freshness, value),
                b"s-maxage" => set_freshness(&mut cc.s_maxage_secs, &mut cc.invalid_freshness, value),
                // The stale extensions only ever widen what may be served: an unreadable one is
                // ignored rather than making the response stale.
                // Given twice, the smaller allowance holds.
                b"stale-while-revalidate" => {
                    if let Some(secs) = value.and_then(delta_seconds) {
                        let kept = cc.stale_while_revalidate_secs.map_or(secs, |earlier| earlier.min(secs));
                        cc.stale_while_revalidate_secs = Some(kept);
                    }
                }
                b"stale-if-error" => {
                    if let Some(secs) = value.and_then(delta_seconds) {
                        let kept = cc.stale_if_error_secs.map_or(secs, |earlier| earlier.min(secs));
                        cc.stale_if_error_secs = Some(kept);
                    }
                }
                _ => {}
            }
        }
    }
    cc
}

fn set_freshness(slot: &mut Option<u64>, invalid: &mut bool, value: Option<Vec<u8>>) {
    match value.and_then(delta_seconds) {
        Some(secs) => match *slot {
            None => *slot = Some(secs),
            Some(earlier) if earlier == secs => {}
            Some(_) => *invalid = true,
        },
        None => *invalid = true,
    }
}

/// delta-seconds (RFC 9111 §1.2.2): ASCII digits only; a value past [`DELTA_SECONDS_MAX`] is taken
/// as that.
pub fn delta_seconds(value: Vec<u8>) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut secs: u64 = 0;
    for digit in value {
        secs = secs.saturating_mul(10).saturating_add(u64::from(digit - b'0'));
        if secs >= DELTA_SECONDS_MAX {
            return Some(DELTA_SECONDS_MAX);
        }
    }
    Some(secs)
}

/// The directives of one header line: `name[=value]` separated by commas, the value a token or a
/// quoted string (its escapes undone). Empty list elements are skipped; a quoted string left
/// open takes the rest of the line.
fn directives(line: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        // Skip separators and whitespace before a name.
        while i < line.len() && matches!(line[i], b',' | b' ' | b'\t') {
            i += 1;
        }
        let start = i;
        while i < line.len() && !matches!(line[i], b',' | b'=' | b' ' | b'\t') {
            i += 1;
        }
        let name = line[start..i].to_vec();
        while i < line.len() && matches!(line[i], b' ' | b'\t') {
            i += 1;
        }
        let mut value = None;
        if i < line.len() && line[i] == b'=' {
            i += 1;
            while i < line.len() && matches!(line[i], b' ' | b'\t') {
                i += 1;
            }
            let mut v = Vec::new();
            if i < line.len() && line[i] == b'"' {
                i += 1;
                while i < line.len() && line[i] != b'"' {
                    if line[i] == b'\\' && i + 1 < line.len() {
                        i += 1;
                    }
                    v.push(line[i]);
                    i += 1;
                }
                i += 1; // the closing quote, if any
            } else {
                while i < line.len() && !matches!(line[i], b',' | b' ' | b'\t') {
                    v.push(line[i]);
                    i += 1;
                }
            }
            value = Some(v);
        }
        // Anything else up to the next comma belongs to no directive.
        while i < line.len() && line[i] != b',' {
            i += 1;
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(lines: &[&str]) -> ResponseCacheControl {
        parse_response(lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn directives_are_read_case_insensitively_across_lines() {
        let cc = parse(&["Public, MAX-AGE=60", "s-maxage=\"120\" , stale-while-revalidate=30"]);
        assert!(cc.public);
        assert_eq!(cc.max_age_secs, Some(60));
        assert_eq!(cc.s_maxage_secs, Some(120));
        assert_eq!(cc.stale_while_revalidate_secs, Some(30));
        assert!(!cc.invalid_freshness);

        let cc = parse(&["no-store,no-cache=\"Set-Cookie, X-A\",private=\"X-B\", must-revalidate"]);
        assert!(cc.no_store && cc.no_cache && cc.private && cc.must_revalidate);
        assert!(!cc.public);
        assert!(parse(&["proxy-revalidate"]).proxy_revalidate);
        assert_eq!(parse(&["stale-if-error=86400"]).stale_if_error_secs, Some(86400));
    }

    #[test]
    fn unreadable_or_contradicting_freshness_is_stale_not_fresher() {
        for bad in [
            "max-age=abc",
            "max-age=-1",
            "max-age=",
            "max-age",
            "max-age=1.5",
            "s-maxage=1e3",
        ] {
            assert!(parse(&[bad]).invalid_freshness, "{bad}");
        }
        assert!(parse(&["max-age=60", "max-age=61"]).invalid_freshness);
        let same = parse(&["max-age=60, max-age=60"]);
        assert!(!same.invalid_freshness);
        assert_eq!(same.max_age_secs, Some(60));
        // The stale extensions are ignored when unreadable.
        let cc = parse(&["stale-while-revalidate=soon, max-age=5"]);
        assert_eq!((cc.stale_while_revalidate_secs, cc.invalid_freshness), (None, false));
    }

    #[test]
    fn huge_values_are_capped_at_two_to_the_31() {
        assert_eq!(
            parse(&["max-age=99999999999999999999999"]).max_age_secs,
            Some(DELTA_SECONDS_MAX)
        );
        assert_eq!(parse(&["max-age=2147483647"]).max_age_secs, Some(2_147_483_647));
    }

    #[test]
    fn unknown_directives_and_stray_text_are_ignored() {
        let cc = parse(&[",, immutable, foo=\"a,b\" , max-age=10 junk, , no-transform"]);
        assert_eq!(cc.max_age_secs, Some(10));
        assert!(!cc.invalid_freshness && !cc.no_store);
        assert_eq!(parse(&[""]), ResponseCacheControl::default());
    }

    #[test]
    fn words_that_forbid_storing_count_even_in_unreadable_text() {
        // An unterminated quote takes the rest of the line, yet no-store there still counts.
        let cc = parse(&["max-age=5, foo=\"open, no-store"]);
        assert_eq!(cc.max_age_secs, Some(5));
        assert!(cc.no_store);
        assert!(parse(&["public no-store"]).no_store);
        assert!(parse(&["max-age=60 private"]).private);
        assert!(parse(&["max-age=60 NO-CACHE"]).no_cache);
    }

    #[test]
    fn a_stale_extension_given_twice_keeps_the_smaller() {
        let cc = parse(&[
            "stale-while-revalidate=60, stale-while-revalidate=5",
            "stale-if-error=9, stale-if-error=90",
        ]);
        assert_eq!(
            (cc.stale_while_revalidate_secs, cc.stale_if_error_secs),
            (Some(5), Some(9))
        );
    }

    proptest! {
        /// Any bytes parse without panicking, and a line never yields freshness it does not name.
        #[test]
        fn any_line_parses(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let cc = parse_response([line.as_slice()]);
            let lower = line.to_ascii_lowercase();
            if cc.max_age_secs.is_some() {
                prop_assert!(lower.windows(7).any(|w| w == b"max-age"));
            }
        }

        #[test]
        fn a_written_max_age_reads_back(secs in 0u64..DELTA_SECONDS_MAX, quoted: bool) {
            let line = if quoted { format!("public, max-age=\"{secs}\"") } else { format!("max-age={secs}, public") };
            prop_assert_eq!(parse(&[&line]).max_age_secs, Some(secs));
        }
    }
}
