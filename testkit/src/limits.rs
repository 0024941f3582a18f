//! The test kit's limits: the port range local clusters reserve from.

/// The first port reserved for local clusters: below Linux's ephemeral range (32768+), so no
/// outgoing connection is ever given one as its local port.
pub const PORT_FIRST: u16 = 20_000;
/// Ports in the reserved range (one lock file each at most).
pub const PORT_SPAN: u16 = 12_000;
/// Random picks a reservation tries before it fails with `PortError::Exhausted`.
pub const PORT_ATTEMPTS_MAX: usize = 2_000;

// The range stays below the ephemeral ports.
const _: () = assert!(PORT_FIRST as u32 + PORT_SPAN as u32 <= 32_768);
