//! An in-memory [`Directory`]: snapshot rows held in maps, read into
//! verdicts by the same code as SQLite rows (`store::principals`), with no
//! cache in front. For the decision core's unit tests and reference model,
//! and wherever a decision must be made without a snapshot file.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::{Entry, TokenKey};
use crate::snapshot::schema::token_hash_hex;
use crate::snapshot::{
    ApiKeyRecord, McpAuthMode, McpServerRecord, McpTokenRecord, Org, OrgRecord, ServiceKeyRecord,
    SessionRecord, StoreError,
};
use crate::store::directory::{Directory, Held};
use crate::store::principals::{self, Rows};

/// Snapshot rows by token hash (hex) or id.
#[derive(Default)]
pub struct MemoryDirectory {
    pub unloaded: bool,
    orgs: HashMap<String, Org>,
    workspaces: HashMap<String, Arc<str>>,
    resources: HashMap<String, Arc<str>>,
    mcp_servers: HashMap<String, McpServerRecord>,
    api_keys: HashMap<String, ApiKeyRecord>,
    sessions: HashMap<String, SessionRecord>,
    service_keys: HashMap<String, ServiceKeyRecord>,
    mcp_tokens: HashMap<String, McpTokenRecord>,
    /// token verdicts read (what a store lookup costs; the throttle must
    /// spare it)
    pub token_loads: Cell<usize>,
}

impl MemoryDirectory {
    pub fn new() -> MemoryDirectory {
        MemoryDirectory::default()
    }

    pub fn org(&mut self, id: &str, plan: &str) -> &mut Self {
        self.org_record(OrgRecord {
            id: Arc::from(id),
            plan: Arc::from(plan),
            rate_limit: None,
            quota_exceeded: false,
            disabled: false,
        })
    }

    pub fn org_record(&mut self, org: OrgRecord) -> &mut Self {
        self.orgs.insert(org.id.to_string(), Arc::new(org));
        self
    }

    pub fn workspace(&mut self, id: &str, org: &str) -> &mut Self {
        self.workspaces.insert(id.into(), Arc::from(org));
        self
    }

    pub fn resource(&mut self, id: &str, workspace: &str) -> &mut Self {
        self.resources.insert(id.into(), Arc::from(workspace));
        self
    }

    pub fn server(&mut self, id: &str, org: &str, workspace: &str, mode: &str) -> &mut Self {
        self.mcp_servers.insert(
            id.into(),
            McpServerRecord {
                id: id.into(),
                organization_id: org.into(),
                workspace_id: workspace.into(),
                auth_mode: McpAuthMode::parse(mode),
            },
        );
        self
    }

    pub fn api_key(&mut self, token: &str, key: ApiKeyRecord) -> &mut Self {
        self.api_keys.insert(token_hash_hex(token.as_bytes()), key);
        self
    }

    pub fn session(&mut self, token: &str, session: SessionRecord) -> &mut Self {
        self.sessions
            .insert(token_hash_hex(token.as_bytes()), session);
        self
    }

    pub fn service_key(&mut self, token: &str, key: ServiceKeyRecord) -> &mut Self {
        self.service_keys
            .insert(token_hash_hex(token.as_bytes()), key);
        self
    }

    pub fn mcp_token(&mut self, token: &str, t: McpTokenRecord) -> &mut Self {
        self.mcp_tokens.insert(token_hash_hex(token.as_bytes()), t);
        self
    }
}

impl Rows for MemoryDirectory {
    fn api_key(&self, hash_hex: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.api_keys.get(hash_hex).cloned())
    }
    fn session(&self, hash_hex: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.sessions.get(hash_hex).cloned())
    }
    fn service_key(&self, hash_hex: &str) -> Result<Option<ServiceKeyRecord>, StoreError> {
        Ok(self.service_keys.get(hash_hex).cloned())
    }
    fn mcp_token(&self, hash_hex: &str) -> Result<Option<McpTokenRecord>, StoreError> {
        Ok(self.mcp_tokens.get(hash_hex).cloned())
    }
    fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError> {
        Ok(self.mcp_servers.get(id).cloned())
    }
    fn organization(&self, id: &str) -> Result<Option<Org>, StoreError> {
        Ok(self.orgs.get(id).cloned())
    }
}

impl Directory for MemoryDirectory {
    fn loaded(&self) -> bool {
        !self.unloaded
    }

    fn cached_token(&self, _key: &TokenKey) -> Option<Held> {
        None
    }

    fn load_token(&self, key: TokenKey, _workspace: Option<&str>) -> Result<Held, StoreError> {
        if self.unloaded {
            return Err(StoreError::NotLoaded);
        }
        self.token_loads.set(self.token_loads.get() + 1);
        let verdict = principals::load(self, key.0, &hex::encode(key.1))?;
        Ok(Entry::detached(verdict))
    }

    fn organization(&self, id: &str) -> Result<Option<Org>, StoreError> {
        Ok(self.orgs.get(id).cloned())
    }

    fn workspace_owner(&self, id: &str) -> Result<Option<Arc<str>>, StoreError> {
        Ok(self.workspaces.get(id).cloned())
    }

    fn resource_workspace(&self, id: &str) -> Result<Option<Arc<str>>, StoreError> {
        Ok(self.resources.get(id).cloned())
    }

    fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError> {
        Ok(self.mcp_servers.get(id).cloned())
    }
}
