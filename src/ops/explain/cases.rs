//! `keyward test` (SPEC §8.2): a case file's fixtures seeded into an
//! in-memory directory, each case explained and compared with its
//! expectation.

use super::*;

/// A `CASES.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub fixtures: Fixtures,
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

/// The snapshot the cases run against, by id.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fixtures {
    pub orgs: Vec<FixtureOrg>,
    pub workspaces: Vec<FixtureWorkspace>,
    pub resources: Vec<FixtureResource>,
    pub api_keys: Vec<FixtureKey>,
    pub sessions: Vec<FixtureSession>,
    pub service_keys: Vec<FixtureServiceKey>,
    pub mcp_servers: Vec<FixtureServer>,
    pub mcp_tokens: Vec<FixtureToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureOrg {
    pub id: String,
    #[serde(default = "free")]
    pub plan: String,
    #[serde(default)]
    pub rate_limit: Option<u64>,
    #[serde(default)]
    pub quota_exceeded: bool,
    #[serde(default)]
    pub disabled: bool,
}

pub(super) fn free() -> String {
    "free".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureWorkspace {
    pub id: String,
    pub org: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureResource {
    pub id: String,
    pub workspace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureKey {
    pub id: String,
    pub org: String,
    /// workspace-scoped to these; absent: org-wide
    #[serde(default)]
    pub workspaces: Option<Vec<String>>,
    /// raw `permissions` JSON instead of `workspaces`
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub expired: bool,
    #[serde(default)]
    pub revoked: bool,
    /// SPEC §6.1 `api_keys.rate_limit`
    #[serde(default)]
    pub rate_limit: Option<i64>,
    /// SPEC §6.1 `api_keys.allowed_ips`, as the JSON text the column holds
    #[serde(default)]
    pub allowed_ips: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureSession {
    pub id: String,
    pub user: String,
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub expired: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureServiceKey {
    pub id: String,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureServer {
    pub id: String,
    pub org: String,
    pub workspace: String,
    pub auth_mode: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureToken {
    pub id: String,
    pub server: String,
    /// static, end_user or oauth
    pub kind: String,
    #[serde(default)]
    pub end_user: Option<String>,
    #[serde(default)]
    pub revoked: bool,
    /// SPEC §6.1 `mcp_tokens.rate_limit`
    #[serde(default)]
    pub rate_limit: Option<i64>,
}

/// One `[[case]]`: a request and what must happen.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default = "get")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    /// credential by fixture id (one of these)
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub service_key: Option<String>,
    #[serde(default)]
    pub mcp_token: Option<String>,
    /// the socket peer the request comes from (default 127.0.0.1)
    #[serde(default)]
    pub peer: Option<IpAddr>,
    pub expect: Expect,
}

pub(super) fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: u16,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// headers the upstream must receive with these values
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// headers the upstream must not receive
    #[serde(default)]
    pub absent: Vec<String>,
}

/// The made-up token of a fixture credential (never a real secret).
pub(super) fn fixture_token(kind: &str, id: &str) -> String {
    format!("{kind}fixture_{id}")
}

/// The secret fixture session cookies are signed with when the config has none.
pub(super) const FIXTURE_SECRET: &str = "keyward-test-fixture-secret";

impl Fixtures {
    pub fn directory(&self, now: i64) -> crate::store::memory::MemoryDirectory {
        use crate::snapshot::{
            ApiKeyRecord, McpTokenRecord, OrgRecord, ServiceKeyRecord, SessionRecord,
        };
        let mut d = crate::store::memory::MemoryDirectory::new();
        for o in &self.orgs {
            d.org_record(OrgRecord {
                id: Arc::from(o.id.as_str()),
                plan: Arc::from(o.plan.as_str()),
                rate_limit: o.rate_limit,
                quota_exceeded: o.quota_exceeded,
                disabled: o.disabled,
            });
        }
        for w in &self.workspaces {
            d.workspace(&w.id, &w.org);
        }
        for r in &self.resources {
            d.resource(&r.id, &r.workspace);
        }
        for k in &self.api_keys {
            let permissions = k.permissions.clone().or_else(|| {
                k.workspaces.as_ref().map(|ws| {
                    serde_json::json!({"scope": "workspace", "workspaceIds": ws}).to_string()
                })
            });
            d.api_key(
                &fixture_token("wvz_", &k.id),
                ApiKeyRecord {
                    id: k.id.clone(),
                    organization_id: k.org.clone(),
                    key_prefix: Some("wvz_fixt".into()),
                    permissions,
                    expires_at: k.expired.then_some(now - 1),
                    revoked_at: k.revoked.then_some(now - 1),
                    rate_limit: k.rate_limit,
                    allowed_ips: k.allowed_ips.clone(),
                },
            );
        }
        for s in &self.sessions {
            d.session(
                &fixture_token("sess_", &s.id),
                SessionRecord {
                    id: s.id.clone(),
                    user_id: s.user.clone(),
                    active_organization_id: s.org.clone(),
                    expires_at: if s.expired { now - 1 } else { now + 3600 },
                },
            );
        }
        for k in &self.service_keys {
            d.service_key(
                &fixture_token("svc_", &k.id),
                ServiceKeyRecord {
                    id: k.id.clone(),
                    revoked_at: k.revoked.then_some(now - 1),
                },
            );
        }
        for s in &self.mcp_servers {
            d.server(&s.id, &s.org, &s.workspace, &s.auth_mode);
        }
        for t in &self.mcp_tokens {
            let prefix = if t.kind == "oauth" { "mcpo_" } else { "mcp_" };
            d.mcp_token(
                &fixture_token(prefix, &t.id),
                McpTokenRecord {
                    id: t.id.clone(),
                    kind: t.kind.clone(),
                    mcp_server_id: t.server.clone(),
                    end_user_id: t.end_user.clone(),
                    expires_at: None,
                    revoked_at: t.revoked.then_some(now - 1),
                    rate_limit: t.rate_limit,
                },
            );
        }
        d
    }

    /// The header that carries a case's credential.
    pub(super) fn credential(
        &self,
        case: &Case,
        secret: &Secret,
    ) -> Result<Option<(String, String)>, String> {
        if let Some(id) = &case.api_key {
            return Ok(Some((
                "authorization".into(),
                format!("Bearer {}", fixture_token("wvz_", id)),
            )));
        }
        if let Some(id) = &case.service_key {
            return Ok(Some(("x-service-key".into(), fixture_token("svc_", id))));
        }
        if let Some(id) = &case.mcp_token {
            let kind = self
                .mcp_tokens
                .iter()
                .find(|t| &t.id == id)
                .map(|t| t.kind.as_str())
                .ok_or_else(|| format!("no mcp_tokens fixture `{id}`"))?;
            let prefix = if kind == "oauth" { "mcpo_" } else { "mcp_" };
            return Ok(Some((
                "authorization".into(),
                format!("Bearer {}", fixture_token(prefix, id)),
            )));
        }
        if let Some(id) = &case.session {
            let value =
                crate::credentials::signed_cookie_value(&fixture_token("sess_", id), secret);
            return Ok(Some((
                "cookie".into(),
                format!("better-auth.session_token={value}"),
            )));
        }
        Ok(None)
    }
}

impl Fixtures {
    /// The request a case sends: its headers, its credential's header, and
    /// `Content-Type: application/json` for a body that names no type.
    pub(super) fn request(&self, case: &Case, secret: &Secret) -> Result<Request, String> {
        let mut headers: Vec<(String, String)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.extend(self.credential(case, secret)?);
        if case.body.is_some()
            && !case
                .headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("content-type".into(), "application/json".into()));
        }
        Ok(Request {
            method: case.method.clone(),
            target: case.path.clone(),
            headers,
            body: case.body.clone().map(String::into_bytes),
            peer: case.peer.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        })
    }
}

/// Run every case; the report lists each mismatch like a diff. Returns
/// (report, failures).
pub fn run_cases(mut config: Config, file: &CaseFile, now: i64) -> (String, usize) {
    let secret = match &config.session.secret {
        Some(s) => s.clone(),
        None => {
            let s = Secret::new(FIXTURE_SECRET);
            config.session.secret = Some(s.clone());
            s
        }
    };
    let policy = Policy { config };
    let directory = file.fixtures.directory(now);
    let mut report = String::new();
    let mut failures = 0;
    for case in &file.cases {
        let req = match file.fixtures.request(case, &secret) {
            Ok(req) => req,
            Err(e) => {
                failures += 1;
                report.push_str(&format!("FAIL {}: {e}\n", case.name));
                continue;
            }
        };
        let got = explain(&policy, &directory, &req, now);
        let diffs = compare(&case.expect, &got.answer);
        if diffs.is_empty() {
            report.push_str(&format!("ok   {}\n", case.name));
        } else {
            failures += 1;
            report.push_str(&format!(
                "FAIL {} ({} {})\n",
                case.name, case.method, case.path
            ));
            for d in diffs {
                report.push_str(&format!("     {d}\n"));
            }
            for s in &got.steps {
                report.push_str(&format!("       {:<11} {}\n", s.step, s.detail));
            }
        }
    }
    report.push_str(&format!(
        "{} cases, {} passed, {failures} failed\n",
        file.cases.len(),
        file.cases.len() - failures
    ));
    (report, failures)
}

pub(super) fn compare(want: &Expect, got: &Answer) -> Vec<String> {
    let mut d = Vec::new();
    let (status, code, reason) = match got {
        Answer::Forward { .. } => (200, None, None),
        Answer::Refuse {
            status,
            code,
            reason,
        } => (*status, Some(*code), *reason),
    };
    if want.status != status {
        d.push(format!("- status {}\n     + status {status}", want.status));
    }
    if let Some(c) = &want.code {
        if Some(c.as_str()) != code {
            d.push(format!(
                "- code {c}\n     + code {}",
                code.unwrap_or("(none)")
            ));
        }
    }
    if let Some(r) = &want.reason {
        if Some(r.as_str()) != reason {
            d.push(format!(
                "- reason {r}\n     + reason {}",
                reason.unwrap_or("(none)")
            ));
        }
    }
    let empty = BTreeMap::new();
    let headers = match got {
        Answer::Forward { headers } => headers,
        Answer::Refuse { .. } => &empty,
    };
    for (k, v) in &want.headers {
        match headers.get(&k.to_ascii_lowercase()) {
            Some(g) if g == v => {}
            Some(g) => d.push(format!("- {k}: {v}\n     + {k}: {g}")),
            None => d.push(format!("- {k}: {v}\n     + (no {k})")),
        }
    }
    for k in &want.absent {
        if let Some(g) = headers.get(&k.to_ascii_lowercase()) {
            d.push(format!("- (no {k})\n     + {k}: {g}"));
        }
    }
    d
}

/// `keyward test --config PATH CASES.toml`.
pub fn test_command(config: &Path, cases: &Path) -> Result<usize, String> {
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(cases)
        .map_err(|e| format!("cannot read {}: {e}", cases.display()))?;
    let file: CaseFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", cases.display()))?;
    let (report, failures) = run_cases(cfg, &file, crate::clock::now_unix());
    print!("{report}");
    Ok(failures)
}
