//! Parsing and validating token-API bodies into [`TokenRecord`]s, with per-field
//! errors (422) for everything a client can get wrong.

use crate::config::{Organization, Stack};
use crate::error::{BadRequest, FieldErrors, GatewayError};
use crate::token::{compile_scope, parse_expiry, RateLimit, ScopeEntry, TokenRecord};
use serde_json::{Map, Value};

const MAX_NAME: usize = 255;
const MAX_DESCRIPTION: usize = 1000;

/// The fields a create or update body may carry; `None` = not sent.
#[derive(Debug, Default)]
pub struct TokenInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scope: Option<Vec<ScopeEntry>>,
    /// `Some(None)` = sent as null (never expires).
    pub expires_on: Option<Option<String>>,
    pub notify: Option<bool>,
    /// `Some(None)` = sent as null (organisation default).
    pub rate_limit: Option<Option<RateLimit>>,
}

fn push(errors: &mut FieldErrors, field: &str, msg: &str) {
    errors.entry(field.to_owned()).or_default().push(msg.to_owned());
}

/// Parses `{"token": {...}}`. Malformed JSON is 400; wrong shapes, wrong types and
/// unknown fields are 422 with every problem listed.
pub fn parse(body: &[u8]) -> Result<TokenInput, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| GatewayError::BadRequest(BadRequest::MalformedJson))?;
    let mut errors = FieldErrors::new();
    let Some(outer) = value.as_object() else {
        push(&mut errors, "token", "is required.");
        return Err(GatewayError::Unprocessable(errors));
    };
    for key in outer.keys().filter(|k| *k != "token") {
        push(&mut errors, key, "is not a known field.");
    }
    let Some(obj) = outer.get("token").and_then(Value::as_object) else {
        push(&mut errors, "token", "is required and must be an object.");
        return Err(GatewayError::Unprocessable(errors));
    };
    let input = fields(obj, &mut errors);
    if errors.is_empty() {
        Ok(input)
    } else {
        Err(GatewayError::Unprocessable(errors))
    }
}

fn fields(obj: &Map<String, Value>, errors: &mut FieldErrors) -> TokenInput {
    let mut input = TokenInput::default();
    for (key, v) in obj {
        match key.as_str() {
            "name" => input.name = string(v, "name", errors),
            "description" => input.description = string(v, "description", errors),
            "scope" => match serde_json::from_value::<Vec<ScopeEntry>>(v.clone()) {
                Ok(scope) => input.scope = Some(scope),
                Err(e) => push(errors, "scope", &format!("is invalid: {e}.")),
            },
            "expires_on" => match v {
                Value::Null => input.expires_on = Some(None),
                Value::String(s) => input.expires_on = Some(Some(s.clone())),
                _ => push(errors, "expires_on", "must be a date (YYYY-MM-DD), an RFC 3339 instant or null."),
            },
            "is_email_notification_enabled" => match v {
                Value::Bool(b) => input.notify = Some(*b),
                _ => push(errors, key, "must be true or false."),
            },
            "rate_limit" => match v {
                Value::Null => input.rate_limit = Some(None),
                _ => match serde_json::from_value::<RateLimit>(v.clone()) {
                    Ok(r) => input.rate_limit = Some(Some(r)),
                    Err(_) => push(
                        errors,
                        "rate_limit",
                        "must be null or {\"read_per_second\": n, \"write_per_second\": n} with whole numbers >= 1.",
                    ),
                },
            },
            // Fields of a GET response that a client cannot choose.
            "uid" | "created_at" | "updated_at" | "created_by" | "updated_by" | "origin" | "token" => {
                push(errors, &format!("token.{key}"), "cannot be set.")
            }
            _ => push(errors, &format!("token.{key}"), "is not a known field."),
        }
    }
    input
}

fn string(v: &Value, field: &str, errors: &mut FieldErrors) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        _ => {
            push(errors, field, "must be a string.");
            None
        }
    }
}

/// What validation checks a token against.
pub struct Context<'a> {
    pub stack: &'a Stack,
    pub org: &'a Organization,
    /// Unix seconds now.
    pub now: i64,
}

/// Applies `input` over `base` (an existing record, or a fresh one for create) and
/// validates the result as a whole. An update runs this inside the store's transaction
/// on the record as stored there, so it returns plain field errors for the store to
/// carry back.
pub fn apply(
    input: TokenInput,
    mut rec: TokenRecord,
    ctx: &Context<'_>,
    creating: bool,
) -> Result<TokenRecord, FieldErrors> {
    let mut errors = FieldErrors::new();
    if creating && input.name.is_none() {
        push(&mut errors, "name", "is required.");
    }
    if creating && input.scope.is_none() {
        push(&mut errors, "scope", "is required.");
    }
    if let Some(name) = input.name {
        rec.name = name.trim().to_owned();
    }
    if let Some(d) = input.description {
        rec.description = d;
    }
    if let Some(scope) = input.scope {
        rec.scope = scope;
    }
    if let Some(n) = input.notify {
        rec.is_email_notification_enabled = n;
    }
    if let Some(rl) = input.rate_limit {
        rec.rate_limit = rl;
    }
    if let Some(exp) = input.expires_on {
        rec.expires_on = None;
        if let Some(text) = exp {
            match parse_expiry(&text) {
                Ok(e) if e.at > ctx.now => rec.expires_on = Some(e),
                Ok(_) => push(&mut errors, "expires_on", "must be in the future."),
                Err(m) => push(&mut errors, "expires_on", &m),
            }
        }
    }
    check(&rec, ctx, &mut errors);
    if errors.is_empty() {
        Ok(rec)
    } else {
        Err(errors)
    }
}

fn check(rec: &TokenRecord, ctx: &Context<'_>, errors: &mut FieldErrors) {
    let chars = rec.name.chars().count();
    if chars == 0 || chars > MAX_NAME {
        push(errors, "name", &format!("must be 1 to {MAX_NAME} characters."));
    }
    if ctx.stack.tokens.iter().any(|t| t.name == rec.name) {
        push(errors, "name", "is already used by another token of this stack.");
    }
    if rec.description.chars().count() > MAX_DESCRIPTION {
        push(errors, "description", &format!("must be at most {MAX_DESCRIPTION} characters."));
    }
    if let Err(scope_errors) = compile_scope(&rec.scope, ctx.stack) {
        for (k, msgs) in scope_errors {
            errors.entry(k).or_default().extend(msgs);
        }
    }
    if let Some(rl) = rec.rate_limit {
        for (field, rate, max) in [
            ("rate_limit.read_per_second", rl.read_per_second, ctx.org.read_per_second),
            ("rate_limit.write_per_second", rl.write_per_second, ctx.org.write_per_second),
        ] {
            if rate == 0 || rate > max {
                push(errors, field, &format!("must be between 1 and the organization's limit of {max}."));
            }
        }
    }
}
