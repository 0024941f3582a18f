//! The accept side of a node's listeners, with or without TLS.
//!
//! [`incoming`] (for tonic's `serve_with_incoming`) and [`Listener`] (for the HTTP door, RESP and
//! the edge, which accept connections one at a time) run each TLS handshake on a task of its own,
//! so a slow one holds up no other, and bound them: at most [`HANDSHAKES_MAX`] in progress per
//! peer listener and [`HANDSHAKES_PER_IP_MAX`] per source address (more on a client door:
//! [`CLIENT_DOOR_HANDSHAKES_MAX`], [`CLIENT_DOOR_HANDSHAKES_PER_IP_MAX`]); a connection beyond them
//! is dropped at once. A handshake has the handshake timeout to finish, and its connection as
//! long again to enter the queue of [`HANDSHAKES_QUEUED_MAX`] the server takes from (else it is
//! dropped): it holds its slot until then, so a server that takes no connections (an edge at its
//! connection limit) holds at most the limit plus the queue. A connection whose handshake succeeded
//! carries [`ConnectInfo`]: its addresses and the name its client certificate gives, if any.
//!
//! Every listener takes a [`ConnectionPermit`] of its [`ConnectionBudget`] for each connection
//! as it accepts it (before any handshake) and the connection holds it until it closes; with no
//! permit left the connection is refused at once (on a plain RESP or HTTP door with a one-line
//! answer saying so), so clients cannot use up the descriptors the node needs for itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::connection_budget::{ConnectionBudget, ConnectionPermit};
use crate::limits::{
    ACCEPT_PAUSE_WHEN_EXHAUSTED, CLIENT_DOOR_HANDSHAKES_MAX, CLIENT_DOOR_HANDSHAKES_PER_IP_MAX, CLIENT_NAME_BYTES_MAX,
    HANDSHAKES_MAX, HANDSHAKES_PER_IP_MAX, HANDSHAKES_QUEUED_MAX, TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_INTERVAL,
    TCP_KEEPALIVE_PROBES, TLS_HANDSHAKE_TIMEOUT,
};
use crate::node_tls::{NodeTls, Protocol, TlsRole};

/// What a connection tells of its client: tonic puts it in every request's extensions (see
/// [`remote_addr`]), the access layer reads the certificate's name from it.
#[derive(Clone, Debug, Default)]
pub struct ConnectInfo {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// The subject common name of the certificate the client showed in the handshake (verified
    /// against the client doors' client CA), if it showed one and it has exactly one name that
    /// fits [`CLIENT_NAME_BYTES_MAX`].
    pub client_name: Option<Arc<str>>,
    /// When that certificate expires: the handshake checked it was valid then, and a connection
    /// outlives it, so whoever trusts the name checks this at each request.
    pub client_not_after: Option<std::time::SystemTime>,
}

impl ConnectInfo {
    /// The client certificate's name, if it has one and had not expired at `now`.
    pub fn client_name_at(&self, now: std::time::SystemTime) -> Result<Option<Arc<str>>, Expired> {
        match (&self.client_name, self.client_not_after) {
            (Some(name), Some(not_after)) if now > not_after => Err(Expired { name: name.clone() }),
            (name, _) => Ok(name.clone()),
        }
    }
}

/// A client certificate used past its expiry, on a connection made before it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the client certificate of {name:?} has expired since the connection was made")]
pub struct Expired {
    pub name: Arc<str>,
}

/// The remote address of a request to a gRPC server, whether it came over plain TCP or through
/// [`incoming`].
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo>()
        .and_then(|info| info.remote)
        .or_else(|| request.remote_addr())
}

/// The subject common name of a DER certificate and when it expires, if it parses and has
/// exactly one common name (two would be ambiguous), of UTF-8 and at most
/// [`CLIENT_NAME_BYTES_MAX`] bytes.
pub fn common_name(der: &[u8]) -> Option<(String, std::time::SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let mut names = subject.iter_common_name();
    let name = names.next()?.as_str().ok()?;
    if names.next().is_some() || name.is_empty() || name.len() > CLIENT_NAME_BYTES_MAX {
        return None;
    }
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    let not_after = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(not_after))?;
    Some((name.to_string(), not_after))
}

