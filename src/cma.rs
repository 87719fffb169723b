//! The CMA's vocabulary, which every stage speaks: modules (the unit of a token's
//! scope), read and write access, the extra rules some paths carry, and the methods
//! the CMA has. It imports nothing from the crate, so anything may import it; the
//! path table that maps requests onto it is `pipeline::classify`, and the
//! header names the gateway reads are in `field_names`.

/// The methods the CMA has; anything else is 405 (methods are case-sensitive, so
/// `get` or `post` is not one of them).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// A CMA module: the unit of a token's scope, plus the never-allowed groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    ContentType,
    GlobalField,
    Entry,
    Asset,
    Label,
    Extension,
    Release,
    Environment,
    Locale,
    Webhook,
    Role,
    User,
    Workflow,
    PublishRule,
    AuditLog,
    PublishQueue,
    Bulk,
    Taxonomy,
    Branch,
    BranchAlias,
    // Never allowed with a management token.
    Stack,
    UserShare,
    Tokens,
    Organization,
    UserSession,
    Unknown,
}

impl Module {
    /// Every module, in declaration order (see [`Module::index`]).
    pub const ALL: [Module; 26] = [
        Module::ContentType,
        Module::GlobalField,
        Module::Entry,
        Module::Asset,
        Module::Label,
        Module::Extension,
        Module::Release,
        Module::Environment,
        Module::Locale,
        Module::Webhook,
        Module::Role,
        Module::User,
        Module::Workflow,
        Module::PublishRule,
        Module::AuditLog,
        Module::PublishQueue,
        Module::Bulk,
        Module::Taxonomy,
        Module::Branch,
        Module::BranchAlias,
        Module::Stack,
        Module::UserShare,
        Module::Tokens,
        Module::Organization,
        Module::UserSession,
        Module::Unknown,
    ];

    /// Position in [`Module::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Modules a token scope may name, in bit order: the first twenty of [`Module::ALL`]
    /// (the rest are never allowed).
    pub const SCOPED: &'static [Module] = Module::ALL.split_at(20).0;

    /// The scope / metrics name.
    pub fn name(self) -> &'static str {
        match self {
            Module::ContentType => "content_type",
            Module::GlobalField => "global_field",
            Module::Entry => "entry",
            Module::Asset => "asset",
            Module::Label => "label",
            Module::Extension => "extension",
            Module::Release => "release",
            Module::Environment => "environment",
            Module::Locale => "locale",
            Module::Webhook => "webhook",
            Module::Role => "role",
            Module::User => "user",
            Module::Workflow => "workflow",
            Module::PublishRule => "publish_rule",
            Module::AuditLog => "audit_log",
            Module::PublishQueue => "publish_queue",
            Module::Bulk => "bulk",
            Module::Taxonomy => "taxonomy",
            Module::Branch => "branch",
            Module::BranchAlias => "branch_alias",
            Module::Stack => "stack",
            Module::UserShare => "user_share",
            Module::Tokens => "tokens",
            Module::Organization => "organization",
            Module::UserSession => "user_session",
            Module::Unknown => "unknown",
        }
    }

    /// Looks up a scope module name (`$all` is handled by the scope compiler).
    pub fn from_scope_name(name: &str) -> Option<Module> {
        Module::SCOPED.iter().copied().find(|m| m.name() == name)
    }

    /// Bit for [`ModuleSet`]; `None` for modules no scope can grant.
    pub fn bit(self) -> Option<u32> {
        let i = self.index();
        (i < Module::SCOPED.len()).then(|| 1u32 << i)
    }

    /// Whether the request's branch must be within the token's branch scope.
    pub fn is_branch_specific(self) -> bool {
        matches!(
            self,
            Module::ContentType
                | Module::GlobalField
                | Module::Entry
                | Module::Asset
                | Module::Locale
                | Module::Extension
                | Module::Label
                | Module::Release
                | Module::PublishQueue
                | Module::AuditLog
                | Module::Bulk
        )
    }
}

/// A set of scoped modules, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ModuleSet(u32);

impl ModuleSet {
    pub const EMPTY: ModuleSet = ModuleSet(0);
    pub const ALL: ModuleSet = ModuleSet((1 << Module::SCOPED.len()) - 1);

    pub fn insert(&mut self, m: Module) {
        if let Some(bit) = m.bit() {
            self.0 |= bit;
        }
    }

    pub fn union(self, other: ModuleSet) -> ModuleSet {
        ModuleSet(self.0 | other.0)
    }

    pub fn contains(self, m: Module) -> bool {
        m.bit().is_some_and(|bit| self.0 & bit != 0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Read (GET/HEAD) or write (everything else, and the GETs that change state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// Extra rules beyond module + access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Module and access decide.
    Plain,
    /// Never allowed with a management token (e.g. audit-log writes, bulk workflow).
    Deny,
    /// `POST .../entries/{e}/workflow`: the body decides (section 1.3).
    EntryWorkflow,
    /// `POST|PUT /workflows/publishing_rules[/{x}]`: approvers in the body deny.
    PublishRuleApprovers,
    /// `/bulk/...`: also charged to the organisation's bulk bucket.
    Bulk,
    /// `GET /stacks/branches_compare[/...]`, `POST /stacks/branches_merge`: they act on
    /// the two branches their query names (`base_branch`, `compare_branch`), which must
    /// both be in the token's branch scope, as the `branch` header must elsewhere. A body
    /// (JSON only) or a header naming either is refused: some frameworks let those
    /// override the query.
    BranchPair,
    /// `/stacks/management_tokens[/{uid}]`: served by stackgate itself.
    TokenApi,
    /// `POST|DELETE /user-session` (login, logout): never allowed with a management
    /// token, but a request without any credential is a user-session request, because a
    /// login carries no credential yet (DESIGN.md section 1).
    Login,
}

/// What a request does, as far as policy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub module: Module,
    pub access: Access,
    pub rule: Rule,
}

impl Operation {
    /// Whether `inspect_body` must buffer and parse the body.
    pub fn needs_body(&self) -> bool {
        matches!(self.rule, Rule::EntryWorkflow | Rule::PublishRuleApprovers | Rule::BranchPair)
    }
}
