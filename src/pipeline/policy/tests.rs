//! Tests of `policy`.

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
    // Present is present: a null stage too (found by the fifth outside attack).
    assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":0},"workflow_stage":null}})).is_err());
    assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":0},"Workflow_Stage":null}})).is_err());
    assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":1}}})).is_err());
    assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":-1}}})).is_err());
    assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":0,"uid":"r"}}})).is_ok());
    assert!(check(wf, json!({"workflow":{"publishing_rule":{"uid":"r"}}})).is_err());
    assert!(check(wf, json!({"workflow":{"workflow_stage":{"uid":"s"},"publishing_rule":{"status":0}}})).is_err());
    assert!(check(wf, json!({})).is_err());
    for spelled in [
        json!({"workflow":{"Workflow_Stage":{"uid":"s1"},"publishing_rule":{"status":0}}}),
        json!({"workflow":{"publishing_rule":{"status":0,"Status":1}}}),
        json!({"Workflow":{"publishing_rule":{"Status":1}}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"WORKFLOW":{"workflow_stage":{"uid":"s"}}}),
        // `İ` lowers to `i` (and a combining dot): Go reads the second rule.
        json!({"workflow":{"publishing_rule":{"status":0},"publİshing_rule":{"status":1}}}),
        // The Kelvin sign reads as `k`.
        json!({"workflow":{"publishing_rule":{"status":0}},"worKflow":{"workflow_stage":{"uid":"s"}}}),
    ] {
        assert!(check(wf, spelled.clone()).is_err(), "{spelled}");
    }
    assert!(check(wf, json!({"WorkFlow":{"Publishing_Rule":{"STATUS":0}}})).is_ok());
}

