//! `basalt certs`: a cluster CA, node certificates for mutual TLS on the peer listener and TLS on
//! the client doors, and client certificates naming users (docs/security.md), made with rcgen. Enough for a private cluster and for `basalt dev
//! --secure`; an organisation with its own PKI issues the same files with it instead.
//!
//! Files, in one directory: `ca.pem` and `ca-key.pem` (the CA), `NAME.pem` and `NAME-key.pem` (a
//! node's certificate, valid as server and as client, or a client's, and its key). Keys are written readable by
//! their owner only.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The CA of client certificates: a CA of its own, so that no user's certificate is a member's
/// (the peer listener trusts `ca.pem`) nor a node's certificate a user's.
pub const CLIENT_CA_CERT_FILE: &str = "client-ca.pem";
pub const CLIENT_CA_KEY_FILE: &str = "client-ca-key.pem";
/// How long a CA made here is valid, in days (ten years).
const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a node certificate made here is valid, in days (a CA made here outlives it for
/// years; one older than that needs node certificates made anew, or a new CA).
const NODE_VALIDITY_DAYS: i64 = 825;

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a new cluster CA in DIR (ca.pem, ca-key.pem); refuses to overwrite one.
    Ca {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make a node certificate signed by DIR's CA: DIR/NAME.pem and DIR/NAME-key.pem, valid for
    /// each --host (IP address or DNS name the peers dial it by).
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Make a new CA of client certificates in DIR (client-ca.pem, client-ca-key.pem), for the
    /// nodes' --tls-client-ca; refuses to overwrite one.
    ClientCa {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make a client certificate signed by DIR's client CA for user NAME (its common name):
    /// DIR/NAME.pem and DIR/NAME-key.pem. A gRPC client showing it to a node whose client doors
    /// trust that CA (--tls-client-ca) authenticates as that user (`basalt --cert-file
    /// --key-file`), without a token.
    Client {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} exists: refusing to overwrite it (remove it first, or choose another name)")]
    Exists { path: PathBuf },
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("name {0:?} must be 1 to 64 letters, digits, '-' or '_'")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `path` whole: a new temporary file of a random name in the same directory (created
/// exclusively, mode 0600 for a `secret`, 0644 otherwise), fsynced, renamed over `path` (or, with
/// `create_new`, renamed only if `path` does not exist), and the directory fsynced.
pub(crate) fn write(path: &Path, content: &str, secret: bool, create_new: bool) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    let mode = if secret { 0o600 } else { 0o644 };
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(file.path()))?;
    file.write_all(content.as_bytes()).map_err(io(path))?;
    file.as_file().sync_all().map_err(io(path))?;
    let persisted = match create_new {
        true => file.persist_noclobber(path),
        false => file.persist(path),
    };
    persisted.map_err(|e| match e.error.kind() {
        std::io::ErrorKind::AlreadyExists => CertsError::Exists {
            path: path.to_path_buf(),
        },
        _ => CertsError::Io {
            path: path.to_path_buf(),
            source: e.error,
        },
    })?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
}

/// Makes a new CA in `dir`.
pub fn make_ca(dir: &Path) -> Result<(), CertsError> {
    make_ca_named(dir, CA_CERT_FILE, CA_KEY_FILE, "Basalt cluster CA")
}

/// Makes a new CA of client certificates in `dir`.
pub fn make_client_ca(dir: &Path) -> Result<(), CertsError> {
    make_ca_named(dir, CLIENT_CA_CERT_FILE, CLIENT_CA_KEY_FILE, "Basalt client CA")
}

fn make_ca_named(dir: &Path, cert_file: &str, key_file: &str, common_name: &str) -> Result<(), CertsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join(cert_file), dir.join(key_file));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CertsError::Exists { path: path.clone() });
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    // The certificate last: a CA directory with ca.pem has its key too.
    write(&key_path, &key.serialize_pem(), true, true)?;
    write(&cert_path, &cert.pem(), false, true)
}

