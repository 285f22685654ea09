//! The fan-out benchmark: one group of N member devices, each connected over its own WebSocket.
//! The creator posts one real MLS message at a time; every device is woken, fetches the log over
//! HTTP and stamps the arrival. The figure is the time from posting until the *last* device has the
//! message, per message, on this process's clock.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use openmls_traits::OpenMlsProvider as _;
use sotto_api::*;
use sotto_proto::group::GroupMetadata;
use sotto_proto::identity::unhex;
use sotto_proto::mls::{Conversation, Trust, ValidKeyPackage, CLASSIC_CIPHERSUITE};
use sotto_proto::{IdentityPublicKey, Username};
use tokio::time::Instant;

use crate::relay::{check, percentile, post_commit, register_with, Device};

/// What the fan-out run measured.
#[derive(Debug, Clone)]
pub struct FanoutReport {
    /// Member devices.
    pub members: usize,
    /// Messages sent.
    pub messages: usize,
    /// Time until the last device had a message: median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Worst, ms.
    pub max_ms: f64,
    /// Group setup (registrations excluded): create + commit of all members, ms.
    pub create_ms: f64,
    /// Server CPU per delivered copy (one message to one device), us, when known.
    pub cpu_us_per_delivery: Option<f64>,
}

struct AnyKey(Vec<(Username, IdentityPublicKey)>);
impl Trust for AnyKey {
    fn pinned_identity(&self, u: &Username) -> Option<IdentityPublicKey> {
        self.0.iter().find(|(n, _)| n == u).map(|(_, k)| *k)
    }
}

/// One member device: takes entries from its push frames (fetching when one is missing or too
/// large to travel inline) and reports each seq it got.
async fn member(
    http: reqwest::Client,
    url: String,
    conversation: String,
    token: String,
    got: tokio::sync::mpsc::UnboundedSender<(u64, Instant)>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let ws_url = format!("ws{}/v1/ws", url.strip_prefix("http").unwrap_or(&url));
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let mut cursor = 1; // the commit that added everyone
    let mut announced = false;
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            tokio_tungstenite::tungstenite::Message::Text(t) => t,
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => continue,
        };
        let f: crate::relay::Frame<'_> = serde_json::from_str(&text)?;
        let mine = f.id.as_deref() == Some(conversation.as_str());
        let fetch = match (f.kind, f.entry, f.seq) {
            ("ready", _, _) if !announced => {
                announced = true;
                let _ = ready.send(()).await;
                false
            }
            // Small messages arrive inside the wake-up: the next expected one needs no fetch.
            ("entry", Some(e), _) if mine && e.seq == cursor + 1 => {
                cursor = e.seq;
                let _ = got.send((e.seq, Instant::now()));
                false
            }
            ("entry", Some(e), _) => mine && e.seq > cursor,
            ("conversation", _, Some(seq)) => mine && seq > cursor,
            ("resync", _, _) => true,
            _ => false,
        };
        if fetch {
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
            for e in &page.entries {
                cursor = cursor.max(e.seq);
                let _ = got.send((e.seq, now));
            }
        }
    }
    Ok(())
}

