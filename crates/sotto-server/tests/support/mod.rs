//! Shared by the integration tests that run the real `sottod` binary.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `sottod` process on a free loopback port; killed (SIGKILL) on drop.
pub struct Sottod {
    pub child: Child,
    /// Its base URL, from the line it prints once it accepts connections.
    pub url: String,
}

impl Sottod {
    /// Starts `sottod ARGS --listen 127.0.0.1:0`, its log going to `stderr`.
    pub fn start(args: &[&str], stderr: Stdio) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sottod"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("sottod said {line:?}"))
            .to_owned();
        Self { child, url }
    }

    /// kill -9, and wait for it.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Sottod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client (rustls with ring's algorithms, as the server links).
pub fn http() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
