//! Abuse limits: token buckets per device and per IP address, answered with 429 `rate_limited` and
//! `Retry-After`.
//!
//! Per-device limits are keyed by the *authenticated* device (so nobody can drain another device's
//! bucket by naming it), per-IP limits by the connection's peer address (behind a reverse proxy
//! that is the proxy's: raise or disable the per-IP limits there). Buckets live in this node's
//! memory (with several nodes each enforces its own), or with `--limits redis://...` in Redis,
//! shared by every node. The limiter fails closed: a full table refuses new keys, and an
//! unreachable Redis refuses limited requests unless the operator chose to fail open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ds::DsError;

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

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    class: Class,
}

impl Bucket {
    /// Whether the bucket has refilled completely by `now` at its class's rate: then it carries
    /// no state (a new one would be the same) and can go.
    fn full(&self, limits: &Limits, now: Instant) -> bool {
        let Some(rate) = limits.rate(self.class) else {
            return true;
        };
        let capacity = f64::from(rate.count);
        let refill = capacity / rate.per.as_secs_f64();
        self.tokens + now.duration_since(self.at).as_secs_f64() * refill >= capacity
    }
}

/// Buckets held by one node at most. Past it, full buckets are dropped to make room, and if
/// none is full the new key is refused: the limiter never stops limiting (it fails closed).
const MAX_BUCKETS: usize = 1_000_000;
/// The buckets are spread over this many maps, each behind its own lock.
const SHARDS: usize = 16;

/// One node's buckets, keyed by a keyed hash of (class, key): no allocation per check, and
/// nobody who does not know this process's random hash key can make two keys collide.
struct LocalBuckets {
    shards: Vec<Mutex<HashMap<u64, Bucket>>>,
    hash_key: std::collections::hash_map::RandomState,
    per_shard: usize,
}

impl LocalBuckets {
    fn new(max: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hash_key: std::collections::hash_map::RandomState::new(),
            per_shard: max.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, h: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Bucket>> {
        // A panic while a lock was held leaves the map as it was between two checks: keep
        // using it rather than stop limiting.
        self.shards[(h % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, limits: &Limits, class: Class, key: Key<'_>, rate: Rate) -> Result<(), Refusal> {
        use std::hash::BuildHasher;
        let h = self.hash_key.hash_one((class, key));
        let now = Instant::now();
        let capacity = f64::from(rate.count);
        let refill_per_sec = capacity / rate.per.as_secs_f64();
        let mut shard = self.shard(h);
        if shard.len() >= self.per_shard && !shard.contains_key(&h) {
            // Full buckets carry no state: dropping them changes nothing for their keys.
            shard.retain(|_, b| !b.full(limits, now));
            if shard.len() >= self.per_shard {
                return Err(Refusal::Crowded);
            }
        }
        let b = shard.entry(h).or_insert(Bucket {
            tokens: capacity,
            at: now,
            class,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * refill_per_sec).min(capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Refusal::Wait(
            ((1.0 - b.tokens) / refill_per_sec).ceil().max(1.0) as u64,
        ))
    }

    fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i as u64).len()).sum()
    }
}

/// What a bucket is for, hashed as it is (no text made on the local path).
#[derive(Debug, Clone, Copy, Hash)]
enum Key<'a> {
    /// A device id.
    Device(&'a str),
    /// An IPv4 address.
    V4([u8; 4]),
    /// An IPv6 /64.
    V6Net([u16; 4]),
}

impl Key<'_> {
    /// The key as text, for the shared buckets (whose Redis keys every node must derive alike).
    fn text(self) -> String {
        match self {
            Key::Device(d) => d.to_owned(),
            Key::V4(b) => std::net::Ipv4Addr::from(b).to_string(),
            Key::V6Net(s) => format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]),
        }
    }
}

/// Why a check said no.
enum Refusal {
    /// Over the rate: try again in this many seconds.
    Wait(u64),
    /// This node holds as many buckets as it may, none of them idle.
    Crowded,
    /// The shared limiter cannot be reached and the node fails closed.
    Unreachable,
}

/// What a node does when the shared limiter (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// Fall back to this node's own buckets (availability first: N nodes then allow N times
    /// the rate, as without Redis).
    Open,
    /// Refuse them with 503 `unavailable` (abuse protection first). The default.
    Closed,
}

/// Token buckets shared by every node, in Redis: one script call per check (GCRA on the
/// server's clock, so nodes' clocks do not matter), keyed by a SHA-256 of the class and key
/// (no device id or address is stored in Redis as such).
pub struct SharedBuckets {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    fail: FailMode,
    /// Whether the last call failed (so the log says it once per outage, not per request).
    down: std::sync::atomic::AtomicBool,
}

/// GCRA: a key's "theoretical arrival time" moves one emission interval per allowed request
/// and may run at most one window ahead of now. Returns 0 when allowed, else the milliseconds
/// to wait.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > window then
  return next_tat - now - window
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now))
return 0
"#;

