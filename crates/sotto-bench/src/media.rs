//! `media`: one file sent through a real sottod, and the machine's own limits beside it.
//!
//! In one run, for a file of `size` bytes:
//! - the AEAD's single-core speed: `sotto_proto::attachment::Encryptor` over the bytes in memory
//!   (ChaCha20-Poly1305 in STREAM segments, plus the SHA-256 of the blob: what a sender does);
//! - a plain loopback copy of the same number of bytes over TCP;
//! - encrypt + upload: `Dm::send_file` from a file on disk to a sottod this run starts (tus PATCHes,
//!   the server writing pieces and assembling the blob), until the message is sent;
//! - download + decrypt: `Client::download` to a file, verified, renamed into place;
//! - the peak RSS growth of this process (the client) and of sottod during each transfer, from
//!   `VmHWM` after resetting it (`/proc/PID/clear_refs`).
//!
//! Dirty pages are flushed (`sync`) before each transfer, so each pays for its own disk writes.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use sotto_client::{Client, FileToSend, Progress};
use sotto_proto::attachment::{Encryptor, FileKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::Sottod;

/// What a media run measured (MB/s are 10^6 bytes of file per second).
#[derive(Debug)]
pub struct MediaReport {
    /// File size in bytes.
    pub size: u64,
    /// Encryptor speed in memory, one core.
    pub aead_mb_s: f64,
    /// Plain TCP copy over loopback.
    pub loopback_mb_s: f64,
    /// Encrypt + upload + send.
    pub upload_mb_s: f64,
    /// Download + decrypt + verify + rename.
    pub download_mb_s: f64,
    /// A plain GET of the blob, nothing decrypted or written (the server's side of a download).
    pub fetch_only_mb_s: f64,
    /// Peak RSS growth during the upload, KiB: (client, server).
    pub upload_rss_kb: (Option<u64>, Option<u64>),
    /// Peak RSS growth during the download, KiB: (client, server).
    pub download_rss_kb: (Option<u64>, Option<u64>),
}

fn status_kb(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak RSS of `pid` to its current RSS; returns the current RSS.
fn reset_peak(pid: &str) -> Option<u64> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").ok()?;
    status_kb(pid, "VmRSS:")
}

fn peak_growth(pid: &str, base: Option<u64>) -> Option<u64> {
    Some(status_kb(pid, "VmHWM:")?.saturating_sub(base?))
}

/// Flushes every dirty page to disk, so that each timed phase pays for its own writes only.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// The Encryptor over `size` bytes (at most 512 MiB of it, in memory; the speed is per byte).
fn aead_speed(size: u64) -> anyhow::Result<f64> {
    let n = size.clamp(1, 512 * 1024 * 1024) as usize;
    let mut data = vec![0u8; n];
    fill(&mut data, 7);
    let key = FileKey::random();
    let start = Instant::now();
    let mut enc = Encryptor::new(&key, n as u64);
    let mut out = Vec::with_capacity(2 * 1024 * 1024);
    for piece in data.chunks(1024 * 1024) {
        out.clear();
        enc.push(piece, &mut out)?;
    }
    loop {
        out.clear();
        if enc.finish_step(&mut out)?.is_some() {
            break;
        }
    }
    Ok(mb_s(n as u64, start.elapsed().as_secs_f64()))
}

/// A plain TCP copy of `size` bytes over loopback, 1 MiB writes.
async fn loopback_speed(size: u64) -> anyhow::Result<f64> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = l.accept().await?;
        let mut buf = vec![0u8; 1024 * 1024];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        anyhow::Ok(got)
    });
    let mut buf = vec![0u8; 1024 * 1024];
    fill(&mut buf, 3);
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut sent = 0u64;
    while sent < size {
        let n = (size - sent).min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    s.shutdown().await?;
    let got = reader.await??;
    anyhow::ensure!(got == size, "loopback copy lost bytes");
    Ok(mb_s(size, start.elapsed().as_secs_f64()))
}

fn write_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1024 * 1024];
    let mut left = size;
    let mut seed = 11;
    while left > 0 {
        fill(&mut buf, seed);
        seed += 1;
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Runs the media benchmark for a file of `size` bytes.
pub async fn run(size: u64) -> anyhow::Result<MediaReport> {
    let tmp = tempfile::tempdir()?;
    let server = Sottod::start(&[
        "--data-dir".into(),
        tmp.path().join("data").display().to_string(),
        "--max-file-mb".into(),
        "2048".into(),
        "--account-quota-mb".into(),
        "0".into(),
    ])?;
    let spid = server.pid().to_string();
    let a = Client::open(&tmp.path().join("a"), Some(&server.url))?;
    a.account().register("alice").await?;
    let b = Client::open(&tmp.path().join("b"), Some(&server.url))?;
    b.account().register("bob").await?;
    a.dm("bob").send("hello").await?;
    b.sync().await?;

    let aead_mb_s = aead_speed(size).context("AEAD")?;
    let loopback_mb_s = loopback_speed(size).await.context("loopback")?;

    let path = tmp.path().join("file.bin");
    write_file(&path, size)?;
    settle();
    let file = FileToSend {
        path: path.clone(),
        ..FileToSend::default()
    };
    let (c0, s0) = (reset_peak("self"), reset_peak(&spid));
    let start = Instant::now();
    let (m, _) = a
        .dm("bob")
        .send_file(&file, &mut |_: Progress| {})
        .await
        .context("upload")?;
    let upload_mb_s = mb_s(size, start.elapsed().as_secs_f64());
    let upload_rss_kb = (peak_growth("self", c0), peak_growth(&spid, s0));

    b.sync().await?;
    settle();
    let out = tmp.path().join("out.bin");
    let (c0, s0) = (reset_peak("self"), reset_peak(&spid));
    let start = Instant::now();
    b.download(&m.id, Some(&out), &mut |_: Progress| {})
        .await
        .context("download")?;
    let download_mb_s = mb_s(size, start.elapsed().as_secs_f64());
    let download_rss_kb = (peak_growth("self", c0), peak_growth(&spid, s0));
    anyhow::ensure!(
        std::fs::metadata(&out)?.len() == size,
        "the downloaded file is not the size sent"
    );
    let (_, rec) = b.engine().attachment(&m.id)?.context("no attachment")?;
    let token = b.engine().dangerous_bearer_token().context("no token")?;
    let http = crate::http_client(1)?;
    let start = Instant::now();
    let mut resp = http
        .get(format!("{}/v1/blobs/{}", server.url, rec.blob))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    let mut got = 0u64;
    while let Some(c) = resp.chunk().await? {
        got += c.len() as u64;
    }
    let fetch_only_mb_s = mb_s(got, start.elapsed().as_secs_f64());
    Ok(MediaReport {
        size,
        aead_mb_s,
        loopback_mb_s,
        upload_mb_s,
        download_mb_s,
        fetch_only_mb_s,
        upload_rss_kb,
        download_rss_kb,
    })
}