/// A backend that turns the keys it receives into snake case reads `workflowStage`,
/// `workflow-stage` and `WorkflowStage` as `workflow_stage`: a key that spells a rule's
/// key by its letters and digits alone is a reading the gateway cannot vouch for, and
/// refused, whether the key itself is there or not; it never stands in for the key.
#[test]
fn keys_read_by_their_letters_and_digits_alone_are_refused() {
    let wf = Rule::EntryWorkflow;
    for stage in
        ["workflowStage", "workflow-stage", "WorkflowStage", "workflow__stage", "workflow stage", "workflow.stage"]
    {
        let body = json!({"workflow":{"publishing_rule":{"status":0},(stage):{"uid":"review"}}});
        assert!(check(wf, body.clone()).is_err(), "{body}");
    }
    for body in [
        json!({"workflow":{"publishingRule":{"status":1}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"publishingRule":{"status":1}}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"work-flow":{"workflowStage":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0,"_status":1}}}),
        // A decoy never stands in for a key the rule needs (the review of this change).
        json!({"workflow":{"publishing_rule":{"uid":"r","action":"publish","sta_tus":0}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status\u{200b}":0}}}),
        json!({"workflow":{"publishingRule":{"status":0,"comment":"please"}}}),
        json!({"work_flow":{"publishing_rule":{"status":0}}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"workflow.workflow_stage":{"uid":"s"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"workflow.publishing_rule.status":1}),
        json!({"workflow":{"publishing_rule.status":1,"publishing_rule":{"status":0}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow_stage.uid":"s"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"workflow__workflow_stage":{"uid":"s"}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow_stage__uid":"s"}}),
        json!({"workflow":{"publishing_rule":{"status":0,"status__x":1}}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"workflow%2Eworkflow_stage":{"uid":"s"}}),
        // Whole-string case conversions (Python's `casefold`, JavaScript's
        // `toUpperCase`) turn a ligature into two letters (the twelfth outside probe).
        json!({"workflow":{"publishing_rule":{"status":0},"work\u{fb02}ow_stage":{"uid":"s1"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow_\u{fb06}age":{"uid":"s1"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow_\u{fb05}age":{"uid":"s1"}}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"work\u{fb02}ow":{"workflow_stage":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0,"\u{fb06}atus":1}}}),
        // Compatibility forms (NFKC): full-width letters.
        json!({"workflow":{"publishing_rule":{"status":0},"\u{ff57}orkflow_stage":{"uid":"s1"}}}),
        // Paths that open with a separator: lodash's `toPath` reads their first
        // non-empty part first (the sixteenth outside probe).
        json!({"workflow":{"publishing_rule":{"status":0}},"[workflow][workflow_stage]":{"uid":"x"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"[workflow][publishing_rule][status]":1}),
        json!({"workflow":{"publishing_rule":{"status":0},"[publishing_rule][status]":1}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"[][workflow][workflow_stage]":{"uid":"x"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"[\"workflow\"].workflow_stage":{"uid":"x"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"['workflow']['workflow_stage']":{"uid":"x"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},".workflow.workflow_stage":{"uid":"x"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"/workflow/workflow_stage":{"uid":"x"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"__workflow__workflow_stage":{"uid":"x"}}),
        // Beside `workflow`, the keys the rule reads inside it (as in the query).
        json!({"workflow":{"publishing_rule":{"status":0}},"workflow_stage":{"uid":"x"}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"publishing_rule":{"status":1}}),
        json!({"workflow":{"publishing_rule":{"status":0}},"Status":1}),
        // A `status` beside `publishing_rule` (the seventeenth outside probe).
        json!({"workflow":{"publishing_rule":{"uid":"x","status":0},"status":1}}),
        json!({"workflow":{"publishing_rule":{"uid":"x","status":0},"\u{17f}tatus":1}}),
    ] {
        assert!(check(wf, body.clone()).is_err(), "{body}");
    }
    // Letters outside the key still tell keys apart.
    assert!(check(wf, json!({"workflow":{"publishing_rule":{"status":0},"workflow_stages":{"uid":"s"}}})).is_ok());
    // Accents are what accent-stripping helpers drop (lodash's `snakeCase`, pydash's
    // `snake_case`; the nineteenth outside probe ran both on these keys).
    for body in [
        json!({"workflow":{"publishing_rule":{"status":0},"workflow_stagé":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"stätus":1}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"sta\u{308}tus":1}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"wörkflow_stage":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"wørkflow_stage":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"WörkflowStäge":{"uid":"s"}}}),
        // Letters with no ASCII reading drop out (NFKD with ASCII `ignore`; `ŉ` is `ʼn`,
        // whose `ʼ` lodash's `snakeCase` drops: the twentieth outside probe).
        json!({"workflow":{"publishing_rule":{"status":0},"publishi\u{149}g_rule":{"status":1}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"stat\u{4e00}us":1}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow\u{4e00}_stage":{"uid":"s"}}}),
        // Letters that transliterators read as the rule's (unidecode, anyascii: Cyrillic
        // `а`, `о`, `е`, Greek `τ`, `ɡ`; the twentieth outside probe), and escapes that a
        // backend URL-decoding keys reads as them.
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"st\u{430}tus":1}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"sta\u{3c4}us":1}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"w\u{43e}rkflow_stage":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow_sta\u{261}e":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow_stag\u{435}.uid":"s"}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"st%61tus":1}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"st%2561tus":1}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow%5Fstage":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"w%u006Frkflow_stage":{"uid":"s"}}}),
        // Letters no table holds: each transliterator reads them its own way (unidecode
        // and anyascii read Hebrew `ק` as `k`, anyascii `ə`, `ٹ`, `ா`, `ૂ` as `e`, `t`,
        // `a`, `u`; the twenty-first outside probe), so they read as any letters.
        json!({"workflow":{"publishing_rule":{"status":0},"wor\u{5e7}flow_stage":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"work\u{fb4e}low_stage":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"workflow_stag\u{259}":{"uid":"s"}}}),
        json!({"workflow":{"publishing_rule":{"status":0},"publis\u{5d7}ing_rule":{"status":1}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"s\u{679}atus":1}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"st\u{bbe}tus":1}}}),
        json!({"workflow":{"publishing_rule":{"uid":"r","status":0,"stat\u{ac2}s":1}}}),
    ] {
        assert!(check(wf, body.clone()).is_err(), "{body}");
    }
    let pr = Rule::PublishRuleApprovers;
    for body in [
        json!({"publishing_rule":{"approvers":{"users":[]},"appro\u{21a7}ers":{"users":["u1"]}}}),
        json!({"publishingRule":{"approvers":{"users":["u1"]}}}),
        json!({"publishing_rule":{"approvers":{"users":[]},"Approvers_":{"users":["u1"]}}}),
        json!({"publishing-rule":{"approvers":{"users":["u1"]}}}),
        json!({"publishing_rule":{"approver-s":{"users":[]}}}),
        json!({"publishing_rule":{"approvers":null,"\u{ff41}pprovers":{"users":["u1"]}}}),
        json!({"\u{ff50}ublishing_rule":{"approvers":{"users":["u1"]}}}),
        // Keys that are paths, read as nested by lodash's `get` and unflatteners (the
        // fourteenth outside probe).
        json!({"publishing_rule":{"approvers":{"users":[],"roles":[]}},"publishing_rule.approvers.users":["u1"]}),
        json!({"publishing_rule.approvers.users":["u1"]}),
        json!({"publishing_rule":{"approvers.roles":["r1"]}}),
        json!({"publishing_rule":{"approvers[users]":["u1"]}}),
        json!({"publishing_rule[approvers][users]":["u1"]}),
        json!({"publishing_rule":{"approvers->users":["u1"]}}),
        json!({"publishing_rule":{"approvers":null,"approvers.users":["u1"]}}),
        // `__`, escaped and other separators, NFKC ones (the fifteenth outside probe).
        json!({"publishing_rule__approvers__users":["u1"]}),
        json!({"publishing_rule":{"approvers":{"users":[]},"approvers__users":["u1"]}}),
        json!({"publishing_rule%2Eapprovers%2Eusers":["u1"]}),
        json!({"publishing_rule":{"approvers|users":["u1"]}}),
        json!({"publishing_rule":{"approvers\u{ff0e}users":["u1"]}}),
        json!({"publishing_rule":{"approvers\u{3002}users":["u1"]}}),
        // Top-level approvers, which Rails' `wrap_parameters` would wrap.
        json!({"approvers":{"users":["u1"]}}),
        json!({"publishing_rule":{"approvers":{"users":[]}},"Approvers":{"users":["u1"]}}),
        // Accents (the nineteenth outside probe).
        json!({"publishing_rule":{"approvers":null,"approvérs":{"users":["u1"]}}}),
        json!({"publishing_rule":{"approvers":{"users":[]},"apprøvers":{"users":["u1"]}}}),
        json!({"publishing_rule":{},"publishing_rulé":{"approvers":{"users":["u1"]}}}),
        json!({"publishing_rule":{"approvers":null,"appro\u{436}vers":{"users":["u1"]}}}),
        // Paths that open with a separator (the sixteenth outside probe).
        json!({"publishing_rule":{"approvers":{"users":[]}},"[publishing_rule][approvers][users]":["u1"]}),
        json!({"publishing_rule":{"approvers":{"users":[]},"[approvers][users]":["u1"]}}),
        json!({"[approvers][users]":["u1"]}),
        json!({"/publishing_rule/approvers/users":["u1"]}),
    ] {
        assert!(check(pr, body.clone()).is_err(), "{body}");
    }
    assert!(check(pr, json!({"publishing_rule":{"approvers":{"users":[]},"approver_list":{"users":[]}}})).is_ok());
    // Other keys that are paths pass: their first part names no rule key.
    let other = json!({"publishing_rule":{"approvers":{"users":[]},"comment.text":"x","conditions[0]":1,"status_text":"a"},"meta.source":"ui"});
    assert!(check(pr, other).is_ok());
    let request = json!({"workflow":{"publishing_rule":{"status":0,"comment.text":"ok","notify[email]":true}},"workflow_comment":"x"});
    assert!(check(wf, request).is_ok());
}

/// A decoder that keeps keys as C strings reads a key up to its NUL: beside the key it
/// spells, such a key is a second reading (refused), alone it is that key.
#[test]
fn keys_are_read_up_to_a_nul_too() {
    let wf = Rule::EntryWorkflow;
    for body in [
        json!({"workflow":{"publishing_rule":{"status\u{0}":1,"status":0}}}),
        json!({"workflow":{"workflow_stage\u{0}":{"uid":"review"},"publishing_rule":{"status":0}}}),
        json!({"workflow\u{0}x":{"workflow_stage":{"uid":"s"}},"workflow":{"publishing_rule":{"status":0}}}),
        json!({"workflow":{"publishing_rule":{"status\u{0}":1}}}),
    ] {
        assert!(check(wf, body.clone()).is_err(), "{body}");
    }
    assert!(check(wf, json!({"workflow\u{0}":{"publishing_rule":{"status\u{0}ignored":0}}})).is_ok());
    let approvers = json!({"publishing_rule":{"approvers\u{0}":{"users":["u1"]},"approvers":{"users":[],"roles":[]}}});
    assert!(check(Rule::PublishRuleApprovers, approvers.clone()).is_err(), "{approvers}");
    let alone = json!({"publishing_rule":{"approvers\u{0}":{"users":["u1"]}}});
    assert!(check(Rule::PublishRuleApprovers, alone.clone()).is_err(), "{alone}");
}

/// Read whole, a NUL is a separator like any control character: a key it starts is
/// read by what follows, as a reader that drops or splits at it reads it. An invisible
/// character in a path's first part (a soft hyphen, a zero-width space, a word joiner)
/// hides it from a split at every non-letter, not from one at ASCII alone (the
/// differential probe of the 7th of December: every one of these was forwarded).
#[test]
fn keys_hidden_by_a_leading_nul_or_an_invisible_character_are_refused() {
    let (wf, pr, pair) = (Rule::EntryWorkflow, Rule::PublishRuleApprovers, Rule::BranchPair);
    for (r, body) in [
        (wf, json!({"workflow":{"\u{0}workflow_stage":{"uid":"stage_2"},"publishing_rule":{"status":0}}})),
        (wf, json!({"workflow":{"publishing_rule":{"status":0,"\u{0}status":1}}})),
        (wf, json!({"workflow":{"\u{0}publishing_rule":{"status":1},"publishing_rule":{"status":0}}})),
        (pr, json!({"publishing_rule":{"\u{0}approvers":{"users":["u1"]}}})),
        (pr, json!({"publishing_rule":{"name":"n"},"\u{0}approvers":{"users":["u1"]}})),
        (pair, json!({"\u{0}base_branch":"development"})),
        (pair, json!({"\u{0}compare_branch":"development"})),
        (wf, json!({"workflow":{"wo\u{ad}rkflow_stage__x":null,"publishing_rule":{"status":0}}})),
        (wf, json!({"workflow":{"workflow\u{200b}_stage.uid":"stage_2","publishing_rule":{"status":0}}})),
        (wf, json!({"workflow":{"publishing_rule":{"status":0,"sta\u{ad}tus.x":1}}})),
        (wf, json!({"workflow":{"publishing_rule":{"status":0,"sta\u{2060}tus[x]":1}}})),
        (pr, json!({"publishing_rule":{"appro\u{ad}vers.users":["u1"]}})),
        // The same before a separator other than ASCII, and full-width low lines: read
        // in the key's compatibility form (the re-probe).
        (wf, json!({"workflow":{"wo\u{ad}rkflow_stage\u{ff0e}uid":"stage_2","publishing_rule":{"status":0}}})),
        (wf, json!({"workflow":{"workflow\u{200b}_stage\u{ff0e}uid":"stage_2","publishing_rule":{"status":0}}})),
        (wf, json!({"workflow":{"publishing_rule":{"status":0,"sta\u{ad}tus\u{ff0e}x":1}}})),
        (pr, json!({"publishing_rule":{"appro\u{ad}vers\u{ff0e}users":["u1"]}})),
        (pr, json!({"publishing_rule":{"appro\u{2060}vers\u{ff3f}\u{ff3f}users":["u1"]}})),
        (wf, json!({"workflow":{"wor\u{ad}kflow_stage\u{ff3b}uid":"stage_2","publishing_rule":{"status":0}}})),
        (wf, json!({"workflow":{"workflow\u{ff3f}stage\u{ff0e}uid":{"uid":"s"},"publishing_rule":{"status":0}}})),
        (pr, json!({"publishing_rule":{"appro\u{ff3f}vers\u{ff0e}users":["u1"]}})),
        (pair, json!({"compare\u{ff3f}branch\u{ff0e}x":"development"})),
        (pair, json!({"merge_comment":"m","bas\u{ad}e_branch\u{ff0e}x":"development"})),
    ] {
        assert!(check(r, body.clone()).is_err(), "{body}");
    }
    // A NUL or an invisible character between words that name nothing stays harmless.
    let fine = json!({"workflow":{"publishing_rule":{"status":0,"note\u{0}x":1,"ti\u{ad}tle.x":2}}});
    assert!(check(wf, fine).is_ok());
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
    // Shapes other than the documented one fail closed, as the workflow rule does.
    for odd in [
        json!({"publishing_rule":{"approvers":[{"users":["u1"]}]}}),
        json!({"publishing_rule":{"approvers":"u1"}}),
        json!({"publishing_rule":{"approvers":[]}}),
        json!({"publishing_rule":{"approvers":{"users":{"uid":"u1"}}}}),
        json!({"publishing_rule":{"approvers":{"user":["u1"]}}}),
        json!({"publishing_rule":{"approvers":{"users":[],"groups":"g1"}}}),
        json!({"publishing_rule":[{"approvers":{"users":["u1"]}}]}),
        json!({"publishing_rule":"x"}),
        json!([{"publishing_rule":{"approvers":{"users":["u1"]}}}]),
        json!("x"),
    ] {
        assert!(check(pr, odd.clone()).is_err(), "{odd}");
    }
    // Keys read as case-insensitive decoders read them (Go's encoding/json, and
    // Jackson or System.Text.Json set so): any spelling, or two readings, is refused.
    for spelled in [
        r#"{"publishing_rule":{"Approvers":{"users":["u1"]}}}"#,
        r#"{"PUBLISHING_RULE":{"Approvers":{"Users":["u1"]}}}"#,
        r#"{"publishing_rule":{"approvers":{"users":[]},"Approvers":{"users":["u1"]}}}"#,
        "{\"publishing_rule\":{\"approverſ\":{\"users\":[\"u1\"]}}}",
        "{\"publıshing_rule\":{\"approvers\":{\"users\":[\"u1\"]}}}",
        "{\"publİshing_rule\":{\"approvers\":{\"users\":[\"u1\"]}}}",
        "{\"PUBLİSHING_RULE\":{\"approvers\":{\"roles\":[\"r1\"]}}}",
        "{\"publishing_rule\":{},\"publİshing_rule\":{\"approvers\":{\"users\":[\"u1\"]}}}",
        r#"{"publishing_rule":null,"Publishing_rule":{"approvers":{"users":["u1"]}}}"#,
        r#"{"publishing_rule":{"approvers":null,"APPROVERS":{"roles":["r1"]}}}"#,
    ] {
        assert!(inspect_body(&rule(pr), spelled.as_bytes()).is_err(), "{spelled}");
    }
    // Only an empty body is no body: whitespace is malformed JSON.
    for blank in [" ", "\r\n\t", "\x0c"] {
        assert_eq!(
            inspect_body(&rule(pr), blank.as_bytes()),
            Err(GatewayError::BadRequest(BadRequest::MalformedJson)),
            "{blank:?}"
        );
    }
    for empty in [
        json!({}),
        json!({"Publishing_Rule":{"Approvers":{"Users":[]}}}),
        json!({"publishing_rule":null}),
        json!({"publishing_rule":{"approvers":null}}),
        json!({"publishing_rule":{"approvers":{}}}),
        json!({"publishing_rule":{"approvers":{"users":null,"roles":""}}}),
    ] {
        assert!(check(pr, empty.clone()).is_ok(), "{empty}");
    }
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

fn grants(all_branches: bool, branches: &[&str], aliases: &[&str]) -> Grants {
    Grants {
        all_branches,
        branches: branches.iter().map(|b| (*b).into()).collect(),
        aliases: aliases.iter().map(|a| (*a).into()).collect(),
        ..Grants::default()
    }
}

/// The test stack: branches main and development, aliases deploy -> main and
/// staging -> development.
fn lookup(name: &str) -> StackName<'static> {
    match name {
        "main" | "development" => StackName::Branch,
        "deploy" => StackName::Alias { target: "main" },
        "staging" => StackName::Alias { target: "development" },
        _ => StackName::Unknown,
    }
}

#[test]
fn branch_check_by_name_alias_and_target() {
    let main = grants(false, &["main"], &[]);
    let deploy = grants(false, &[], &["deploy"]);
    for (g, name, want) in [
        (&main, "main", true),
        (&main, "development", false),
        (&main, "deploy", true), // an alias of a granted branch
        (&main, "staging", false),
        (&main, "nosuchbranch", false),
        (&main, "*", false),
        (&main, "$all", false),
        (&deploy, "deploy", true),
        (&deploy, "main", false), // an alias scope does not grant its target by name
    ] {
        assert_eq!(branch_allowed(g, name, || lookup(name)), want, "{g:?} {name}");
    }
}

#[test]
fn all_branches_admits_any_name_without_a_lookup() {
    let all = grants(true, &[], &[]);
    for name in ["main", "development", "deploy", "staging", "created-later", "*", "$all", ""] {
        assert!(branch_allowed(&all, name, || panic!("no lookup for an All Branches token")), "{name}");
    }
}

#[test]
fn malformed_json_is_400() {
    let err = inspect_body(&rule(Rule::EntryWorkflow), b"{not json").unwrap_err();
    assert_eq!(err, GatewayError::BadRequest(BadRequest::MalformedJson));
}

/// Keys that write through an object's prototype or internals in unguarded
/// unflatteners and deep merges (lodash before 4.17.12, `flat` before 5.0.1, pydash
/// before 6; the seventeenth and eighteenth outside probes ran them on these bodies),
/// and keys with escapes such helpers undo: a second reading, 400, at any depth.
#[test]
fn keys_through_a_prototype_are_refused() {
    let ambiguous = Err(GatewayError::BadRequest(BadRequest::AmbiguousJson));
    let wf = Rule::EntryWorkflow;
    let request = json!({"uid":"x","status":0});
    for key in [
        "__proto__.workflow_stage",
        "constructor.prototype.workflow_stage",
        "[\"__proto__\"].workflow_stage",
        "__proto__[workflow_stage]",
        "prototype",
        "constructor",
        // Escapes that lodash's `toPath` and `set-value` undo, and Python's object
        // internals (pydash's `set_`; the eighteenth outside probe).
        "[\"__pro\\to__\"][\"workflow_stage\"]",
        "a[\"__pro\\to__\"].workflow_stage",
        "[\"construc\\tor\"][\"proto\\type\"][\"workflow_stage\"]",
        "__proto\\__.workflow_stage",
        "[\"work\\flow\"][\"workflow_stage\"]",
        "__class__",
        "__class__.workflow_stage",
        "__init__.__globals__.x",
        // Java's property paths (Spring's data binder; the nineteenth outside probe).
        "class.module.classLoader",
        "Class.module.classLoader",
        "Constructor",
        "a.Prototype.x",
        // The same in the forms a backend may read a key in (the twentieth outside
        // probe): percent-decoded, transliterated (a Cyrillic `о`), without a soft hyphen.
        "%5F%5Fproto%5F%5F.workflow_stage",
        "__pr\u{43e}to__.workflow_stage",
        "__pro\u{ad}to__.workflow_stage",
        "c\u{43e}nstructor",
        // Low lines NFKC reads as `_`, `__` as a path's separator, and `__...__` around
        // any character (the differential probe of the 7th of December).
        "\u{ff3f}_proto__",
        "_\u{ff3f}proto__",
        "\u{ff3f}_init__.__globals__",
        "__proto_\u{fe4f}",
        "x__constructor__prototype__polluted",
        "constructor__prototype",
        "__p.oto__",
        "__pr oto__",
        // `$` separates parts; `->` leaves a `-` at a part's end (the re-probe).
        "constructor$x",
        "x$constructor",
        "prototype$x",
        "Class$x",
        "__proto__$x",
        "__proto__->x",
        "x->__proto__->polluted",
        // A `$` inside the word is dropped by some readers (the third probe of the day).
        "c$onstructor",
        "con$structor",
        "pro$totype",
        "CONSTRUCTO$R",
        "Cla$ss",
        "x->con$structor->pro$totype",
        "_$_proto__",
        "__proto_$_",
        "_\u{ff04}_proto__",
    ] {
        let body = json!({"workflow":{"publishing_rule":request.clone()},(key):{"uid":"s"}});
        assert_eq!(check(wf, body.clone()), ambiguous, "{body}");
    }
    let nested = json!({"workflow":{"publishing_rule":request.clone()},"constructor":{"prototype":{"workflow_stage":{"uid":"s"}}}});
    assert_eq!(check(wf, nested), ambiguous);
    let pr = Rule::PublishRuleApprovers;
    for body in [
        json!({"publishing_rule":{"workflow":"wf1"},"__proto__.approvers":{"users":["u1"]}}),
        json!({"publishing_rule":{"workflow":"wf1"},"constructor":{"prototype":{"approvers":{"users":["u1"]}}}}),
        json!({"publishing_rule":{"workflow":"wf1"},"__proto__[approvers][users][0]":"u1"}),
        json!({"publishing_rule":{"workflow":"wf1","conditions":[{"constructor.prototype.x":1}]}}),
    ] {
        assert_eq!(check(pr, body.clone()), ambiguous, "{body}");
    }
    let nested = json!({"workflow":{"publishing_rule":request.clone(),"__class__":{"workflow_stage":{"uid":"s1"}}}});
    assert_eq!(check(wf, nested), ambiguous);
    // Words that only contain them pass.
    let fine = json!({"publishing_rule":{"workflow":"wf1","constructors":1,"proto":"x","prototype_id":"p","__":1,"_a_":2,
        "50%":1,"a%20b":2,"caf\u{e9}_id":3}});
    assert!(check(pr, fine).is_ok());
}