impl SharedBuckets {
    /// Connects to Redis at `url` (`redis://HOST:PORT`); fails if it cannot be reached now.
    pub async fn connect(url: &str, fail: FailMode) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("the --limits URL: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| format!("connecting to Redis for the rate limits: {e}"))?;
        Ok(Self {
            conn,
            script: redis::Script::new(GCRA),
            fail,
            down: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `Ok(None)`: Redis did not answer and the node fails open.
    async fn take(&self, class: Class, key: Key<'_>, rate: Rate) -> Result<Option<()>, Refusal> {
        use sha2::Digest;
        let key = key.text();
        let mut h = sha2::Sha256::new();
        h.update(class.label().as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        let digest = h.finalize();
        let mut name = String::with_capacity(9 + 32);
        name.push_str("sotto:rl:");
        for b in &digest[..16] {
            use std::fmt::Write;
            let _ = write!(name, "{b:02x}");
        }
        let window_ms = rate.per.as_millis().max(1) as u64;
        let interval_ms = (window_ms / u64::from(rate.count)).max(1);
        let mut conn = self.conn.clone();
        let answer: Result<u64, _> = self
            .script
            .key(name)
            .arg(interval_ms)
            .arg(window_ms)
            .invoke_async(&mut conn)
            .await;
        match answer {
            Ok(wait_ms) => {
                if self.down.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!("shared rate limits reachable again");
                }
                if wait_ms == 0 {
                    Ok(Some(()))
                } else {
                    Err(Refusal::Wait(wait_ms.div_ceil(1000).max(1)))
                }
            }
            Err(e) => {
                if !self.down.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    match self.fail {
                        FailMode::Open => {
                            tracing::error!(error = %e, "shared rate limits unreachable: failing open, each node limits on its own until Redis answers")
                        }
                        FailMode::Closed => {
                            tracing::error!(error = %e, "shared rate limits unreachable: failing closed, limited requests are refused with 503 until Redis answers")
                        }
                    }
                }
                metrics::counter!("sotto_ratelimit_backend_errors_total").increment(1);
                match self.fail {
                    FailMode::Open => Ok(None),
                    FailMode::Closed => Err(Refusal::Unreachable),
                }
            }
        }
    }
}

/// The rate limits of a node: its own buckets, or buckets shared by every node in Redis.
pub struct RateLimiter {
    limits: Limits,
    local: LocalBuckets,
    shared: Option<SharedBuckets>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with this node's own buckets.
    pub fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, MAX_BUCKETS)
    }

    /// [`RateLimiter::new`] holding at most `max` buckets (tests make it small).
    pub fn with_capacity(limits: Limits, max: usize) -> Self {
        Self {
            limits,
            local: LocalBuckets::new(max),
            shared: None,
        }
    }

    /// A limiter whose buckets every node shares.
    pub fn shared(limits: Limits, buckets: SharedBuckets) -> Self {
        Self {
            shared: Some(buckets),
            ..Self::new(limits)
        }
    }

    /// Takes one token for `key` in `class`, or says how long to wait (429 `rate_limited` with
    /// `Retry-After`); 503 `unavailable` when it cannot tell (no room left for a new key, or the
    /// shared limiter is unreachable and the node fails closed).
    pub async fn check(&self, class: Class, key: &str) -> Result<(), DsError> {
        self.check_key(class, Key::Device(key)).await
    }

    async fn check_key(&self, class: Class, key: Key<'_>) -> Result<(), DsError> {
        let Some(rate) = self.limits.rate(class) else {
            return Ok(());
        };
        let outcome = match &self.shared {
            Some(shared) => match shared.take(class, key, rate).await {
                Ok(Some(())) => Ok(()),
                Ok(None) => self.local.take(&self.limits, class, key, rate),
                Err(r) => Err(r),
            },
            None => self.local.take(&self.limits, class, key, rate),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(Refusal::Wait(wait)) => {
                metrics::counter!("sotto_rate_limited_total", "class" => class.label())
                    .increment(1);
                Err(DsError::rate_limited(
                    format!("too many {}; try again in {wait} s", class.what()),
                    wait,
                ))
            }
            Err(Refusal::Crowded) => {
                metrics::counter!("sotto_rate_limited_total", "class" => "crowded").increment(1);
                Err(DsError::rate_limited(
                    "this server is busy with many clients; try again shortly",
                    1,
                ))
            }
            Err(Refusal::Unreachable) => Err(DsError::new(
                sotto_api::ErrorCode::Unavailable,
                "the server cannot check its rate limits right now; try again shortly",
            )),
        }
    }

