//! Mutual TLS on the peer listener: every member proves itself with a certificate signed by the
//! cluster's CA, both when it accepts a connection and when it opens one, so only members reach
//! Raft, and nothing between them can read or change the messages.
//!
//! [`PeerTls`] holds the node's certificate, key and CA as loaded from three PEM files and the
//! rustls configurations built from them. [`PeerTls::reload_if_changed`] (run every
//! [`TLS_RELOAD_CHECK_INTERVAL`] by [`PeerTls::keep_reloading`]) rebuilds them when a file
//! changes: new connections use the new files, established ones go on with what they started
//! with until the peer server renews them (`limits::PEER_CONNECTION_AGE_MAX`). A file that does
//! not load (half written, a key that does not match) is refused with a warning and the previous
//! configuration stays, tried again at every check.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::limits::{
    CONNECT_TIMEOUT, PEER_HANDSHAKES_MAX, PEER_HANDSHAKES_PER_IP_MAX, PEER_HANDSHAKES_QUEUED_MAX, TLS_FILE_BYTES_MAX,
    TLS_HANDSHAKE_TIMEOUT, TLS_RELOAD_CHECK_INTERVAL,
};
/// The ALPN protocol both sides offer: gRPC is HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// The three PEM files of a member's peer TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate (chain), presented to peers as server and as client.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster's CA certificate(s): a peer's certificate must chain to one of them. During a
    /// CA rotation the file holds the old and the new CA.
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("building the TLS configuration from {cert}, {key} and {ca}: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        reason: String,
    },
}

/// What was built from one version of the files.
struct Loaded {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

/// What the three files held when last loaded (`None`: unreadable), compared whole: the files are
/// small, and a change of content is what matters (a rewrite within one mtime tick, or a fix of
/// permissions that leaves the content as it was, are both seen).
type Fingerprint = Vec<Option<Vec<u8>>>;

/// A member's peer TLS: the current configurations and how they came to be.
pub struct PeerTls {
    files: PeerTlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    fingerprint: Mutex<Fingerprint>,
    /// The last load of changed files failed: every check tries again (a permission fixed
    /// without a change of content, descriptors back after running out).
    last_failed: std::sync::atomic::AtomicBool,
    /// Handshakes in progress on the peer listener, bounded by [`PEER_HANDSHAKES_MAX`].
    handshakes: Arc<tokio::sync::Semaphore>,
    /// Handshakes in progress per source address, bounded by [`PEER_HANDSHAKES_PER_IP_MAX`].
    handshakes_by_ip: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Connections dropped unanswered because too many handshakes were in progress.
    handshakes_dropped: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    handshake_failures: AtomicU64,
}

fn read_err(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn load(files: &PeerTlsFiles) -> Result<Loaded, TlsError> {
    let config_err = |reason: String| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        ca: files.ca.clone(),
        reason,
    };
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(read_err(&files.key))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(&files.ca)? {
        roots
            .add(ca)
            .map_err(|e| config_err(format!("a CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    // ring rather than aws-lc-rs (see the workspace manifest); rustls marks ring's provider
    // deprecated for lacking post-quantum key exchange, which a cluster's private peer network
    // does without for now.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| config_err(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| config_err(e.to_string()))?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| config_err(e.to_string()))?;
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Loaded {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
}

fn fingerprint(files: &PeerTlsFiles) -> Fingerprint {
    [&files.cert, &files.key, &files.ca]
        .iter()
        .map(|path| {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .ok()?
                .take(TLS_FILE_BYTES_MAX)
                .read_to_end(&mut bytes)
                .ok()?;
            Some(bytes)
        })
        .collect()
}

impl PeerTls {
    /// Loads the files; a node whose files do not load does not start.
    pub fn load(files: PeerTlsFiles) -> Result<PeerTls, TlsError> {
        let fingerprint = fingerprint(&files);
        let loaded = load(&files)?;
        Ok(PeerTls {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
            fingerprint: Mutex::new(fingerprint),
            last_failed: std::sync::atomic::AtomicBool::new(false),
            handshakes: Arc::new(tokio::sync::Semaphore::new(PEER_HANDSHAKES_MAX)),
            handshakes_by_ip: Mutex::new(std::collections::HashMap::new()),
            handshakes_dropped: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Rebuilds the configurations if a file changed since the last load; true if it did.
    /// Blocking (reads three small files).
    pub fn reload_if_changed(&self) -> bool {
        let now = fingerprint(&self.files);
        let mut seen = self.fingerprint.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *seen == now && !self.last_failed.load(Ordering::Relaxed) {
            return false;
        }
        match load(&self.files) {
            Ok(loaded) => {
                *self.loaded.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded);
                *seen = now;
                self.last_failed.store(false, Ordering::Relaxed);
                let reloads = self.reloads.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(reloads, cert = %self.files.cert.display(), "peer TLS certificates reloaded");
                true
            }
            Err(e) => {
                // Tried again at every check until it loads; warned once per change of content.
                let changed = *seen != now;
                *seen = now;
                self.last_failed.store(true, Ordering::Relaxed);
                if changed {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "peer TLS files changed but do not load; keeping the previous ones");
                }
                false
            }
        }
    }

    /// Checks the files every [`TLS_RELOAD_CHECK_INTERVAL`] until `stop` turns true.
    pub async fn keep_reloading(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(TLS_RELOAD_CHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let tls = self.clone();
            let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
        }
    }

    /// Connections dropped unanswered because too many handshakes (in all, or from their
    /// address) were in progress, since start.
    pub fn handshakes_dropped(&self) -> u64 {
        self.handshakes_dropped.load(Ordering::Relaxed)
    }

    /// Successful reloads since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changes of the files that did not load, since start.
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Connections to or from peers whose handshake failed (a certificate of another CA, no
    /// certificate, plaintext, a timeout), since start.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    fn handshake_failed(&self, direction: &str, peer: &str, reason: &dyn std::fmt::Display) {
        let failures = self.handshake_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // One line at the first failure and then ever more rarely: a stranger retries for as long
        // as it runs.
        if failures.is_power_of_two() {
            tracing::warn!(direction, peer, failures, "peer TLS handshake failed: {reason}");
        }
    }

    /// The server side of a handshake, bounded by [`TLS_HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, stream: TcpStream) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        let acceptor = self.current().acceptor.clone();
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                self.handshake_failed("incoming", &peer, &e);
                None
            }
            Err(_) => {
                self.handshake_failed("incoming", &peer, &"timed out");
                None
            }
        }
    }

    /// Opens a connection to `addr` (`host:port`) and runs the client side of a handshake,
    /// verifying the peer's certificate against the CA and its name or IP against `addr`'s host.
    pub async fn connect(&self, addr: &str) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
        let host = addr
            .rsplit_once(':')
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| invalid(format!("{addr:?} is not host:port")))?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| invalid(format!("{host:?}: {e}")))?;
        let connector = self.current().connector.clone();
        let attempt = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            connector.connect(name, tcp).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => {
                if e.kind() != std::io::ErrorKind::ConnectionRefused {
                    self.handshake_failed("outgoing", addr, &e);
                }
                Err(e)
            }
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )),
        }
    }
}

