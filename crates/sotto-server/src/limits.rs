//! Abuse limits: token buckets per device and per IP address, answered with 429 `rate_limited` and
//! `Retry-After`.
//!
//! Per-device limits are keyed by the *authenticated* device (so nobody can drain another device's
//! bucket by naming it), per-IP limits by the connection's peer address (behind a reverse proxy
//! that is the proxy's: raise or disable the per-IP limits there). Buckets live in this node's
//! memory: with several nodes each enforces its own share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// A rate: `count` events per `per`, in bursts of up to `count`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Events allowed per window (also the burst size).
    pub count: u32,
    /// The window.
    pub per: Duration,
}

impl Rate {
    /// `count` per second.
    pub const fn per_sec(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(1),
        }
    }

    /// `count` per minute.
    pub const fn per_min(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(60),
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    /// `N/s`, `N/min` or `N/h`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("rate {s:?}: expected N/s, N/min or N/h"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?}: {n:?} is not a whole number"))?;
        if count == 0 {
            return Err(format!("rate {s:?}: must allow at least one event"));
        }
        let per = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            u => return Err(format!("rate {s:?}: unknown unit {u:?} (s, min, h)")),
        };
        Ok(Self { count, per })
    }
}

/// What is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Account registration and device linking, per IP.
    Register,
    /// Key-package claims, per device.
    Claim,
    /// Messages and commits, per device.
    Send,
    /// Push connections, per device.
    ConnectDevice,
    /// Push connections, per IP.
    ConnectIp,
    /// Key-package claims, per IP (all devices behind one address together).
    ClaimIp,
    /// Messages and commits, per IP.
    SendIp,
    /// Ephemeral messages (typing indicators), per device.
    Ephemeral,
}

impl Class {
    /// The class as a metrics label.
    fn label(self) -> &'static str {
        match self {
            Class::Register => "register",
            Class::Claim => "claim",
            Class::Send => "send",
            Class::ConnectDevice => "connect_device",
            Class::ConnectIp => "connect_ip",
            Class::ClaimIp => "claim_ip",
            Class::SendIp => "send_ip",
            Class::Ephemeral => "ephemeral",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Class::Register => "registrations from your address",
            Class::Claim => "key-package claims",
            Class::Send => "messages",
            Class::ConnectDevice => "push connections for this device",
            Class::ConnectIp => "connections from your address",
            Class::ClaimIp => "key-package claims from your address",
            Class::SendIp => "messages from your address",
            Class::Ephemeral => "typing indicators",
        }
    }
}

/// The configured rates (`None`: unlimited).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Registrations and device links per IP address.
    pub register_per_ip: Option<Rate>,
    /// Key-package claims per device (one claim covers all of an account's devices).
    pub claim_per_device: Option<Rate>,
    /// Messages and commits per device.
    pub send_per_device: Option<Rate>,
    /// Push connections per device.
    pub connect_per_device: Option<Rate>,
    /// Push connections per IP address.
    pub connect_per_ip: Option<Rate>,
    /// Key-package claims per IP address.
    pub claim_per_ip: Option<Rate>,
    /// Messages and commits per IP address.
    pub send_per_ip: Option<Rate>,
    /// Ephemeral messages (typing indicators) per device.
    pub ephemeral_per_device: Option<Rate>,
}

impl Default for Limits {
    /// Generous for people and their devices, tight enough that one device or address cannot
    /// flood the server or drain other accounts' key packages.
    fn default() -> Self {
        Self {
            register_per_ip: Some(Rate::per_min(30)),
            claim_per_device: Some(Rate::per_min(300)),
            send_per_device: Some(Rate::per_sec(50)),
            connect_per_device: Some(Rate::per_min(30)),
            connect_per_ip: Some(Rate::per_min(600)),
            // Per address: many people may share one (a company's NAT), so these only stop one
            // machine with many devices from flooding.
            claim_per_ip: Some(Rate::per_min(3000)),
            send_per_ip: Some(Rate::per_sec(500)),
            // A client sends one every few seconds while the user types.
            ephemeral_per_device: Some(Rate::per_min(60)),
        }
    }
}

impl Limits {
    /// No limits at all (load tests against a server of your own).
    pub fn none() -> Self {
        Self {
            register_per_ip: None,
            claim_per_device: None,
            send_per_device: None,
            connect_per_device: None,
            connect_per_ip: None,
            claim_per_ip: None,
            send_per_ip: None,
            ephemeral_per_device: None,
        }
    }

