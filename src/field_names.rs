//! The header-field names the gateway reads, sets, strips or refuses, and the one way
//! they are compared.
//!
//! CGI, WSGI and Rack turn a field name into a variable (`HTTP_X_STACKGATE_ACCESS`),
//! so a backend behind them reads `x_stackgate_access` and `X-Stackgate-Access` as the
//! same field. Every check here therefore compares names with ASCII case ignored and
//! `_` read as `-` ([`folded_eq`]); a name in any spelling is treated like its
//! canonical one. This module imports nothing from the crate: the pipeline (which
//! refuses) and the proxy (which strips and sets) share it.

/// Whether `name` is `canonical` (lower case, `-` separated) in some spelling: ASCII
/// case ignored, `_` read as `-`.
pub fn folded_eq(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len() && name.iter().zip(canonical).all(|(&a, &b)| fold(a) == b)
}

/// Whether two names are the same field in some spelling (see [`folded_eq`]).
pub fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// Whether `name` starts with `prefix` (lower case, `-` separated) in some spelling.
pub fn folded_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.get(..prefix.len()).is_some_and(|head| folded_eq(head, prefix))
}

fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        _ => b.to_ascii_lowercase(),
    }
}

/// The most header fields a request may carry (431 beyond): the HTTP/1.1 loop's
/// parser holds this many, and HTTP/2 requests, whose field count the protocol does not
/// bound, are held to the same.
pub const MAX_FIELDS: usize = 100;

/// `api_key`: the stack's API key. Its canonical spelling has an underscore, as the
/// CMA's own clients send it; any other spelling of it is refused (see
/// [`is_credential_alias`]).
pub const API_KEY: &str = "api_key";
pub const AUTHORIZATION: &str = "authorization";
pub const AUTHTOKEN: &str = "authtoken";
pub const BRANCH: &str = "branch";

/// A spelling of a credential field other than the one the gateway reads (`api-key`,
/// `Api_Key`, ...): a backend that folds names would read it as the credential the
/// gateway did not check.
pub fn is_credential_alias(name: &[u8]) -> bool {
    let canonical: &[u8] = match name.first().map(|b| b.to_ascii_lowercase()) {
        Some(b'a') if name.len() == API_KEY.len() => b"api-key",
        Some(b'a') if name.len() == AUTHTOKEN.len() => b"authtoken",
        Some(b'a') => b"authorization",
        Some(b'b') => b"branch",
        _ => return false,
    };
    let exact = [API_KEY, AUTHORIZATION, AUTHTOKEN, BRANCH].iter().any(|c| c.as_bytes() == name);
    !exact && folded_eq(name, canonical)
}

/// Whether a field name reads, letters and digits only and case ignored, as a user
/// credential some backend authenticates with (`authtoken`, `auth_token`,
/// `access-token` (devise_token_auth), `X-Auth-Token`, `X-Access-Token`, `Authorisation`,
/// `X-Authorization`, ...), or as `authorization` in a spelling other than its own. A
/// request the gateway authorised as a management token carries none of them on: the
/// backend would authenticate a user the gateway never checked, `user_sessions = "deny"`
/// or not.
pub fn is_session_credential(name: &[u8]) -> bool {
    const READ: [&[u8]; 16] = [
        b"token",
        b"xtoken",
        b"xapikey",
        b"xcsauthtoken",
        b"authentication",
        b"xamzsecuritytoken",
        b"authtoken",
        b"accesstoken",
        b"sessiontoken",
        b"authorisation",
        b"xauthtoken",
        b"xaccesstoken",
        b"xsessiontoken",
        b"xauthorization",
        b"xauthorisation",
        b"authorization",
    ];
    const LONGEST: usize = 17;
    // Every one of them starts with `a`, `s`, `t` or `x` and has at least 5 letters.
    if name.len() < 5 || !matches!(name.first().map(u8::to_ascii_lowercase), Some(b'a' | b's' | b't' | b'x')) {
        return false;
    }
    let mut buf = [0u8; LONGEST];
    let Some(read) = letters_and_digits(name, &mut buf) else { return false };
    READ.contains(&read) && !(read == b"authorization" && name.eq_ignore_ascii_case(AUTHORIZATION.as_bytes()))
}

