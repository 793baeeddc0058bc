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
    /// Exit 0 when the admin /healthz answers 200
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Create an empty snapshot with the contract schema
    Init { path: PathBuf },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {
        Command::Run { config, log_format } => {
            let _guard = init_logs(log_format);
            match keyward::config::Config::load(&config) {
                Ok(cfg) => keyward::server::run(cfg).map_err(|e| e.to_string()),
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
        Command::Keys {
            command:
                KeysCommand::Create {
                    snapshot,
                    org,
                    workspaces,
                },
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
        Command::Healthcheck { url } => keyward::admin::healthcheck(&url),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward: {e}");
            ExitCode::FAILURE
        }
    }
}
