//! The relay benchmark: DM pairs, open-loop sends, receivers woken over WebSocket that fetch over
//! HTTP. Latency is measured from each message's *scheduled* send time to the moment its receiver
//! has fetched it, on this process's clock, so a slow server cannot hide its queueing delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use sotto_api::*;
use sotto_proto::group::{GroupMetadata, Settings, Timer, TimerMode};
use sotto_proto::identity::unhex;
use sotto_proto::mls::{Changes, Conversation, DeviceKeys, Trust, ValidKeyPackage};
use sotto_proto::{AccountIdentity, DeviceId, IdentityPublicKey, Username};
use tokio::time::Instant;

/// What the relay run measured.
#[derive(Debug, Clone)]
pub struct RelayReport {
    /// Messages the server accepted.
    pub accepted: u64,
    /// Messages fetched by their receiver.
    pub delivered: u64,
    /// Delivered messages per second of the run.
    pub delivered_per_sec: f64,
    /// Send-to-receive latency percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Worst, ms.
    pub max_ms: f64,
    /// Server CPU per delivered message, us (when the benchmark knows the server processes).
    pub cpu_us_per_msg: Option<f64>,
    /// This load generator's own CPU per delivered message, us (it shares the machine).
    pub client_cpu_us_per_msg: Option<f64>,
    /// When the sending started, on the wall clock (to line samples up with server events).
    pub started_at: std::time::SystemTime,
    /// Every delivered message: (its scheduled send time in seconds after the start, its
    /// latency in ms), in schedule order.
    pub samples: Vec<(f64, f64)>,
}

/// What a relay run offers the server.
#[derive(Debug, Clone, Copy)]
pub struct RelayPlan {
    /// Devices (half send, half receive; one DM per pair).
    pub devices: usize,
    /// Messages per second in total.
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// How senders post.
    pub over: SendOver,
    /// A disappearing timer (seconds, after send) set in every DM before the run.
    pub timer: Option<u32>,
}

struct Pin(Username, IdentityPublicKey);
impl Trust for Pin {
    fn pinned_identity(&self, u: &Username) -> Option<IdentityPublicKey> {
        (u == &self.0).then_some(self.1)
    }
}

pub(crate) struct Device {
    pub(crate) user: Username,
    pub(crate) identity: AccountIdentity,
    pub(crate) keys: DeviceKeys,
    pub(crate) provider: OpenMlsRustCrypto,
    pub(crate) token: String,
}

