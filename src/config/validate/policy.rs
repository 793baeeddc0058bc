//! `[usage]`, `[plans.*]` with their limit groups, and the routes' limit
//! groups (SPEC §6, §6.1, §8.4).

use super::*;

/// The host's name (usage pushes' `replica` when `server.replica_id` is
/// not set); "keyward" when it cannot be read.
pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keyward".to_string())
}

/// `[usage]` (SPEC §8.4).
pub(in crate::config) fn usage(
    raw: RawUsage,
    env: impl Fn(&str) -> Option<String>,
) -> Result<UsageConfig, ConfigError> {
    let RawUsage {
        push_url,
        push_interval_ms,
        push_token_env,
        max_keys,
    } = raw;
    let push_url = if push_url.is_empty() {
        None
    } else {
        let url = url::Url::parse(&push_url)
            .map_err(|e| invalid("usage.push_url", format!("`{push_url}`: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                "usage.push_url",
                format!("`{push_url}`: expected http://host… or https://host…"),
            ));
        }
        Some(url)
    };
    if push_interval_ms == 0 {
        return Err(invalid("usage.push_interval_ms", "must be positive"));
    }
    if max_keys == 0 {
        return Err(invalid("usage.max_keys", "must be at least 1"));
    }
    let push_token = if push_token_env.is_empty() {
        None
    } else {
        match env(&push_token_env).filter(|v| !v.is_empty()) {
            Some(v) => Some(Secret::new(v.into_bytes())),
            None => {
                return Err(invalid(
                    "usage.push_token_env",
                    format!("`{push_token_env}` is not set in the environment"),
                ))
            }
        }
    };
    Ok(UsageConfig {
        push_url,
        push_interval: Duration::from_millis(push_interval_ms),
        push_token,
        max_keys,
    })
}

/// plan name → its limits.
pub(in crate::config) fn plans(
    raw: HashMap<String, RawPlan>,
) -> Result<HashMap<String, Plan>, ConfigError> {
    raw.into_iter()
        .map(
            |(
                name,
                RawPlan {
                    requests_per_window,
                    max_streams,
                    limits,
                },
            )| {
                let mut groups = HashMap::with_capacity(limits.len());
                for (group, g) in limits {
                    if !crate::config::routes::valid_group(&group) {
                        return Err(invalid(
                            format!("plans.{name}.limits.{group}"),
                            "a group name is 1-64 of A-Z a-z 0-9 _ -",
                        ));
                    }
                    groups.insert(group, g.requests_per_window);
                }
                let plan = Plan {
                    requests_per_window,
                    max_streams,
                    limits: groups,
                };
                Ok((name, plan))
            },
        )
        .collect()
}

/// A route's `limit` group must be defined by some plan: a typo would
/// otherwise count silently in the main window.
pub(in crate::config) fn route_groups(
    routes: &RouteTable,
    plans: &HashMap<String, Plan>,
) -> Result<(), ConfigError> {
    for r in routes.routes() {
        let Some(g) = &r.limit_group else { continue };
        if !plans.values().any(|p| p.limits.contains_key(&**g)) {
            return Err(invalid(
                format!("route[{}] ({})", r.index, r.path),
                format!("limit `{g}`: no plan has a [plans.NAME.limits.{g}] table"),
            ));
        }
    }
    Ok(())
}
