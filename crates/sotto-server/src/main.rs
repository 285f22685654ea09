//! `sottod`: the Sotto server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sotto_server::limits::{Limits, Rate};
use sotto_server::{
    AppState, Bus, Config, Hub, LocalBus, NatsBus, PostgresStore, SqliteStore, Store,
};

/// Sotto delivery service: stores and forwards end-to-end-encrypted messages.
#[derive(Debug, Parser)]
#[command(name = "sottod", version)]
struct Args {
    /// Directory for the embedded database (used when --database is not given).
    #[arg(long, env = "SOTTO_DATA_DIR", default_value = "./sotto-data")]
    data_dir: PathBuf,
    /// Cap on the embedded database's size in MiB: writes that would grow it further are refused
    /// (507 storage_full, nothing changed) while reads go on. A full disk answers the same way.
    #[arg(long, env = "SOTTO_MAX_DB_MB")]
    max_db_mb: Option<u64>,
    /// PostgreSQL URL (postgres://USER@HOST:PORT/DB) for a deployment of several nodes.
    #[arg(long, env = "SOTTO_DATABASE")]
    database: Option<String>,
    /// NATS URL (nats://HOST:PORT) carrying wake-ups between nodes; in-process when absent.
    #[arg(long, env = "SOTTO_BUS")]
    bus: Option<String>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SOTTO_LISTEN", default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Largest request body in bytes.
    #[arg(long, env = "SOTTO_MAX_BODY", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Days a log entry or welcome is kept for a device that has not fetched it (entries every
    /// member device has fetched go sooner).
    #[arg(long, env = "SOTTO_RETENTION_DAYS", default_value_t = 30)]
    retention_days: i64,
    /// Seconds between deletions of expired and old log entries (the first one interval after
    /// start).
    #[arg(long, env = "SOTTO_PRUNE_INTERVAL", default_value_t = 60)]
    prune_interval_secs: u64,
    /// Serve HTTPS and WSS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "SOTTO_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "SOTTO_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Registrations and device links per IP address (N/s, N/min, N/h, or off).
    #[arg(long, env = "SOTTO_LIMIT_REGISTER", default_value = "30/min")]
    limit_register: Limit,
    /// Key-package claims per device.
    #[arg(long, env = "SOTTO_LIMIT_CLAIM", default_value = "300/min")]
    limit_claim: Limit,
    /// Messages and commits per device.
    #[arg(long, env = "SOTTO_LIMIT_SEND", default_value = "50/s")]
    limit_send: Limit,
    /// Push connections per device.
    #[arg(long, env = "SOTTO_LIMIT_CONNECT_DEVICE", default_value = "30/min")]
    limit_connect_device: Limit,
    /// Push connections per IP address.
    #[arg(long, env = "SOTTO_LIMIT_CONNECT_IP", default_value = "600/min")]
    limit_connect_ip: Limit,
    /// Close a connection on which nothing moves for this many seconds (idle keep-alive,
    /// half-open, or a request that never finishes arriving; push connections answer the server's
    /// 30 s pings and stay). At least 65.
    #[arg(long, env = "SOTTO_IDLE_TIMEOUT", default_value_t = 120)]
    idle_timeout_secs: u64,
    /// Key-package claims per IP address.
    #[arg(long, env = "SOTTO_LIMIT_CLAIM_IP", default_value = "3000/min")]
    limit_claim_ip: Limit,
    /// Messages and commits per IP address.
    #[arg(long, env = "SOTTO_LIMIT_SEND_IP", default_value = "500/s")]
    limit_send_ip: Limit,
    /// Ephemeral messages (typing indicators) per device.
    #[arg(long, env = "SOTTO_LIMIT_EPHEMERAL", default_value = "60/min")]
    limit_ephemeral: Limit,
    /// Turn every rate limit off (load tests against your own server).
    #[arg(long, env = "SOTTO_NO_RATE_LIMITS")]
    no_rate_limits: bool,
    /// Lifetime of device link codes in seconds.
    #[arg(long, env = "SOTTO_LINK_TTL", default_value_t = 600)]
    link_ttl_secs: i64,
    /// Directory for attachment blobs (default: DATA_DIR/blobs).
    #[arg(long, env = "SOTTO_BLOB_DIR", conflicts_with = "blob_store")]
    blob_dir: Option<PathBuf>,
    /// Where attachment blobs go, as a URL: `file:///DIR`, or
    /// `s3://BUCKET?endpoint=URL&region=R` for an S3-compatible store (credentials from
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`). Default: the blob dir.
    #[arg(long, env = "SOTTO_BLOB_STORE")]
    blob_store: Option<String>,
    /// Most MiB of attachments one account may keep at a time (0: no limit).
    #[arg(long, env = "SOTTO_ACCOUNT_QUOTA_MB", default_value_t = 4096)]
    account_quota_mb: u64,
    /// Largest attachment in MiB (at most 2048).
    #[arg(long, env = "SOTTO_MAX_FILE_MB", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=2048))]
    max_file_mb: u64,
    /// On SIGTERM: seconds the node keeps serving with /readyz answering 503 (push connections
    /// are closed with 1001 "going away" at once) before it stops accepting connections.
    #[arg(long, env = "SOTTO_DRAIN_SECS", default_value_t = 2)]
    drain_secs: u64,
    /// On SIGTERM, after it stops accepting: the most seconds it waits for requests in flight.
    #[arg(long, env = "SOTTO_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    shutdown_timeout_secs: u64,
    /// Keep the rate-limit buckets in Redis (`redis://HOST:PORT`), shared by every node, so N
    /// nodes together allow the configured rates (default: each node its own, in memory).
    #[arg(long, env = "SOTTO_LIMITS")]
    limits: Option<String>,
    /// When the --limits Redis cannot be reached: `closed` refuses limited requests with 503,
    /// `open` falls back to each node's own buckets.
    #[arg(long, env = "SOTTO_LIMITS_FAIL", value_enum, default_value_t = sotto_server::limits::FailMode::Closed)]
    limits_fail: sotto_server::limits::FailMode,
    /// Serve /metrics (Prometheus) on this address instead of with the API, to keep it off a
    /// public listener.
    #[arg(long, env = "SOTTO_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// The web client's built bundle, served at `/` (`scripts/web-build` makes it). Without one,
    /// `/` says how to build it.
    #[arg(long, env = "SOTTO_WEB_DIR", default_value = "./web/dist")]
    web_dir: PathBuf,
    /// Do not serve the web client (`/` is a 404).
    #[arg(long, env = "SOTTO_NO_WEB")]
    no_web: bool,
    /// A TOML file of settings: each key is one of these flags' long name (`retention-days =
    /// 7`, `no-rate-limits = true`). A flag or its environment variable wins over the file, the
    /// file over the default; an unknown key or a bad value stops sottod at start.
    #[arg(long, env = "SOTTO_CONFIG")]
    config: Option<PathBuf>,
    /// Print the configuration in effect (flags, environment, file, defaults) as a config file,
    /// with secrets in URLs elided, and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The flags a config file may not set.
const NOT_IN_FILE: &[&str] = &["config", "print-config", "help", "version"];

/// Parses the command line, the environment and the `--config` file, in that precedence, over
/// the defaults. Returns the arguments and the matches they came from.
fn load_args() -> anyhow::Result<(Args, clap::ArgMatches)> {
    use clap::{CommandFactory, FromArgMatches};
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Args::command().get_matches_from(&argv);
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        let args = Args::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!(first_line(&e)))?;
        return Ok((args, matches));
    };
    let shown = path.display();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading the config file {shown}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|r| text[..r.start].lines().count().max(1));
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        anyhow::anyhow!("{shown}{at}: {}", e.message().trim().replace('\n', "; "))
    })?;
    let cmd = Args::command();
    // The file's settings, as the flags they stand for, for those the command line and the
    // environment left at their defaults.
    let mut from_file: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in &table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{shown}: unknown key `{key}` (keys are sottod's flags without the leading --)"
                )
            })?;
        if matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        ) {
            continue;
        }
        let switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        match value {
            toml::Value::Boolean(on) if switch => {
                if *on {
                    from_file.push(format!("--{key}").into());
                }
            }
            toml::Value::String(v) if !switch => from_file.push(format!("--{key}={v}").into()),
            toml::Value::Integer(v) if !switch => from_file.push(format!("--{key}={v}").into()),
            _ => anyhow::bail!(
                "{shown}: `{key}` takes {}",
                if switch {
                    "true or false"
                } else {
                    "a string or a number"
                }
            ),
        }
    }
    let mut all = vec![argv[0].clone()];
    all.extend(from_file);
    all.extend(argv.into_iter().skip(1));
    let matches = Args::command()
        .try_get_matches_from(all)
        .map_err(|e| anyhow::anyhow!("{} (flags, environment or {shown})", first_line(&e)))?;
    let args = Args::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!(first_line(&e)))?;
    Ok((args, matches))
}