/// A handshake's place among those in progress: one of [`PEER_HANDSHAKES_MAX`] and one of its
/// address's [`PEER_HANDSHAKES_PER_IP_MAX`], given back when dropped.
struct HandshakeSlot {
    tls: Arc<PeerTls>,
    ip: std::net::IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl HandshakeSlot {
    fn take(tls: &Arc<PeerTls>, ip: std::net::IpAddr) -> Option<HandshakeSlot> {
        let permit = tls.handshakes.clone().try_acquire_owned().ok()?;
        let mut by_ip = tls
            .handshakes_by_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= PEER_HANDSHAKES_PER_IP_MAX {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            tls: tls.clone(),
            ip,
            _permit: permit,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_ip = self
            .tls
            .handshakes_by_ip
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

/// An accepted peer connection: TLS over TCP, with the TCP addresses tonic reports as the
/// request's remote address.
pub struct PeerTlsStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: tonic::transport::server::TcpConnectInfo,
}

impl PeerTlsStream {
    pub fn new(inner: tokio_rustls::server::TlsStream<TcpStream>) -> PeerTlsStream {
        use tonic::transport::server::Connected;
        let info = inner.get_ref().0.connect_info();
        PeerTlsStream { inner, info }
    }
}

impl tonic::transport::server::Connected for PeerTlsStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl tokio::io::AsyncRead for PeerTlsStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PeerTlsStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections on `listener`, runs each handshake on a task of its own (a slow one holds
/// up no other), and yields the connections whose handshake succeeded, for tonic's
/// `serve_with_incoming`. Ends when `stop` turns true.
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<PeerTls>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<PeerTlsStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(PEER_HANDSHAKES_QUEUED_MAX);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let (stream, from) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // A connection beyond the handshakes in progress is dropped at once: a flood of
            // connections that never finish a handshake holds at most that many descriptors and
            // tasks, for at most the handshake timeout each.
            let Some(slot) = HandshakeSlot::take(&tls, from.ip()) else {
                tls.handshakes_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let accepted = tls.accept(stream).await;
                drop(slot);
                if let Some(stream) = accepted {
                    let _ = tx.send(Ok(PeerTlsStream::new(stream))).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A CA: its certificate's PEM and an issuer for node certificates.
    fn ca() -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), Issuer::new(params, key))
    }

    /// Writes a node certificate for 127.0.0.1 signed by `issuer`, and `ca_pem` as the CA file.
    fn write_files(dir: &Path, issuer: &Issuer<'static, KeyPair>, ca_pem: &str) -> PeerTlsFiles {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, issuer)
            .expect("signed");
        let files = PeerTlsFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).expect("cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("key");
        std::fs::write(&files.ca, ca_pem).expect("ca");
        files
    }

    /// Whether a client with `client` TLS completes a handshake with a server with `server` TLS,
    /// and the server accepts it too.
    async fn handshake(server: Arc<PeerTls>, client: &PeerTls) -> bool {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            server.accept(stream).await
        });
        let Ok(mut stream) = client.connect(&addr).await else {
            // The server sees the failed handshake too (the client hung up).
            assert!(accepted.await.expect("server task").is_none());
            return false;
        };
        // The server's verdict on the client's certificate comes after the client's side of the
        // handshake: a refusal arrives as an alert on the next read. The accepted connection is
        // held open meanwhile, so a read that waits means it is alive.
        let accepted = accepted.await.expect("server task");
        let mut byte = [0u8; 1];
        let alive = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte))
            .await
            .is_err();
        alive && accepted.is_some()
    }

    #[tokio::test]
    async fn members_of_one_ca_connect_and_a_certificate_of_another_ca_is_refused_both_ways() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let (ca_pem, issuer) = ca();
        let (other_pem, other_issuer) = ca();
        let a = Arc::new(PeerTls::load(write_files(dirs[0].path(), &issuer, &ca_pem)).expect("a"));
        let b = Arc::new(PeerTls::load(write_files(dirs[1].path(), &issuer, &ca_pem)).expect("b"));
        let stranger = Arc::new(PeerTls::load(write_files(dirs[2].path(), &other_issuer, &other_pem)).expect("s"));
        assert!(handshake(a.clone(), &b).await, "two members of one CA");
        // An impostor that trusts this cluster's CA but whose own certificate another CA signed:
        // only the server's check of client certificates keeps it out.
        let impostor_dir = tempfile::tempdir().expect("tempdir");
        let impostor = PeerTls::load(write_files(impostor_dir.path(), &other_issuer, &ca_pem)).expect("impostor");
        let before = a.handshake_failures();
        assert!(
            !handshake(a.clone(), &impostor).await,
            "a client certificate of another CA"
        );
        assert!(a.handshake_failures() > before, "the server refused it");
        assert!(!handshake(a.clone(), &stranger).await, "a client of another CA");
        assert!(a.handshake_failures() >= 1);
        assert!(!handshake(stranger.clone(), &b).await, "a server of another CA");
        assert!(b.handshake_failures() >= 1);
    }

    #[tokio::test]
    async fn changed_files_are_reloaded_and_files_that_do_not_load_keep_the_previous_ones() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let (old_pem, old_issuer) = ca();
        let (new_pem, new_issuer) = ca();
        let a = Arc::new(PeerTls::load(write_files(dirs[0].path(), &old_issuer, &old_pem)).expect("a"));
        // b joins during the rotation: the new CA's certificate, both CAs trusted.
        let b = PeerTls::load(write_files(dirs[1].path(), &new_issuer, &format!("{old_pem}{new_pem}"))).expect("b");
        assert!(!handshake(a.clone(), &b).await, "a trusts only the old CA");
        assert!(!a.reload_if_changed(), "nothing changed");

        // A rotation: a's CA file holds both CAs, then its certificate is the new CA's.
        std::fs::write(dirs[0].path().join("ca.pem"), format!("{old_pem}{new_pem}")).expect("bundle");
        assert!(a.reload_if_changed());
        assert!(handshake(a.clone(), &b).await, "a now trusts the new CA too");
        write_files(dirs[0].path(), &new_issuer, &format!("{old_pem}{new_pem}"));
        assert!(a.reload_if_changed());
        assert!(handshake(a.clone(), &b).await);
        assert_eq!(a.reloads(), 2);

        // A key that is not PEM: refused, the previous files stay in use.
        std::fs::write(dirs[0].path().join("node-key.pem"), "half written").expect("damage");
        assert!(!a.reload_if_changed());
        assert_eq!(a.reload_failures(), 1);
        assert!(
            handshake(a.clone(), &b).await,
            "the previous configuration still serves"
        );
    }

    #[tokio::test]
    async fn handshakes_in_progress_are_bounded_per_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, issuer) = ca();
        let tls = Arc::new(PeerTls::load(write_files(dir.path(), &issuer, &ca_pem)).expect("tls"));
        let one: std::net::IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..PEER_HANDSHAKES_PER_IP_MAX)
            .map(|_| HandshakeSlot::take(&tls, one).expect("a slot"))
            .collect();
        assert!(
            HandshakeSlot::take(&tls, one).is_none(),
            "the address has all its slots"
        );
        let other = HandshakeSlot::take(&tls, [10, 0, 0, 2].into()).expect("another address");
        drop(slots);
        drop(other);
        assert!(HandshakeSlot::take(&tls, one).is_some(), "slots come back");
        assert!(tls.handshakes_by_ip.lock().expect("lock").len() <= 1);
    }

    #[test]
    fn files_that_do_not_load_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = PeerTlsFiles {
            cert: dir.path().join("node.pem"),
            key: dir.path().join("node-key.pem"),
            ca: dir.path().join("ca.pem"),
        };
        let e = PeerTls::load(files.clone()).err().expect("no files");
        assert!(e.to_string().contains("node.pem"), "{e}");
        for path in [&files.cert, &files.key, &files.ca] {
            std::fs::write(path, "not PEM").expect("write");
        }
        let e = PeerTls::load(files).err().expect("not PEM");
        assert!(matches!(e, TlsError::Empty { .. }), "{e}");
    }
}
