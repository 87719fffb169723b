//! Stage 3: `api_key` + `authorization` -> [`Principal`].

use crate::config::UserSessions;
use crate::error::{BadRequest, Denial, GatewayError};
use crate::field_names::{self, connection_tokens};
use crate::snapshot::{Snapshot, Token};
use crate::token::hash_secret;
use http::header::{AUTHORIZATION, CONNECTION};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

pub const API_KEY: HeaderName = HeaderName::from_static(field_names::API_KEY);
pub const AUTHTOKEN: HeaderName = HeaderName::from_static(field_names::AUTHTOKEN);
pub const BRANCH: HeaderName = HeaderName::from_static(field_names::BRANCH);

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A valid management token of the addressed stack.
    Token(Arc<Token>),
    /// A user session (`authtoken`) or OAuth bearer: the backend decides.
    UserSession,
}

/// The credential headers of a request, read in one pass over its fields.
#[derive(Debug, Default)]
pub struct Credentials<'a> {
    authorization: Option<&'a HeaderValue>,
    api_key: Option<&'a HeaderValue>,
    authtoken: Option<&'a HeaderValue>,
    /// `branch`, which the policy stage reads.
    pub branch: Option<&'a HeaderValue>,
}

impl<'a> Credentials<'a> {
    /// Finds the four credential fields, in one pass over the fields. Anything the
    /// backend could read differently from the gateway is a bad request: two copies of
    /// one field, another spelling of one (`api-key`, which a backend that folds `-`
    /// and `_` reads as `api_key`), or a `Connection` header that lists a field the
    /// gateway reads or sets (it would be dropped as hop-by-hop after the decision).
    pub fn read(headers: &'a HeaderMap) -> Result<Self, GatewayError> {
        let mut found = Credentials::default();
        for (name, value) in headers {
            let slot = if *name == AUTHORIZATION {
                &mut found.authorization
            } else if *name == API_KEY {
                &mut found.api_key
            } else if *name == AUTHTOKEN {
                &mut found.authtoken
            } else if *name == BRANCH {
                &mut found.branch
            } else if *name == CONNECTION {
                if connection_tokens(value.as_bytes()).any(field_names::is_protected) {
                    return Err(GatewayError::BadRequest(BadRequest::ConnectionListsProtected));
                }
                continue;
            } else if field_names::is_credential_alias(name.as_str().as_bytes()) {
                return Err(GatewayError::BadRequest(BadRequest::InvalidHeader));
            } else {
                continue;
            };
            if slot.replace(value).is_some() {
                return Err(GatewayError::BadRequest(BadRequest::InvalidHeader));
            }
        }
        Ok(found)
    }

    /// The `api_key` as sent (not yet checked).
    pub fn api_key(&self) -> Option<&'a HeaderValue> {
        self.api_key
    }

    fn credential(&self) -> Credential<'a> {
        // An empty `authtoken`, or `Bearer` with nothing after it, is no credential.
        let some = |v: &HeaderValue, skip: usize| v.as_bytes().get(skip..).is_some_and(|t| !t.trim_ascii().is_empty());
        match self.authorization {
            // Without surrounding whitespace, as every HTTP/1.1 parser reads it (HTTP/2
            // values carrying any are refused before this).
            Some(v) if !is_bearer(v.as_bytes()) => Credential::Management(v.as_bytes().trim_ascii()),
            Some(v) if some(v, BEARER.len()) => Credential::UserSession,
            _ if self.authtoken.is_some_and(|t| some(t, 0)) => Credential::UserSession,
            _ => Credential::None,
        }
    }

    /// The credential the gateway checks on this route, as presented (`None` where it
    /// checks none: a user session the backend decides, a login without one). The token
    /// API reads the `authtoken`; every other route a management token.
    pub fn presented(&self, token_api: bool, login: bool) -> Option<Presented<'a>> {
        let api_key = self.api_key.map_or(&b""[..], HeaderValue::as_bytes);
        if token_api {
            return Some(
                self.authtoken.map_or(Presented::Missing, |t| Presented::User { authtoken: t.as_bytes(), api_key }),
            );
        }
        match self.credential() {
            Credential::Management(secret) => Some(Presented::Token { secret, api_key }),
            Credential::UserSession => None,
            Credential::None if login => None,
            Credential::None => Some(Presented::Missing),
        }
    }

    /// Whether a management token is presented as a user credential (`authtoken`, or
    /// `authorization: Bearer`): one holding a piece shaped like the secrets the gateway
    /// issues. The token API asks this of its callers; a proxied user-session request is
    /// checked more widely ([`super::query::carries_token_shape`]).
    pub fn session_holds_token(&self) -> bool {
        let bearer = self.authorization.filter(|v| is_bearer(v.as_bytes()));
        self.authtoken.into_iter().chain(bearer).any(|v| holds_token_shape(v.as_bytes()))
    }
}

