//! Ports for local multi-process clusters (test harnesses, partition tests), reserved across
//! processes for as long as the cluster lives.
//!
//! A node's address must be known before the node starts (its peers are told it), so the usual
//! "bind port 0, read the port, close" leaves a window in which any other process can take the
//! same port, and a killed node's port is free until it restarts. Parallel test processes did
//! exactly that: one cluster's client and peers then reached another cluster's node. Two rules
//! close the window:
//! - ports come from below Linux's ephemeral range (32768+), so no outgoing connection is ever
//!   given one as its local port;
//! - each port is held by a lock file for the reservation's lifetime, so no other reservation, in
//!   this process or another, hands it out again, even while its node is down.

use std::fs::{File, OpenOptions, TryLockError};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

/// Where the lock files live (one empty file per port ever reserved, at most `PORT_SPAN`).
const LOCK_DIR: &str = "basalt-local-ports";
use crate::limits::{PORT_ATTEMPTS_MAX, PORT_FIRST, PORT_SPAN};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("port lock directory {dir}: {source}")]
    LockDir { dir: PathBuf, source: std::io::Error },
    #[error("port lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("no free port in 127.0.0.1:{PORT_FIRST}..{} after {PORT_ATTEMPTS_MAX} tries", PORT_FIRST + PORT_SPAN)]
    Exhausted,
}

/// A loopback port nobody else reserves while this value lives.
#[derive(Debug)]
pub struct PortReservation {
    port: u16,
    /// Holding the file holds its lock; the lock goes when the file is closed (or the process dies).
    _lock: File,
}

impl PortReservation {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Reserves a free loopback port (see the module's comment for why it stays free).
pub fn reserve() -> Result<PortReservation, PortError> {
    reserve_block(&[0]).map(|mut block| block.remove(0))
}

/// Reserves the free loopback ports `base + offset` for every offset of `offsets`, for a program
/// that derives its ports from a base (`basalt dev --regions`: node N of region R at
/// base + 100 × R + N - 1). In the order of `offsets`.
pub fn reserve_block(offsets: &[u16]) -> Result<Vec<PortReservation>, PortError> {
    let dir = std::env::temp_dir().join(LOCK_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| PortError::LockDir {
        dir: dir.clone(),
        source,
    })?;
    let widest = offsets.iter().copied().max().unwrap_or(0);
    if widest >= PORT_SPAN {
        return Err(PortError::Exhausted);
    }
    'attempt: for _ in 0..PORT_ATTEMPTS_MAX {
        let base = PORT_FIRST + rand::random::<u16>() % (PORT_SPAN - widest);
        let mut block = Vec::with_capacity(offsets.len());
        for &offset in offsets {
            // Released (the locks dropped) when the attempt is abandoned.
            match try_reserve(&dir, base + offset)? {
                Some(reservation) => block.push(reservation),
                None => continue 'attempt,
            }
        }
        return Ok(block);
    }
    Err(PortError::Exhausted)
}

/// `port`, reserved, or `None` when another reservation or another program holds it.
fn try_reserve(dir: &std::path::Path, port: u16) -> Result<Option<PortReservation>, PortError> {
    let path = dir.join(port.to_string());
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| PortError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(source)) => return Err(PortError::Lock { path, source }),
    }
    // Someone outside this scheme (another program) may be listening there.
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Ok(None);
    }
    Ok(Some(PortReservation { port, _lock: file }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_is_never_handed_out_again_until_released() {
        let held: Vec<PortReservation> = (0..200).map(|_| reserve().expect("reserve")).collect();
        let mut ports: Vec<u16> = held.iter().map(PortReservation::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), held.len(), "every reservation got its own port");
        assert!(ports.iter().all(|p| (PORT_FIRST..PORT_FIRST + PORT_SPAN).contains(p)));
        // The lock, not the probe, is what keeps it: nothing listens on a reserved port.
        let first = held[0].port();
        let again = OpenOptions::new()
            .write(true)
            .open(std::env::temp_dir().join(LOCK_DIR).join(first.to_string()))
            .expect("open lock file");
        assert!(matches!(again.try_lock(), Err(TryLockError::WouldBlock)));
        drop(held);
        again.try_lock().expect("released when the reservation drops");
    }

    #[test]
    fn a_block_holds_each_offset_from_one_base() {
        let block = reserve_block(&[0, 1, 100, 101]).expect("reserve a block");
        let base = block[0].port();
        let ports: Vec<u16> = block.iter().map(PortReservation::port).collect();
        assert_eq!(ports, vec![base, base + 1, base + 100, base + 101]);
        // Each is held: a second block never overlaps it.
        let other = reserve_block(&[0, 1, 100, 101]).expect("reserve another block");
        assert!(other.iter().all(|p| !ports.contains(&p.port())));
    }
}
