//! `Vary` (RFC 9110 §12.5.5, RFC 9111 §4.1): which request headers select among the stored
//! variants of one URL, and the secondary key a request has under them.
//!
//! A request matches a variant when its secondary key equals the one the variant was stored
//! under. The key holds the header names, then each header's lines byte for byte (lengths first,
//! so no two different requests share a key: merging two requests an origin tells apart would
//! serve one the other's page). Only `Accept-Encoding` is normalised, to its codings lower-cased,
//! sorted and deduplicated, those refused by `q=0` kept as refused (so `gzip, br` and
//! `br,GZIP;q=1` are one variant, and `br;q=0, *` is not `*`).

use http::header::{self, HeaderName};
use http::HeaderMap;

use crate::limits::{VARY_HEADERS_MAX, VARY_KEY_BYTES_MAX};

/// What a response's `Vary` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// The request headers that select the variant, lower-cased, sorted, no duplicates (empty:
    /// one variant for every request).
    Headers(Vec<HeaderName>),
    /// `Vary: *`: no later request can be matched; not stored.
    Any,
    /// More than [`VARY_HEADERS_MAX`] headers, or a name that is not a header name; not stored.
    TooWide,
}

/// Reads every `Vary` line of a response.
pub fn parse(response: &HeaderMap) -> Vary {
    let mut names = Vec::new();
    for line in response.get_all(header::VARY) {
        for element in line.as_bytes().split(|&b| b == b',') {
            let element = element.trim_ascii();
            if element.is_empty() {
                continue;
            }
            if element == b"*" {
                return Vary::Any;
            }
            match HeaderName::from_bytes(element) {
                Ok(name) => names.push(name),
                Err(_) => return Vary::TooWide,
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    if names.len() > VARY_HEADERS_MAX {
        return Vary::TooWide;
    }
    Vary::Headers(names)
}

/// The request's secondary key under `names`: the names, then for each name, in order, its
/// lines (absent and empty differ). `None` when longer than [`VARY_KEY_BYTES_MAX`]: such a
/// request is passed through and its answer not stored.
pub fn secondary_key(names: &[HeaderName], request: &HeaderMap) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    let field = |key: &mut Vec<u8>, bytes: &[u8]| {
        key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        key.extend_from_slice(bytes);
    };
    for name in names {
        field(&mut key, name.as_str().as_bytes());
    }
    for name in names {
        if name == header::ACCEPT_ENCODING {
            let mut lines = request.get_all(name).iter().peekable();
            if lines.peek().is_none() {
                key.push(0); // absent
            } else {
                key.push(1);
                field(&mut key, &accept_encoding(lines.map(|v| v.as_bytes())));
            }
        } else {
            let lines = request.get_all(name);
            key.extend_from_slice(&(lines.iter().count() as u64).to_le_bytes());
            for line in lines {
                field(&mut key, line.as_bytes());
            }
        }
        if key.len() > VARY_KEY_BYTES_MAX {
            return None;
        }
    }
    (key.len() <= VARY_KEY_BYTES_MAX).then_some(key)
}

/// The accepted codings, lower-cased, sorted, deduplicated; a coding refused by `q=0` is kept
/// as `!coding`, since it changes what may be sent (`br;q=0, *` forbids br, `*` does not).
fn accept_encoding<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut codings: Vec<Vec<u8>> = Vec::new();
    for line in lines {
        for element in line.split(|&b| b == b',') {
            let mut parts = element.split(|&b| b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii().to_ascii_lowercase();
            if coding.is_empty() {
                continue;
            }
            let refused = parts.any(|param| {
                let param = param.trim_ascii().to_ascii_lowercase();
                param
                    .strip_prefix(b"q=")
                    .is_some_and(|q| !q.is_empty() && q.iter().all(|&b| b == b'0' || b == b'.'))
            });
            codings.push(if refused { [&b"!"[..], &coding].concat() } else { coding });
        }
    }
    codings.sort();
    codings.dedup();
    codings.join(&b',')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers as map;
    use proptest::prelude::*;

    fn key(vary: &[(&str, &str)], request: &[(&str, &str)]) -> Vec<u8> {
        match parse(&map(vary)) {
            Vary::Headers(names) => secondary_key(&names, &map(request)).expect("short"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vary_lists_are_read_across_lines_sorted_and_deduplicated() {
        let names = parse(&map(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", " accept-encoding ,"),
        ]));
        assert_eq!(
            names,
            Vary::Headers(vec![header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE])
        );
        assert_eq!(parse(&HeaderMap::new()), Vary::Headers(vec![]));
        assert_eq!(parse(&map(&[("vary", "accept, *")])), Vary::Any);
        assert_eq!(parse(&map(&[("vary", "bad header")])), Vary::TooWide);
        let many = (0..=VARY_HEADERS_MAX)
            .map(|i| format!("x-h{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse(&map(&[("vary", &many)])), Vary::TooWide);
    }

    #[test]
    fn equivalent_accept_encodings_share_a_variant() {
        let vary = [("vary", "accept-encoding")];
        let a = key(&vary, &[("accept-encoding", "gzip, br")]);
        assert_eq!(a, key(&vary, &[("accept-encoding", "br,GZIP;q=1")]));
        assert_eq!(a, key(&vary, &[("accept-encoding", "br"), ("accept-encoding", "gzip")]));
        assert_ne!(a, key(&vary, &[("accept-encoding", "gzip")]));
        // A refused coding is not the same as one not named.
        assert_ne!(
            key(&vary, &[("accept-encoding", "br;q=0, *")]),
            key(&vary, &[("accept-encoding", "*")])
        );
        assert_eq!(
            key(&vary, &[("accept-encoding", "br;q=0, *")]),
            key(&vary, &[("accept-encoding", "*, BR;q=0.0")])
        );
        // Absent and empty are different requests.
        assert_ne!(key(&vary, &[]), key(&vary, &[("accept-encoding", "")]));
    }

    #[test]
    fn other_headers_compare_byte_for_byte_line_by_line() {
        let vary = [("vary", "accept-language, x-tenant")];
        assert_ne!(
            key(&vary, &[("accept-language", "en , fr"), ("x-tenant", "a")]),
            key(&vary, &[("accept-language", "en,fr"), ("x-tenant", "a")])
        );
        assert_ne!(
            key(&vary, &[("accept-language", "en"), ("x-tenant", "a")]),
            key(&vary, &[("accept-language", "en"), ("x-tenant", "b")])
        );
        // A trailing comma or a split line is a different request to an origin reading bytes.
        assert_ne!(
            key(&vary, &[("x-tenant", "victim,")]),
            key(&vary, &[("x-tenant", "victim")])
        );
        assert_ne!(
            key(&vary, &[("x-tenant", "a"), ("x-tenant", "b")]),
            key(&vary, &[("x-tenant", "a, b")])
        );
        // Case matters outside Accept-Encoding: a tenant id is not case-folded.
        assert_ne!(key(&vary, &[("x-tenant", "A")]), key(&vary, &[("x-tenant", "a")]));
        assert_eq!(key(&vary, &[("x-tenant", "a")]), key(&vary, &[("x-tenant", "a")]));
    }

    #[test]
    fn the_same_values_under_other_names_are_another_variant() {
        assert_ne!(
            key(&[("vary", "accept-language")], &[("accept-language", "en")]),
            key(&[("vary", "x-tenant")], &[("x-tenant", "en")])
        );
    }

    #[test]
    fn an_overlong_secondary_key_is_refused() {
        let long = "x".repeat(VARY_KEY_BYTES_MAX);
        assert_eq!(
            secondary_key(&[header::ACCEPT_LANGUAGE], &map(&[("accept-language", &long)])),
            None
        );
    }

    proptest! {
        /// The key is injective in the values: two requests share a key only if every header
        /// normalises to the same value.
        #[test]
        fn keys_separate_values(a in "[a-z ,;=]{0,6}", b in "[a-z ,]{0,6}", c in "[a-z ,;=]{0,6}", d in "[a-z ,]{0,6}") {
            let names = [header::ACCEPT_LANGUAGE, HeaderName::from_static("x-tenant")];
            let k1 = secondary_key(&names, &map(&[("accept-language", &a), ("x-tenant", &b)])).expect("short");
            let k2 = secondary_key(&names, &map(&[("accept-language", &c), ("x-tenant", &d)])).expect("short");
            prop_assert_eq!(k1 == k2, a == c && b == d);
        }
    }
}
