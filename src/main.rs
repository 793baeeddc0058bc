//! The `keyward` command line (SPEC §8.2).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "Authentication sidecar for the Weavz API model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: proxy listener plus admin listener
    Run {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text", env = "KEYWARD_LOG_FORMAT")]
        log_format: LogFormat,
        /// Take the listening sockets (proxy and admin) of the keyward running
        /// with the same `server.upgrade_sock` when it gets SIGQUIT
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate config, snapshot and route table; print what was found
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Seeded temporary snapshot, echo upstream and proxy, with curl lines
    Demo,
    /// Snapshot files
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// API keys
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Why would keyward forward or refuse this request? Runs the decision
    /// core step by step, without forwarding or counting against any limit.
    /// Exit 0: forwarded, 1: refused, 2: usage or config error.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// snapshot file (default: the config's snapshot.path)
        #[arg(long)]
        snapshot: Option<PathBuf>,
        #[arg(short = 'X', long = "request", default_value = "GET")]
        method: String,
        /// path and query, e.g. /api/v1/workspaces/ws_1/connections
        path: String,
        /// a request header, `Name: value` (repeatable)
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// the request body, or @FILE
        #[arg(long)]
        data: Option<String>,
        /// the client's address (default 127.0.0.1)
        #[arg(long, default_value = "127.0.0.1")]
        peer: std::net::IpAddr,
        /// machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Run route-table cases (CASES.toml) against the decision core; exit
    /// non-zero with a diff on any mismatch
    Test {
        #[arg(long)]
        config: PathBuf,
        cases: PathBuf,
    },
    /// Build and follow the snapshot from the application's Postgres
    /// (SPEC §9); `sync install` creates the outbox and its triggers
    #[command(args_conflicts_with_subcommands = true)]
    Sync {
        #[command(subcommand)]
        command: Option<SyncCommand>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// one full build, then exit (non-zero when it failed)
        #[arg(long)]
        once: bool,
        #[arg(long, value_enum, default_value = "text", env = "KEYWARD_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Exit 0 when the admin /healthz answers 200
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
}

#[derive(Subcommand)]
enum SyncCommand {
    /// Create the outbox table and triggers on the mapped source tables
    Install {
        #[arg(long)]
        config: PathBuf,
        /// print the SQL instead of running it
        #[arg(long)]
        print: bool,
        /// schema of the source tables (default public)
        #[arg(long, default_value = "public")]
        schema: String,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Create an empty snapshot with the contract schema
    Init { path: PathBuf },
    /// Sign a snapshot for `snapshot.verify_key`: writes PATH.sig (base64 of
    /// the Ed25519 signature over the file's bytes) and prints the public
    /// key (base64) to put in `verify_key`
    Sign {
        /// Ed25519 private key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519`)
        #[arg(long)]
        key: PathBuf,
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Mint a wvz_ key and print it alone on stdout
    Create {
        #[arg(long)]
        snapshot: PathBuf,
        #[arg(long)]
        org: String,
        #[arg(long = "workspace")]
        workspaces: Vec<String>,
    },
    /// One line per key: id, org, prefix, scope, expiry, revocation (never a hash)
    List {
        #[arg(long)]
        snapshot: PathBuf,
        /// Only the keys of this organization
        #[arg(long)]
        org: Option<String>,
        /// A JSON array instead of columns
        #[arg(long)]
        json: bool,
    },
    /// Set the key's revoked_at to now (an already revoked key is an error)
    Revoke {
        #[arg(long)]
        snapshot: PathBuf,
        key_id: String,
    },
    /// Mint a key with the same org and scope, print it alone on stdout, and
    /// let the old one expire after the grace period
    Rotate {
        #[arg(long)]
        snapshot: PathBuf,
        key_id: String,
        /// How long the old key stays valid: Ns, Nm, Nh or Nd
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "24h",
            value_parser = keyward::snapshot::schema::keys::parse_duration
        )]
        grace: u64,
    },
}

/// stdout as a plain file behind a 64 KiB buffer: the log worker flushes
/// after each batch it drains, so under load many lines share one write()
/// instead of `Stdout`'s one write per line.
fn stdout_buffered() -> Box<dyn std::io::Write + Send> {
    use std::os::fd::AsFd;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::fs::File::from(fd),
        )),
        Err(_) => Box::new(std::io::stdout()),
    }
}