/// A clap error's first line, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The configuration in effect, as a config file: every flag's value, whichever source it came
/// from, with user info and queries in URLs elided; flags with no value are commented out.
fn print_config(matches: &clap::ArgMatches) {
    use clap::CommandFactory;
    println!("# sottod configuration in effect (flags > environment > --config file > defaults)");
    for arg in Args::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            println!("{long} = {}", matches.get_flag(id));
            continue;
        }
        match matches.get_raw(id).and_then(|mut v| v.next()) {
            None => println!("# {long} ="),
            Some(v) => {
                let v = v.to_string_lossy();
                if v.parse::<u64>().is_ok() {
                    println!("{long} = {v}");
                    continue;
                }
                let v = if v.contains("://") {
                    redact(&v)
                } else {
                    v.into_owned()
                };
                println!("{long} = {}", toml::Value::String(v));
            }
        }
    }
}

/// A rate limit flag: `N/s`, `N/min`, `N/h` or `off`.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<Rate>);

impl std::str::FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "off" {
            Ok(Limit(None))
        } else {
            s.parse().map(|r| Limit(Some(r)))
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy an embedded deployment (SQLite data dir) into an empty PostgreSQL database.
    Migrate {
        /// The embedded deployment's data directory.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL URL.
        #[arg(long)]
        to: String,
    },
    /// Copy the embedded database (--data-dir) into a new file while sottod may be serving it,
    /// with SQLite's online backup API, and check the copy. Restore: stop sottod, put the file
    /// in place as DATA_DIR/sotto.db (with no sotto.db-wal beside it), start sottod.
    Backup {
        /// The file to write (must not exist yet).
        #[arg(long)]
        to: PathBuf,
    },
    /// Operator commands on the deployment's store (--data-dir or --database), whether sottod
    /// is running or not.
    Admin {
        #[command(subcommand)]
        action: Admin,
    },
}