/// An accepted connection (`S`: its stream, or one half of it) with what it tells of its
/// client, holding its share of its listener's budget until it is dropped.
pub struct Accepted<S> {
    inner: S,
    info: ConnectInfo,
    _permit: Option<ConnectionPermit>,
}

/// An accepted connection whose TLS handshake succeeded.
pub type TlsConn = Accepted<tokio_rustls::server::TlsStream<TcpStream>>;

/// A plain TCP connection of [`incoming_plain`].
pub type PlainConn = Accepted<TcpStream>;

impl TlsConn {
    /// Without a permit: the handshake task adds the one it took (connections are only built
    /// inside this crate, so none escapes the budget).
    pub(crate) fn new(inner: tokio_rustls::server::TlsStream<TcpStream>) -> TlsConn {
        let (tcp, session) = inner.get_ref();
        let client = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| common_name(cert.as_ref()));
        let info = ConnectInfo {
            local: tcp.local_addr().ok(),
            remote: tcp.peer_addr().ok(),
            client_name: client.as_ref().map(|(name, _)| Arc::from(name.as_str())),
            client_not_after: client.map(|(_, not_after)| not_after),
        };
        Accepted {
            inner,
            info,
            _permit: None,
        }
    }
}

impl<S> Accepted<S> {
    pub fn info(&self) -> &ConnectInfo {
        &self.info
    }
}

impl<S> tonic::transport::server::Connected for Accepted<S> {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> ConnectInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Accepted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Accepted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A handshake's place among those in progress on one listener: one of [`HANDSHAKES_MAX`] and
/// one of its address's [`HANDSHAKES_PER_IP_MAX`], given back when dropped.
struct HandshakeSlot {
    limiter: Arc<HandshakeLimiter>,
    ip: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The handshakes in progress on one listener.
struct HandshakeLimiter {
    slots: Arc<Semaphore>,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    per_ip_max: usize,
}

impl HandshakeLimiter {
    fn new(role: TlsRole) -> Arc<HandshakeLimiter> {
        let (max, per_ip_max) = match role {
            TlsRole::Peer => (HANDSHAKES_MAX, HANDSHAKES_PER_IP_MAX),
            TlsRole::ClientDoors => (CLIENT_DOOR_HANDSHAKES_MAX, CLIENT_DOOR_HANDSHAKES_PER_IP_MAX),
        };
        Arc::new(HandshakeLimiter {
            slots: Arc::new(Semaphore::new(max)),
            by_ip: Mutex::new(HashMap::new()),
            per_ip_max,
        })
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<HandshakeSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= self.per_ip_max {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            limiter: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_ip = self
            .limiter
            .by_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections on `listener`, runs each handshake on a task of its own, and sends the
/// connections whose handshake succeeded. Ends when `stop` turns true or the receiver is gone.
fn handshakes(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    protocol: Protocol,
    mut stop: tokio::sync::watch::Receiver<bool>,
    budget: Arc<ConnectionBudget>,
) -> tokio::sync::mpsc::Receiver<TlsConn> {
    let (tx, rx) = tokio::sync::mpsc::channel(HANDSHAKES_QUEUED_MAX);
    let limiter = HandshakeLimiter::new(tls.role());
    tokio::spawn(async move {
        // Beyond the budget, a connection is dropped at once (no handshake: a TLS client sees
        // it closed).
        while let Some((stream, from, permit)) = next_within_budget(&listener, &budget, &mut stop, tx.closed()).await {
            // A connection beyond the handshakes in progress is dropped at once: a flood of
            // connections that never finish a handshake holds at most that many descriptors and
            // tasks, for at most the handshake timeout each.
            let Some(slot) = limiter.take(from.ip()) else {
                tls.handshakes_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(stream) = tls.accept(stream, protocol).await {
                    let mut conn = TlsConn::new(stream);
                    conn._permit = Some(permit);
                    let _ = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tx.send(conn)).await;
                }
                drop(slot);
            });
        }
    });
    rx
}

/// The connections of a TLS listener of gRPC, for tonic's `serve_with_incoming`. Ends when
/// `stop` turns true.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<NodeTls>,
    stop: tokio::sync::watch::Receiver<bool>,
    budget: Arc<ConnectionBudget>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsConn>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(handshakes(listener, tls, Protocol::Grpc, stop, budget)).map(Ok)
}

/// The next connection `listener` accepts within `budget`, readied ([`prepare`]) and with its
/// permit, or `None` once `stop` turns true or `gone` resolves (the connections' receiver went
/// away). A failed accept is logged and passed over (after a pause when the process is out of
/// descriptors or memory); a connection beyond the budget is closed at once.
async fn next_within_budget(
    listener: &TcpListener,
    budget: &Arc<ConnectionBudget>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    gone: impl std::future::Future<Output = ()>,
) -> Option<(TcpStream, SocketAddr, ConnectionPermit)> {
    tokio::pin!(gone);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return None,
            () = &mut gone => return None,
        };
        let (stream, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                pause_after_failed_accept(&e, listener.local_addr().ok()).await;
                continue;
            }
        };
        if let Some(permit) = budget.try_take() {
            prepare(&stream);
            return Some((stream, from, permit));
        }
    }
}