pub(crate) async fn check<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> anyhow::Result<T> {
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        bail!(
            "server answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

async fn register(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<Device> {
    register_with(http, url, name, sotto_proto::mls::DEFAULT_CIPHERSUITE).await
}

/// Registers an account with one device holding one key package (and a last-resort one) of `suite`.
pub(crate) async fn register_with(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    suite: openmls_traits::types::Ciphersuite,
) -> anyhow::Result<Device> {
    let user = Username::new(name)?;
    let identity = AccountIdentity::generate();
    let keys = DeviceKeys::generate(&identity, &user, DeviceId::random(), 0);
    let provider = OpenMlsRustCrypto::default();
    let (one, lr) = keys.key_packages(&provider, suite, 1, true)?;
    let req = RegisterRequest {
        username: sotto_api::Username::new(name)?,
        identity_key: B64(identity.public().to_bytes().to_vec()),
        device: NewDevice {
            certificate: B64(keys.certificate().to_bytes()),
            key_packages: one.into_iter().map(B64).collect(),
            last_resort_key_packages: vec![B64(lr.context("no last-resort key package")?)],
        },
    };
    let resp: RegisterResponse = check(
        http.post(format!("{url}/v1/accounts"))
            .json(&req)
            .send()
            .await?,
    )
    .await?;
    Ok(Device {
        user,
        identity,
        keys,
        provider,
        token: resp.token,
    })
}

/// Posts a commit bundle as `token`'s device; fails unless the server accepts it.
pub(crate) async fn post_commit(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    conversation: &str,
    bundle: sotto_proto::mls::CommitBundle,
) -> anyhow::Result<Accepted> {
    check(
        http.post(format!("{url}/v1/conversations/{conversation}/commits"))
            .bearer_auth(token)
            .json(&CommitRequest {
                epoch: bundle.epoch,
                commit: B64(bundle.commit),
                welcome: bundle.welcome.map(B64),
                initial_group_info: bundle.initial_group_info.map(B64),
            })
            .send()
            .await?,
    )
    .await
}

/// One DM pair, ready to send: the conversation and messages encrypted in advance.
struct Pair {
    conversation: ConversationId,
    sender_token: String,
    receiver_token: String,
    payloads: Vec<Vec<u8>>,
    /// Log entries before the first message (the commits that set the DM up).
    setup_entries: u64,
}

async fn setup_pair(
    http: &reqwest::Client,
    send_url: &str,
    recv_url: &str,
    run: &str,
    i: usize,
    messages: usize,
    timer: Option<u32>,
) -> anyhow::Result<Pair> {
    let a = register(http, send_url, &format!("s{run}{i}")).await?;
    let b = register(http, recv_url, &format!("r{run}{i}")).await?;
    let dm: ConversationInfo = check(
        http.post(format!("{send_url}/v1/dms"))
            .bearer_auth(&a.token)
            .json(&CreateDmRequest {
                peer: sotto_api::Username::new(b.user.as_str())?,
            })
            .send()
            .await?,
    )
    .await?;
    let claim: ClaimResponse = check(
        http.post(format!("{send_url}/v1/key-packages/claim"))
            .bearer_auth(&a.token)
            .json(&ClaimRequest {
                username: sotto_api::Username::new(b.user.as_str())?,
                devices: vec![],
                ciphersuite: None,
            })
            .send()
            .await?,
    )
    .await?;
    let kp = claim.key_packages.first().context("no key package")?;
    let kp = ValidKeyPackage::parse(a.provider.crypto(), &kp.key_package.0)?
        .verify(&Pin(b.user.clone(), b.identity.public()))?;
    let gid = unhex(&dm.id).context("bad conversation id")?;
    let mut group = Conversation::create(
        &a.provider,
        &a.keys,
        &gid,
        sotto_proto::mls::DEFAULT_CIPHERSUITE,
        None,
    )?;
    let bundle = group.add_devices(&a.provider, &a.keys, &[kp])?;
    post_commit(http, send_url, &a.token, &dm.id, bundle).await?;
    group.merge_pending(&a.provider)?;
    let mut setup_entries = 1;
    if let Some(secs) = timer {
        // A disappearing timer in the DM's group context, as `sotto timer` sets it: the server
        // then stamps every later message with its expiry.
        let settings = Settings {
            timer: Some(Timer::new(secs, TimerMode::AfterSend)?),
            vanish: false,
        };
        let metadata = GroupMetadata::dm(settings);
        let bundle = group.commit(
            &a.provider,
            &a.keys,
            Changes {
                metadata: Some(&metadata),
                ..Changes::default()
            },
        )?;
        post_commit(http, send_url, &a.token, &dm.id, bundle).await?;
        group.merge_pending(&a.provider)?;
        setup_entries += 1;
    }
    let text = "x".repeat(100);
    let payloads = (0..messages)
        .map(|_| {
            let m = group.compose_text(&a.provider, &a.keys, &text, 0)?;
            group.encrypt(&a.provider, &a.keys, &m)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pair {
        conversation: ConversationId::new(dm.id)?,
        sender_token: a.token,
        receiver_token: b.token,
        payloads,
        setup_entries,
    })
}

/// When each message (pair index, sequence number) was scheduled, or arrived.
type Clock = Arc<Mutex<HashMap<(usize, u64), Instant>>>;
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens an authenticated WebSocket as `token`'s device.
async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    let ws_url = format!("ws{}/v1/ws", url.strip_prefix("http").unwrap_or(url));
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // No Nagle delay on either side of a latency benchmark.
    Ok(
        tokio_tungstenite::connect_async_with_config(req, None, true)
            .await?
            .0,
    )
}

fn text(frame: &ClientFrame) -> anyhow::Result<tokio_tungstenite::tungstenite::Message> {
    Ok(tokio_tungstenite::tungstenite::Message::Text(
        serde_json::to_string(frame)?.into(),
    ))
}

/// A receiver, as the SDK's `listen` does it: small entries arrive inside the push frame and are
/// applied when they are the next expected; anything else (a gap, a large entry, a resync) is
/// fetched over HTTP. Stamps each entry's arrival and acknowledges its read position once a second.
async fn receive(
    http: reqwest::Client,
    url: String,
    pair: usize,
    (conversation, token, setup_entries): (ConversationId, String, u64),
    arrivals: Clock,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    let mut ws = connect(&url, &token).await?;
    let mut cursor = setup_entries; // the setup commits
    let mut acked = cursor;
    let mut announced = false;
    let mut ack = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = ack.tick() => {
                if cursor > acked {
                    ws.send(text(&ClientFrame::Read { id: conversation.clone(), seq: cursor })?).await?;
                    acked = cursor;
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        let text = match msg? {
            tokio_tungstenite::tungstenite::Message::Text(t) => t,
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => continue,
        };
        // Only what the benchmark needs of a frame: the entry's ciphertext is not decoded.
        let f: Frame<'_> = serde_json::from_str(&text)?;
        let mine = f.id.as_deref() == Some(conversation.as_str());
        let fetch_to = match (f.kind, f.entry, f.seq) {
            ("ready", _, _) if !announced => {
                announced = true;
                let _ = ready.send(()).await;
                None
            }
            ("entry", Some(e), _) if mine && e.seq == cursor + 1 => {
                let now = Instant::now();
                cursor = e.seq;
                arrivals
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert((pair, e.seq), now);
                None
            }
            ("entry", Some(e), _) if mine && e.seq > cursor => Some(e.seq),
            ("conversation", _, Some(seq)) if mine && seq > cursor => Some(seq),
            ("resync", _, _) => Some(u64::MAX),
            _ => None,
        };
        if fetch_to.is_some() {
            loop {
                let page: LogPage = check(
                    http.get(format!(
                        "{url}/v1/conversations/{conversation}/log?after={cursor}"
                    ))
                    .bearer_auth(&token)
                    .send()
                    .await?,
                )
                .await?;
                let now = Instant::now();
                if let Some(last) = page.entries.last() {
                    cursor = last.seq;
                }
                {
                    let mut a = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    for e in &page.entries {
                        a.insert((pair, e.seq), now);
                    }
                }
                if !page.more {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The fields of a [`ServerFrame`] the benchmarks read.
#[derive(serde::Deserialize)]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    #[serde(borrow, default)]
    pub(crate) id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(default)]
    pub(crate) entry: Option<EntrySeq>,
    #[serde(rename = "ref", default)]
    reference: Option<u64>,
    #[serde(default)]
    accepted: Option<Accepted>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(serde::Deserialize)]
pub(crate) struct EntrySeq {
    pub(crate) seq: u64,
}

/// How the benchmark posts messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendOver {
    /// `send` frames on the device's WebSocket (answered by `sent` frames).
    Ws,
    /// `POST /v1/conversations/{id}/messages`, one request per message.
    Http,
}

/// A sender over its WebSocket: posts the prepared `send` frame of each message it is handed
/// (whatever is queued goes out with one flush), records each accepted message's scheduled time
/// under its sequence number.
async fn send_ws(
    mut ws: Ws,
    pair: usize,
    mut frames: Vec<String>,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>,
    sent: Clock,
) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut waiting: HashMap<u64, Instant> = HashMap::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            job = jobs.recv(), if open => {
                let Some(mut job) = job else { open = false; continue };
                loop {
                    let (j, scheduled) = job;
                    waiting.insert(j as u64 + 1, scheduled);
                    ws.feed(Message::Text(std::mem::take(&mut frames[j]).into())).await?;
                    match jobs.try_recv() {
                        Ok(next) => job = next,
                        Err(_) => break,
                    }
                }
                ws.flush().await?;
            }
            msg = ws.next() => {
                let Some(msg) = msg else { break };
                let Message::Text(t) = msg? else { continue };
                let f: Frame<'_> = serde_json::from_str(&t)?;
                match (f.kind, f.reference) {
                    ("sent", Some(r)) => {
                        if let (Some(at), Some(acc)) = (waiting.remove(&r), f.accepted) {
                            sent.lock()
                                .map_err(|_| anyhow::anyhow!("poisoned"))?
                                .insert((pair, acc.seq), at);
                        }
                    }
                    ("refused", Some(r)) => {
                        waiting.remove(&r);
                        if let Some(e) = f.error {
                            eprintln!("send refused: {} ({:?})", e.message, e.code);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// The `p` quantile (0 to 1) of ascending `sorted` values (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs the relay benchmark. `send_url` and `recv_url` may name different nodes; `pids` are the
/// server processes whose CPU time to count (empty: unknown).
pub async fn run(
    send_url: &str,
    recv_url: &str,
    plan: &RelayPlan,
    pids: &[u32],
) -> anyhow::Result<RelayReport> {
    let RelayPlan {
        devices,
        rate,
        duration,
        over,
        timer,
    } = *plan;
    if devices < 2 || rate == 0 {
        bail!("need at least 2 devices and a positive rate");
    }
    let pairs_n = devices / 2;
    let total = (rate as f64 * duration.as_secs_f64()).ceil() as usize;
    let per_pair = total.div_ceil(pairs_n);
    let http = crate::http_client(256)?;
    let run_id = format!("{:x}", std::process::id() % 0xffff);
    eprintln!("setting up {pairs_n} DM pairs and encrypting {total} messages...");
    let mut pairs = Vec::with_capacity(pairs_n);
    for i in 0..pairs_n {
        pairs.push(setup_pair(&http, send_url, recv_url, &run_id, i, per_pair, timer).await?);
    }

    // Both clocks hold every message: sized up front, so no resize (a rehash of up to millions of
    // entries under the lock every receiver needs) lands in the timed part as a latency spike.
    let arrivals: Clock = Arc::new(Mutex::new(HashMap::with_capacity(total)));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(pairs_n);
    let mut receivers = Vec::new();
    for (k, p) in pairs.iter().enumerate() {
        receivers.push(tokio::spawn(receive(
            http.clone(),
            recv_url.to_owned(),
            k,
            (
                p.conversation.clone(),
                p.receiver_token.clone(),
                p.setup_entries,
            ),
            arrivals.clone(),
            ready_tx.clone(),
        )));
    }
    for _ in 0..pairs_n {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .context("receivers did not connect")?;
    }

    eprintln!(
        "sending {total} messages at {rate}/s for {:.1}s (open loop)...",
        duration.as_secs_f64()
    );
    let sent: Clock = Arc::new(Mutex::new(HashMap::with_capacity(total)));
    let cpu = || -> Option<u64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| super::server::cpu_us(*p)).sum()
    };
    let mut senders = Vec::with_capacity(total);
    let mut queues = Vec::new();
    if over == SendOver::Ws {
        for (k, p) in pairs.iter().enumerate() {
            let ws = connect(send_url, &p.sender_token).await?;
            // Each message's frame is serialized before the timed part, like its encryption.
            let frames = p
                .payloads
                .iter()
                .enumerate()
                .map(|(j, payload)| {
                    serde_json::to_string(&ClientFrame::Send {
                        reference: j as u64 + 1,
                        id: p.conversation.clone(),
                        message: B64(payload.clone()),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            queues.push(tx);
            let sent = sent.clone();
            senders.push(tokio::spawn(async move {
                if let Err(e) = send_ws(ws, k, frames, rx, sent).await {
                    eprintln!("sender failed: {e:#}");
                }
            }));
        }
    }
    let mut next = vec![0usize; pairs_n];
    let cpu_before = cpu();
    let own = || super::server::cpu_us(std::process::id());
    let own_before = own();
    let start = Instant::now();
    let started_at = std::time::SystemTime::now();
    for i in 0..total {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(scheduled).await;
        let k = i % pairs_n;
        let p = &pairs[k];
        if next[k] >= p.payloads.len() {
            continue;
        }
        let j = next[k];
        next[k] += 1;
        if let Some(q) = queues.get(k) {
            let _ = q.send((j, scheduled));
            continue;
        }
        let payload = p.payloads[j].clone();
        let (http, url, conv, token, sent) = (
            http.clone(),
            send_url.to_owned(),
            p.conversation.clone(),
            p.sender_token.clone(),
            sent.clone(),
        );
        let pair = k;
        senders.push(tokio::spawn(async move {
            let resp = http
                .post(format!("{url}/v1/conversations/{conv}/messages"))
                .bearer_auth(&token)
                .json(&SendRequest {
                    message: B64(payload),
                    attachments: Vec::new(),
                })
                .send()
                .await;
            if let Ok(resp) = resp {
                if let Ok(acc) = check::<Accepted>(resp).await {
                    if let Ok(mut s) = sent.lock() {
                        s.insert((pair, acc.seq), scheduled);
                    }
                }
            }
        }));
    }
    drop(queues);
    for s in senders {
        let _ = s.await;
    }
    // Let the last deliveries land.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (n_sent, n_arrived) = {
            let s = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let a = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            (s.len(), s.keys().filter(|k| a.contains_key(*k)).count())
        };
        if n_arrived >= n_sent || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = cpu();
    let own_after = own();
    for r in receivers {
        r.abort();
    }

    let s = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let a = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut lat: Vec<f64> = Vec::with_capacity(s.len());
    let mut samples = Vec::with_capacity(s.len());
    let mut last = start;
    for (k, scheduled) in s.iter() {
        if let Some(arrived) = a.get(k) {
            let ms = arrived.saturating_duration_since(*scheduled).as_secs_f64() * 1000.0;
            lat.push(ms);
            samples.push((scheduled.saturating_duration_since(start).as_secs_f64(), ms));
            last = last.max(*arrived);
        }
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    samples.sort_by(|x, y| x.0.total_cmp(&y.0));
    let elapsed = last
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(duration.as_secs_f64());
    let delivered = lat.len() as u64;
    Ok(RelayReport {
        accepted: s.len() as u64,
        delivered,
        delivered_per_sec: delivered as f64 / elapsed,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        cpu_us_per_msg: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if delivered > 0 => {
                Some((a.saturating_sub(b)) as f64 / delivered as f64)
            }
            _ => None,
        },
        client_cpu_us_per_msg: match (own_before, own_after) {
            (Some(b), Some(a)) if delivered > 0 => {
                Some((a.saturating_sub(b)) as f64 / delivered as f64)
            }
            _ => None,
        },
        started_at,
        samples,
    })
}

/// Fills the server with `entries` messages (that expire `timer_secs` after landing, if given), in
/// DMs of their own that nobody reads (a backlog for a purge or prune to delete). Each sender
/// keeps a window of sends in flight and resends a few ciphertexts of its own (the server never
/// decrypts). Returns the latest expiry the server stamped (Unix seconds; 0 without a timer).
pub async fn fill(url: &str, entries: usize, timer_secs: Option<u32>) -> anyhow::Result<u64> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    const PAIRS: usize = 20;
    const WINDOW: usize = 512;
    let http = crate::http_client(64)?;
    let run_id = format!("f{:x}", std::process::id() % 0xffff);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PAIRS {
        let p = setup_pair(&http, url, url, &run_id, i, 4, timer_secs).await?;
        let n = entries / PAIRS + usize::from(i < entries % PAIRS);
        let mut ws = connect(url, &p.sender_token).await?;
        tasks.spawn(async move {
            let (mut sent, mut done, mut latest) = (0usize, 0usize, 0u64);
            while done < n {
                while sent < n && sent - done < WINDOW {
                    let frame = serde_json::to_string(&ClientFrame::Send {
                        reference: sent as u64,
                        id: p.conversation.clone(),
                        message: B64(p.payloads[sent % p.payloads.len()].clone()),
                    })?;
                    ws.feed(Message::Text(frame.into())).await?;
                    sent += 1;
                }
                ws.flush().await?;
                let Some(msg) = ws.next().await else {
                    bail!("the server closed the connection")
                };
                let Message::Text(t) = msg? else { continue };
                let f: Frame<'_> = serde_json::from_str(&t)?;
                match f.kind {
                    "sent" => {
                        done += 1;
                        if let Some(exp) = f.accepted.and_then(|a| a.expires_at) {
                            latest = latest.max(exp);
                        }
                    }
                    "refused" => bail!(
                        "a send was refused: {}",
                        f.error.map(|e| e.message).unwrap_or_default()
                    ),
                    _ => {}
                }
            }
            anyhow::Ok(latest)
        });
    }
    let mut latest = 0;
    while let Some(r) = tasks.join_next().await {
        latest = latest.max(r??);
    }
    Ok(latest)
}