    /// [`RateLimiter::check`] keyed by an IP address: IPv4 per address, IPv6 per /64 (one
    /// subscriber's usual allocation, so cycling addresses gains nothing). No address, as in
    /// in-process tests: no limit.
    pub async fn check_ip(&self, class: Class, ip: Option<IpAddr>) -> Result<(), DsError> {
        let key = match ip {
            Some(IpAddr::V4(v4)) => Key::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Key::V4(v4.octets()),
                None => {
                    let s = v6.segments();
                    Key::V6Net([s[0], s[1], s[2], s[3]])
                }
            },
            None => return Ok(()),
        };
        self.check_key(class, key).await
    }

    /// Drops this node's buckets that have refilled completely (they carry no state), each
    /// judged by its own class's rate. Run periodically (the server's maintenance task).
    pub fn sweep(&self) {
        let now = Instant::now();
        for i in 0..SHARDS {
            self.local
                .shard(i as u64)
                .retain(|_, b| !b.full(&self.limits, now));
        }
    }

    /// Buckets this node holds (for tests and metrics).
    pub fn len(&self) -> usize {
        self.local.len()
    }

    /// Whether this node holds no bucket.
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

    #[tokio::test]
    async fn a_bucket_allows_its_burst_then_refuses_with_a_wait_and_keys_are_separate() {
        let l = RateLimiter::new(Limits {
            send_per_device: Some(Rate::per_min(3)),
            ..Limits::none()
        });
        for _ in 0..3 {
            l.check(Class::Send, "d1").await.unwrap();
        }
        let e = l.check(Class::Send, "d1").await.unwrap_err();
        assert_eq!(e.retry_after, Some(20));
        l.check(Class::Send, "d2").await.unwrap();
        // Unlimited classes never refuse.
        for _ in 0..1000 {
            l.check(Class::Claim, "d1").await.unwrap();
        }
        // Sweeping keeps every bucket that has not refilled, judged by its own rate.
        l.sweep();
        assert_eq!(l.len(), 2);
    }

    #[tokio::test]
    async fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let l = RateLimiter::new(Limits {
            register_per_ip: Some(Rate::per_min(2)),
            ..Limits::none()
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        l.check_ip(Class::Register, Some(a)).await.unwrap();
        l.check_ip(Class::Register, Some(b)).await.unwrap();
        assert!(l.check_ip(Class::Register, Some(a)).await.is_err());
        l.check_ip(Class::Register, Some(other)).await.unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        l.check_ip(Class::Register, Some(v4)).await.unwrap();
        l.check_ip(Class::Register, Some(mapped)).await.unwrap();
        assert!(l.check_ip(Class::Register, Some(v4)).await.is_err());
    }

    /// A key that lands in shard `n` of `l`.
    fn key_in_shard(l: &RateLimiter, class: Class, n: u64) -> String {
        use std::hash::BuildHasher;
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| l.local.hash_key.hash_one((class, Key::Device(k))) % SHARDS as u64 == n)
            .expect("some key lands in every shard")
    }

    #[tokio::test]
    async fn a_full_table_refuses_new_keys_and_keeps_limiting_the_old_ones() {
        // One bucket per shard.
        let l = RateLimiter::with_capacity(
            Limits {
                send_per_device: Some(Rate::per_min(2)),
                ..Limits::none()
            },
            SHARDS,
        );
        let (mut admitted, mut crowded) = (Vec::new(), 0);
        for i in 0..1000 {
            let key = format!("d{i}");
            match l.check(Class::Send, &key).await {
                Ok(()) => admitted.push(key),
                Err(e) => {
                    assert_eq!(e.code, sotto_api::ErrorCode::RateLimited);
                    assert!(e.message.contains("busy"), "{}", e.message);
                    crowded += 1;
                }
            }
        }
        assert_eq!((admitted.len(), crowded), (SHARDS, 1000 - SHARDS));
        // The admitted keys keep their own limits: a second token, then a wait.
        for key in &admitted {
            l.check(Class::Send, key).await.unwrap();
            let e = l.check(Class::Send, key).await.unwrap_err();
            assert_eq!(e.retry_after, Some(30));
        }
    }

    #[tokio::test]
    async fn buckets_that_refilled_make_room_for_new_keys() {
        let l = RateLimiter::with_capacity(
            Limits {
                claim_per_device: Some(Rate::per_sec(1000)),
                send_per_device: Some(Rate::per_min(2)),
                ..Limits::none()
            },
            SHARDS,
        );
        let fast = key_in_shard(&l, Class::Claim, 3);
        l.check(Class::Claim, &fast).await.unwrap();
        // A millisecond later that bucket is full again: it goes to make room.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let slow = key_in_shard(&l, Class::Send, 3);
        l.check(Class::Send, &slow).await.unwrap();
        // The slow one is not full: it stays, and the next newcomer there is refused.
        let other = (0..)
            .map(|i| format!("x{i}"))
            .find(|k| {
                use std::hash::BuildHasher;
                l.local.hash_key.hash_one((Class::Send, Key::Device(k))) % SHARDS as u64 == 3
                    && *k != slow
            })
            .unwrap();
        assert!(l.check(Class::Send, &other).await.is_err());
    }

    #[tokio::test]
    async fn a_poisoned_lock_does_not_stop_the_limits() {
        let l = RateLimiter::new(Limits {
            send_per_device: Some(Rate::per_min(1)),
            ..Limits::none()
        });
        let key = key_in_shard(&l, Class::Send, 0);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = l.local.shards[0].lock();
            panic!("a panic while the lock is held");
        }));
        assert!(l.local.shards[0].is_poisoned());
        l.check(Class::Send, &key).await.unwrap();
        assert!(l.check(Class::Send, &key).await.is_err());
    }
}
