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
        Err(d) => return refusal(env, route, caller, d),
    };
    let (windows, plan) = windows_of(&caller, Some(route), cfg);
    env.note("rate limit", || {
        describe_windows(&windows, plan, route, env)
    });
    let mut states = [RateState::default(); MAX_WINDOWS];
    let n = windows.len();
    let refused = match n {
        0 => None,
        _ => env
            .limiter
            .charge(&windows.list()[..n], route.cost, env.now, &mut states),
    };
    let which = refused.map(|i| windows.which(i));
    drop(windows);
    let rate = match refused {
        Some(i) => Some(states[i]),
        None => tighter(&states[..n]),
    };
    let mode = route.limit_mode.unwrap_or(cfg.rate_limit.mode);
    if let (Some(limit), Some(s)) = (which, rate) {
        if mode == LimitMode::Enforce {
            return Decision::Refuse(Refusal {
                denial: Denial::RateLimited {
                    retry_after: s.retry_after(env.now),
                    per_ip: false,
                    limit: Some(limit),
                },
                rate,
                caller: Some(caller),
                plan,
                route: None,
            });
        }
        env.note("rate limit", || {
            format!("shadow mode: over the {limit} limit, forwarded (would_deny = \"rate_limit\")")
        });
    }
    Decision::Forward(Grant {
        identity,
        rate,
        would_deny: which.map(|_| "rate_limit"),
        caller: Some(caller),
        plan,
        route: None,
    })
}

/// The windows one request counts in (SPEC §6, §6.1): its credential's own
/// (`rate_limit` column) first, then its organization's main window or the
/// route's limit group — the order every limiter admits exactly in.
pub(super) struct Windows<'c> {
    own: Option<&'c OwnLimit>,
    /// (limiter key, limit, group name)
    org: Option<(Cow<'c, str>, u64, Option<&'c str>)>,
}

impl Windows<'_> {
    pub(super) fn len(&self) -> usize {
        usize::from(self.own.is_some()) + usize::from(self.org.is_some())
    }

    pub(super) fn list(&self) -> [Window<'_>; MAX_WINDOWS] {
        let mut out = [Window { key: "", limit: 0 }; MAX_WINDOWS];
        let mut i = 0;
        if let Some(own) = self.own {
            out[i] = Window {
                key: &own.key,
                limit: own.limit,
            };
            i += 1;
        }
        if let Some((key, limit, _)) = &self.org {
            out[i] = Window { key, limit: *limit };
        }
        out
    }

    /// `details.limit` of window `i`.
    pub(super) fn which(&self, i: usize) -> &'static str {
        if i == 0 && self.own.is_some() {
            "key"
        } else {
            "organization"
        }
    }
}

/// The window with the fewer remaining requests (the organization's on a
/// tie): what `X-RateLimit-*` describe (SPEC §6.1).
pub(super) fn tighter(states: &[RateState]) -> Option<RateState> {
    states.iter().rev().min_by_key(|s| s.remaining).copied()
}

/// The windows, and the plan counted (for `rate_limit_decisions_total{plan}`).
pub(super) fn windows_of<'c, 'p: 'c>(
    caller: &'c Caller,
    route: Option<&'c Route>,
    cfg: &'p Config,
) -> (Windows<'c>, Option<PlanUse<'p>>) {
    let own = match &caller.verdict.value {
        Verdict::ApiKey(k) => k.own_limit.as_ref(),
        Verdict::Mcp(t) => t.own_limit.as_ref(),
        _ => None,
    };
    let mut plan = None;
    let org = match (limited_org(caller, cfg), limit_for(caller, cfg)) {
        (Some(org), Some((n, p))) => {
            plan = Some(p);
            let group = route.and_then(|r| r.limit_group.as_deref()).and_then(|g| {
                plan_of(org, cfg)
                    .and_then(|(_, p)| p.limits.get_key_value(g))
                    .map(|(name, m)| (name.as_str(), *m))
            });
            Some(match group {
                Some((g, m)) => (Cow::Owned(group_key(&org.id, g)), m, Some(g)),
                None => (Cow::Borrowed(&*org.id), n, None),
            })
        }
        (Some(_), None) if caller.method != AuthMethod::ServiceKey => {
            plan = Some(PlanUse::Unconfigured);
            None
        }
        _ => None,
    };
    (Windows { own, org }, plan)
}

