//! `sotto-bench`: load generator for a real `sottod`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use sotto_bench::server::Sottod;

/// Drive a real sottod over its real API and WebSocket and measure it.
#[derive(Debug, Parser)]
#[command(name = "sotto-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// DM pairs exchanging messages on an open-loop schedule.
    Relay {
        /// Devices (half send, half receive; one DM per pair).
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Messages per second in total.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// An already running server (otherwise the benchmark starts its own); run it with
        /// `--no-rate-limits`: one address drives all the devices.
        #[arg(long)]
        server: Option<String>,
        /// When starting servers: PostgreSQL URL (default: embedded SQLite in a temporary dir).
        #[arg(long)]
        database: Option<String>,
        /// When starting servers: NATS URL (needed for --nodes 2).
        #[arg(long)]
        bus: Option<String>,
        /// When starting servers: how many nodes (2: senders on one, receivers on the other).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// How senders post: `send` frames on their WebSocket, or one HTTP request per message.
        #[arg(long, value_enum, default_value_t = sotto_bench::relay::SendOver::Ws)]
        send_over: sotto_bench::relay::SendOver,
        /// Set a disappearing timer of this many seconds (after send) in every DM first.
        #[arg(long)]
        timer: Option<u32>,
        /// Before the run, fill the started server with this many messages that have expired
        /// by the time it runs; the server deletes them PURGE_AT seconds into its second start,
        /// during the run, and the report splits latency into during and outside the purge.
        #[arg(long)]
        purge_backlog: Option<usize>,
        /// Before the run, fill the started server (PostgreSQL only) with this many messages and
        /// age them past the retention in the database (40 days); the server prunes them
        /// PURGE_AT seconds into its second start, as --purge-backlog.
        #[arg(long, conflicts_with = "purge_backlog")]
        prune_backlog: Option<usize>,
        /// With --purge-backlog or --prune-backlog: seconds after the server's start at which it
        /// deletes the backlog.
        #[arg(long, default_value_t = 15)]
        purge_at: u64,
    },
    /// N authenticated, idle WebSocket connections: the server's RSS per connection (slope between
    /// N/2 and N) and authenticated connections per second. Needs file descriptors: `ulimit -n`
    /// above N (the started server inherits it).
    Idle {
        /// Connections to hold open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Devices they authenticate as (connections are spread over them).
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// An already running server (run it with `--no-rate-limits`); otherwise the benchmark
        /// starts its own (SQLite).
        #[arg(long)]
        server: Option<String>,
        /// The external server's process id, to read its RSS.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// One file through a sottod this run starts: encrypt+upload and download+decrypt in MB/s,
    /// beside the AEAD's single-core speed and a plain loopback copy, and the peak RSS growth of
    /// the client and the server during each transfer.
    Media {
        /// File size: bytes, or with KiB, MiB, GiB.
        #[arg(long, default_value = "1GiB")]
        size: String,
    },
    /// One group of N member devices, each on its own WebSocket: the time until the last device
    /// has each message.
    Fanout {
        /// Member devices (one account each, the sender included).
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Messages to send, one after another.
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// An already running server (otherwise the benchmark starts its own, SQLite); run it with
        /// `--no-rate-limits`: one address drives all the devices.
        #[arg(long)]
        server: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Relay {
            devices,
            rate,
            duration,
            server,
            database,
            bus,
            nodes,
            send_over,
            timer,
            purge_backlog,
            prune_backlog,
            purge_at,
        } => {
            let plan = sotto_bench::relay::RelayPlan {
                devices,
                rate,
                duration: Duration::from_secs(duration),
                over: send_over,
                timer,
            };
            let purge = match (purge_backlog, prune_backlog) {
                (Some(n), _) => Some((Backlog::Expired, n, purge_at)),
                (_, Some(n)) => Some((Backlog::Old, n, purge_at)),
                _ => None,
            };
            relay(plan, server, database, bus, nodes, purge).await
        }
        Cmd::Fanout {
            members,
            messages,
            server,
        } => fanout(members, messages, server).await,
        Cmd::Idle {
            connections,
            devices,
            in_flight,
            server,
            server_pid,
        } => idle(connections, devices, in_flight, server, server_pid).await,
        Cmd::Media { size } => media(&size).await,
    }
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mul) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("", 1),
    ]
    .iter()
    .find_map(|(suffix, mul)| s.strip_suffix(suffix).map(|n| (n.trim(), *mul)))
    .unwrap_or((s, 1));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("--size: a number of bytes, KiB, MiB or GiB: {s}"))?;
    Ok(n * mul)
}