fn init_logs(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(64 * 1024)
        .finish(stdout_buffered());
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    keyward::access_log::install(
        writer.clone(),
        match format {
            LogFormat::Text => keyward::access_log::Format::Text,
            LogFormat::Json => keyward::access_log::Format::Json,
        },
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    guard
}

fn sync(
    command: Option<SyncCommand>,
    config: Option<PathBuf>,
    once: bool,
    log_format: LogFormat,
) -> Result<(), String> {
    use keyward::sync::SyncConfig;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command {
        Some(SyncCommand::Install {
            config,
            print,
            schema,
        }) => {
            let cfg = SyncConfig::load(&config).map_err(|e| e.to_string())?;
            runtime.block_on(keyward::sync::install(&cfg, print, &schema))
        }
        None => {
            let config = config.ok_or("sync: --config SYNC.toml is required")?;
            let cfg = SyncConfig::load(&config).map_err(|e| e.to_string())?;
            let _guard = init_logs(log_format);
            runtime.block_on(keyward::sync::run(cfg, once))
        }
    }
}

fn check(config: &std::path::Path) -> Result<(), String> {
    let cfg = keyward::config::Config::load(config).map_err(|e| e.to_string())?;
    let store = keyward::snapshot::SnapshotStore::new(cfg.snapshot.path.clone());
    let gen = store
        .reload()
        .map_err(|e| format!("snapshot {}: {e}", cfg.snapshot.path.display()))?;
    let c = &gen.counts;
    println!("config: {} ok", config.display());
    let mcp_routes = cfg
        .routes
        .routes()
        .iter()
        .any(|r| r.auth == keyward::routes::AuthMode::Mcp);
    if mcp_routes && cfg.server.public_url.is_empty() {
        println!(
            "warning: server.public_url is empty: MCP resource_metadata URLs are built from the request's Host (or a trusted proxy's X-Forwarded-Host); set it to the external base URL"
        );
    }
    println!("routes: {}", cfg.routes.len());
    println!("plans: {}", cfg.plans.len());
    println!("snapshot: {} ok", cfg.snapshot.path.display());
    println!(
        "organizations: {}\nworkspaces: {}\napi_keys: {}\nsessions: {}\nservice_keys: {}\nmcp_servers: {}\nmcp_tokens: {}\nresources: {}",
        c.organizations, c.workspaces, c.api_keys, c.sessions, c.service_keys, c.mcp_servers, c.mcp_tokens, c.resources
    );
    Ok(())
}

/// `keyward keys …`: each change is one short transaction on the snapshot,
/// which a running keyward picks up through its watcher.
fn keys(command: KeysCommand) -> Result<(), String> {
    use keyward::snapshot::schema::keys;
    let now = keyward::clock::now_unix;
    match command {
        KeysCommand::Create {
            snapshot,
            org,
            workspaces,
        } => {
            if !snapshot.exists() {
                Err(format!(
                    "{}: no such snapshot (create it with `keyward snapshot init`)",
                    snapshot.display()
                ))
            } else {
                keyward::snapshot::schema::init(&snapshot)
                    .map_err(|e| e.to_string())
                    .and_then(|conn| {
                        keyward::snapshot::schema::create_api_key(&conn, &org, &workspaces)
                    })
                    .map(|key| println!("{key}"))
            }
        }
        KeysCommand::List {
            snapshot,
            org,
            json,
        } => {
            let conn = keys::open(&snapshot, false).map_err(|e| e.to_string())?;
            let found = keys::list(&conn, org.as_deref()).map_err(|e| e.to_string())?;
            if json {
                println!("{}", keys::json(&found));
            } else {
                print!("{}", keys::table(&found));
            }
            Ok(())
        }
        KeysCommand::Revoke { snapshot, key_id } => {
            let mut conn = keys::open(&snapshot, true).map_err(|e| e.to_string())?;
            let k = keys::revoke(&mut conn, &key_id, now()).map_err(|e| e.to_string())?;
            println!(
                "revoked {} ({}, org {})",
                k.id,
                k.key_prefix.as_deref().unwrap_or("-"),
                k.organization_id
            );
            Ok(())
        }
        KeysCommand::Rotate {
            snapshot,
            key_id,
            grace,
        } => {
            let mut conn = keys::open(&snapshot, true).map_err(|e| e.to_string())?;
            let r = keys::rotate(&mut conn, &key_id, grace, now()).map_err(|e| e.to_string())?;
            println!("{}", r.key);
            // stdout holds the key alone; what happened goes to stderr
            eprintln!(
                "new key {} (org {}, scope {}); {} now expires at {}",
                r.new.id,
                r.new.organization_id,
                r.new.scope_text(),
                r.old.id,
                r.old.expires_at.map_or_else(|| "-".into(), keys::rfc3339)
            );
            Ok(())
        }
    }
}

/// `keyward explain`: 0 forwarded, 1 refused, 2 usage or config error.
#[allow(clippy::too_many_arguments)]
fn explain(
    config: &std::path::Path,
    snapshot: Option<PathBuf>,
    method: String,
    path: String,
    headers: Vec<String>,
    data: Option<String>,
    peer: std::net::IpAddr,
    json: bool,
) -> Result<bool, String> {
    use keyward::ops::explain::{self, Answer, Request};
    let cfg = keyward::config::Config::load(config).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(config).ok();
    let snapshot = snapshot.unwrap_or_else(|| cfg.snapshot.path.clone());
    let store = keyward::snapshot::SnapshotStore::new(snapshot.clone());
    store
        .reload()
        .map_err(|e| format!("snapshot {}: {e}", snapshot.display()))?;
    let headers = headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("-H `{h}`: expected `Name: value`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body = match data {
        Some(d) => Some(match d.strip_prefix('@') {
            Some(file) => std::fs::read(file).map_err(|e| format!("--data @{file}: {e}"))?,
            None => d.into_bytes(),
        }),
        None => None,
    };
    let req = Request {
        method,
        target: path,
        headers,
        body,
        peer,
    };
    let metrics = keyward::metrics::Metrics::new();
    let cache = std::sync::Arc::new(keyward::cache::AuthCache::new(&cfg.cache));
    let directory = keyward::store::SnapshotDirectory::pin(store.current(), cache, &metrics.cache);
    let policy = keyward::auth::decide::Policy { config: cfg };
    let e = explain::explain(&policy, &directory, &req, keyward::clock::now_unix());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", explain::render_text(&req, &e, text.as_deref()));
    }
    Ok(matches!(e.answer, Answer::Forward { .. }))
}