/// The state of the windows a caller's request would count in, without
/// counting (for a refused request's headers).
pub(super) fn peek_windows(
    caller: &Caller,
    route: Option<&Route>,
    env: &Env<'_>,
) -> Option<RateState> {
    let (windows, _) = windows_of(caller, route, &env.policy.config);
    let n = windows.len();
    let list = windows.list();
    let mut states = [RateState::default(); MAX_WINDOWS];
    for (i, w) in list[..n].iter().enumerate() {
        states[i] = env.limiter.peek(w.key, w.limit, env.now);
    }
    tighter(&states[..n])
}

fn describe_windows(
    windows: &Windows<'_>,
    plan: Option<PlanUse<'_>>,
    route: &Route,
    env: &Env<'_>,
) -> String {
    let mut parts = Vec::new();
    if let Some(own) = windows.own {
        let s = env.limiter.peek(&own.key, own.limit, env.now);
        parts.push(format!(
            "key window: {} of {} left (resets at {})",
            s.remaining, s.limit, s.reset
        ));
    }
    if let Some((key, limit, group)) = &windows.org {
        let s = env.limiter.peek(key, *limit, env.now);
        let plan = match plan {
            Some(PlanUse::Plan(p)) => p,
            _ => "unconfigured",
        };
        let which = match group {
            Some(g) => format!("plan `{plan}` group `{g}`"),
            None => format!("plan `{plan}`"),
        };
        parts.push(format!(
            "{which}: {} of {} left in this window (resets at {})",
            s.remaining, s.limit, s.reset
        ));
    }
    if parts.is_empty() {
        return "not limited".to_string();
    }
    if route.cost > 1 {
        parts.push(format!("this route costs {}", route.cost));
    }
    let mode = route
        .limit_mode
        .unwrap_or(env.policy.config.rate_limit.mode);
    if mode == LimitMode::Shadow {
        parts.push("shadow mode: a request over a limit is forwarded".to_string());
    }
    parts.join("; ")
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

/// A key's `allowed_ips` (SPEC §6.1) for the client IP as §4.1 resolves
/// it. A client a trusted proxy did not name (no hop, or one that does not
/// parse) is unknown: refused by any list rather than judged by the proxy's
/// address.
fn allowed_ip(list: &AllowedIps, client: &Client, env: &Env<'_>) -> Result<(), Denial> {
    let ip = client.ip;
    match list {
        AllowedIps::Any => Ok(()),
        AllowedIps::Malformed => {
            env.note("allowed_ips", || {
                "the key's allowed_ips is not a JSON array of CIDRs: refuse".to_string()
            });
            Err(Denial::Forbidden("malformed_allowed_ips"))
        }
        list => {
            let allowed = client.ip_known && list.allows(ip);
            env.note("allowed_ips", || match (client.ip_known, allowed) {
                (false, _) => format!(
                    "the client is unknown (the trusted proxy {ip} named no parsable client address): refuse"
                ),
                (true, true) => format!("client {ip} is in the key's allowed_ips"),
                (true, false) => format!("client {ip} is outside the key's allowed_ips"),
            });
            if allowed {
                Ok(())
            } else {
                Err(Denial::Forbidden("ip_not_allowed"))
            }
        }
    }
}

/// `allowed_ips`, `permissions.readOnly` (SPEC §6.1), `org_wide_only` and `quota` (SPEC
/// §5): rules of the route and the caller alone, checked before the body is
/// read.
pub(super) fn check_flags(
    facts: &RequestFacts<'_>,
    route: &Route,
    caller: &Caller,
    env: &Env<'_>,
) -> Result<(), Denial> {
    let (method, headers, client) = (facts.method, facts.headers, &facts.client);
    if let Verdict::ApiKey(k) = &caller.verdict.value {
        allowed_ip(&k.allowed_ips, client, env)?;
        if k.read_only {
            // a WebSocket (or any protocol upgrade) is a GET that carries
            // writes: refused too
            let upgrade = headers.contains_key(http::header::UPGRADE);
            let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && !upgrade;
            env.note("rule", || {
                let verdict = if reads { "pass" } else { "refuse" };
                let what = if upgrade { " with Upgrade" } else { "" };
                format!("readOnly key, {method}{what}: {verdict}")
            });
            if !reads {
                return Err(Denial::ScopeDenied("read_only"));
            }
        }
    }
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