#[derive(Debug, Subcommand)]
enum Admin {
    /// List accounts: username, devices, registered, last active (UTC), state.
    Accounts,
    /// Lock an account: every request of its devices gets 403 account_locked (on running nodes
    /// within 30 s; open push connections are closed within 30 s too).
    Lock {
        /// The account.
        user: String,
    },
    /// Unlock an account.
    Unlock {
        /// The account.
        user: String,
    },
    /// Delete an account: its devices, key packages, inbox, link codes and files go, and it
    /// leaves every conversation (members' next sync removes its devices from the MLS groups).
    /// Its username stays taken. Running nodes refuse its devices within 30 s.
    Delete {
        /// The account.
        user: String,
        /// Confirm: without it, nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

/// The deployment's store, for the admin commands.
async fn admin_store(args: &Args) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &args.database {
        Some(url) => Arc::new(
            PostgresStore::connect(url, None)
                .await
                .with_context(|| format!("connecting to {}", redact(url)))?,
        ),
        None => {
            if !args.data_dir.join("sotto.db").is_file() {
                anyhow::bail!("no database in {}", args.data_dir.display());
            }
            Arc::new(
                SqliteStore::open(&args.data_dir)
                    .with_context(|| format!("opening data dir {}", args.data_dir.display()))?,
            )
        }
    })
}

/// The deployment's file store (for serving and for the admin commands).
fn open_blobs(args: &Args) -> anyhow::Result<sotto_server::blobs::Blobs> {
    let max_file = args.max_file_mb * 1024 * 1024;
    Ok(match &args.blob_store {
        Some(url) => {
            sotto_server::blobs::Blobs::from_url(url, max_file).map_err(anyhow::Error::msg)?
        }
        None => {
            let dir = args
                .blob_dir
                .clone()
                .unwrap_or_else(|| args.data_dir.join("blobs"));
            sotto_server::blobs::Blobs::local(&dir, max_file)
                .with_context(|| format!("opening blob dir {}", dir.display()))?
        }
    })
}