    fn rate(&self, class: Class) -> Option<Rate> {
        match class {
            Class::Register => self.register_per_ip,
            Class::Claim => self.claim_per_device,
            Class::Send => self.send_per_device,
            Class::ConnectDevice => self.connect_per_device,
            Class::ConnectIp => self.connect_per_ip,
            Class::ClaimIp => self.claim_per_ip,
            Class::SendIp => self.send_per_ip,
            Class::Ephemeral => self.ephemeral_per_device,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one node.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    buckets: Mutex<HashMap<(Class, String), Bucket>>,
}

/// Beyond this many buckets new keys are not tracked until the next sweep (they pass): memory
/// stays bounded whatever an attacker varies.
const MAX_BUCKETS: usize = 1_000_000;

impl RateLimiter {
    /// Buckets for `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` in `class`, or says how long to wait.
    pub fn check(&self, class: Class, key: &str) -> Result<(), ApiError> {
        let Some(rate) = self.limits.rate(class) else {
            return Ok(());
        };
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let capacity = f64::from(rate.count);
        let refill_per_sec = capacity / rate.per.as_secs_f64();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&(class, key.to_owned())) {
            return Ok(());
        }
        let b = buckets.entry((class, key.to_owned())).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * refill_per_sec).min(capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - b.tokens) / refill_per_sec).ceil().max(1.0) as u64;
        metrics::counter!("sotto_rate_limited_total", "class" => class.label()).increment(1);
        Err(ApiError::rate_limited(
            format!("too many {}; try again in {wait} s", class.what()),
            wait,
        ))
    }

    /// [`RateLimiter::check`] keyed by an IP address: IPv4 per address, IPv6 per /64 (one
    /// subscriber's usual allocation, so cycling addresses gains nothing). No address, as in
    /// in-process tests: no limit.
    pub fn check_ip(&self, class: Class, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match ip {
            Some(IpAddr::V4(v4)) => self.check(class, &v4.to_string()),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => self.check(class, &v4.to_string()),
                None => {
                    let s = v6.segments();
                    self.check(
                        class,
                        &format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]),
                    )
                }
            },
            None => Ok(()),
        }
    }

    /// Drops buckets that have refilled completely (they carry no state), each judged by its own
    /// class's rate. Run periodically (the server's maintenance task), never on the request path.
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.retain(|(class, _), b| match self.limits.rate(*class) {
                Some(rate) => {
                    let capacity = f64::from(rate.count);
                    let refill = capacity / rate.per.as_secs_f64();
                    b.tokens + now.duration_since(b.at).as_secs_f64() * refill < capacity
                }
                None => false,
            });
        }
    }

    /// Buckets held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!("30/min".parse::<Rate>().unwrap(), Rate::per_min(30));
        assert_eq!("5/s".parse::<Rate>().unwrap(), Rate::per_sec(5));
        assert_eq!(
            "2/h".parse::<Rate>().unwrap().per,
            Duration::from_secs(3600)
        );
        for bad in ["", "5", "0/s", "x/s", "5/day", "-1/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait_and_keys_are_separate() {
        let l = RateLimiter::new(Limits {
            send_per_device: Some(Rate::per_min(3)),
            ..Limits::none()
        });
        for _ in 0..3 {
            l.check(Class::Send, "d1").unwrap();
        }
        let e = l.check(Class::Send, "d1").unwrap_err();
        assert_eq!(e.retry_after, Some(20));
        l.check(Class::Send, "d2").unwrap();
        // Unlimited classes never refuse.
        for _ in 0..1000 {
            l.check(Class::Claim, "d1").unwrap();
        }
        // Sweeping keeps every bucket that has not refilled, judged by its own rate.
        l.sweep();
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let l = RateLimiter::new(Limits {
            register_per_ip: Some(Rate::per_min(2)),
            ..Limits::none()
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        l.check_ip(Class::Register, Some(a)).unwrap();
        l.check_ip(Class::Register, Some(b)).unwrap();
        assert!(l.check_ip(Class::Register, Some(a)).is_err());
        l.check_ip(Class::Register, Some(other)).unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        l.check_ip(Class::Register, Some(v4)).unwrap();
        l.check_ip(Class::Register, Some(mapped)).unwrap();
        assert!(l.check_ip(Class::Register, Some(v4)).is_err());
    }
}
