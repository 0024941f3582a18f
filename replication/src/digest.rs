//! A fingerprint of replicated state that does not depend on the order it was computed in, so
//! two regions agree exactly when their replicated state is the same.

/// A multiset hash: the wrapping sum of a 64-bit FNV-1a hash per item, and the item count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub sum: u64,
    pub items: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

impl Digest {
    /// Adds one item: its kind (a table), its key and its canonical value bytes. Lengths are
    /// hashed too, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn add(&mut self, kind: &str, key: &[u8], value: &[u8]) {
        let mut h = FNV_OFFSET;
        for part in [kind.as_bytes(), key, value] {
            h = fnv(h, &(part.len() as u64).to_le_bytes());
            h = fnv(h, part);
        }
        self.sum = self.sum.wrapping_add(h);
        self.items += 1;
    }

    /// `items:sum` in hex, as shown by `basalt regions status`.
    pub fn to_hex(self) -> String {
        format!("{}:{:016x}", self.items, self.sum)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn order_does_not_matter(items in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..4), proptest::collection::vec(0u8..4, 0..4)), 0..10)) {
            let mut forward = Digest::default();
            for (k, v) in &items {
                forward.add("kv", k, v);
            }
            let mut backward = Digest::default();
            for (k, v) in items.iter().rev() {
                backward.add("kv", k, v);
            }
            prop_assert_eq!(forward, backward);
        }
    }

    #[test]
    fn contents_matter() {
        let digest = |items: &[(&str, &[u8], &[u8])]| {
            let mut d = Digest::default();
            for (kind, k, v) in items {
                d.add(kind, k, v);
            }
            d
        };
        assert_ne!(digest(&[("kv", b"ab", b"c")]), digest(&[("kv", b"a", b"bc")]));
        assert_ne!(digest(&[("kv", b"a", b"1")]), digest(&[("counter", b"a", b"1")]));
        assert_ne!(digest(&[("kv", b"a", b"1")]), digest(&[("kv", b"a", b"2")]));
        assert_ne!(digest(&[]), digest(&[("kv", b"", b"")]));
    }
}
