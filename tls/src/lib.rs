//! TLS for every Basalt door, in one place.
//!
//! - [`node_tls`]: a node's certificate, key and CAs as loaded from PEM files, reloaded when they
//!   change ([`NodeTls`]), for the peer listener (mutual TLS: every member shows a certificate of
//!   the cluster's CA) and for the client doors (client gRPC, HTTP, RESP, edge: a client's
//!   certificate, of the client CA, is optional; on gRPC it names the caller's user).
//! - [`listener`]: the accept side of a listener with or without TLS: handshakes on tasks of
//!   their own, bounded in number (in all and per address) and in time; the connections it
//!   yields and what they tell of their client ([`ConnectInfo`]).
//! - [`connection_budget`]: how many connections a group of listeners may hold open, so that
//!   clients cannot use up the node's file descriptors; every listener above takes a permit per
//!   connection.
//! - [`client_tls`]: the connect side: [`ClientTls`] for an SDK or CLI that trusts a CA file,
//!   [`Connector`] and [`lazy_channel`] for the gRPC channels of clients and nodes.
//!
//! Owns no listener socket and no policy: the server decides which door runs TLS, the access
//! layer what a certificate's name may do. Depends on no other Basalt crate.

pub mod client_tls;
pub mod connection_budget;
pub mod limits;
pub mod listener;
pub mod node_tls;

pub use client_tls::{connected_channel, lazy_channel, ClientTls, Connector};
pub use connection_budget::{ConnectionBudget, ConnectionPermit};
pub use listener::{remote_addr, Conn, ConnectInfo, Expired, Listener};
pub use node_tls::{NodeTls, Protocol, TlsError, TlsFiles, TlsRole};