/// Whether a value holds a piece shaped like an issued secret (`cs` and 32 hex digits,
/// in any case), delimited by anything but a letter or a digit: a list (`x, cs...`),
/// quotes, surrounding whitespace, `Bearer cs...` inside an `authtoken`, another case.
/// Decided by shape, never by a lookup, which would answer differently for a live
/// secret and a wrong one (a test of leaked candidates that no guess limit slows): the
/// user-session path tells nobody which secrets exist. A static token configured with
/// a secret of another shape is not recognised here.
///
/// Asked of every field, the path and the query of every proxied request, so it looks
/// only at values long enough to hold one, and there only where a secret could start (a
/// `c` or `C`, found with `memchr`), not at every piece.
pub fn holds_token_shape(value: &[u8]) -> bool {
    let edge = |at: Option<&u8>| !at.is_some_and(u8::is_ascii_alphanumeric);
    secrets_in(value)
        .any(|i| edge(i.checked_sub(1).and_then(|before| value.get(before))) && edge(value.get(i + SECRET_LEN)))
}

/// The length of an issued secret: `cs` and 32 hex digits.
pub const SECRET_LEN: usize = 34;

/// Whether a value shows an issued secret's characters anywhere, delimited or not
/// (`bltcs...x`): what a log line may not show, which is stricter than what a request
/// is refused for ([`holds_token_shape`]).
pub fn shows_secret(value: &[u8]) -> bool {
    secrets_in(value).next().is_some()
}

/// `text` with every run of an issued secret's characters (as [`shows_secret`] finds
/// them) shown as `[secret]`: for text a client chose that an answer or a log repeats
/// (a key named like a secret in a body's error).
pub fn without_secrets(text: &str) -> std::borrow::Cow<'_, str> {
    let mut runs = secrets_in(text.as_bytes()).peekable();
    if runs.peek().is_none() {
        return std::borrow::Cow::Borrowed(text);
    }
    let (mut out, mut done) = (String::with_capacity(text.len()), 0);
    // Runs come in order; one may begin on the last digit of the one before (`c` is a
    // digit), and then extends it. A run is ASCII, so its edges are character boundaries.
    for start in runs {
        if start >= done {
            out.push_str(text.get(done..start).unwrap_or_default());
            out.push_str("[secret]");
        }
        done = start + SECRET_LEN;
    }
    out.push_str(text.get(done..).unwrap_or_default());
    std::borrow::Cow::Owned(out)
}

/// Where `value` holds a secret's characters (`cs` and 32 hex digits, any case), with or
/// without letters or digits around them; none in a value shorter than a secret.
fn secrets_in(value: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let starts = (value.len() >= SECRET_LEN).then(|| memchr::memchr2_iter(b'c', b'C', value));
    starts.into_iter().flatten().filter(move |&i| {
        value
            .get(i..i + SECRET_LEN)
            .is_some_and(|p| p[1].eq_ignore_ascii_case(&b's') && p[2..].iter().all(u8::is_ascii_hexdigit))
    })
}

/// The credential a route checks, as presented: what the guard's gate is asked about
/// before anything is looked up (see `guard`).
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    /// A management token's secret (as the backend reads it) and the `api_key`.
    Token { secret: &'a [u8], api_key: &'a [u8] },
    /// A user's `authtoken` on the token API and the `api_key`.
    User { authtoken: &'a [u8], api_key: &'a [u8] },
    /// A user's `authtoken` signing in to the token console (which names no stack).
    Console { authtoken: &'a [u8] },
    /// No credential where one is needed.
    Missing,
}

/// The credential a request carries, before it is checked.
enum Credential<'a> {
    Management(&'a [u8]),
    UserSession,
    None,
}

/// Secrets longer than this cannot be ours; don't spend a hash on them.
const MAX_SECRET_LEN: usize = 256;

/// Authenticates a request at Unix time `now`, with the SHA-256 of a management token's
/// secret (what the guard remembers it by). `login` is set for login and logout
/// (`Rule::Login`): without any credential those are user-session requests (a login
/// has no credential yet), every other request without one is 401. A management token
/// on them is still a token (which `authorize` then refuses).
pub fn authenticate(
    snap: &Snapshot,
    creds: &Credentials<'_>,
    now: i64,
    login: bool,
) -> Result<(Principal, Option<[u8; 32]>), GatewayError> {
    match creds.credential() {
        Credential::Management(secret) => {
            management_token(snap, creds, secret, now).map(|(token, digest)| (Principal::Token(token), Some(digest)))
        }
        Credential::UserSession => user_session(snap).map(|p| (p, None)),
        Credential::None if login => user_session(snap).map(|p| (p, None)),
        Credential::None => Err(GatewayError::Unauthenticated { expired: false }),
    }
}

/// `[server] user_sessions`: pass to the backend (the authority for users) or 403.
fn user_session(snap: &Snapshot) -> Result<Principal, GatewayError> {
    match snap.settings.user_sessions {
        UserSessions::Pass => Ok(Principal::UserSession),
        UserSessions::Deny => Err(GatewayError::Forbidden(Denial::UserSessionsDenied)),
    }
}