/// Runs the fan-out benchmark: `members` devices (creator included), `messages` messages sent one
/// after another, each once every device has the previous one. `pids`: server processes whose CPU
/// time to count.
pub async fn run(
    url: &str,
    members: usize,
    messages: usize,
    pids: &[u32],
) -> anyhow::Result<FanoutReport> {
    if members < 2 || messages == 0 {
        bail!("need at least 2 members and 1 message");
    }
    let suite = CLASSIC_CIPHERSUITE;
    let http = crate::http_client(members + 16)?;
    let run_id = format!("{:x}", std::process::id() % 0xffff);
    eprintln!("registering {members} accounts...");
    let mut devices: Vec<Device> = Vec::with_capacity(members);
    for i in 0..members {
        devices.push(register_with(&http, url, &format!("f{run_id}m{i}"), suite).await?);
    }
    let creator = &devices[0];
    let pins = AnyKey(
        devices
            .iter()
            .map(|d| (d.user.clone(), d.identity.public()))
            .collect(),
    );
    let t0 = std::time::Instant::now();
    let info: ConversationInfo = check(
        http.post(format!("{url}/v1/groups"))
            .bearer_auth(&creator.token)
            .json(&CreateGroupRequest::default())
            .send()
            .await?,
    )
    .await?;
    let mut kps = Vec::with_capacity(members - 1);
    for d in &devices[1..] {
        let claim: ClaimResponse = check(
            http.post(format!("{url}/v1/key-packages/claim"))
                .bearer_auth(&creator.token)
                .json(&ClaimRequest {
                    username: sotto_api::Username::new(d.user.as_str())?,
                    devices: vec![],
                    ciphersuite: Some(u16::from(suite)),
                })
                .send()
                .await?,
        )
        .await?;
        let kp = claim.key_packages.first().context("no key package")?;
        kps.push(
            ValidKeyPackage::parse(creator.provider.crypto(), &kp.key_package.0)?.verify(&pins)?,
        );
    }
    let gid = unhex(&info.id).context("bad group id")?;
    let meta =
        GroupMetadata::new("fanout", creator.user.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut group =
        Conversation::create(&creator.provider, &creator.keys, &gid, suite, Some(&meta))?;
    let bundle = group.add_devices(&creator.provider, &creator.keys, &kps)?;
    post_commit(&http, url, &creator.token, &info.id, bundle).await?;
    group.merge_pending(&creator.provider)?;
    let create_ms = t0.elapsed().as_secs_f64() * 1000.0;
    eprintln!("group of {members} created in {create_ms:.0} ms (key-package claims included); connecting...");

    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(members);
    let mut tasks = Vec::with_capacity(members - 1);
    for d in &devices[1..] {
        tasks.push(tokio::spawn(member(
            http.clone(),
            url.to_owned(),
            info.id.to_string(),
            d.token.clone(),
            got_tx.clone(),
            ready_tx.clone(),
        )));
    }
    for _ in 1..members {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("members did not connect")?;
    }
    let payloads: Vec<Vec<u8>> = (0..messages)
        .map(|_| {
            let m = group.compose_text(&creator.provider, &creator.keys, &"x".repeat(100), 0)?;
            group.encrypt(&creator.provider, &creator.keys, &m)
        })
        .collect::<Result<_, _>>()?;
    eprintln!("sending {messages} messages, one after another...");
    let cpu = || -> Option<u64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| crate::server::cpu_us(*p)).sum()
    };
    let cpu_before = cpu();
    let token = Arc::new(creator.token.clone());
    let mut last_ms = Vec::with_capacity(messages);
    for payload in payloads {
        let start = Instant::now();
        let acc: Accepted = check(
            http.post(format!("{url}/v1/conversations/{}/messages", info.id))
                .bearer_auth(token.as_str())
                .json(&SendRequest {
                    message: B64(payload),
                    attachments: Vec::new(),
                })
                .send()
                .await?,
        )
        .await?;
        let mut have = 0usize;
        let mut last = start;
        let deadline = start + Duration::from_secs(30);
        while have < members - 1 {
            match tokio::time::timeout_at(deadline, got_rx.recv()).await {
                Ok(Some((seq, at))) if seq == acc.seq => {
                    have += 1;
                    last = last.max(at);
                }
                Ok(Some(_)) => {}
                _ => bail!(
                    "only {have} of {} devices got message {}",
                    members - 1,
                    acc.seq
                ),
            }
        }
        last_ms.push(last.saturating_duration_since(start).as_secs_f64() * 1000.0);
    }
    let cpu_after = cpu();
    for t in tasks {
        t.abort();
    }
    last_ms.sort_by(|a, b| a.total_cmp(b));
    let deliveries = (messages * (members - 1)) as f64;
    Ok(FanoutReport {
        members,
        messages,
        p50_ms: percentile(&last_ms, 0.5),
        p99_ms: percentile(&last_ms, 0.99),
        max_ms: last_ms.last().copied().unwrap_or(0.0),
        create_ms,
        cpu_us_per_delivery: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / deliveries),
            _ => None,
        },
    })
}