/// The connections of a plain (no TLS) listener of gRPC, for tonic's `serve_with_incoming`,
/// each holding a permit of `budget` (a connection beyond it is closed at once). Each carries
/// [`ConnectInfo`] with its addresses. Ends when `stop` turns true.
pub fn incoming_plain(
    listener: TcpListener,
    stop: tokio::sync::watch::Receiver<bool>,
    budget: Arc<ConnectionBudget>,
) -> impl tokio_stream::Stream<Item = std::io::Result<PlainConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut stop = stop;
        while let Some((stream, _, permit)) = next_within_budget(&listener, &budget, &mut stop, tx.closed()).await {
            let info = ConnectInfo {
                local: stream.local_addr().ok(),
                remote: stream.peer_addr().ok(),
                ..ConnectInfo::default()
            };
            let conn = PlainConn {
                inner: stream,
                info,
                _permit: Some(permit),
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A connection accepted by a [`Listener`].
pub enum Conn {
    /// With its share of the listener's budget, held until the connection is dropped.
    Plain(TcpStream, ConnectionPermit),
    Tls(Box<TlsConn>),
}

impl Conn {
    /// The name the client's certificate gives (see [`ConnectInfo::client_name`]).
    pub fn client_name(&self) -> Option<&str> {
        match self {
            Conn::Plain(..) => None,
            Conn::Tls(tls) => tls.info.client_name.as_deref(),
        }
    }

    /// What the TLS handshake found about the client (none for a plain connection).
    pub fn tls_info(&self) -> Option<&ConnectInfo> {
        match self {
            Conn::Plain(..) => None,
            Conn::Tls(tls) => Some(&tls.info),
        }
    }

    /// Splits the connection into halves that can be used on two tasks at once (a plain TCP
    /// stream's own halves, which take no lock). The writing half holds the connection's permit.
    pub fn into_split(self) -> (Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>) {
        match self {
            Conn::Plain(tcp, permit) => {
                let (reader, writer) = tcp.into_split();
                (
                    Box::new(reader),
                    Box::new(Accepted {
                        inner: writer,
                        info: ConnectInfo::default(),
                        _permit: Some(permit),
                    }),
                )
            }
            Conn::Tls(tls) => {
                let (reader, writer) = tokio::io::split(*tls);
                (Box::new(reader), Box::new(writer))
            }
        }
    }
}

impl Conn {
    fn io(self: Pin<&mut Self>) -> Pin<&mut (dyn AsyncReadWrite + Unpin)> {
        match self.get_mut() {
            Conn::Plain(tcp, _) => Pin::new(tcp),
            Conn::Tls(tls) => Pin::new(tls.as_mut()),
        }
    }
}

/// Both halves of a stream, as one object.
trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncReadWrite for T {}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(tcp, _) => tcp.is_write_vectored(),
            Conn::Tls(tls) => tls.is_write_vectored(),
        }
    }
}