/// A name's letters and digits in lower case, in `buf`; `None` when they do not fit.
fn letters_and_digits<'a>(name: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let mut len = 0;
    for &b in name.iter().filter(|b| b.is_ascii_alphanumeric()) {
        *buf.get_mut(len)? = b.to_ascii_lowercase();
        len += 1;
    }
    buf.get(..len)
}

/// Whether a field name (or a query key) may tell one user's session from another's to
/// a backend. Read as letters and digits with case ignored, it holds `session`,
/// `sessid`, `token`, `auth`, `csrf`, `xsrf`, `jwt` or `apikey` (every name
/// [`is_session_credential`] takes, and `X-Session-Id`, `PHPSESSID`, `X-CSRF-Token`,
/// `Refresh-Token`); or one of its words (split at anything else) is `sid`, `uid`,
/// `user`, `account`, `tenant` or `member` (`X-User-Id`, `x-connect-sid`,
/// `X-Tenant-Id`). It chooses which upstream connections a user-session request may
/// share, so it errs wide: a name taken that tells no one apart only costs reuse (a
/// client's `User-Agent` is the same on each of its requests), one missed lets a late
/// answer reach another person behind the same `authtoken` (the forty-fifth outside
/// probe: `Session`).
pub fn may_tell_sessions_apart(name: &[u8]) -> bool {
    const HELD: [&[u8]; 8] = [b"session", b"sessid", b"token", b"auth", b"csrf", b"xsrf", b"jwt", b"apikey"];
    const WORDS: [&[u8]; 6] = [b"sid", b"uid", b"user", b"account", b"tenant", b"member"];
    const LONGEST: usize = 64;
    let said_by_word = name
        .split(|b| !b.is_ascii_alphanumeric())
        .any(|word| WORDS.iter().any(|w| word.eq_ignore_ascii_case(w)) || folded_ends_with_id(word, &WORDS));
    if said_by_word {
        return true;
    }
    let mut buf = [0u8; LONGEST];
    // Longer names are rare and taken as they may be: wide, as said above.
    let Some(read) = letters_and_digits(name, &mut buf) else { return true };
    HELD.iter().any(|held| read.windows(held.len()).any(|w| w == *held))
}

/// Whether a word is one of `words` followed by `id` (`Userid`, `accountID`).
fn folded_ends_with_id(word: &[u8], words: &[&[u8]]) -> bool {
    let (head, tail) = word.split_at(word.len().saturating_sub(2));
    tail.eq_ignore_ascii_case(b"id") && words.iter().any(|w| head.eq_ignore_ascii_case(w))
}

/// Hop-by-hop fields (RFC 9110 section 7.6.1 and the usual legacy ones): they belong
/// to one connection and are never passed on.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    // Asked of every forwarded field: most names are ruled out by their first letter.
    match name.first().map(|b| b.to_ascii_lowercase()) {
        Some(b'c' | b'k' | b'p' | b't' | b'u') => HOP.iter().any(|h| folded_eq(name, h)),
        _ => false,
    }
}

/// Fields that frame a message: the gateway frames what it sends itself.
pub fn is_framing(name: &[u8]) -> bool {
    folded_eq(name, b"content-length") || folded_eq(name, b"transfer-encoding")
}

/// Headers some backends and frameworks read as a different method or path than the
/// request line: what was authorised must be what runs, so they never pass.
const REINTERPRETING: [&[u8]; 7] = [
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
    b"x-override-method",
    b"x-original-url",
    b"x-rewrite-url",
    b"x-original-method",
];

/// Fields in which proxies and CDNs name the client's address. The gateway names it in
/// `X-Forwarded-For` alone (from `trusted_proxies`, or the peer); a client's own copy of
/// any of these could be read by a backend as the address instead.
const CLIENT_ADDRESS: [&[u8]; 17] = [
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"x-original-forwarded-for",
    b"x-forwarded",
    b"x-originating-ip",
    b"x-remote-addr",
    b"x-remote-ip",
    b"x-appengine-remote-addr",
    b"x-appengine-user-ip",
    b"x-azure-clientip",
    b"x-envoy-external-address",
    b"true-client-ip",
    b"client-ip",
    b"cf-connecting-ip",
    b"cf-pseudo-ipv4",
    b"fly-client-ip",
    b"fastly-client-ip",
];

