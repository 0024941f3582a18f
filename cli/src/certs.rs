//! `basalt certs`: a cluster CA and node certificates for mutual TLS on the peer listener
//! (docs/security.md), made with rcgen. Enough for a private cluster and for `basalt dev
//! --secure`; an organisation with its own PKI issues the same files with it instead.
//!
//! Files, in one directory: `ca.pem` and `ca-key.pem` (the CA), `NAME.pem` and `NAME-key.pem` (a
//! node's certificate, valid as server and as client, and its key). Keys are written readable by
//! their owner only.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How long the certificates made here are valid, in days.
const VALIDITY_DAYS: i64 = 825;

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
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} exists: refusing to overwrite a CA (remove it first)")]
    Exists { path: PathBuf },
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("node name {0:?} must be 1 to 64 letters, digits, '-' or '_'")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `content` to `path`, readable by its owner only when `secret`.
fn write(path: &Path, content: &str, secret: bool) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(content.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
}

/// Makes a new CA in `dir`.
pub fn make_ca(dir: &Path) -> Result<(), CertsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CertsError::Exists { path: path.clone() });
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "Basalt cluster CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)
}

/// Makes node `name`'s certificate and key in `dir`, signed by the CA there, valid for `hosts`.
pub fn make_node(dir: &Path, name: &str, hosts: &[String]) -> Result<(PathBuf, PathBuf), CertsError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CertsError::BadName(name.to_string()));
    }
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_cert_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)?;

    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
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
    }
    Ok(())
}