/// `authorization: Bearer ...` is OAuth, not a management token.
/// `Bearer` alone (nothing after it) is one too, an empty one: no credential.
pub fn is_bearer(value: &[u8]) -> bool {
    value.get(..BEARER.len()).is_some_and(|p| p.eq_ignore_ascii_case(BEARER))
        || value.trim_ascii().eq_ignore_ascii_case(BEARER.trim_ascii())
}

const BEARER: &[u8] = b"bearer ";

fn management_token(
    snap: &Snapshot,
    creds: &Credentials<'_>,
    secret: &[u8],
    now: i64,
) -> Result<(Arc<Token>, [u8; 32]), GatewayError> {
    // Errors are built only when returned (`ok_or_else`): building one that is not
    // returned costs its drop on every request.
    let api_key = creds.api_key.and_then(|v| v.to_str().ok()).ok_or_else(|| GatewayError::StackNotFound)?;
    let stack = snap.stack(api_key).ok_or_else(|| GatewayError::StackNotFound)?;
    let unauthenticated = || GatewayError::Unauthenticated { expired: false };
    if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return Err(unauthenticated());
    }
    let digest = hash_secret(secret);
    let token = snap.token(&digest).ok_or_else(unauthenticated)?;
    if !Arc::ptr_eq(&token.stack, stack) {
        return Err(unauthenticated());
    }
    // A regenerated token's previous secret, after its grace period.
    if token.retires_at.is_some_and(|at| now >= at) {
        return Err(unauthenticated());
    }
    if !token.enabled {
        return Err(GatewayError::TokenDisabled);
    }
    if token.expires_at.is_some_and(|at| now >= at) {
        return Err(GatewayError::Unauthenticated { expired: true });
    }
    Ok((Arc::clone(token), digest))
}

#[cfg(test)]
mod tests {
    use super::{holds_token_shape, shows_secret, without_secrets};

    /// Every run of a secret's characters is hidden, delimited or not, and nothing else.
    #[test]
    fn secrets_are_hidden_in_text_a_client_chose() {
        let secret = "cs0123456789abcdef0123456789ABCDEF";
        assert_eq!(without_secrets("token.scope[0].acl.write"), "token.scope[0].acl.write");
        assert_eq!(without_secrets(&format!("token.{secret}")), "token.[secret]");
        assert_eq!(
            without_secrets(&format!("token.x-{secret}-y.é{secret}{secret}")),
            "token.x-[secret]-y.é[secret][secret]"
        );
        assert_eq!(without_secrets(&secret[..33]), &secret[..33], "one digit short");
        // A run beginning on the last digit (`c`) of the one before extends it.
        let joined = format!("cs{}cs{}", "0".repeat(31), "1".repeat(32));
        assert_eq!(without_secrets(&joined), "[secret]", "{joined}");
        assert!(!shows_secret(without_secrets(&format!("a{secret}b")).as_bytes()));
    }

    proptest::proptest! {
        /// The `memchr` scan finds exactly the pieces a split at every byte that is not
        /// a letter or a digit finds.
        #[test]
        fn the_scan_finds_what_splitting_finds(
            value in proptest::collection::vec(proptest::sample::select(b"cCsS0aAfFgz9 -,%".to_vec()), 0..90),
            at in 0usize..60,
            secret in "[cC][sS][0-9a-fA-F]{32}",
        ) {
            let split = |v: &[u8]| {
                v.split(|b| !b.is_ascii_alphanumeric()).any(|piece| {
                    piece.len() == 34
                        && piece[..2].eq_ignore_ascii_case(b"cs")
                        && piece[2..].iter().all(u8::is_ascii_hexdigit)
                })
            };
            proptest::prop_assert_eq!(holds_token_shape(&value), split(&value));
            let mut with = value.clone();
            let at = at.min(with.len());
            with.splice(at..at, secret.bytes());
            proptest::prop_assert_eq!(holds_token_shape(&with), split(&with));
        }
    }

    #[test]
    fn issued_secrets_are_found_in_any_spelling() {
        let secret = "cs0123456789abcdef0123456789abcdef";
        for value in [
            secret.to_owned(),
            secret.to_uppercase(),
            format!(" {secret}\t"),
            format!("x, {secret}"),
            format!("{secret};x"),
            format!("\"{secret}\""),
            format!("Bearer {secret}"),
            format!("a {secret} b"),
        ] {
            assert!(holds_token_shape(value.as_bytes()), "{value:?}");
        }
        for value in [
            "blt0123456789abcdef",
            "cs0123456789abcdef0123456789abcde",
            "cs0123456789abcdef0123456789abcdef0",
            "xcs0123456789abcdef0123456789abcdef",
            "cs0123456789abcdef0123456789abcdeg",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        ] {
            assert!(!holds_token_shape(value.as_bytes()), "{value:?}");
        }
    }
}
