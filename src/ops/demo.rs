//! `keyward demo`: a seeded temporary snapshot, the built-in echo upstream on
//! loopback and the proxy with the shipped route table; prints a working key
//! and curl lines. Needs no files at all.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use crate::config::Config;

/// The shipped configuration, embedded so the demo runs anywhere.
pub const SHIPPED_CONFIG: &str = include_str!("../../config/keyward.toml");

fn free_or(preferred: &str) -> SocketAddr {
    match TcpListener::bind(preferred) {
        Ok(l) => l.local_addr().unwrap(),
        Err(_) => TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
    }
}

pub fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("keyward-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let snapshot = dir.join("snapshot.db");
    let conn = crate::snapshot::schema::init(&snapshot)?;
    conn.execute_batch(
        "INSERT OR IGNORE INTO organizations (id, plan) VALUES ('org_demo', 'free');
         INSERT OR IGNORE INTO workspaces (id, organization_id) VALUES ('ws_demo', 'org_demo'), ('ws_other', 'org_demo');",
    )?;
    let key = crate::snapshot::schema::create_api_key(&conn, "org_demo", &[])
        .map_err(anyhow::Error::msg)?;
    let scoped =
        crate::snapshot::schema::create_api_key(&conn, "org_demo", &["ws_demo".to_string()])
            .map_err(anyhow::Error::msg)?;
    drop(conn);

    let upstream = crate::echo::spawn("127.0.0.1:0".parse()?)?;
    let mut config = Config::from_toml_str(SHIPPED_CONFIG, Path::new(&dir))?;
    config.server.listen = free_or("127.0.0.1:8080");
    config.server.admin_listen = free_or("127.0.0.1:9090");
    config.server.threads = 1;
    config.upstream.address = upstream;
    config.snapshot.path = snapshot.clone();
    let p = config.server.listen;
    let a = config.server.admin_listen;
    println!("keyward demo: proxy http://{p}  admin http://{a}  echo upstream http://{upstream}");
    println!("snapshot: {}", snapshot.display());
    println!();
    println!("org-wide API key:      {key}");
    println!("key scoped to ws_demo: {scoped}");
    println!();
    println!("# forwarded, with X-Org-ID injected (the echo shows what the upstream got):");
    println!(
        "curl -s http://{p}/api/v1/workspaces/ws_demo/connections -H 'Authorization: Bearer {key}'"
    );
    println!("# 401 UNAUTHENTICATED:");
    println!("curl -si http://{p}/api/v1/workspaces/ws_demo/connections");
    println!("# 403 SCOPE_DENIED (scoped key, other workspace):");
    println!("curl -si http://{p}/api/v1/workspaces/ws_other/connections -H 'Authorization: Bearer {scoped}'");
    println!("# metrics and readiness:");
    println!("curl -s http://{a}/metrics | grep keyward_requests_total; curl -s http://{a}/readyz");
    println!();
    println!("Ctrl-C to stop.");
    let served = crate::server::run(config, false);
    // the seeded snapshot is the demo's own: nothing of it outlives the run
    let _ = std::fs::remove_dir_all(&dir);
    served
}
