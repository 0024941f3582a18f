//! The order of concurrent writes across regions.

use serde::{Deserialize, Serialize};

/// A region's number, unique in a topology. It breaks ties between writes with equal stamps.
pub type RegionId = u16;

/// When and where a write happened: its HLC stamp, then its region.
///
/// Versions are totally ordered and two distinct writes never share one: within a region the
/// leader's HLC issues strictly increasing stamps, and two regions differ in `region`. Because
/// every region's HLC observes the stamps it receives, a write made after seeing another always
/// has the greater version, whatever the regions' wall clocks say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub stamp: u64,
    pub region: RegionId,
}

impl Version {
    pub fn new(stamp: u64, region: RegionId) -> Version {
        Version { stamp, region }
    }
}

/// A region's name as the state machine carries it: 1 to 32 bytes of `[A-Za-z0-9_-]`, held inline
/// so that region settings stay `Copy`. Mirror topics are named `topic@region` after it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionName {
    len: u8,
    bytes: [u8; RegionName::MAX],
}

impl RegionName {
    pub const MAX: usize = 32;

    /// `None` unless `name` is 1 to 32 bytes of letters, digits, `_` or `-`.
    pub fn new(name: &str) -> Option<RegionName> {
        let valid = !name.is_empty()
            && name.len() <= Self::MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return None;
        }
        let mut bytes = [0u8; Self::MAX];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(RegionName {
            len: name.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Default for RegionName {
    /// The name of a region that is not part of a multi-region deployment.
    fn default() -> Self {
        RegionName::new("local").expect("a valid name")
    }
}

impl std::fmt::Debug for RegionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_orders_first_then_region() {
        assert!(Version::new(2, 1) > Version::new(1, 9));
        assert!(Version::new(5, 2) > Version::new(5, 1));
        assert_eq!(Version::new(5, 2), Version::new(5, 2));
    }

    #[test]
    fn region_names_are_short_plain_words() {
        assert_eq!(
            RegionName::new("us-east_1").map(|n| n.as_bytes().to_vec()),
            Some(b"us-east_1".to_vec())
        );
        for bad in ["", "a@b", "eu west", &"x".repeat(33)] {
            assert!(RegionName::new(bad).is_none(), "{bad:?}");
        }
        assert!(RegionName::new(&"x".repeat(32)).is_some());
    }
}
