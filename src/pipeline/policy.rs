//! Stages 4 and 5: may this token do this operation on this branch, and, for the few
//! operations whose rule depends on the JSON body, does the body allow it.

use super::classify::{Access, Module, Operation, Rule};
use crate::error::{BadRequest, Denial, GatewayError};
use crate::json::JsonError;
use crate::snapshot::Token;
use http::HeaderValue;

/// The branch a request addresses when it sends no `branch` header.
pub const DEFAULT_BRANCH: &str = "main";

/// Checks module, access and branch scope.
pub fn authorize(token: &Token, op: &Operation, branch: Option<&HeaderValue>) -> Result<(), GatewayError> {
    let deny = |d| Err(GatewayError::Forbidden(d));
    match op.rule {
        Rule::Deny | Rule::TokenApi | Rule::Login => return deny(Denial::NeverAllowed),
        Rule::Plain | Rule::EntryWorkflow | Rule::PublishRuleApprovers | Rule::Bulk => {}
    }
    if op.module == Module::Unknown {
        return deny(Denial::UnknownPath);
    }
    let granted = match op.access {
        Access::Read => token.grants.read,
        Access::Write => token.grants.write,
    };
    if !granted.contains(op.module) {
        let read_only = op.access == Access::Write && token.grants.read.contains(op.module);
        return deny(if read_only { Denial::ReadOnly } else { Denial::ModuleNotInScope });
    }
    if op.module.is_branch_specific() {
        check_branch(token, branch)?;
    }
    Ok(())
}

/// The branch rules of DESIGN.md section 2.
fn check_branch(token: &Token, header: Option<&HeaderValue>) -> Result<(), GatewayError> {
    let name = match header {
        None => DEFAULT_BRANCH,
        Some(v) => v.to_str().map_err(|_| GatewayError::BadRequest(BadRequest::InvalidHeader))?,
    };
    let in_branches = |b: &str| token.grants.branches.iter().any(|x| &**x == b);
    let allowed = if token.stack.has_branch(name) {
        in_branches(name)
    } else if let Some(target) = token.stack.alias_target(name) {
        token.grants.aliases.iter().any(|a| &**a == name) || in_branches(target)
    } else {
        false
    };
    if allowed {
        Ok(())
    } else {
        Err(GatewayError::Forbidden(Denial::Branch))
    }
}

/// Applies the body rules of DESIGN.md section 1.3 to an already buffered body.
pub fn inspect_body(op: &Operation, body: &[u8]) -> Result<(), GatewayError> {
    // A publish-rule write without a body (a DELETE) carries no approvers.
    if op.rule == Rule::PublishRuleApprovers && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let json = crate::json::parse_strict(body).map_err(|e| match e {
        JsonError::Malformed => GatewayError::BadRequest(BadRequest::MalformedJson),
        JsonError::Ambiguous { .. } => GatewayError::BadRequest(BadRequest::AmbiguousJson),
    })?;
    let denied = match op.rule {
        Rule::EntryWorkflow => workflow_change_denied(&json),
        Rule::PublishRuleApprovers => needs_approvers(&json),
        Rule::Plain | Rule::Deny | Rule::Bulk | Rule::TokenApi | Rule::Login => false,
    };
    if denied {
        Err(GatewayError::Forbidden(Denial::BodyRule))
    } else {
        Ok(())
    }
}

/// Stage changes and publish-request accept/reject are for people, not tokens.
fn workflow_change_denied(json: &serde_json::Value) -> bool {
    let workflow = &json["workflow"];
    if !workflow.is_object() {
        // Nothing we can vouch for: the backend would have to guess too.
        return true;
    }
    if workflow.get("workflow_stage").is_some_and(|v| !v.is_null()) {
        return true;
    }
    match workflow.get("publishing_rule") {
        None | Some(serde_json::Value::Null) => true,
        Some(rule) => {
            // Only a new publish request (status 0) is allowed; anything else,
            // including a missing or non-numeric status, is an approval decision.
            let status = rule.get("status");
            let is_request = status.and_then(|s| s.as_i64()) == Some(0) || status.and_then(|s| s.as_str()) == Some("0");
            !is_request
        }
    }
}

/// Publish rules that require approvers cannot be created or changed by a token.
fn needs_approvers(json: &serde_json::Value) -> bool {
    let approvers = &json["publishing_rule"]["approvers"];
    let non_empty = |key: &str| match approvers.get(key) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        // An unexpected shape might still mean approvers to the backend.
        Some(_) => true,
    };
    non_empty("users") || non_empty("roles")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(rule: Rule) -> Operation {
        Operation { module: Module::Entry, access: Access::Write, rule }
    }

    fn check(r: Rule, v: serde_json::Value) -> Result<(), GatewayError> {
        inspect_body(&rule(r), v.to_string().as_bytes())
    }

    #[test]
    fn workflow_body_rules() {
        let wf = Rule::EntryWorkflow;
        assert!(check(wf, json!({"workflow":{"workflow_stage":{"uid":"s1"}}})).is_err());
        assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":1}}})).is_err());
        assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":-1}}})).is_err());
        assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":0,"uid":"r"}}})).is_ok());
        assert!(check(wf, json!({"workflow":{"publishing_rule":{"uid":"r"}}})).is_err());
        assert!(check(wf, json!({"workflow":{"workflow_stage":{"uid":"s"},"publishing_rule":{"status":0}}})).is_err());
        assert!(check(wf, json!({})).is_err());
    }

    #[test]
    fn approvers_rule() {
        let pr = Rule::PublishRuleApprovers;
        assert!(check(pr, json!({"publishing_rule":{"approvers":{"users":["u1"]}}})).is_err());
        assert!(check(pr, json!({"publishing_rule":{"approvers":{"roles":["r1"]}}})).is_err());
        assert!(check(pr, json!({"publishing_rule":{"approvers":{"users":[],"roles":[]}}})).is_ok());
        assert!(check(pr, json!({"publishing_rule":{"actions":[]}})).is_ok());
        assert!(inspect_body(&rule(pr), b"").is_ok(), "a DELETE carries no approvers");
        assert!(inspect_body(&rule(pr), b"[").is_err());
    }

    #[test]
    fn bodies_with_two_readings_are_refused() {
        let ambiguous = GatewayError::BadRequest(BadRequest::AmbiguousJson);
        for body in [
            r#"{"workflow":{"workflow_stage":{"uid":"s"}},"workflow":{"publishing_rule":{"status":0}}}"#,
            r#"{"workflow":{"publishing_rule":{"status":1,"status":0}}}"#,
            r#"{"workflow":{"publishing_rule":{"status":0},"__proto__":{"workflow_stage":{"uid":"s"}}}}"#,
        ] {
            assert_eq!(inspect_body(&rule(Rule::EntryWorkflow), body.as_bytes()), Err(ambiguous.clone()), "{body}");
        }
        let approvers = r#"{"publishing_rule":{"approvers":{"users":["u1"]}},"publishing_rule":{}}"#;
        assert_eq!(inspect_body(&rule(Rule::PublishRuleApprovers), approvers.as_bytes()), Err(ambiguous));
    }

    #[test]
    fn malformed_json_is_400() {
        let err = inspect_body(&rule(Rule::EntryWorkflow), b"{not json").unwrap_err();
        assert_eq!(err, GatewayError::BadRequest(BadRequest::MalformedJson));
    }
}
