//! `sottod`: the Sotto server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use sotto_server::{AppState, Config, SqliteStore};

/// Sotto delivery service: stores and forwards end-to-end-encrypted messages.
#[derive(Debug, Parser)]
#[command(name = "sottod", version)]
struct Args {
    /// Directory for the embedded database.
    #[arg(long, env = "SOTTO_DATA_DIR", default_value = "./sotto-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SOTTO_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Largest request body in bytes.
    #[arg(long, env = "SOTTO_MAX_BODY", default_value_t = 2 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Lifetime of device link codes in seconds.
    #[arg(long, env = "SOTTO_LINK_TTL", default_value_t = 600)]
    link_ttl_secs: i64,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SOTTO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let store = SqliteStore::open(&args.data_dir)
        .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    let config = Config {
        max_body_bytes: args.max_body_bytes,
        link_ttl_secs: args.link_ttl_secs,
    };
    let (state, stop_push) = AppState::single_node(Arc::new(store), config);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "sottod started");
    println!("listening on http://{addr}");
    use std::io::Write;
    std::io::stdout().flush()?;
    sotto_server::serve(listener, state, stop_push, shutdown_signal()).await?;
    Ok(())
}