/// Fields in which a proxy in front tells its backend what the client asked for before
/// any rewriting (the path, host, scheme or port), who the user is (an authenticating
/// proxy's `Remote-User`, `X-Auth-Request-User`, ...) or which client certificate was
/// presented, which backends set up behind such proxies trust. From a client, none of
/// them is true. The `X-` ones; the others are [`is_gateway_only`]'s arms by letter:
/// `Proxy` (CGI turns it into `HTTP_PROXY`, the proxy for the backend's own outbound
/// calls: "httpoxy"), `Https`, `Front-End-Https`, Authelia's `Remote-*`, Cloudflare
/// Access's `Cf-Access-*` and `SSL-Client*`.
const ASSERTED: [&[u8]; 19] = [
    b"x-host",
    b"x-arr-ssl",
    b"x-envoy-internal",
    b"x-auth-user",
    b"x-proxy-user",
    b"x-user",
    b"x-email",
    b"x-userinfo",
    b"x-id-token",
    b"x-jwt-assertion",
    b"x-endpoint-api-userinfo",
    b"x-apigateway-api-userinfo",
    b"x-anonymous-consumer",
    b"x-scheme",
    b"x-url-scheme",
    b"x-script-name",
    b"x-envoy-original-path",
    b"x-credential-identifier",
    b"x-arr-clientcert",
];

/// Name prefixes of the same (`X-` ones): oauth2-proxy's `X-Auth-Request-*`, Grafana's
/// `X-WEBAUTH-*`, Kong's `X-Consumer-*`, Google IAP's, Azure App Service's, AWS ALB's
/// (`X-Amzn-Oidc-*`, `X-Amzn-Mtls-*`), Pomerium's and Vouch's fields, the
/// TLS-terminating proxies' client-certificate fields (`X-SSL-*`, `X-Client-Cert*`,
/// `X-Client-DN`, ...), and every `X-Original-*` (URI, host, scheme, port, address).
const ASSERTED_PREFIXES: [&[u8]; 22] = [
    b"x-iisnode-",
    b"x-tls-client-",
    b"x-ssl-",
    b"x-amzn-mtls-",
    b"x-client-dn",
    b"x-client-subject",
    b"x-client-issuer",
    b"x-remote-",
    b"x-original-",
    b"x-auth-request-",
    b"x-authenticated-",
    b"x-webauth-",
    b"x-consumer-",
    b"x-goog-authenticated-",
    b"x-goog-iap-",
    b"x-ms-client-principal",
    b"x-ms-token-",
    b"x-amzn-oidc-",
    b"x-pomerium-",
    b"x-vouch-",
    b"x-client-cert",
    b"x-client-verif",
];

/// Fields only the gateway may set (a client can never speak for it): its identity
/// fields, the forwarding and client-address fields, the request id; the fields that
/// would make the backend run another method or path than the one authorised; and what
/// only a proxy in front may assert ([`ASSERTED`]).
pub fn is_gateway_only(name: &[u8]) -> bool {
    match name.first().map(|b| b.to_ascii_lowercase()) {
        Some(b'x') => {
            folded_starts_with(name, b"x-stackgate-")
                || folded_starts_with(name, b"x-forwarded-")
                || folded_eq(name, b"x-request-id")
                || folded_eq(name, b"x-real-ip")
                || REINTERPRETING.iter().any(|r| folded_eq(name, r))
                || CLIENT_ADDRESS.iter().any(|c| folded_eq(name, c))
                || ASSERTED.iter().any(|a| folded_eq(name, a))
                || ASSERTED_PREFIXES.iter().any(|p| folded_starts_with(name, p))
        }
        Some(b'c') => CLIENT_ADDRESS.iter().any(|c| folded_eq(name, c)) || folded_starts_with(name, b"cf-access-"),
        // Tailscale's `Tailscale-User-*`.
        Some(b't') => CLIENT_ADDRESS.iter().any(|c| folded_eq(name, c)) || folded_starts_with(name, b"tailscale-"),
        Some(b'f') => {
            folded_eq(name, b"forwarded")
                || folded_eq(name, b"forwarded-for")
                || folded_eq(name, b"front-end-https")
                || CLIENT_ADDRESS.iter().any(|c| folded_eq(name, c))
        }
        Some(b'p') => folded_eq(name, b"proxy"),
        Some(b'h') => folded_eq(name, b"https"),
        Some(b'r') => folded_starts_with(name, b"remote-"),
        Some(b's') => folded_starts_with(name, b"ssl-client"),
        // `_method`, which method-override middleware reads as the method.
        Some(b'_' | b'-') => folded_eq(name, b"-method"),
        _ => false,
    }
}

