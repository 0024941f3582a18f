//! Purge tags of a response: `Surrogate-Key` (space-separated, Fastly's form) and `Cache-Tag`
//! (comma-separated, Cloudflare's form), both read, every line. Tags compare ASCII
//! case-insensitively (as Cloudflare's and CloudFront's do): they are kept lower-cased, and a
//! purge by `Product-42` removes what `product-42` tagged. Purging too much is safe; too little is
//! not.
//!
//! A response whose tags break a limit is not stored rather than stored with some tags dropped:
//! a purge by a dropped tag would otherwise leave the object fresh.

use std::collections::BTreeSet;

use http::{HeaderMap, HeaderName};

use crate::limits::{OBJECT_TAGS_MAX, TAG_BYTES_MAX};

/// Why a response's tags cannot be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("a tag of {len} bytes exceeds the limit of {max} bytes")]
    TagTooLong { len: usize, max: usize },
    #[error("more than {max} tags ({count} read before stopping)")]
    TooMany { count: usize, max: usize },
}

/// `Surrogate-Key`.
pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `Cache-Tag`.
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// The response's tags, sorted and without duplicates.
pub fn parse(response: &HeaderMap) -> Result<Vec<Vec<u8>>, TagError> {
    let mut tags: BTreeSet<Vec<u8>> = BTreeSet::new();
    let surrogate = response
        .get_all(SURROGATE_KEY)
        .into_iter()
        .flat_map(|line| line.as_bytes().split(|b| b.is_ascii_whitespace()));
    let cache_tag = response
        .get_all(CACHE_TAG)
        .into_iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','));
    for tag in surrogate.chain(cache_tag).map(<[u8]>::trim_ascii) {
        if tag.is_empty() {
            continue;
        }
        if tag.len() > TAG_BYTES_MAX {
            return Err(TagError::TagTooLong {
                len: tag.len(),
                max: TAG_BYTES_MAX,
            });
        }
        tags.insert(normalise(tag));
        if tags.len() > OBJECT_TAGS_MAX {
            return Err(TagError::TooMany {
                count: tags.len(),
                max: OBJECT_TAGS_MAX,
            });
        }
    }
    Ok(tags.into_iter().collect())
}

/// A tag as it is kept and compared: ASCII lower-cased.
pub fn normalise(tag: &[u8]) -> Vec<u8> {
    tag.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers as map;

    #[test]
    fn both_headers_every_line_sorted_and_deduplicated() {
        let tags = parse(&map::<String>(&[
            ("surrogate-key", "product-42  catalog".into()),
            ("cache-tag", "catalog, Product-42,".into()),
            ("surrogate-key", "home".into()),
        ]))
        .expect("tags");
        // Lower-cased: Product-42 and product-42 are one tag.
        let expected: Vec<Vec<u8>> = vec![b"catalog".to_vec(), b"home".to_vec(), b"product-42".to_vec()];
        assert_eq!(tags, expected);
        assert_eq!(parse(&HeaderMap::new()), Ok(vec![]));
    }

    #[test]
    fn over_the_limits_the_response_is_not_stored() {
        let long = "t".repeat(TAG_BYTES_MAX + 1);
        assert!(matches!(
            parse(&map(&[("cache-tag", long)])),
            Err(TagError::TagTooLong { .. })
        ));
        let exactly = "t".repeat(TAG_BYTES_MAX);
        assert!(parse(&map(&[("cache-tag", exactly)])).is_ok());
        let many = (0..=OBJECT_TAGS_MAX)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(matches!(
            parse(&map(&[("surrogate-key", many)])),
            Err(TagError::TooMany { .. })
        ));
        let enough = (0..OBJECT_TAGS_MAX)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            parse(&map(&[("surrogate-key", enough)])).expect("at the limit").len(),
            OBJECT_TAGS_MAX
        );
        // Duplicates do not count, and never hide a later tag.
        let repeated = format!("{} last", "same ".repeat(10 * OBJECT_TAGS_MAX));
        assert_eq!(
            parse(&map(&[("surrogate-key", repeated)])),
            Ok(vec![b"last".to_vec(), b"same".to_vec()])
        );
    }
}
