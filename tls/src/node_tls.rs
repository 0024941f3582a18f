//! A node's TLS: its certificate, key and CA, loaded from PEM files, and the rustls
//! configurations built from them for both sides of a handshake.
//!
//! The peer listener runs it as [`TlsRole::Peer`]: every member proves itself with a certificate
//! of the cluster's CA valid as a server's and as a client's, both when it accepts a connection
//! and when it opens one, so only members reach Raft. The client doors (client gRPC, HTTP, RESP,
//! edge) run it as [`TlsRole::ClientDoors`]: the node shows its certificate; a client may show
//! one of the client CA (`client_ca`, a CA of its own: its subject's common name names the Basalt
//! user a gRPC call authenticates as) or none (and use a token); the node's own calls to other
//! nodes' client doors trust `ca` and show no certificate (they carry the root token).
//!
//! [`NodeTls::reload_if_changed`] (run every [`TLS_RELOAD_CHECK_INTERVAL`] by
//! [`NodeTls::keep_reloading`]) rebuilds the configurations when a file changes: new connections
//! use the new files, established ones go on with what they started with. A file that does not
//! load (half written, a key that does not match) is refused with a warning and the previous
//! configuration stays, tried again at every check.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::limits::{TLS_FILE_BYTES_MAX, TLS_HANDSHAKE_TIMEOUT, TLS_RELOAD_CHECK_INTERVAL};

/// ALPN's name of HTTP/2, which gRPC runs on.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN's name of HTTP/1.1.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The protocol a listener speaks, as its handshakes announce it (ALPN): a client that offers
/// protocols must offer this one (a browser or curl offering h2 and http/1.1 to an HTTP/1.1
/// door is told http/1.1); one that offers none is served anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: the client API and the peer listener.
    Grpc,
    /// HTTP/1.1: the HTTP door and the edge.
    Http1,
    /// Neither (RESP): no ALPN.
    Other,
}

impl Protocol {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Grpc => vec![ALPN_H2.to_vec()],
            Protocol::Http1 => vec![ALPN_HTTP1.to_vec()],
            Protocol::Other => Vec::new(),
        }
    }
}

/// The PEM files of a node's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate (chain): shown to whoever connects, and, as a peer, to the
    /// member it connects to.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA certificate(s) of the nodes: a server's certificate must chain to one of them when
    /// this node connects, and so must a connecting member's on the peer listener. During a CA
    /// rotation the file holds the old and the new CA.
    pub ca: PathBuf,
    /// On the client doors only: the CA certificate(s) client certificates must chain to (then
    /// asked for, optional). `None`: clients are asked for none.
    pub client_ca: Option<PathBuf>,
}

/// Which listener a node's TLS serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRole {
    /// The peer listener: every connecting member shows a certificate of the CA valid as a
    /// server's (extended key usage serverAuth, as every member's is, and a client
    /// certificate's is not), or its handshake fails; the node shows its own when connecting.
    Peer,
    /// The client doors: clients may show a certificate of `client_ca`; the node connects to
    /// other nodes' doors without one.
    ClientDoors,
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
    #[error("building a TLS client configuration: {0}")]
    Client(String),
}

/// What was built from one version of the files.
struct Loaded {
    /// One per [`Protocol`], in its order.
    acceptors: [TlsAcceptor; 3],
    connector: TlsConnector,
}

/// What the files held when last loaded (`None`: unreadable), compared whole: the files are
/// small, and a change of content is what matters (a rewrite within one mtime tick, or a fix of
/// permissions that leaves the content as it was, are both seen).
type Fingerprint = Vec<Option<Vec<u8>>>;

/// A node's TLS for one role (peer or client doors): the current configurations and how they
/// came to be.
pub struct NodeTls {
    files: TlsFiles,
    role: TlsRole,
    loaded: RwLock<Arc<Loaded>>,
    fingerprint: Mutex<Fingerprint>,
    /// The last load of changed files failed: every check tries again (a permission fixed
    /// without a change of content, descriptors back after running out).
    last_failed: AtomicBool,
    /// Connections dropped unanswered because too many handshakes were in progress.
    pub(crate) handshakes_dropped: AtomicU64,
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

pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(read_err(path))
}

