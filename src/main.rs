//! The `flowhub` binary: `flowhub serve` runs the hub; the other subcommands are clients.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowhub::config::{Config, Overrides};

/// mimalloc keeps the hub's many small, long-lived record allocations compact across threads
/// (records are built on the sequencer thread and freed wherever the last reader drops them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flowhub",
    version,
    about = "A real-time record and RPC hub serving the Flow API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Make one call over the WebSocket and print the reply.
    Call(flowhub::cli::call::CallArgs),
    /// Print the changes of an endpoint, an object or a live query as JSON lines.
    Watch(flowhub::cli::watch::WatchArgs),
    /// Repair a damaged log: keep every record before the damage, move the rest aside
    /// (takes the data directory's lock: stop the hub first).
    Repair(flowhub::cli::repair::RepairArgs),
    /// Copy the data directory consistently while the hub runs, and check the copy.
    Backup(flowhub::cli::backup::BackupArgs),
    /// Inspect the log of a data directory (read only, also while a hub runs).
    Log(flowhub::cli::log::LogArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see docs/CONFIGURATION.md).
    #[arg(long, env = "FLOWHUB_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [env: FLOWHUB_LISTEN] [default: 127.0.0.1:7340].
    #[arg(long)]
    listen: Option<String>,
    /// Data directory [env: FLOWHUB_DATA_DIR] [default: ./flowhub-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// always, interval, never or memory [env: FLOWHUB_DURABILITY] [default: always].
    #[arg(long)]
    durability: Option<String>,
    /// Log filter, e.g. `info` or `flowhub=debug` [env: FLOWHUB_LOG].
    #[arg(long)]
    log: Option<String>,
    /// `text` or `json` [env: FLOWHUB_LOG_FORMAT].
    #[arg(long)]
    log_format: Option<String>,
}

/// Installs the log subscriber; a log filter that does not parse is a configuration error.
fn init_tracing(config: &Config) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .map_err(|e| format!("log filter {:?} (FLOWHUB_LOG, --log): {e}", config.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowhub: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let flags = Overrides {
                listen: args.listen,
                data_dir: args.data_dir,
                durability: args.durability,
                log: args.log,
                log_format: args.log_format,
            };
            let config = match Config::load(args.config.as_deref(), std::env::vars(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("flowhub: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = init_tracing(&config) {
                eprintln!("flowhub: {e}");
                return ExitCode::from(2);
            }
            runtime.block_on(async move {
                // Before the listening line: from then on a signal means a graceful stop.
                let shutdown = match flowhub::server::shutdown_signal() {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("flowhub: cannot install the signal handlers: {e}");
                        return ExitCode::from(1);
                    }
                };
                // An address that does not parse or resolve is a configuration error (2); one
                // that cannot be bound (in use, not permitted) is a failure to start (1).
                if let Err(e) = tokio::net::lookup_host(&config.listen).await {
                    eprintln!(
                        "flowhub: listen address {:?} (FLOWHUB_LISTEN, --listen) is not a host:port: {e}",
                        config.listen
                    );
                    return ExitCode::from(2);
                }
                let listener = match tokio::net::TcpListener::bind(&config.listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(listen = %config.listen, error = %e, "cannot listen");
                        eprintln!("flowhub: cannot listen on {}: {e}", config.listen);
                        return ExitCode::from(1);
                    }
                };
                // While the log is read back, probes are answered (/health 200, /ready 503)
                // and nothing else is served; "listening" below means ready.
                let tls = match (&config.tls_cert, &config.tls_key) {
                    (Some(cert), Some(key)) => flowhub::transport::tls::acceptor(cert, key).ok(),
                    _ => None,
                };
                let responder = flowhub::transport::recovering::start(
                    listener,
                    tls,
                    std::time::Duration::from_millis(config.handshake_timeout_ms),
                );
                let opening = config.clone();
                let opened =
                    tokio::task::spawn_blocking(move || flowhub::server::open(&opening)).await;
                let listener = responder.finish().await;
                let opened = match opened {
                    Ok(Ok(o)) => o,
                    Ok(Err(e)) => {
                        tracing::error!("{e}");
                        eprintln!("flowhub: {e}");
                        return ExitCode::from(1);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "opening the data directory failed");
                        eprintln!("flowhub: opening the data directory failed: {e}");
                        return ExitCode::from(1);
                    }
                };
                let addr = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let tls = config.tls_cert.is_some();
                tracing::info!(%addr, tls, "flowhub listening: HTTP /api/, WebSocket /ws, /health, /ready, /metrics");
                flowhub::server::serve(listener, opened, config, shutdown).await;
                tracing::info!("flowhub stopped");
                ExitCode::SUCCESS
            })
        }
        Command::Call(args) => {
            let code = runtime.block_on(flowhub::cli::call::run(args));
            ExitCode::from(code as u8)
        }
        Command::Watch(args) => {
            let code = runtime.block_on(flowhub::cli::watch::run(args));
            ExitCode::from(code as u8)
        }
        Command::Repair(args) => ExitCode::from(flowhub::cli::repair::run(args) as u8),
        Command::Backup(args) => ExitCode::from(flowhub::cli::backup::run(args) as u8),
        Command::Log(args) => ExitCode::from(flowhub::cli::log::run(args) as u8),
    }
}
