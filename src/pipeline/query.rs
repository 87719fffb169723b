//! The query's say in what a management-token request addresses.
//!
//! The gateway authorises the stack and branch of the `api_key` and `branch` headers,
//! and the query is forwarded as it came. A backend that also reads `api_key` or
//! `branch` from the query (many do, the CMA among them) would act on whatever the
//! query says: so a query value must be the authorised one, given once, or absent.
//! A credential in the query (`authtoken`, ...) would let the backend authorise the
//! request as someone the gateway did not check: it is refused outright.
//!
//! Keys are read the way lenient backends read them: percent- and `+`-decoded, case
//! ignored, `-`, `.` and spaces as `_` (PHP's rule), and an array suffix ignored
//! (`branch[]`, `branch[0]`).

use super::auth::Credentials;
use super::policy::DEFAULT_BRANCH;
use crate::error::{BadRequest, GatewayError};

const AMBIGUOUS: GatewayError = GatewayError::BadRequest(BadRequest::AmbiguousQuery);

/// What a query parameter means to the gateway.
#[derive(Debug, PartialEq, Eq)]
enum Param {
    StackKey,
    Branch,
    Credential,
    Other,
}

/// Refuses a query whose `api_key` or `branch` differs from the authorised request's
/// (or is repeated), or that carries a credential.
pub fn check(query: Option<&str>, creds: &Credentials<'_>) -> Result<(), GatewayError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else { return Ok(()) };
    let api_key = creds.api_key().map(|v| v.as_bytes());
    let branch = creds.branch.map_or(DEFAULT_BRANCH.as_bytes(), |v| v.as_bytes());
    let (mut seen_key, mut seen_branch) = (false, false);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let (seen, authorised) = match classify(&key) {
            Param::Other => continue,
            Param::Credential => return Err(AMBIGUOUS),
            Param::StackKey => (&mut seen_key, api_key),
            Param::Branch => (&mut seen_branch, Some(branch)),
        };
        if std::mem::replace(seen, true) || authorised != Some(value.as_bytes()) {
            return Err(AMBIGUOUS);
        }
    }
    Ok(())
}

fn classify(key: &str) -> Param {
    let key = key.trim_start();
    // `name[...]` is `name` as an array to PHP and Rack.
    let base = match key.find('[') {
        Some(open) if key[open..].contains(']') => &key[..open],
        _ => key,
    };
    let folded: String = base
        .chars()
        .map(|c| match c {
            '-' | '.' | ' ' | '[' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    match folded.as_str() {
        "api_key" => Param::StackKey,
        "branch" => Param::Branch,
        "authtoken" | "authorization" | "access_token" => Param::Credential,
        _ => Param::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn check_with(query: &str, api_key: &'static str, branch: Option<&'static str>) -> Result<(), GatewayError> {
        let mut headers = HeaderMap::new();
        headers.insert("api_key", HeaderValue::from_static(api_key));
        if let Some(b) = branch {
            headers.insert("branch", HeaderValue::from_static(b));
        }
        let creds = Credentials::read(&headers)?;
        check(Some(query), &creds)
    }

    #[test]
    fn matching_values_pass_and_others_are_refused() {
        assert!(check_with("include_count=true&limit=5", "blt1", None).is_ok());
        assert!(check_with("api_key=blt1&branch=main", "blt1", None).is_ok());
        assert!(check_with("branch=development", "blt1", Some("development")).is_ok());
        for bad in [
            "branch=development",
            "api_key=blt2",
            "api_key=blt1&api_key=blt1",
            "branch=main&branch=main",
            "API_KEY=blt2",
            "api-key=blt2",
            "api.key=blt2",
            "api%5Fkey=blt2",
            "Branch%5B%5D=development",
            "branch[0]=development",
            "+branch=development",
            "authtoken=user",
            "access_token=x",
            "branch=",
        ] {
            assert_eq!(check_with(bad, "blt1", None), Err(AMBIGUOUS), "{bad}");
        }
    }
}