/// The crypto provider of every configuration: ring rather than aws-lc-rs (see the workspace
/// manifest); rustls marks ring's provider deprecated for lacking post-quantum key exchange,
/// which a cluster's private network does without for now.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(path: &Path, config_err: &dyn Fn(String) -> TlsError) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(path)? {
        roots
            .add(ca)
            .map_err(|e| config_err(format!("a CA certificate of {}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

fn load(files: &TlsFiles, role: TlsRole) -> Result<Loaded, TlsError> {
    let config_err = |reason: String| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        ca: files.ca.clone(),
        reason,
    };
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let roots = load_roots(&files.ca, &config_err)?;
    let provider = provider();

    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?;
    let server = match (role, &files.client_ca) {
        (TlsRole::Peer, _) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| config_err(e.to_string()))?;
            server.with_client_cert_verifier(Arc::new(MemberVerifier { inner: verifier }))
        }
        (TlsRole::ClientDoors, Some(client_ca)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                load_roots(client_ca, &config_err)?,
                provider.clone(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| config_err(e.to_string()))?;
            server.with_client_cert_verifier(verifier)
        }
        (TlsRole::ClientDoors, None) => server.with_no_client_auth(),
    }
    .with_single_cert(chain.clone(), key.clone_key())
    .map_err(|e| config_err(e.to_string()))?;
    let acceptors = [Protocol::Grpc, Protocol::Http1, Protocol::Other].map(|protocol| {
        let mut server = server.clone();
        server.alpn_protocols = protocol.alpn();
        TlsAcceptor::from(Arc::new(server))
    });

    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?
        .with_root_certificates(roots);
    let mut client = match role {
        TlsRole::Peer => client
            .with_client_auth_cert(chain, key)
            .map_err(|e| config_err(e.to_string()))?,
        TlsRole::ClientDoors => client.with_no_client_auth(),
    };
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Loaded {
        acceptors,
        connector: TlsConnector::from(Arc::new(client)),
    })
}

/// Whether a certificate may serve as a server's: its extended key usage names serverAuth (or
/// any purpose), or it has none (then every purpose is allowed).
fn serves_as_server(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    match cert.extended_key_usage() {
        Ok(None) => true,
        Ok(Some(usage)) => usage.value.server_auth || usage.value.any,
        Err(_) => false,
    }
}

/// The peer listener's check of a connecting member: a certificate of the cluster's CA, checked
/// as any client's, that must also be valid as a server's. Every member's certificate is (it
/// serves the peer listener too); a client certificate signed by the same CA is not a member's.
#[derive(Debug)]
struct MemberVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl rustls::server::danger::ClientCertVerifier for MemberVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match serves_as_server(end_entity.as_ref()) {
            true => Ok(verified),
            false => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::InvalidPurpose,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn fingerprint(files: &TlsFiles) -> Fingerprint {
    [
        Some(&files.cert),
        Some(&files.key),
        Some(&files.ca),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
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

/// The server name to verify when connecting to `addr` (`host:port`): its host, a DNS name or
/// an IP address.
pub(crate) fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let host = addr
        .rsplit_once(':')
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| invalid(format!("{addr:?} is not host:port")))?;
    ServerName::try_from(host.to_string()).map_err(|e| invalid(format!("{host:?}: {e}")))
}

/// Opens a TCP connection to `addr` and runs the client side of a handshake with `connector`,
/// all within `timeout`.
pub(crate) async fn connect_with(
    connector: &TlsConnector,
    addr: &str,
    timeout: Duration,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = server_name(addr)?;
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        connector.connect(name, tcp).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(connected) => connected,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out"),
        )),
    }
}