async fn media(size: &str) -> anyhow::Result<()> {
    let size = parse_size(size)?;
    let r = sotto_bench::media::run(size).await?;
    let limit = r.aead_mb_s.min(r.loopback_mb_s);
    println!("media: {} bytes", r.size);
    println!("  AEAD (Encryptor, one core)   {:8.0} MB/s", r.aead_mb_s);
    println!(
        "  loopback TCP copy            {:8.0} MB/s",
        r.loopback_mb_s
    );
    println!(
        "  encrypt + upload + send      {:8.0} MB/s  ({:.0} % of the slower limit)",
        r.upload_mb_s,
        100.0 * r.upload_mb_s / limit
    );
    println!(
        "  download + decrypt + verify  {:8.0} MB/s  ({:.0} % of the slower limit)",
        r.download_mb_s,
        100.0 * r.download_mb_s / limit
    );
    println!(
        "  plain GET of the blob         {:8.0} MB/s  (the server's side of a download)",
        r.fetch_only_mb_s
    );
    let kb = |v: Option<u64>| {
        v.map_or("unknown".to_owned(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    println!(
        "  peak RSS growth, upload:     client {}, server {}",
        kb(r.upload_rss_kb.0),
        kb(r.upload_rss_kb.1)
    );
    println!(
        "  peak RSS growth, download:   client {}, server {}",
        kb(r.download_rss_kb.0),
        kb(r.download_rss_kb.1)
    );
    Ok(())
}

async fn idle(
    connections: usize,
    devices: usize,
    in_flight: usize,
    server: Option<String>,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let started = match &server {
        Some(_) => None,
        None => Some(Sottod::start(&[
            "--data-dir".into(),
            tmp.path().join("data").display().to_string(),
        ])?),
    };
    let (url, pid) = match (&server, &started) {
        (Some(u), _) => (u.clone(), server_pid),
        (None, Some(s)) => (s.url.clone(), Some(s.pid())),
        (None, None) => anyhow::bail!("no server"),
    };
    let r = sotto_bench::idle::run(&url, connections, devices, in_flight, pid).await?;
    println!(
        "idle: {} authenticated WebSocket connections over {} devices, {}",
        r.connections,
        r.devices,
        if server.is_some() {
            "external server"
        } else {
            "SQLite"
        }
    );
    match (
        r.rss_base_kb,
        r.rss_half_kb,
        r.rss_full_kb,
        r.rss_kb_per_conn,
    ) {
        (Some(b), Some(h), Some(f), Some(per)) => println!(
            "  server RSS {b} KiB idle, {h} KiB at {}, {f} KiB at {}: {per:.1} KiB per connection",
            connections / 2,
            connections
        ),
        _ => println!("  server RSS unknown (pass --server-pid for an external server)"),
    }
    println!(
        "  {:.0} authenticated connections per second ({} in flight)",
        r.connects_per_sec, in_flight
    );
    println!(
        "{}",
        serde_json::json!({
            "connections": r.connections, "devices": r.devices,
            "rss_kb_per_conn": r.rss_kb_per_conn, "rss_base_kb": r.rss_base_kb,
            "rss_half_kb": r.rss_half_kb, "rss_full_kb": r.rss_full_kb,
            "connects_per_sec": r.connects_per_sec,
        })
    );
    Ok(())
}

async fn fanout(members: usize, messages: usize, server: Option<String>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let started = match &server {
        Some(_) => None,
        None => Some(Sottod::start(&[
            "--data-dir".into(),
            tmp.path().join("data").display().to_string(),
        ])?),
    };
    let url = match (&server, &started) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.url.clone(),
        (None, None) => anyhow::bail!("no server"),
    };
    let pids: Vec<u32> = started.iter().map(Sottod::pid).collect();
    let r = sotto_bench::fanout::run(&url, members, messages, &pids).await?;
    println!(
        "fanout: {} member devices, {} messages, classic suite, {}",
        r.members,
        r.messages,
        if server.is_some() {
            "external server"
        } else {
            "SQLite"
        }
    );
    println!("  group created in {:.0} ms", r.create_ms);
    println!(
        "  last device has the message after p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.p50_ms, r.p99_ms, r.max_ms
    );
    if let Some(c) = r.cpu_us_per_delivery {
        println!("  server CPU {c:.1} us per delivered copy");
    }
    println!(
        "{}",
        serde_json::json!({
            "last_device_ms": r.p99_ms, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
            "members": r.members, "messages": r.messages, "create_ms": r.create_ms,
            "cpu_us_per_delivery": r.cpu_us_per_delivery,
        })
    );
    Ok(())
}

/// What the backlog a run's server deletes during it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backlog {
    /// Messages whose disappearing timer ran out (`--purge-backlog`).
    Expired,
    /// Messages older than the retention (`--prune-backlog`).
    Old,
}

/// Moves every log entry `days` into the past, in the database: a backlog that retention prunes.
async fn age_log(database: &str, days: i64) -> anyhow::Result<u64> {
    let (client, conn) = tokio_postgres::connect(database, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client
        .execute(
            "UPDATE log SET created_at = created_at - $1",
            &[&(days * 86_400)],
        )
        .await?)
}

async fn relay(
    plan: sotto_bench::relay::RelayPlan,
    server: Option<String>,
    database: Option<String>,
    bus: Option<String>,
    nodes: usize,
    purge: Option<(Backlog, usize, u64)>,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut started = Vec::new();
    let server_args = |extra: &[String]| {
        let mut args: Vec<String> = Vec::new();
        match &database {
            Some(db) => args.extend(["--database".into(), db.clone()]),
            None => args.extend([
                "--data-dir".into(),
                tmp.path().join("data").display().to_string(),
            ]),
        }
        if let Some(b) = &bus {
            args.extend(["--bus".into(), b.clone()]);
        }
        args.extend(extra.iter().cloned());
        args
    };
    let mut purge_log = None;
    if let Some((backlog, entries, purge_at)) = purge {
        if server.is_some() || nodes != 1 {
            anyhow::bail!("a backlog run starts its own server: no --server, one node");
        }
        if backlog == Backlog::Old && database.is_none() {
            anyhow::bail!("--prune-backlog ages its backlog in PostgreSQL: give --database");
        }
        // A first server takes the backlog (and purges nothing for a day) ...
        let filler = Sottod::start(&server_args(&[
            "--prune-interval-secs".into(),
            "86400".into(),
        ]))?;
        let timer = (backlog == Backlog::Expired).then_some(30);
        eprintln!("filling {entries} messages (timer: {timer:?} s)...");
        let t = std::time::Instant::now();
        let latest = sotto_bench::relay::fill(&filler.url, entries, timer).await?;
        eprintln!("filled in {:.1} s", t.elapsed().as_secs_f64());
        drop(filler);
        if let (Backlog::Old, Some(db)) = (backlog, &database) {
            let aged = age_log(db, 40).await?;
            eprintln!("aged {aged} log entries by 40 days");
        }
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        while now() <= latest {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // ... the second one, on the same data, purges it `purge_at` seconds after it starts.
        let (s, log) = Sottod::start_watched(&server_args(&[
            "--prune-interval-secs".into(),
            purge_at.to_string(),
        ]))?;
        started.push(s);
        purge_log = Some(log);
    }
    let (send_url, recv_url) = match server {
        Some(url) => (url.clone(), url),
        None if !started.is_empty() => (started[0].url.clone(), started[0].url.clone()),
        None => {
            if nodes == 0 || nodes > 2 {
                anyhow::bail!("--nodes must be 1 or 2");
            }
            if nodes == 2 && (database.is_none() || bus.is_none()) {
                anyhow::bail!("two nodes need --database postgres://... and --bus nats://...");
            }
            for _ in 0..nodes {
                started.push(Sottod::start(&server_args(&[]))?);
            }
            let first = started[0].url.clone();
            let last = started[started.len() - 1].url.clone();
            (first, last)
        }
    };
    let pids: Vec<u32> = started.iter().map(Sottod::pid).collect();
    let r = sotto_bench::relay::run(&send_url, &recv_url, &plan, &pids).await?;
    println!(
        "relay: {} devices, {} msg/s offered for {}s, {} node(s), sends over {:?}, {}, timer {}",
        plan.devices,
        plan.rate,
        plan.duration.as_secs(),
        nodes,
        plan.over,
        if database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        plan.timer.map_or("off".to_owned(), |t| format!("{t} s")),
    );
    println!(
        "  accepted {}  delivered {}  ({:.0} msg/s)",
        r.accepted, r.delivered, r.delivered_per_sec
    );
    println!(
        "  latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.p50_ms, r.p99_ms, r.max_ms
    );
    match r.cpu_us_per_msg {
        Some(c) => println!("  server CPU {c:.1} us per delivered message"),
        None => println!("  server CPU unknown (external server)"),
    }
    if let Some(c) = r.client_cpu_us_per_msg {
        println!("  load generator CPU {c:.1} us per delivered message (same machine)");
    }
    let mut during_purge = serde_json::Value::Null;
    if let Some(log) = purge_log {
        let marker = match purge.map(|p| p.0) {
            Some(Backlog::Old) => "pruned the log",
            _ => "deleted expired messages",
        };
        let events = sotto_bench::server::purges(&log, marker);
        let Some(&(end, entries, elapsed_ms)) = events.first() else {
            anyhow::bail!("the server did not purge during the run: make --duration longer");
        };
        // The purge's window in seconds after the run's start.
        let since = |t: std::time::SystemTime| match t.duration_since(r.started_at) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let to = since(end);
        let from = to - elapsed_ms as f64 / 1000.0;
        let split = |inside: bool| {
            let mut v: Vec<f64> = r
                .samples
                .iter()
                .filter(|(at, _)| (*at >= from && *at <= to) == inside)
                .map(|(_, ms)| *ms)
                .collect();
            v.sort_by(|x, y| x.total_cmp(y));
            v
        };
        let (during, outside) = (split(true), split(false));
        let pct = sotto_bench::relay::percentile;
        println!(
            "  deletion of {entries} entries ({marker}) from {from:.1} s to {to:.1} s of the run ({elapsed_ms} ms)"
        );
        println!(
            "  sent during it: {} messages, p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            during.len(),
            pct(&during, 0.5),
            pct(&during, 0.99),
            during.last().copied().unwrap_or(0.0)
        );
        println!(
            "  sent outside it: {} messages, p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            outside.len(),
            pct(&outside, 0.5),
            pct(&outside, 0.99),
            outside.last().copied().unwrap_or(0.0)
        );
        during_purge = serde_json::json!({
            "entries": entries, "purge_ms": elapsed_ms, "messages": during.len(),
            "p99_ms": pct(&during, 0.99), "outside_p99_ms": pct(&outside, 0.99),
        });
    }
    println!(
        "{}",
        serde_json::json!({
            "during_purge": during_purge,
            "delivered_per_sec": r.delivered_per_sec, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "max_ms": r.max_ms, "cpu_us_per_msg": r.cpu_us_per_msg,
            "client_cpu_us_per_msg": r.client_cpu_us_per_msg,
            "accepted": r.accepted, "delivered": r.delivered,
        })
    );
    Ok(())
}
