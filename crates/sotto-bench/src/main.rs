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
        } => {
            relay(
                devices, rate, duration, server, database, bus, nodes, send_over,
            )
            .await
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

#[allow(clippy::too_many_arguments)] // one per command-line flag
async fn relay(
    devices: usize,
    rate: u64,
    duration: u64,
    server: Option<String>,
    database: Option<String>,
    bus: Option<String>,
    nodes: usize,
    send_over: sotto_bench::relay::SendOver,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut started = Vec::new();
    let (send_url, recv_url) = match server {
        Some(url) => (url.clone(), url),
        None => {
            if nodes == 0 || nodes > 2 {
                anyhow::bail!("--nodes must be 1 or 2");
            }
            if nodes == 2 && (database.is_none() || bus.is_none()) {
                anyhow::bail!("two nodes need --database postgres://... and --bus nats://...");
            }
            for _ in 0..nodes {
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
                started.push(Sottod::start(&args)?);
            }
            let first = started[0].url.clone();
            let last = started[started.len() - 1].url.clone();
            (first, last)
        }
    };
    let pids: Vec<u32> = started.iter().map(Sottod::pid).collect();
    let r = sotto_bench::relay::run(
        &send_url,
        &recv_url,
        devices,
        rate,
        Duration::from_secs(duration),
        &pids,
        send_over,
    )
    .await?;
    println!(
        "relay: {} devices, {} msg/s offered for {}s, {} node(s), sends over {:?}, {}",
        devices,
        rate,
        duration,
        nodes,
        send_over,
        if database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
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
    println!(
        "{}",
        serde_json::json!({
            "delivered_per_sec": r.delivered_per_sec, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "max_ms": r.max_ms, "cpu_us_per_msg": r.cpu_us_per_msg,
            "client_cpu_us_per_msg": r.client_cpu_us_per_msg,
            "accepted": r.accepted, "delivered": r.delivered,
        })
    );
    Ok(())
}
