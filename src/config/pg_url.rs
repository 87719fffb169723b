//! PostgreSQL URLs: the libpq parameters tokio-postgres does not take (`sslmode`
//! beyond `require`, `sslrootcert`) are taken out at load and kept typed; the store
//! enforces them (`store::pg_tls`).

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
