//! May they (SPEC §5, §5.1, §6): route flags, the workspace rules and
//! scopes, quota, then the organization's rate limit, counted only once
//! every other check passed.

use super::*;

/// Route rules, workspace scope (SPEC §5, §5.1), quota, then the rate limit
/// (SPEC §6): a request counts only once every other check passed.
pub(super) fn authorize<'p>(
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    caller: Caller,
    body: Option<&[u8]>,
    env: &Env<'p>,
) -> Decision<'p> {
    let cfg = &env.policy.config;
    let identity = match check_route(facts, route, captures, &caller, body, env) {
        Ok(id) => id,
        Err(d) => return refusal(env, caller, d),
    };
    let limit = limit_for(&caller, cfg);
    env.note("rate limit", || match (&caller.org, limit) {
        (Some(org), Some((n, plan))) => {
            let s = env.limiter.peek(&org.id, n, env.now);
            let plan = match plan {
                PlanUse::Plan(p) => p,
                PlanUse::Unconfigured => "unconfigured",
            };
            format!(
                "plan `{plan}`: {} of {} left in this window (resets at {})",
                s.remaining, s.limit, s.reset
            )
        }
        _ => "not limited".to_string(),
    });
    let (rate, plan) = match (&caller.org, limit) {
        (Some(org), Some((n, plan))) => match env.limiter.admit(&org.id, n, env.now) {
            RateOutcome::Admitted(s) => (Some(s), Some(plan)),
            RateOutcome::Limited(s) => {
                return Decision::Refuse(Refusal {
                    denial: Denial::RateLimited {
                        retry_after: s.retry_after(env.now),
                        per_ip: false,
                    },
                    rate: Some(s),
                    caller: Some(caller),
                    plan: Some(plan),
                    route: None,
                })
            }
        },
        (Some(_), None) if caller.method != AuthMethod::ServiceKey => {
            (None, Some(PlanUse::Unconfigured))
        }
        _ => (None, None),
    };
    Decision::Forward(Grant {
        identity,
        rate,
        caller: Some(caller),
        plan,
        route: None,
    })
}

/// The `[plans.NAME]` table of an organization's plan, else
/// `[plans.default]`, with the name it is counted under.
pub(super) fn plan_of<'c>(org: &OrgRecord, cfg: &'c Config) -> Option<(&'c str, &'c Plan)> {
    cfg.plans
        .get_key_value(&*org.plan)
        .or_else(|| cfg.plans.get_key_value("default"))
        .map(|(name, plan)| (name.as_str(), plan))
}

/// The acting organization of a caller the limits apply to (service keys
/// only with `rate_limit.service_keys_limited`).
pub(super) fn limited_org<'c>(caller: &'c Caller, cfg: &Config) -> Option<&'c OrgRecord> {
    let org = caller.org.as_ref()?;
    if caller.method == AuthMethod::ServiceKey && !cfg.rate_limit.service_keys_limited {
        return None;
    }
    Some(org)
}

/// (limit, plan) for the acting organization; None: not limited.
pub(super) fn limit_for<'c>(caller: &Caller, cfg: &'c Config) -> Option<(u64, PlanUse<'c>)> {
    let org = limited_org(caller, cfg)?;
    let (plan_limit, label) = match plan_of(org, cfg) {
        Some((name, p)) => (Some(p.requests_per_window), name),
        None => (None, "unconfigured"),
    };
    match (org.rate_limit, plan_limit) {
        (Some(n), _) => Some((n, PlanUse::Plan(label))),
        (None, Some(n)) => Some((n, PlanUse::Plan(label))),
        (None, None) => None,
    }
}

/// `org_wide_only` and `quota` (SPEC §5): rules of the route and the
/// caller alone, checked before the body is read.
pub(super) fn check_flags(route: &Route, caller: &Caller, env: &Env<'_>) -> Result<(), Denial> {
    let scoped = caller.is_scoped();
    if route.org_wide_only {
        env.note("rule", || {
            let verdict = if scoped {
                "the key is workspace-scoped: refuse"
            } else {
                "pass"
            };
            format!("org_wide_only: {verdict}")
        });
        if scoped {
            return Err(Denial::Forbidden("org_wide_only"));
        }
    }
    if route.quota {
        let over = caller.org.as_ref().is_some_and(|o| o.quota_exceeded);
        env.note("rule", || {
            let verdict = if over {
                "the organization is over quota: refuse"
            } else {
                "pass"
            };
            format!("quota: {verdict}")
        });
        if over {
            return Err(Denial::QuotaExceeded);
        }
    }
    Ok(())
}

