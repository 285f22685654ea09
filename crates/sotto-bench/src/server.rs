//! Starting `sottod` processes for a benchmark, and reading their CPU time from /proc.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// A `sottod` process started by the benchmark; killed on drop.
#[derive(Debug)]
pub struct Sottod {
    child: Child,
    /// Its base URL.
    pub url: String,
}

impl Sottod {
    /// Starts the `sottod` built next to this binary with `args` on a free loopback port, rate
    /// limits off (the load generator is one address driving many devices).
    pub fn start(args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let bin: PathBuf = exe.with_file_name("sottod");
        if !bin.exists() {
            bail!(
                "{} not found: build it with `cargo build --release --bins`",
                bin.display()
            );
        }
        let mut child = Command::new(&bin)
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--no-rate-limits"])
            .env("SOTTO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .context("sottod did not report its address")?
            .to_owned();
        Ok(Self { child, url })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sottod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// User + system CPU time of a process so far, in microseconds (from /proc/PID/stat).
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / clock_ticks_per_sec())
}
