//! TLS to PostgreSQL with rustls (ring; no OpenSSL), with libpq's `sslmode` meanings.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, and leaves the
//! certificate check to the connector. So the two libpq parameters it does not parse,
//! `sslmode=verify-ca|verify-full` and `sslrootcert=FILE`, are taken out of the URL at
//! config load ([`split_url`]) and enforced here, by the certificate verifier the
//! connector is built with:
//!
//! | `sslmode` | encrypted | chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | - | - |
//! | `prefer` (default, as libpq) | if the server offers it | only with a CA file | no |
//! | `require` | yes | only with a CA file (then as `verify-ca`) | no |
//! | `verify-ca` | yes | yes (CA file, else the system roots) | no |
//! | `verify-full` | yes | yes (CA file, else the system roots) | yes |
//!
//! A refused certificate fails the connection with an error naming the server's host
//! and the mode, so a start-up failure says which server and why.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// libpq's default.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it is required.
    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as D;
        match self {
            SslMode::Disable => D::Disable,
            SslMode::Prefer => D::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => D::Require,
        }
    }
}

/// A `postgres://` URL without the parameters tokio-postgres does not take
/// (`sslmode`, `sslrootcert`), and their values.
#[derive(Debug, PartialEq, Eq)]
pub struct SplitUrl {
    pub url: String,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of the URL's query (percent-decoded); every
/// other parameter stays as written. Never echoes the URL (it may hold a password).
pub fn split_url(url: &str) -> SplitUrl {
    let Some((base, query)) = url.split_once('?') else {
        return SplitUrl { url: url.to_owned(), sslmode: None, sslrootcert: None };
    };
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => sslmode = Some(percent_decode(value)),
            "sslrootcert" => sslrootcert = Some(percent_decode(value)),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    SplitUrl { url, sslmode, sslrootcert }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the PEM CA bundle (at config load, to report a bad file before start, and
/// again when connecting).
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
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

/// The connector for `mode`, trusting `ca_file` (else the system roots where the chain
/// is checked).
pub fn connector(mode: SslMode, ca_file: Option<&PathBuf>) -> Result<RustlsConnect, String> {
    let provider = provider();
    let check_chain = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) || ca_file.is_some();
    let verifier: Arc<dyn ServerCertVerifier> = if check_chain {
        let roots = match ca_file {
            Some(path) => read_roots(path)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A malformed system root is skipped, as every TLS client does.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(format!(
                        "sslmode={} needs a CA: no system roots found, give sslrootcert or [store] ca_file",
                        mode.name()
                    ));
                }
                roots
            }
        };
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| e.to_string())?;
        Arc::new(Verifier {
            inner: Some(inner),
            check_name: mode == SslMode::VerifyFull,
            provider: Arc::clone(&provider),
        })
    } else {
        Arc::new(Verifier { inner: None, check_name: false, provider: Arc::clone(&provider) })
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(RustlsConnect { config: Arc::new(config), mode })
}

/// The server-certificate check for one `sslmode`: nothing (only the handshake
/// signatures, so the session is still bound to the key the server showed), the chain,
/// or the chain and the host name.
#[derive(Debug)]
struct Verifier {
    /// `None`: the certificate is not checked (`prefer`/`require` without a CA).
    inner: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // webpki checks the chain first and the name last, so a name mismatch
            // means the chain was good: that is all verify-ca asks.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's [`MakeTlsConnect`] over tokio-rustls.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    mode: SslMode,
}

/// Why TLS with a PostgreSQL server failed; names the server's host and the mode.
#[derive(Debug, thiserror::Error)]
#[error("TLS with PostgreSQL server {host} (sslmode={mode}) failed: {reason}")]
pub struct PgTlsError {
    host: String,
    mode: &'static str,
    reason: String,
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectOne;
    type Error = PgTlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnectOne, PgTlsError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| PgTlsError {
            host: host.to_owned(),
            mode: self.mode.name(),
            reason: e.to_string(),
        })?;
        Ok(RustlsConnectOne {
            connector: tokio_rustls::TlsConnector::from(Arc::clone(&self.config)),
            name,
            host: host.to_owned(),
            mode: self.mode.name(),
        })
    }
}

/// One connection's handshake (the host it is for).
pub struct RustlsConnectOne {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    host: String,
    mode: &'static str,
}

impl<S> TlsConnect<S> for RustlsConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = PgTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, PgTlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let RustlsConnectOne { connector, name, host, mode } = self;
            match connector.connect(name, stream).await {
                Ok(tls) => Ok(RustlsStream(tls)),
                Err(e) => Err(PgTlsError { host, mode, reason: e.to_string() }),
            }
        })
    }
}

/// An encrypted PostgreSQL connection.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No `tls-server-end-point` binding: SCRAM runs without it (libpq's
    /// `channel_binding=prefer` does the same when it is not offered).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url() {
        let s = split_url("postgres://u:pw@db/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(s.url, "postgres://u:pw@db/x?application_name=a");
        assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let plain = split_url("postgres://db/x");
        assert_eq!((plain.url.as_str(), plain.sslmode, plain.sslrootcert), ("postgres://db/x", None, None));
        assert_eq!(split_url("postgres://db/x?sslmode=require").url, "postgres://db/x");
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(SslMode::parse(mode).map(SslMode::name), Some(mode));
        }
        assert_eq!(SslMode::parse("allow"), None);
    }
}