/// The identity the upstream receives, after the route's rules and the
/// caller's scope (SPEC §4, §5, §5.1).
pub(super) fn check_route(
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    caller: &Caller,
    body: Option<&[u8]>,
    env: &Env<'_>,
) -> Result<Identity, Denial> {
    let mut id = Identity {
        org_id: caller.org.as_ref().map(|o| o.id.clone()),
        auth_method: Some(caller.method),
        ..Identity::default()
    };
    match &caller.verdict.value {
        Verdict::ApiKey(k) => {
            id.api_key_id = Some(k.id.clone());
            if let Scope::Workspaces { header, .. } = &k.scope {
                id.allowed_workspaces = Some(header.clone());
            }
        }
        Verdict::Session(s) => id.user_id = Some(s.user_id.clone()),
        Verdict::Mcp(t) => {
            id.mcp_server_id = Some(t.server_id.clone());
            id.end_user_id = t.end_user_id.clone();
            id.workspace_id = t
                .server
                .as_ref()
                .map(|s| Arc::from(s.workspace_id.as_str()));
        }
        _ => {}
    }
    let scoped = caller.is_scoped();
    if matches!(
        caller.method,
        AuthMethod::ServiceKey | AuthMethod::McpBearer | AuthMethod::McpOAuth
    ) {
        // Service keys are admin level; MCP tokens act in their server's workspace.
        env.note("workspace", || {
            "workspace rules do not apply to this credential".to_string()
        });
        return Ok(id);
    }
    let found = scope::resolve(
        route,
        facts.path,
        captures,
        facts.query,
        facts.headers,
        body,
    )
    .map_err(|e| {
        env.note("workspace", || {
            format!("{}: {}", describe_source(route), e.reason())
        });
        Denial::BadRequest(e.reason())
    })?;
    env.note("workspace", || match &found {
        Some(v) => format!("{} found `{v}`", describe_source(route)),
        None => format!("{} found nothing", describe_source(route)),
    });
    let is_resource = matches!(
        route.workspace,
        Some(WorkspaceSource::ResourcePath(_) | WorkspaceSource::ResourceBody(_))
    );
    let dir = env.directory;
    let workspace: Option<Cow<'_, str>> = match found {
        None => None,
        Some(rid) if is_resource => match dir
            .resource_workspace(&rid)
            .map_err(|_| Denial::AuthUnavailable)?
        {
            Some(ws) => Some(Cow::Owned(ws.to_string())),
            None if scoped => return Err(Denial::ScopeDenied("unknown_resource")),
            None => return Ok(id),
        },
        Some(ws) => Some(ws),
    };
    if let (true, Some(ws)) = (is_resource, &workspace) {
        env.note("resource", || format!("belongs to workspace `{ws}`"));
    }
    let Some(ws) = workspace else {
        if scoped && !route.scoped_filter {
            return Err(Denial::ScopeDenied("no_workspace_resolved"));
        }
        return Ok(id);
    };
    let owner = dir
        .workspace_owner(&ws)
        .map_err(|_| Denial::AuthUnavailable)?;
    env.note("owner", || match &owner {
        Some(o) => format!("workspace `{ws}` belongs to `{o}`"),
        None => format!("workspace `{ws}` is not in the snapshot"),
    });
    owner_rule(
        owner.as_deref(),
        caller.org.as_ref().map(|o| &*o.id),
        env.policy.config.unknown_workspaces,
    )?;
    if let Some(scope) = caller.scope() {
        let allowed = scope.allows(&ws);
        env.note("scope", || {
            let verdict = if allowed { "is in" } else { "is outside" };
            format!("`{ws}` {verdict} the key's scope")
        });
        scope_rule(scope, &ws)?;
    }
    id.workspace_id = Some(Arc::from(&*ws));
    Ok(id)
}

/// SPEC §5, §5.1 for a resolved workspace whose owner the snapshot says is
/// `owner`: it belongs to the caller's organization `org` (an unknown one
/// per `scopes.unknown_workspaces`).
pub(super) fn owner_rule(
    owner: Option<&str>,
    org: Option<&str>,
    unknown: UnknownWorkspaces,
) -> Result<(), Denial> {
    match owner {
        Some(owner) if org != Some(owner) => {
            return Err(Denial::ScopeDenied("workspace_of_another_organization"));
        }
        Some(_) => {}
        // X-Workspace-ID always names a workspace keyward verified
        // (SPEC §5.1), unless the operator lets the upstream judge.
        None if unknown == UnknownWorkspaces::Deny => {
            return Err(Denial::ScopeDenied("unknown_workspace"));
        }
        None => {}
    }
    Ok(())
}

/// SPEC §5: a workspace-scoped key's list holds the resolved workspace.
pub(super) fn scope_rule(scope: &Scope, ws: &str) -> Result<(), Denial> {
    if !scope.allows(ws) {
        return Err(Denial::ScopeDenied("workspace_not_in_scope"));
    }
    Ok(())
}
