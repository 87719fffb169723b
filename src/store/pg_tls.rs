//! TLS to PostgreSQL with rustls (ring; no OpenSSL), with libpq's `sslmode` meanings.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, and leaves the
//! certificate check to the connector. So the two libpq parameters it does not parse,
//! `sslmode=verify-ca|verify-full` and `sslrootcert=FILE`, are taken out of the URL at
//! config load (`config::pg_url::split_url`) and enforced here, by the certificate verifier the
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

pub use crate::config::pg_url::SslMode;
use crate::tls::read_roots;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// What tokio-postgres is told: whether TLS is tried, and whether it is required.
pub fn driver_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode as D;
    match mode {
        SslMode::Disable => D::Disable,
        SslMode::Prefer => D::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => D::Require,
    }
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