async fn admin(args: &Args, action: &Admin) -> anyhow::Result<()> {
    let store = admin_store(args).await?;
    let when = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "-".into())
    };
    match action {
        Admin::Accounts => {
            println!("USERNAME\tDEVICES\tREGISTERED\tLAST_ACTIVE\tSTATE");
            for a in store.admin_accounts().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    a.username,
                    a.devices,
                    when(a.created_at),
                    a.last_active.map_or_else(|| "-".into(), when),
                    if a.locked { "locked" } else { "active" }
                );
            }
        }
        Admin::Delete { user, yes } => {
            if !*yes {
                anyhow::bail!(
                    "deleting {user:?} cannot be undone: run again with --yes to delete it"
                );
            }
            let Some(gone) = store.delete_account(user).await? else {
                anyhow::bail!("no account {user:?}");
            };
            // The files after the account: a file left by a failure here is an orphan the
            // operator can remove by running the command again (the account is gone, its
            // files' index is not).
            let files = open_blobs(args)?
                .remove_account(user)
                .await
                .map_err(|e| anyhow::anyhow!("removing {user:?}'s files: {}", e.message))?;
            println!(
                "{user} deleted: {} devices, {} conversations left, {files} files",
                gone.devices.len(),
                gone.conversations.len()
            );
        }
        Admin::Lock { user } | Admin::Unlock { user } => {
            let lock = matches!(action, Admin::Lock { .. });
            if !store.set_locked(user, lock).await? {
                anyhow::bail!("no account {user:?}");
            }
            println!("{user} {}", if lock { "locked" } else { "unlocked" });
        }
    }
    Ok(())
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