/// Readies an accepted socket: no Nagle delay, and TCP keepalive, so that a peer that vanished
/// frees its connection (and the connection's permit) after about two minutes.
fn prepare(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_PROBES);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Logs a failed `accept` on `local` and waits as [`accept_failure_pause`] says: a failure of
/// one connection is routine (debug), running out of descriptors or memory is not (warn).
async fn pause_after_failed_accept(error: &std::io::Error, local: Option<SocketAddr>) {
    /// Pauses so far, of every listener: the warning goes out once per power of two, so a node
    /// out of descriptors for long is seen in the log without flooding it.
    static PAUSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match accept_failure_pause(error) {
        None => tracing::debug!(%error, ?local, "a connection failed before it was accepted"),
        Some(pause) => {
            let pauses = PAUSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if pauses.is_power_of_two() {
                tracing::warn!(%error, ?local, ?pause, pauses, "accepting connections failed; pausing");
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// After a failed `accept`: `None` when the error concerned one connection (it was aborted or
/// failed before it was taken: Linux's accept(2) says to retry at once), else how long to pause
/// before the next (out of descriptors or memory: retrying at once would spin).
fn accept_failure_pause(error: &std::io::Error) -> Option<Duration> {
    match error.raw_os_error() {
        Some(
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::EPROTO
            | libc::EPERM
            | libc::EINTR
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT,
        ) => None,
        // "Machine is not on the network": Linux and Android only (other systems have no ENONET).
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(libc::ENONET) => None,
        _ => Some(ACCEPT_PAUSE_WHEN_EXHAUSTED),
    }
}

/// What a plain connection beyond the budget is told before it is closed: a RESP error as
/// Redis words it, an HTTP 503; nothing on gRPC (which would need an HTTP/2 exchange).
fn refusal(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Other => b"-ERR max number of clients reached\r\n",
        Protocol::Http1 => {
            b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 66\r\n\r\nthe node holds as many connections as its file descriptors allow\r\n"
        }
        Protocol::Grpc => b"",
    }
}

/// Tells a connection beyond the budget why it is refused, if that fits in one non-blocking
/// write (it does into a new connection's empty send buffer), and closes it: no task and no
/// descriptor is held for it.
fn refuse(stream: TcpStream, protocol: Protocol) {
    let message = refusal(protocol);
    if message.is_empty() {
        return;
    }
    if let Ok(stream) = stream.into_std() {
        use std::io::Write;
        let _ = (&stream).write(message);
    }
}

/// A listener that hands out connections one at a time, plain or after a TLS handshake.
pub struct Listener {
    local: SocketAddr,
    inner: Inner,
    protocol: Protocol,
    budget: Arc<ConnectionBudget>,
}

enum Inner {
    Plain(TcpListener),
    Tls(tokio::sync::mpsc::Receiver<TlsConn>),
}

impl Listener {
    /// Listens on `tcp` for `protocol`, with TLS when `tls` is given, each connection holding a
    /// permit of `budget`; the handshakes stop when `stop` turns true.
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<NodeTls>>,
        protocol: Protocol,
        stop: tokio::sync::watch::Receiver<bool>,
        budget: Arc<ConnectionBudget>,
    ) -> std::io::Result<Listener> {
        let local = tcp.local_addr()?;
        let inner = match tls {
            None => Inner::Plain(tcp),
            Some(tls) => Inner::Tls(handshakes(tcp, tls, protocol, stop, budget.clone())),
        };
        Ok(Listener {
            local,
            inner,
            protocol,
            budget,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The budget its connections take their permits from.
    pub fn budget(&self) -> &Arc<ConnectionBudget> {
        &self.budget
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// The next connection within the budget and its remote address, or `None` once the listener
    /// stopped (a TLS listener's handshakes end with the node's stop; a plain one never stops).
    /// A failed `accept` is logged and passed over: at once when it concerned one connection,
    /// after a pause when the node is out of descriptors or memory, so no caller spins. Cancel
    /// safe: a connection is taken and returned without an await in between.
    pub async fn accept(&mut self) -> Option<(Conn, SocketAddr)> {
        match &mut self.inner {
            Inner::Plain(tcp) => loop {
                let (stream, from) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        pause_after_failed_accept(&e, Some(self.local)).await;
                        continue;
                    }
                };
                match self.budget.try_take() {
                    Some(permit) => {
                        prepare(&stream);
                        return Some((Conn::Plain(stream, permit), from));
                    }
                    None => refuse(stream, self.protocol),
                }
            },
            Inner::Tls(connections) => {
                let conn = connections.recv().await?;
                let from = conn.info.remote.unwrap_or(self.local);
                Some((Conn::Tls(Box::new(conn)), from))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_tls::tests::{ca, leaf, write_files};
    use crate::node_tls::{TlsFiles, TlsRole};
    use crate::ClientTls;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tls(files: TlsFiles) -> Arc<NodeTls> {
        Arc::new(NodeTls::load(files, TlsRole::ClientDoors).expect("load"))
    }

    #[tokio::test]
    async fn handshakes_in_progress_are_bounded_per_address() {
        let limiter = HandshakeLimiter::new(TlsRole::Peer);
        let one: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..HANDSHAKES_PER_IP_MAX)
            .map(|_| limiter.take(one).expect("a slot"))
            .collect();
        assert!(limiter.take(one).is_none(), "the address has all its slots");
        let other = limiter.take([10, 0, 0, 2].into()).expect("another address");
        drop(slots);
        drop(other);
        assert!(limiter.take(one).is_some(), "slots come back");
        assert!(limiter.by_ip.lock().expect("lock").len() <= 1);
    }

    /// A plain door holds at most its budget: a connection beyond it is told so (RESP's words)
    /// and closed, and a closed connection's permit is taken by the next.
    #[tokio::test]
    async fn a_plain_door_refuses_connections_beyond_its_budget_and_takes_them_again_once_one_closes() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let budget = ConnectionBudget::new("test", 2);
        let mut listener = Listener::new(tcp, None, Protocol::Other, stop, budget.clone()).expect("listener");
        let addr = listener.local_addr();
        let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((conn, _)) = listener.accept().await {
                let _ = held_tx.send(conn);
            }
        });
        let _a = TcpStream::connect(addr).await.expect("a");
        let _b = TcpStream::connect(addr).await.expect("b");
        let first = held_rx.recv().await.expect("a accepted");
        let _second = held_rx.recv().await.expect("b accepted");
        let mut refused = TcpStream::connect(addr).await.expect("c connects");
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut reply))
            .await
            .expect("closed at once")
            .expect("read");
        assert_eq!(reply, b"-ERR max number of clients reached\r\n");
        assert_eq!((budget.open(), budget.refused()), (2, 1));
        // Split, a plain connection's permit lives in its writing half.
        let (reader, writer) = first.into_split();
        drop(reader);
        assert_eq!(budget.open(), 2);
        drop(writer);
        assert_eq!(budget.open(), 1);
        let _d = TcpStream::connect(addr).await.expect("d");
        let _third = tokio::time::timeout(Duration::from_secs(5), held_rx.recv())
            .await
            .expect("d accepted")
            .expect("d");
        assert_eq!((budget.open(), budget.refused()), (2, 1));
        assert_eq!(refusal(Protocol::Http1).len(), {
            let text = std::str::from_utf8(refusal(Protocol::Http1)).expect("text");
            let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
            assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
            text.len()
        });
    }

    /// A client door: clients with no certificate and clients with one of the CA are served
    /// (the latter named by it); a certificate of another CA, a client that does not trust the
    /// server's CA, and plaintext are not.
    #[tokio::test]
    async fn a_client_door_serves_clients_with_or_without_a_certificate_of_its_ca_and_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, issuer) = ca();
        let (other_pem, other_issuer) = ca();
        let mut files = write_files(dir.path(), &issuer, &ca_pem);
        files.client_ca = Some(files.ca.clone());
        let node = tls(files);
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let budget = ConnectionBudget::new("test", 64);
        let mut listener = Listener::new(tcp, Some(node.clone()), Protocol::Grpc, stop, budget).expect("listener");
        let addr = listener.local_addr().to_string();
        let server = tokio::spawn(async move {
            let mut names = Vec::new();
            while let Ok(Some((mut conn, _))) = tokio::time::timeout(Duration::from_secs(3), listener.accept()).await {
                names.push(conn.client_name().map(str::to_string));
                let mut byte = [0u8; 1];
                if conn.read_exact(&mut byte).await.is_ok() {
                    let _ = conn.write_all(&byte).await;
                }
            }
            names
        });
        let echo = |client: ClientTls| {
            let addr = addr.clone();
            async move {
                let mut stream = client.connect(&addr, Duration::from_secs(3)).await.ok()?;
                stream.write_all(b"x").await.ok()?;
                let mut byte = [0u8; 1];
                tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut byte))
                    .await
                    .ok()?
                    .ok()?;
                Some(byte[0])
            }
        };
        let anonymous = ClientTls::from_pem(ca_pem.as_bytes(), None).expect("client");
        assert_eq!(echo(anonymous).await, Some(b'x'), "no certificate");
        let (cert, key) = leaf(&issuer, "alice");
        let alice = ClientTls::from_pem(ca_pem.as_bytes(), Some((cert.as_bytes(), key.as_bytes()))).expect("alice");
        assert_eq!(echo(alice).await, Some(b'x'), "a certificate of the CA");
        let (cert, key) = leaf(&other_issuer, "mallory");
        let mallory = ClientTls::from_pem(ca_pem.as_bytes(), Some((cert.as_bytes(), key.as_bytes()))).expect("m");
        assert_eq!(echo(mallory).await, None, "a certificate of another CA");
        let stranger = ClientTls::from_pem(other_pem.as_bytes(), None).expect("stranger");
        assert_eq!(echo(stranger).await, None, "a server of another CA");
        let mut plain = TcpStream::connect(&addr).await.expect("connect");
        plain.write_all(b"PING\r\n").await.expect("write");
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut reply)).await;
        assert!(!reply.starts_with(b"x"), "plaintext is not served");
        drop(plain);
        let names = server.await.expect("server");
        assert_eq!(names, vec![None, Some("alice".to_string())]);
        assert!(node.handshake_failures() >= 2, "{}", node.handshake_failures());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever bytes a client certificate holds, reading its name never panics.
        #[test]
        fn any_bytes_as_a_certificate_give_a_name_or_none(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = common_name(&bytes);
        }
    }

    #[test]
    fn a_certificate_names_its_common_name() {
        let (_, issuer) = ca();
        let (pem, _) = leaf(&issuer, "alice");
        let der = crate::node_tls::tests::der(&pem);
        let (name, not_after) = common_name(&der).expect("a name");
        assert_eq!(name, "alice");
        assert!(not_after > std::time::SystemTime::now());
        let info = ConnectInfo {
            client_name: Some(Arc::from("alice")),
            client_not_after: Some(not_after),
            ..ConnectInfo::default()
        };
        assert_eq!(
            info.client_name_at(std::time::SystemTime::now()),
            Ok(Some(Arc::from("alice")))
        );
        assert!(
            info.client_name_at(not_after + Duration::from_secs(1)).is_err(),
            "expired"
        );
        let mut damaged = der.clone();
        let cut = damaged.len() / 2;
        damaged.truncate(cut);
        assert_eq!(common_name(&damaged), None);
    }
}