impl NodeTls {
    /// Loads the files; a node whose files do not load does not start.
    pub fn load(files: TlsFiles, role: TlsRole) -> Result<NodeTls, TlsError> {
        let fingerprint = fingerprint(&files);
        let loaded = load(&files, role)?;
        Ok(NodeTls {
            files,
            role,
            loaded: RwLock::new(Arc::new(loaded)),
            fingerprint: Mutex::new(fingerprint),
            last_failed: AtomicBool::new(false),
            handshakes_dropped: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
        })
    }

    /// The listener this TLS serves.
    pub fn role(&self) -> TlsRole {
        self.role
    }

    /// The files this TLS was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Rebuilds the configurations if a file changed since the last load; true if it did.
    /// Blocking (reads up to four small files).
    pub fn reload_if_changed(&self) -> bool {
        let now = fingerprint(&self.files);
        let mut seen = self.fingerprint.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *seen == now && !self.last_failed.load(Ordering::Relaxed) {
            return false;
        }
        match load(&self.files, self.role) {
            Ok(loaded) => {
                *self.loaded.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded);
                *seen = now;
                self.last_failed.store(false, Ordering::Relaxed);
                let reloads = self.reloads.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(reloads, cert = %self.files.cert.display(), "TLS certificates reloaded");
                true
            }
            Err(e) => {
                // Tried again at every check until it loads; warned once per change of content.
                let changed = *seen != now;
                *seen = now;
                self.last_failed.store(true, Ordering::Relaxed);
                if changed {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
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
    /// address) were in progress on a listener of this TLS, since start.
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

    /// Connections to or from this node whose handshake failed (a certificate of another CA, no
    /// certificate where one is required, plaintext, a timeout), since start.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    fn handshake_failed(&self, direction: &str, peer: &str, reason: &dyn std::fmt::Display) {
        let failures = self.handshake_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // One line at the first failure and then ever more rarely: a stranger retries for as long
        // as it runs.
        if failures.is_power_of_two() {
            tracing::warn!(direction, peer, failures, "TLS handshake failed: {reason}");
        }
    }

    /// The server side of a handshake for a listener of `protocol`, bounded by
    /// [`TLS_HANDSHAKE_TIMEOUT`].
    pub async fn accept(
        &self,
        stream: TcpStream,
        protocol: Protocol,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        let acceptor = self.current().acceptors[protocol as usize].clone();
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

    /// Opens a connection to `addr` (`host:port`) within `timeout` and runs the client side of a
    /// handshake, showing this node's certificate as a peer (none to a client door) and verifying the server's against the CA and
    /// its name or IP against `addr`'s host.
    pub async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connector = self.current().connector.clone();
        match connect_with(&connector, addr, timeout).await {
            Ok(tls) => Ok(tls),
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
                ) {
                    self.handshake_failed("outgoing", addr, &e);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    /// A CA: its certificate's PEM and an issuer for node certificates.
    pub(crate) fn ca() -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), Issuer::new(params, key))
    }

    /// A certificate for 127.0.0.1 with common name `name`, signed by `issuer`: its PEM and its
    /// key's.
    pub(crate) fn leaf(issuer: &Issuer<'static, KeyPair>, name: &str) -> (String, String) {
        leaf_for(issuer, name, Vec::new())
    }

    /// As [`leaf`], with extended key usages `usages` (none: any purpose).
    pub(crate) fn leaf_for(
        issuer: &Issuer<'static, KeyPair>,
        name: &str,
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a node certificate for 127.0.0.1 signed by `issuer`, and `ca_pem` as the CA file.
    pub(crate) fn write_files(dir: &Path, issuer: &Issuer<'static, KeyPair>, ca_pem: &str) -> TlsFiles {
        let (cert, key) = leaf(issuer, "node");
        let files = TlsFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
            ca: dir.join("ca.pem"),
            client_ca: None,
        };
        std::fs::write(&files.cert, cert).expect("cert");
        std::fs::write(&files.key, key).expect("key");
        std::fs::write(&files.ca, ca_pem).expect("ca");
        files
    }

    /// The DER of the first certificate of a PEM text.
    pub(crate) fn der(pem: &str) -> Vec<u8> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .expect("a certificate")
            .expect("PEM")
            .to_vec()
    }

