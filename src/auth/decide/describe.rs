//! Words for a decision trace (`keyward explain`, OpenTelemetry):
//! routes, workspace sources, credentials and callers, never a secret.

use super::*;

pub(super) fn describe_route(route: &Route) -> String {
    if route.index == usize::MAX {
        return "no route matched: auth required, no workspace rule".to_string();
    }
    let auth = match route.auth {
        AuthMode::Required => "required",
        AuthMode::None => "none",
        AuthMode::Mcp => "mcp",
    };
    let mut flags = Vec::new();
    if route.workspace.is_some() {
        flags.push(format!("workspace = {}", describe_source(route)));
    }
    for (on, name) in [
        (route.org_wide_only, "org_wide_only"),
        (route.quota, "quota"),
        (route.org_optional, "org_optional"),
        (route.scoped_filter, "scoped_keys = filter"),
    ] {
        if on {
            flags.push(name.to_string());
        }
    }
    let flags: String = flags.iter().map(|f| format!(", {f}")).collect();
    format!("#{} `{}` (auth = {auth}{flags})", route.index, route.path)
}

pub(super) fn describe_source(route: &Route) -> String {
    let name = route.workspace_name().unwrap_or("");
    match &route.workspace {
        None => "no workspace rule".to_string(),
        Some(WorkspaceSource::Path(_)) => format!("path:{name}"),
        Some(WorkspaceSource::Query(n)) => format!("query:{n}"),
        Some(WorkspaceSource::Header(n)) => format!("header:{n}"),
        Some(WorkspaceSource::Body(f)) => format!("body:{f}"),
        Some(WorkspaceSource::ResourcePath(_)) => "resource_path".to_string(),
        Some(WorkspaceSource::ResourceBody(f)) => format!("resource_body:{f}"),
    }
}

pub(super) fn describe_credential(c: &Credential<'_>) -> String {
    match c {
        Credential::None => "none".to_string(),
        Credential::Invalid(reason) => format!("present but unusable ({reason})"),
        Credential::Bearer {
            kind: BearerKind::ApiKey,
            ..
        } => "API key (Authorization: Bearer wvz_…)".to_string(),
        Credential::Bearer {
            kind: BearerKind::Mcp,
            ..
        } => "MCP token (Authorization: Bearer mcp_…)".to_string(),
        Credential::Bearer {
            kind: BearerKind::McpOAuth,
            ..
        } => "MCP OAuth token (Authorization: Bearer mcpo_…)".to_string(),
        Credential::ServiceKey(_) => "service key (X-Service-Key)".to_string(),
        Credential::Session { .. } => "session cookie (signature verified)".to_string(),
    }
}

pub(super) fn describe_caller(c: &Caller) -> String {
    let org = match &c.org {
        Some(o) => format!("organization `{}` (plan `{}`)", o.id, o.plan),
        None => "no organization".to_string(),
    };
    match &c.verdict.value {
        Verdict::ApiKey(k) => {
            let scope = match &k.scope {
                Scope::OrgWide => "org-wide".to_string(),
                Scope::Workspaces { header, .. } => format!("workspaces [{header}]"),
                Scope::Malformed => "malformed".to_string(),
            };
            format!("API key `{}`, {org}, scope {scope}", k.id)
        }
        Verdict::Session(s) => format!("session of user `{}`, {org}", s.user_id),
        Verdict::ServiceKey(k) => format!("service key `{}`, acting for {org}", k.id),
        Verdict::Mcp(t) => format!(
            "MCP token `{}` ({}) for server `{}`, {org}",
            t.id,
            c.method.as_str(),
            t.server_id
        ),
        Verdict::Rejected(r) => format!("rejected ({r})"),
    }
}