/// Names a client's `Connection` header may not list: the fields the gateway reads,
/// sets or frames with. Listing one would make it hop-by-hop, so the gateway would
/// decide on it and then drop it before forwarding: the backend would act on
/// something else than what was authorised.
pub fn is_protected(name: &[u8]) -> bool {
    const READ: [&[u8]; 7] =
        [b"api-key", b"authorization", b"authtoken", b"branch", b"host", b"expect", b"content-type"];
    READ.iter().any(|c| folded_eq(name, c)) || is_framing(name) || is_gateway_only(name)
}

/// The names a `Connection` field value lists (RFC 9110 section 7.6.1), trimmed.
pub fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_case_and_underscores() {
        assert!(folded_eq(b"X_Stackgate_Access", b"x-stackgate-access"));
        assert!(folded_eq(b"content_length", b"content-length"));
        assert!(!folded_eq(b"content-lengths", b"content-length"));
        assert!(!folded_eq(b"x-stackgate", b"x-stackgate-"));
        assert!(folded_starts_with(b"X_FORWARDED_FOR", b"x-forwarded-"));
    }

    #[test]
    fn names_that_may_tell_sessions_apart() {
        for name in [
            "session",
            "X-Session-Id",
            "x_session",
            "SessionId",
            "PHPSESSID",
            "x-sess-id",
            "X-CSRF-Token",
            "x-xsrf-token",
            "Refresh-Token",
            "x-jwt",
            "authtoken",
            "X-Auth-User",
            "sid",
            "X-SID",
            "x-connect-sid",
            "X-User-Id",
            "user_id",
            "x-app-user-id",
            "Userid",
            "x-uid",
            "X-Account-Id",
            "x-tenant-id",
            "authorization",
            // Longer than any name read whole: taken.
            "x-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(may_tell_sessions_apart(name.as_bytes()), "{name}");
        }
        for name in [
            "accept",
            "content-type",
            "api_version",
            "branch",
            "inside",
            "x-id",
            "traceparent",
            "x-request-id",
            "if-none-match",
            "",
            "---",
        ] {
            assert!(!may_tell_sessions_apart(name.as_bytes()), "{name}");
        }
        // Every credential name is one.
        for name in ["token", "X-Api-Key", "x-amz-security-token", "Authentication", "access_token", "x_cs_authtoken"] {
            assert!(is_session_credential(name.as_bytes()) && may_tell_sessions_apart(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn every_spelling_is_classified_alike() {
        for name in ["transfer_encoding", "Transfer-Encoding", "KEEP_ALIVE", "proxy_connection", "Upgrade"] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in [
            "x_stackgate_access",
            "x_stackgate_token_uid",
            "x_forwarded_for",
            "X_Forwarded_Host",
            "x_request_id",
            "x_http_method_override",
            "x_original_url",
            "Forwarded",
            "x_real_ip",
            "_method",
            "X-Override-Method",
            "True-Client-IP",
            "x_client_ip",
            "Client-Ip",
            "CF_Connecting_IP",
            "Fastly-Client-IP",
            "X-Cluster-Client-Ip",
            "x_original_forwarded_for",
            "Fly-Client-IP",
            "X-Appengine-Remote-Addr",
            "X-AppEngine-User-IP",
            "Cf-Pseudo-IPv4",
            "X-Forwarded",
            "Forwarded-For",
            "X-Azure-ClientIP",
            "X-Envoy-External-Address",
            "X-Originating-IP",
            "X-Remote-Addr",
            "Proxy",
            "x_original_uri",
            "X-Envoy-Original-Path",
            "X-Original-Path",
            "x_host",
            "X-Original-Host",
            "X-Scheme",
            "X_URL_SCHEME",
            "Front-End-Https",
            "Remote-User",
            "remote_user",
            "X-Remote-User",
            "X-Remote-Group",
            "X-Authenticated-User",
            "X-Auth-Request-User",
            "x_auth_request_email",
            "X-Auth-Request-Preferred-Username",
            "X-Auth-Request-Groups",
            "X-Auth-Request-Access-Token",
            "Remote-Groups",
            "Remote-Email",
            "Remote-Name",
            "X-WEBAUTH-USER",
            "X-Consumer-Username",
            "X-Consumer-ID",
            "X-Authenticated-Userid",
            "X-Credential-Identifier",
            "X-Goog-Authenticated-User-Email",
            "X-Goog-Iap-Jwt-Assertion",
            "X-MS-CLIENT-PRINCIPAL-NAME",
            "X-Ms-Token-Aad-Id-Token",
            "X-Amzn-Oidc-Identity",
            "Cf-Access-Jwt-Assertion",
            "X-Pomerium-Claim-Email",
            "X-Vouch-User",
            "X-SSL-Client-Verify",
            "X-SSL-Client-DN",
            "Ssl-Client-Cert",
            "X-Client-Cert",
            "X-ARR-ClientCert",
            "X-Original-Forwarded-Host",
            "X-Original-Remote-Addr",
            "X-Original-Proto",
            "X-Script-Name",
            "Https",
            "X-Amzn-Mtls-Clientcert-Leaf",
            "X-SSL-Cert",
            "X-SSL-Verify",
            "X-Client-DN",
            "X-Client-Subject",
            "X-Client-Verified",
            "X-Userinfo",
            "X-Id-Token",
            "X-Jwt-Assertion",
            "X-Endpoint-API-UserInfo",
            "X-Apigateway-Api-Userinfo",
            "Tailscale-User-Login",
            "X-Anonymous-Consumer",
            "X-ARR-SSL",
            "X-Envoy-Internal",
            "X-Iisnode-Auth_User",
            "X-Auth-User",
            "X-User",
            "X-Email",
            "X-Proxy-User",
            "X-Tls-Client-Cert",
        ] {
            assert!(is_gateway_only(name.as_bytes()), "{name}");
        }
        for name in ["content_length", "transfer_encoding"] {
            assert!(is_framing(name.as_bytes()), "{name}");
        }
        for name in [
            "authtoken",
            "AuthToken",
            "auth_token",
            "auth-token",
            "access-token",
            "access_token",
            "x-auth-token",
            "X-Access-Token",
            "authorisation",
            "x-authorization",
            "auth-orization",
            "session-token",
            "Token",
            "X-Token",
            "X-Api-Key",
            "X-CS-Authtoken",
            "Authentication",
            "X-Amz-Security-Token",
        ] {
            assert!(is_session_credential(name.as_bytes()), "{name}");
        }
        for name in
            ["authorization", "Authorization", "api_key", "x-csrf-token", "tokens", "x-auth", "client", "api-version"]
        {
            assert!(!is_session_credential(name.as_bytes()), "{name}");
        }
        for name in [
            "x-custom",
            "content-type",
            "api_key",
            "x-stackgatex",
            "forwarded-x",
            "te-x",
            "client-ips",
            "cookie",
            "proxy-x",
            "remotes",
            "host",
            "https-x",
            "sec-fetch-site",
            "cache-control",
            "x-hosts",
            "pragma",
            "referer",
            "x-user-id",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()) && !is_gateway_only(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn credential_aliases_and_protected_names() {
        for alias in ["api-key", "API_KEY", "Api-Key", "Branch", "AUTHTOKEN", "Authorization"] {
            assert!(is_credential_alias(alias.as_bytes()), "{alias}");
        }
        for exact in ["api_key", "branch", "authtoken", "authorization", "apikey", "x-branch"] {
            assert!(!is_credential_alias(exact.as_bytes()), "{exact}");
        }
        for name in [
            "api_key",
            "API-KEY",
            "authorization",
            "authtoken",
            "branch",
            "host",
            "Content_Length",
            "transfer-encoding",
            "x-stackgate-access",
            "x_forwarded_for",
            "forwarded",
            "x-request-id",
            "expect",
            "Content_Type",
        ] {
            assert!(is_protected(name.as_bytes()), "{name}");
        }
        for name in ["close", "keep-alive", "te", "upgrade", "x-custom"] {
            assert!(!is_protected(name.as_bytes()), "{name}");
        }
        let listed: Vec<&[u8]> = connection_tokens(b" close ,, Branch,").collect();
        assert_eq!(listed, [&b"close"[..], b"Branch"]);
    }
}