fn main() -> ExitCode {
    keyward::ops::allocator::tune();
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {
        Command::Explain {
            config,
            snapshot,
            method,
            path,
            headers,
            data,
            peer,
            json,
        } => {
            return match explain(&config, snapshot, method, path, headers, data, peer, json) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("keyward: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Test { config, cases } => {
            return match keyward::ops::explain::test_command(&config, &cases) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("keyward: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run {
            config,
            log_format,
            upgrade,
        } => {
            let _guard = init_logs(log_format);
            match keyward::config::Config::load(&config) {
                Ok(cfg) => keyward::server::run(cfg, upgrade).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        Command::Demo => {
            let _guard = init_logs(LogFormat::Text);
            keyward::demo::run().map_err(|e| e.to_string())
        }
        Command::Check { config } => check(&config),
        Command::Snapshot {
            command: SnapshotCommand::Init { path },
        } => keyward::snapshot::schema::init(&path)
            .map(|_| println!("created {}", path.display()))
            .map_err(|e| format!("{}: {e}", path.display())),
        Command::Snapshot {
            command: SnapshotCommand::Sign { key, path },
        } => keyward::store::source::signature::sign_file(&key, &path).map(|public| {
            eprintln!("wrote {}.sig", path.display());
            println!("{public}");
        }),
        Command::Keys { command } => keys(command),
        Command::Healthcheck { url } => keyward::admin::healthcheck(&url),
        Command::Sync {
            command,
            config,
            once,
            log_format,
        } => sync(command, config, once, log_format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward: {e}");
            ExitCode::FAILURE
        }
    }
}
