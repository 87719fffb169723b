//! TLS: the listener's certificate (rustls, ALPN `h2` + `http/1.1`) and the upstream
//! client's trust roots. Loading errors are reported with the file they concern.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{cert} and {key}: certificate and key do not match or are unusable: {reason}")]
    Pair { cert: String, key: String, reason: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.display().to_string(), reason: reason.to_string() }
}

/// The most a PEM file (a certificate chain, a key, a CA bundle) may hold: far above
/// any real one, and what a file named by mistake (`/dev/zero`, a log) is cut at.
const MAX_PEM: u64 = 4 << 20;

/// A PEM file's bytes: a regular file (a FIFO would hang the reader, a device never end)
/// of at most [`MAX_PEM`] bytes.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    // Asked before opening: opening a FIFO for reading waits for a writer.
    if !std::fs::metadata(path).map_err(|e| file_error(path, e))?.is_file() {
        return Err(file_error(path, "not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM + 1).read_to_end(&mut bytes).map_err(|e| file_error(path, e))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(file_error(path, format!("larger than {} MiB: not a PEM file", MAX_PEM >> 20)));
    }
    Ok(bytes)
}

/// The certificates of a PEM file.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>().map_err(|e| file_error(path, e))
}

/// Reads the PEM CA bundle (at config load, to report a bad file before start, and
/// again when connecting).
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path).map_err(|e| e.to_string())? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's certificate chain and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Builds the listener's TLS config from PEM files.
pub fn server_config(files: &TlsFiles) -> Result<ServerTls, TlsError> {
    let certs = read_certs(&files.cert)?;
    let Some(leaf) = certs.first() else {
        return Err(file_error(&files.cert, "no certificate found"));
    };
    let names = match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert.valid_dns_names().filter_map(own_name).collect(),
        Err(e) => {
            tracing::warn!(file = %files.cert.display(), error = ?e,
                "the certificate's names could not be read: only server.hostnames name the gateway");
            Vec::new()
        }
    };
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&files.key)?).map_err(|e| file_error(&files.key, e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pair {
            cert: files.cert.display().to_string(),
            key: files.key.display().to_string(),
            reason: e.to_string(),
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls { config: Arc::new(cfg), names })
}

/// A certificate's DNS name as an authority a request may name: a wildcard
/// (`*.example.com`) is left out (it would stand for a literal `*`, and the gateway
/// matches names exactly), and a trailing dot (`gw.example.` is `gw.example`) dropped.
fn own_name(name: &str) -> Option<Box<str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty() && !name.starts_with('*')).then(|| name.into())
}

/// The listener's TLS settings and the DNS names its certificate is for: a client
/// that reached the gateway by one of them names it in HTTP/2's `:authority` (or an
/// absolute-form target), so they count as the gateway's own beside
/// `server.hostnames` (see `snapshot::Snapshot::with_tls`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate's subject alternative DNS names (wildcards left out).
    pub names: Vec<Box<str>>,
}

/// Builds a TLS client config (the upstream's, the webhook's): the CAs in `ca_file`,
/// else the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| file_error(path, e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A malformed system root is skipped, as every TLS client does.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Config("no trusted CA certificates (no system roots found, and no ca_file)".into()));
    }
    // No ALPN here: the connector offers h2 and http/1.1 itself.
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client config that trusts nothing: the connector for a plain-http upstream
/// never uses it, and it needs no system roots.
pub fn empty_client_config() -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::own_name;

    /// The certificate names a request may name: exact ones only (the thirty-ninth
    /// diff review: a wildcard stood for a literal `*`), without a trailing dot.
    #[test]
    fn a_certificates_names_are_taken_exactly() {
        assert_eq!(own_name("gw.test").as_deref(), Some("gw.test"));
        assert_eq!(own_name("gw.test.").as_deref(), Some("gw.test"));
        assert_eq!(own_name("*.gw.test"), None);
        assert_eq!(own_name("."), None);
    }
}
