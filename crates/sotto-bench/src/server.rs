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
        let mut s = Self::spawn(args, "warn", Stdio::inherit())?;
        s.url = s.read_url()?;
        Ok(s)
    }

    fn spawn(args: &[String], log: &str, stderr: Stdio) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let bin: PathBuf = exe.with_file_name("sottod");
        if !bin.exists() {
            bail!(
                "{} not found: build it with `cargo build --release --bins`",
                bin.display()
            );
        }
        let child = Command::new(&bin)
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--no-rate-limits"])
            .env("SOTTO_LOG", log)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            url: String::new(),
        })
    }

    fn read_url(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let stdout = self.child.stdout.take().context("no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        Ok(line
            .trim()
            .strip_prefix("listening on ")
            .context("sottod did not report its address")?
            .to_owned())
    }

    /// [`Sottod::start`], keeping the server's info lines about its maintenance: each line it
    /// writes to stderr goes into the returned log with the time it arrived (warnings and
    /// errors are passed on to this process's stderr too).
    pub fn start_watched(args: &[String]) -> anyhow::Result<(Self, ServerLog)> {
        let log: ServerLog = Default::default();
        let mut s = Self::spawn(args, "warn,sotto_server=info", Stdio::piped())?;
        let stderr = s.child.stderr.take().context("no stderr")?;
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("{line}");
                }
                if let Ok(mut l) = sink.lock() {
                    l.push((std::time::SystemTime::now(), line));
                }
            }
        });
        s.url = s.read_url()?;
        Ok((s, log))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Lines a watched server wrote, with when each arrived.
pub type ServerLog = std::sync::Arc<std::sync::Mutex<Vec<(std::time::SystemTime, String)>>>;

/// The deletions (lines containing `marker`: "deleted expired messages", "pruned the log") in a
/// watched server's log: (when its line arrived, entries deleted, how long it took in ms).
pub fn purges(log: &ServerLog, marker: &str) -> Vec<(std::time::SystemTime, u64, u64)> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = line.split(&format!("{name}=")).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let Ok(lines) = log.lock() else {
        return Vec::new();
    };
    lines
        .iter()
        .filter(|(_, l)| l.contains(marker))
        .filter_map(|(at, l)| Some((*at, field(l, "entries")?, field(l, "elapsed_ms")?)))
        .collect()
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