/// Makes node `name`'s certificate and key in `dir`, signed by the CA there, valid for `hosts`.
pub fn make_node(dir: &Path, name: &str, hosts: &[String]) -> Result<(PathBuf, PathBuf), CertsError> {
    make_leaf(
        (dir, CA_CERT_FILE, CA_KEY_FILE),
        name,
        false,
        hosts,
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// Makes a client certificate and key for user `name` (its common name) in `dir`, signed by the
/// client CA there. Never over an existing file: the directory holds the CAs and the nodes'
/// certificates too, which the nodes reload when they change.
pub fn make_client(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CertsError> {
    make_leaf(
        (dir, CLIENT_CA_CERT_FILE, CLIENT_CA_KEY_FILE),
        name,
        true,
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// Makes a certificate `name` in `dir`, signed by the CA whose files `ca` names; with
/// `create_new`, refuses to replace an existing certificate or key.
fn make_leaf(
    (dir, ca_cert_file, ca_key_file): (&Path, &str, &str),
    name: &str,
    create_new: bool,
    hosts: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(PathBuf, PathBuf), CertsError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CertsError::BadName(name.to_string()));
    }
    let ca_key_path = dir.join(ca_key_file);
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca_cert_path = dir.join(ca_cert_file);
    let ca_cert_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)?;

    // `[::1]` as written in an address is the IP ::1 (rcgen reads an IP from its bare form).
    let hosts: Vec<String> = hosts
        .iter()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .collect();
    let mut params = CertificateParams::new(hosts)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    validity(&mut params, NODE_VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    if create_new {
        for path in [&key_path, &cert_path] {
            if path.exists() {
                return Err(CertsError::Exists { path: path.clone() });
            }
        }
    }
    write(&key_path, &key.serialize_pem(), true, create_new)?;
    write(&cert_path, &cert.pem(), false, create_new)?;
    Ok((cert_path, key_path))
}

/// Makes node `name`'s certificate for `hosts` with `dir`'s CA, and returns the `basalt start`
/// flags that give a node peer TLS with them.
pub fn node_flags(dir: &Path, name: &str, hosts: &[String]) -> Result<Vec<String>, CertsError> {
    let (cert, key) = make_node(dir, name, hosts)?;
    Ok(vec![
        "--peer-tls-cert".to_string(),
        cert.display().to_string(),
        "--peer-tls-key".to_string(),
        key.display().to_string(),
        "--peer-tls-ca".to_string(),
        dir.join(CA_CERT_FILE).display().to_string(),
    ])
}

/// The `basalt start` flags that give a node TLS on its client doors with the certificate
/// `node_flags` made for `name` in `dir` (one certificate serves both listeners), and client
/// certificates of `dir`'s client CA, when it has one.
pub fn client_door_flags(dir: &Path, name: &str) -> Vec<String> {
    let client_ca = dir.join(CLIENT_CA_CERT_FILE);
    let client_ca = client_ca
        .exists()
        .then(|| ["--tls-client-ca".to_string(), client_ca.display().to_string()]);
    let mut flags = vec![
        "--tls-cert".to_string(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--tls-key".to_string(),
        dir.join(format!("{name}-key.pem")).display().to_string(),
        "--tls-ca".to_string(),
        dir.join(CA_CERT_FILE).display().to_string(),
    ];
    flags.extend(client_ca.into_iter().flatten());
    flags
}

/// Runs one `basalt certs` verb.
pub fn certs(command: CertsCommand) -> Result<(), String> {
    match command {
        CertsCommand::Ca { dir } => {
            make_ca(&dir).map_err(|e| e.to_string())?;
            crate::outln!("CA written: {}", dir.join(CA_CERT_FILE).display());
        }
        CertsCommand::Node { dir, name, hosts } => {
            let (cert, key) = make_node(&dir, &name, &hosts).map_err(|e| e.to_string())?;
            crate::outln!("node certificate written: {} (key {})", cert.display(), key.display());
        }
        CertsCommand::ClientCa { dir } => {
            make_client_ca(&dir).map_err(|e| e.to_string())?;
            crate::outln!("client CA written: {}", dir.join(CLIENT_CA_CERT_FILE).display());
        }
        CertsCommand::Client { dir, name } => {
            let (cert, key) = make_client(&dir, &name).map_err(|e| e.to_string())?;
            crate::outln!(
                "client certificate for user {name} written: {} (key {})",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_never_overwritten_and_node_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        make_ca(dir.path()).expect("CA");
        assert!(matches!(make_ca(dir.path()), Err(CertsError::Exists { .. })));
        let (cert, key) = make_node(dir.path(), "node-1", &["[::1]".into(), "127.0.0.1".into()]).expect("node");
        assert!(std::fs::read_to_string(cert)
            .expect("cert")
            .starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .expect("CA key")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            make_node(dir.path(), "../x", &["a".into()]),
            Err(CertsError::BadName(_))
        ));
    }
}