    pub(crate) fn peer(files: TlsFiles) -> Arc<NodeTls> {
        Arc::new(NodeTls::load(files, TlsRole::Peer).expect("load"))
    }

    /// Whether a client with `client` TLS completes a handshake with a server with `server` TLS,
    /// and the server accepts it too.
    async fn handshake(server: Arc<NodeTls>, client: &NodeTls) -> bool {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            server.accept(stream, Protocol::Grpc).await
        });
        let Ok(mut stream) = client.connect(&addr, Duration::from_secs(5)).await else {
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
        let a = peer(write_files(dirs[0].path(), &issuer, &ca_pem));
        let b = peer(write_files(dirs[1].path(), &issuer, &ca_pem));
        let stranger = peer(write_files(dirs[2].path(), &other_issuer, &other_pem));
        assert!(handshake(a.clone(), &b).await, "two members of one CA");
        // An impostor that trusts this cluster's CA but whose own certificate another CA signed:
        // only the server's check of client certificates keeps it out.
        let impostor_dir = tempfile::tempdir().expect("tempdir");
        let impostor = peer(write_files(impostor_dir.path(), &other_issuer, &ca_pem));
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

    /// A client certificate (extended key usage clientAuth only) signed by the cluster's CA, as
    /// a careless operator might issue users from it, is no member's.
    #[tokio::test]
    async fn a_client_certificate_of_the_cluster_ca_is_not_a_member() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let (ca_pem, issuer) = ca();
        let member = peer(write_files(dirs[0].path(), &issuer, &ca_pem));
        let files = write_files(dirs[1].path(), &issuer, &ca_pem);
        let (cert, key) = leaf_for(&issuer, "alice", vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]);
        std::fs::write(&files.cert, cert).expect("cert");
        std::fs::write(&files.key, key).expect("key");
        let user = peer(files);
        let before = member.handshake_failures();
        assert!(!handshake(member.clone(), &user).await, "a user's certificate");
        assert!(member.handshake_failures() > before);
        let (cert, key) = leaf_for(
            &issuer,
            "node-2",
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        std::fs::write(dirs[1].path().join("node.pem"), cert).expect("cert");
        std::fs::write(dirs[1].path().join("node-key.pem"), key).expect("key");
        assert!(user.reload_if_changed());
        assert!(
            handshake(member, &user).await,
            "a member's certificate, as `basalt certs node` makes it"
        );
    }

    #[tokio::test]
    async fn changed_files_are_reloaded_and_files_that_do_not_load_keep_the_previous_ones() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let (old_pem, old_issuer) = ca();
        let (new_pem, new_issuer) = ca();
        let a = peer(write_files(dirs[0].path(), &old_issuer, &old_pem));
        // b joins during the rotation: the new CA's certificate, both CAs trusted.
        let b = peer(write_files(dirs[1].path(), &new_issuer, &format!("{old_pem}{new_pem}")));
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

    #[test]
    fn files_that_do_not_load_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles {
            cert: dir.path().join("node.pem"),
            key: dir.path().join("node-key.pem"),
            ca: dir.path().join("ca.pem"),
            client_ca: None,
        };
        let e = NodeTls::load(files.clone(), TlsRole::ClientDoors).expect_err("no files");
        assert!(e.to_string().contains("node.pem"), "{e}");
        for path in [&files.cert, &files.key, &files.ca] {
            std::fs::write(path, "not PEM").expect("write");
        }
        let e = NodeTls::load(files, TlsRole::Peer).expect_err("not PEM");
        assert!(matches!(e, TlsError::Empty { .. }), "{e}");
    }
}
