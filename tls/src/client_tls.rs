//! The connect side: how an SDK, a CLI or a node opens a TLS connection to a node's client door,
//! and the gRPC channels built on it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::node_tls::{connect_with, provider, NodeTls, TlsError, ALPN_H2};

/// A client's TLS: the CA(s) it trusts for the nodes' certificates, and optionally a certificate
/// of its own (whose common name names the Basalt user it authenticates as). Fixed once built:
/// a client that must see new files builds a new one.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

fn client_err(what: &str) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Client(format!("{what}: {e}"))
}

impl ClientTls {
    /// From PEM text: `ca` holds one or more CA certificates; `identity` a certificate (chain)
    /// and its private key.
    pub fn from_pem(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(client_err("the CA file"))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Client(format!("a CA certificate: {e}")))?;
            any = true;
        }
        if !any {
            return Err(TlsError::Client("the CA file holds no PEM certificate".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Client(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(client_err("the certificate file"))?;
                if chain.is_empty() {
                    return Err(TlsError::Client("the certificate file holds no PEM certificate".into()));
                }
                let key = PrivateKeyDer::from_pem_slice(key).map_err(client_err("the key file"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Client(format!("the certificate and its key: {e}")))?
            }
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The same TLS offering the ALPN `protocols` instead of gRPC's `h2` (`b"http/1.1"` for the
    /// HTTP door and the edge; none for RESP).
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> ClientTls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        ClientTls {
            config: Arc::new(config),
        }
    }

    /// From PEM files (see [`ClientTls::from_pem`]).
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let read = |path: &Path| {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|file| file.take(crate::limits::TLS_FILE_BYTES_MAX).read_to_end(&mut bytes))
                .map_err(|e| TlsError::Read {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            Ok::<_, TlsError>(bytes)
        };
        let ca = read(ca)?;
        let identity = match identity {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Self::from_pem(&ca, identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())))
    }

    /// Opens a connection to `addr` (`host:port`) and runs a handshake within `timeout`,
    /// verifying the server's certificate against the CA and its name or IP against `addr`'s
    /// host.
    pub async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        connect_with(&TlsConnector::from(self.config.clone()), addr, timeout).await
    }
}

/// How a gRPC channel opens its connections.
#[derive(Clone, Debug)]
pub enum Connector {
    /// With fixed client TLS (an SDK, the CLI).
    Client(ClientTls),
    /// With a node's TLS as it is at each connection (a node calling another; reloaded files
    /// are used from the next connection on).
    Node(Arc<NodeTls>),
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("files", self.files())
            .finish_non_exhaustive()
    }
}

impl Connector {
    async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        match self {
            Connector::Client(tls) => tls.connect(addr, timeout).await,
            Connector::Node(tls) => tls.connect(addr, timeout).await,
        }
    }
}

/// The connector tonic calls for each (re)connection of a channel to `addr`.
fn tls_service(
    connector: &Connector,
    addr: &str,
    connect_timeout: Duration,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future: Send,
> + Send
       + 'static {
    let (connector, addr) = (connector.clone(), addr.to_string());
    tower::service_fn(move |_: tonic::transport::Uri| {
        let (connector, addr) = (connector.clone(), addr.clone());
        async move {
            connector
                .connect(&addr, connect_timeout)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    })
}

/// A lazily connected channel to `addr` through `endpoint` (whose URI must be `http://addr`):
/// plain TCP without a connector, else TLS through it, each (re)connection within
/// `connect_timeout`.
pub fn lazy_channel(
    endpoint: Endpoint,
    addr: &str,
    connector: Option<&Connector>,
    connect_timeout: Duration,
) -> Channel {
    match connector {
        None => endpoint.connect_lazy(),
        Some(connector) => endpoint.connect_with_connector_lazy(tls_service(connector, addr, connect_timeout)),
    }
}

/// As [`lazy_channel`], but connected before it returns (its error is the connection's).
pub async fn connected_channel(
    endpoint: Endpoint,
    addr: &str,
    connector: Option<&Connector>,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    match connector {
        None => endpoint.connect().await,
        Some(connector) => {
            endpoint
                .connect_with_connector(tls_service(connector, addr, connect_timeout))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_a_typed_error() {
        for (ca, identity) in [
            (&b""[..], None),
            (&b"not PEM"[..], None),
            (
                &b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"[..],
                None,
            ),
        ] {
            assert!(ClientTls::from_pem(ca, identity).is_err());
        }
        let (ca_pem, issuer) = crate::node_tls::tests::ca();
        let (cert, _) = crate::node_tls::tests::leaf(&issuer, "alice");
        let e = ClientTls::from_pem(ca_pem.as_bytes(), Some((cert.as_bytes(), b"no key"))).expect_err("no key");
        assert!(e.to_string().contains("key"), "{e}");
        assert!(ClientTls::from_files(Path::new("/nonexistent/ca.pem"), None).is_err());
    }
}