/// A URL fit for logs: user info and query string (either may carry a password) replaced by `***`.
fn redact(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return "***".to_owned();
    };
    let (scheme, rest) = (&url[..s], &url[s + 3..]);
    let rest = match rest.rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_owned(),
    };
    match rest.split_once('?') {
        Some((before, _)) => format!("{scheme}://{before}?***"),
        None => format!("{scheme}://{rest}"),
    }
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
    let (args, matches) = load_args()?;
    if args.print_config {
        print_config(&matches);
        return Ok(());
    }
    if let Some(Command::Migrate { from, to }) = &args.command {
        let report = sotto_server::migrate::sqlite_to_postgres(from, to, None)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("migration failed; the target was left unchanged")?;
        for (table, rows) in report.tables {
            println!("{table}: {rows} rows");
        }
        println!("migrated {} into {}", from.display(), redact(to));
        return Ok(());
    }
    if let Some(Command::Admin { action }) = &args.command {
        return admin(&args, action).await;
    }
    if let Some(Command::Backup { to }) = &args.command {
        if args.database.is_some() {
            anyhow::bail!(
                "sottod backup copies the embedded database; for PostgreSQL use pg_dump or \
                 continuous archiving (see the README)"
            );
        }
        let report = sotto_server::backup::sqlite_backup(&args.data_dir, to)
            .with_context(|| format!("backing up {}", args.data_dir.display()))?;
        for (table, rows) in &report.tables {
            println!("{table}: {rows} rows");
        }
        println!(
            "left out {} messages of conversations with a disappearing timer",
            report.timed_left_out
        );
        println!(
            "backed up {} into {} ({} bytes, {} pages), integrity check: ok",
            args.data_dir.display(),
            to.display(),
            report.bytes,
            report.pages
        );
        return Ok(());
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(sotto_server::tls::server_config(cert, key).map_err(|e| anyhow::anyhow!(e))?)
        }
        _ => None,
    };
    if args.database.is_some() && args.max_db_mb.is_some() {
        anyhow::bail!("--max-db-mb caps the embedded database; PostgreSQL has its own quotas");
    }
    let store: Arc<dyn Store> = match &args.database {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Arc::new(
                PostgresStore::connect(url, None)
                    .await
                    .with_context(|| format!("connecting to {}", redact(url)))?,
            )
        }
        Some(url) => anyhow::bail!(
            "unsupported --database {}: use postgres://USER@HOST:PORT/DB",
            redact(url)
        ),
        None => Arc::new(
            SqliteStore::open_with(
                &args.data_dir,
                sotto_server::store::sqlite::SqliteOptions {
                    max_bytes: args.max_db_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
                    ..Default::default()
                },
            )
            .with_context(|| format!("opening data dir {}", args.data_dir.display()))?,
        ),
    };
    let hub = Arc::new(Hub::default());
    let bus: Arc<dyn Bus> = match &args.bus {
        Some(url) => Arc::new(
            NatsBus::connect(url, hub.clone())
                .await
                .map_err(|e| anyhow::anyhow!(e))?,
        ),
        None => Arc::new(LocalBus::new(hub.clone())),
    };
    let config = Config {
        max_body_bytes: args.max_body_bytes,
        link_ttl_secs: args.link_ttl_secs,
        retention_secs: args.retention_days.saturating_mul(24 * 3600),
        prune_interval_secs: args.prune_interval_secs,
        // Push connections are pinged every 30 s: a shorter timeout would cut live ones.
        read_idle: std::time::Duration::from_secs(args.idle_timeout_secs.max(65)),
        drain: std::time::Duration::from_secs(args.drain_secs),
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout_secs),
        metrics_on_api: args.metrics_listen.is_none(),
        web_dir: (!args.no_web).then(|| args.web_dir.clone()),
        limits: if args.no_rate_limits {
            Limits::none()
        } else {
            Limits {
                register_per_ip: args.limit_register.0,
                claim_per_device: args.limit_claim.0,
                send_per_device: args.limit_send.0,
                connect_per_device: args.limit_connect_device.0,
                connect_per_ip: args.limit_connect_ip.0,
                claim_per_ip: args.limit_claim_ip.0,
                send_per_ip: args.limit_send_ip.0,
                ephemeral_per_device: args.limit_ephemeral.0,
            }
        },
    };
    let limits = config.limits.clone();
    let (mut state, stop_push) = AppState::new(store, bus, hub, config);
    if let Some(url) = &args.limits {
        if args.no_rate_limits {
            anyhow::bail!("--limits and --no-rate-limits contradict each other");
        }
        let shared = sotto_server::limits::SharedBuckets::connect(url, args.limits_fail)
            .await
            .map_err(|e| anyhow::anyhow!("{e} ({})", redact(url)))?;
        tracing::info!(
            redis = %redact(url),
            when_unreachable = ?args.limits_fail,
            "rate limits shared by every node through Redis"
        );
        state = state.with_limiter(sotto_server::limits::RateLimiter::shared(limits, shared));
    }
    let blobs = open_blobs(&args)?;
    let state = state
        .with_blobs(blobs.with_account_quota(args.account_quota_mb.saturating_mul(1024 * 1024)));
    if let Some(addr) = args.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        sotto_server::telemetry::handle();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { sotto_server::http::metrics_response() }),
        );
        tracing::info!(%addr, "metrics served");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, router).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    match &args.database {
        Some(url) => {
            tracing::info!(%addr, database = %redact(url), bus = ?args.bus.as_deref().map(redact), "sottod started")
        }
        None => {
            tracing::info!(%addr, data_dir = %args.data_dir.display(), bus = ?args.bus.as_deref().map(redact), "sottod started")
        }
    }
    use std::io::Write;
    match tls {
        Some(config) => {
            println!("listening on https://{addr}");
            std::io::stdout().flush()?;
            let listener = sotto_server::tls::TlsListener::new(listener, config)?;
            sotto_server::serve(listener, state, stop_push, shutdown_signal()).await?;
        }
        None => {
            println!("listening on http://{addr}");
            std::io::stdout().flush()?;
            // Frames are small and latency matters: no Nagle delay (TLS connections set it too).
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            sotto_server::serve(listener, state, stop_push, shutdown_signal()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_passwords_wherever_a_url_carries_them() {
        assert_eq!(
            redact("postgres://u:pw@db:5432/x"),
            "postgres://***@db:5432/x"
        );
        assert_eq!(
            redact("postgres://db/x?password=pw&sslmode=off"),
            "postgres://db/x?***"
        );
        assert_eq!(redact("nats://tok@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact("host=db password=pw"), "***");
        assert_eq!(redact("postgres://db:5432/x"), "postgres://db:5432/x");
    }

    /// The README's configuration table is the operator's reference: every flag is in it, with
    /// its environment variable.
    #[test]
    fn every_flag_is_in_the_readme_table() {
        use clap::CommandFactory;
        let readme = include_str!("../../../README.md");
        let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `--")).collect();
        let mut missing = Vec::new();
        for arg in super::Args::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            // In the row's first cell, as a whole flag (`--data-dir` is not `--database`).
            let named = |row: &&&str| {
                let cell = row.split('|').nth(1).unwrap_or_default();
                cell.match_indices(&format!("--{long}")).any(|(i, m)| {
                    !cell[i + m.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                })
            };
            let Some(row) = rows.iter().find(named) else {
                missing.push(long.to_owned());
                continue;
            };
            if let Some(env) = arg.get_env() {
                if !row.contains(&*env.to_string_lossy()) {
                    missing.push(format!("{long} ({})", env.to_string_lossy()));
                }
            }
        }
        assert!(missing.is_empty(), "not in README's table: {missing:?}");
    }
}
