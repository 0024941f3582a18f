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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_orders_first_then_region() {
        assert!(Version::new(2, 1) > Version::new(1, 9));
        assert!(Version::new(5, 2) > Version::new(5, 1));
        assert_eq!(Version::new(5, 2), Version::new(5, 2));
    }
}
