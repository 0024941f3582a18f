//! The TLS layer's limits, in one place.

use std::time::Duration;

/// How often a node's TLS files are checked for a change (`NodeTls::keep_reloading`).
pub const TLS_RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The longest a TLS handshake on a listener may take before the connection is dropped, so a
/// client or peer that connects and says nothing holds no task for long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// TLS handshakes in progress (or done and not yet taken by the server) on the peer listener; a
/// connection beyond them is dropped at once, so a flood of silent connections cannot use up
/// the node's file descriptors.
pub const HANDSHAKES_MAX: usize = 128;
/// As [`HANDSHAKES_MAX`], from one IP address on the peer listener: one host cannot take every
/// slot.
pub const HANDSHAKES_PER_IP_MAX: usize = 8;
/// As [`HANDSHAKES_MAX`], on each client door (client API, HTTP, RESP, edge), where pools of
/// many connections from one host and reconnect storms after a failover are normal.
pub const CLIENT_DOOR_HANDSHAKES_MAX: usize = 1024;
/// As [`HANDSHAKES_PER_IP_MAX`], on each client door.
pub const CLIENT_DOOR_HANDSHAKES_PER_IP_MAX: usize = 256;
/// How long an accepted connection may be silent before TCP keepalive probes it, how far apart
/// the probes go, and how many unanswered ones close it: a peer that vanished (a host down, a
/// cable pulled) frees its connection's permit after about two minutes instead of never.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const TCP_KEEPALIVE_PROBES: u32 = 6;
/// How long an accept loop pauses after the process ran out of descriptors or memory (other
/// accept errors concern one connection and are passed over at once).
pub const ACCEPT_PAUSE_WHEN_EXHAUSTED: Duration = Duration::from_millis(100);
/// Connections whose handshake succeeded, waiting for the listener's server to take them.
pub const HANDSHAKES_QUEUED_MAX: usize = 64;
/// The most read of each TLS file (certificate chain, key, CA bundle), in bytes.
pub const TLS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// The longest client certificate name (subject common name) taken as a user name, in bytes; a
/// longer one names no user.
pub const CLIENT_NAME_BYTES_MAX: usize = 256;

const _: () = assert!(HANDSHAKES_PER_IP_MAX <= HANDSHAKES_MAX);
const _: () = assert!(CLIENT_DOOR_HANDSHAKES_PER_IP_MAX <= CLIENT_DOOR_HANDSHAKES_MAX);
