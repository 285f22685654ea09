//! The idle benchmark: many authenticated WebSocket connections that stay open and quiet, as a phone
//! in a pocket holds one. Measures the server's resident memory per connection (the slope between
//! two connection counts, so the server's fixed cost drops out) and how many authenticated
//! connections per second it accepts (each counted once its `ready` frame arrived).

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::relay::{register_with, Device};

/// What the idle run measured.
#[derive(Debug, Clone)]
pub struct IdleReport {
    /// Connections held open at the end.
    pub connections: usize,
    /// Devices they authenticate as (several connections per device).
    pub devices: usize,
    /// Server RSS before any connection, KiB.
    pub rss_base_kb: Option<u64>,
    /// Server RSS at half and at all connections, KiB.
    pub rss_half_kb: Option<u64>,
    /// Server RSS with every connection open, KiB.
    pub rss_full_kb: Option<u64>,
    /// (rss_full - rss_half) / (connections - half), KiB.
    pub rss_kb_per_conn: Option<f64>,
    /// Authenticated connections per second while opening them (`in_flight` at a time).
    pub connects_per_sec: f64,
}

/// Resident set size of a process, KiB (from /proc/PID/status).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(ws_url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    match ws.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) if t.contains("ready") => Ok(ws),
        other => bail!("no ready frame: {other:?}"),
    }
}

/// Opens `n` connections spread over `devices`, `in_flight` at a time.
async fn open(
    ws_url: &str,
    devices: &[Device],
    first: usize,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<Vec<Ws>> {
    let tokens: Vec<String> = (first..first + n)
        .map(|i| devices[i % devices.len()].token.clone())
        .collect();
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(tokens)
        .map(|t| async move { connect(ws_url, &t).await })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Runs the benchmark against `url`; `pid` is the server process (for RSS), when known.
pub async fn run(
    url: &str,
    connections: usize,
    devices: usize,
    in_flight: usize,
    pid: Option<u32>,
) -> anyhow::Result<IdleReport> {
    if connections < 2 || devices == 0 {
        bail!("need at least 2 connections and 1 device");
    }
    let http = crate::http_client(64)?;
    let run_id = format!("{:x}", std::process::id() % 0xffff);
    eprintln!("registering {devices} devices...");
    let mut devs = Vec::with_capacity(devices);
    for i in 0..devices {
        devs.push(
            register_with(
                &http,
                url,
                &format!("idle{run_id}x{i}"),
                sotto_proto::mls::CLASSIC_CIPHERSUITE,
            )
            .await
            .with_context(|| format!("registering device {i}"))?,
        );
    }
    let ws_url = format!("{}/v1/ws", url.replacen("http", "ws", 1));
    let settle = || tokio::time::sleep(Duration::from_millis(1500));
    settle().await;
    let rss_base_kb = pid.and_then(rss_kb);
    let half = connections / 2;
    eprintln!("opening {half} connections...");
    let t0 = Instant::now();
    let mut held = open(&ws_url, &devs, 0, half, in_flight).await?;
    let t_half = t0.elapsed();
    settle().await;
    let rss_half_kb = pid.and_then(rss_kb);
    eprintln!("opening {} more...", connections - half);
    let t1 = Instant::now();
    held.extend(open(&ws_url, &devs, half, connections - half, in_flight).await?);
    let t_rest = t1.elapsed();
    settle().await;
    let rss_full_kb = pid.and_then(rss_kb);
    let rss_kb_per_conn = match (rss_half_kb, rss_full_kb) {
        (Some(a), Some(b)) => Some((b as f64 - a as f64) / (connections - half) as f64),
        _ => None,
    };
    let connects_per_sec = connections as f64 / (t_half + t_rest).as_secs_f64();
    let report = IdleReport {
        connections: held.len(),
        devices,
        rss_base_kb,
        rss_half_kb,
        rss_full_kb,
        rss_kb_per_conn,
        connects_per_sec,
    };
    drop(held);
    Ok(report)
}
