//! Wake-ups for connected devices.
//!
//! [`Hub`] holds this node's WebSocket connections. A [`Bus`] carries wake-ups to every node's hub:
//! [`LocalBus`] (one node) hands them straight to the local hub; a NATS bus will publish them so every
//! node's hub receives them. Frames are hints ("there is more up to seq N", or a small entry carried
//! inline): the log is the truth, so a frame dropped for a full queue loses nothing; the connection
//! is told to resync once it drains its queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::AuthCache;

use sotto_api::ServerFrame;
use tokio::sync::mpsc;

/// Per-connection queue length; a slower reader has frames dropped (and is then told to resync),
/// not buffered.
pub const CONNECTION_QUEUE: usize = 64;

/// A frame serialized once, shared by every connection it goes to.
pub type FrameText = axum::extract::ws::Utf8Bytes;

/// One registered connection: its id, its queue and whether a frame for it was dropped.
type Connection = (u64, mpsc::Sender<FrameText>, Arc<AtomicBool>);

/// The local registry of connected devices.
#[derive(Debug)]
pub struct Hub {
    conns: Mutex<HashMap<String, Vec<Connection>>>,
    next: std::sync::atomic::AtomicU64,
    /// This node's random id (connection ids are only unique within a node).
    node: u64,
    /// Recently verified device tokens.
    pub tokens: AuthCache,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            conns: Mutex::default(),
            next: std::sync::atomic::AtomicU64::default(),
            node: rand::random(),
            tokens: AuthCache::default(),
        }
    }
}

/// One connection, anywhere: a wake-up caused by a message posted over a connection skips that
/// connection (its `sent` answer already told it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The node's id.
    pub node: u64,
    /// The connection's id on that node.
    pub conn: u64,
}

/// A connection's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    device: String,
    id: u64,
    /// Frames for this connection.
    pub rx: mpsc::Receiver<FrameText>,
    dropped: Arc<AtomicBool>,
}

impl Subscription {
    /// This connection, for [`Bus::publish_except`].
    pub fn origin(&self) -> Origin {
        Origin {
            node: self.hub.node,
            conn: self.id,
        }
    }

    /// Whether frames were dropped since the last call (the queue was full): the connection
    /// should tell its device to resync.
    pub fn take_dropped(&self) -> bool {
        self.dropped.swap(false, Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.hub.conns.lock() {
            if let Some(v) = conns.get_mut(&self.device) {
                v.retain(|(id, _, _)| *id != self.id);
                if v.is_empty() {
                    conns.remove(&self.device);
                }
            }
        }
    }
}

impl Hub {
    /// Registers a connection for `device`.
    pub fn subscribe(self: &Arc<Self>, device: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut conns) = self.conns.lock() {
            conns
                .entry(device.to_owned())
                .or_default()
                .push((id, tx, dropped.clone()));
        }
        Subscription {
            hub: self.clone(),
            device: device.to_owned(),
            id,
            rx,
            dropped,
        }
    }

    /// Delivers a frame to every local connection of the given devices (serialized once).
    pub fn deliver(&self, devices: &[String], frame: &ServerFrame) {
        self.deliver_except(devices, frame, None);
    }

    /// [`Hub::deliver`], skipping the connection `except` if it is on this node.
    pub fn deliver_except(&self, devices: &[String], frame: &ServerFrame, except: Option<Origin>) {
        let skip = except.filter(|o| o.node == self.node).map(|o| o.conn);
        let text = FrameText::from(frame.to_json());
        let Ok(conns) = self.conns.lock() else { return };
        for d in devices {
            if let Some(v) = conns.get(d) {
                for (id, tx, dropped) in v {
                    if Some(*id) == skip {
                        continue;
                    }
                    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(text.clone()) {
                        dropped.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// A device was revoked: forget its token and close its connections on this node (dropping
    /// their queues ends them).
    pub fn revoke(&self, device: &str) {
        self.tokens.revoke(device);
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(device);
        }
    }

    /// Number of connected devices (for metrics and tests).
    pub fn connected(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// Carries wake-ups to the hubs of all nodes.
pub trait Bus: Send + Sync + 'static {
    /// Wakes `devices` with `frame`, wherever they are connected.
    fn publish(&self, devices: Vec<String>, frame: ServerFrame) {
        self.publish_except(devices, frame, None);
    }

    /// [`Bus::publish`], skipping the connection `except`.
    fn publish_except(&self, devices: Vec<String>, frame: ServerFrame, except: Option<Origin>);

    /// Tells every node that `device` was revoked (see [`Hub::revoke`]).
    fn revoke(&self, device: String);

    /// Whether wake-ups reach the other nodes now (the readiness probe). The in-process bus
    /// always does.
    fn ready(&self) -> bool {
        true
    }
}

/// The single-node bus.
#[derive(Debug)]
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    /// A bus delivering to `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Bus for LocalBus {
    fn publish_except(&self, devices: Vec<String>, frame: ServerFrame, except: Option<Origin>) {
        self.hub.deliver_except(&devices, &frame, except);
    }

    fn revoke(&self, device: String) {
        self.hub.revoke(&device);
    }
}

/// The subject wake-ups travel on.
const WAKE_SUBJECT: &str = "sotto.wake";
/// The subject revocations travel on (payload: the device id).
const REVOKE_SUBJECT: &str = "sotto.revoke";

#[derive(serde::Serialize, serde::Deserialize)]
struct Wake {
    devices: Vec<String>,
    frame: ServerFrame,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    except: Option<Origin>,
}

/// The multi-node bus: wake-ups are published on NATS and every node delivers them to its own hub.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects to NATS at `url` and starts delivering wake-ups to `hub`. Returns once the
    /// subscription is registered with the server, so no wake-up published after this is missed.
    pub async fn connect(url: &str, hub: Arc<Hub>) -> Result<Self, String> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| format!("connecting to NATS: {e}"))?;
        let mut sub = client
            .subscribe(WAKE_SUBJECT)
            .await
            .map_err(|e| format!("subscribing on NATS: {e}"))?;
        let mut revocations = client
            .subscribe(REVOKE_SUBJECT)
            .await
            .map_err(|e| format!("subscribing on NATS: {e}"))?;
        client
            .flush()
            .await
            .map_err(|e| format!("flushing NATS: {e}"))?;
        let revoked_hub = hub.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(msg) = revocations.next().await {
                match std::str::from_utf8(&msg.payload) {
                    Ok(device) => revoked_hub.revoke(device),
                    Err(_) => tracing::warn!("ignoring a malformed revocation on NATS"),
                }
            }
            tracing::error!("NATS revocation subscription ended");
        });
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(msg) = sub.next().await {
                match serde_json::from_slice::<Wake>(&msg.payload) {
                    Ok(w) => hub.deliver_except(&w.devices, &w.frame, w.except),
                    Err(_) => tracing::warn!("ignoring a malformed wake-up on NATS"),
                }
            }
            tracing::error!("NATS subscription ended; live pushes from other nodes stop");
        });
        Ok(Self { client })
    }
}

impl Bus for NatsBus {
    fn ready(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn publish_except(&self, devices: Vec<String>, frame: ServerFrame, except: Option<Origin>) {
        let Ok(payload) = serde_json::to_vec(&Wake {
            devices,
            frame,
            except,
        }) else {
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.publish(WAKE_SUBJECT, payload.into()).await {
                // The entry is durable; devices find it on their next fetch.
                tracing::warn!(error = %e, "could not publish a wake-up");
            }
        });
    }

    fn revoke(&self, device: String) {
        let client = self.client.clone();
        tokio::spawn(async move {
            // The database already refuses the device; this only shortens the other nodes'
            // token caches (at most AuthCache::TTL) and closes its connections there.
            if let Err(e) = client.publish(REVOKE_SUBJECT, device.into()).await {
                tracing::warn!(error = %e, "could not publish a revocation");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> sotto_api::ConversationId {
        sotto_api::ConversationId::new("c".repeat(32)).unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_drops_frames_and_flags_the_connection_for_a_resync() {
        let hub = Arc::new(Hub::default());
        let mut sub = hub.subscribe("d1");
        let other = hub.subscribe("d2");
        let devices = vec!["d1".to_owned()];
        for seq in 1..=(CONNECTION_QUEUE as u64 + 5) {
            let frame = ServerFrame::Conversation {
                id: conversation(),
                seq,
            };
            hub.deliver(&devices, &frame);
        }
        assert!(sub.take_dropped());
        assert!(!sub.take_dropped(), "the flag is taken once");
        assert!(!other.take_dropped(), "other connections are unaffected");
        // The queue holds the first frames, each serialized once and intact.
        let first = sub.rx.recv().await.unwrap();
        assert_eq!(
            serde_json::from_str::<ServerFrame>(&first).unwrap(),
            ServerFrame::Conversation {
                id: conversation(),
                seq: 1
            }
        );
        drop(sub);
        assert_eq!(hub.connected(), 1);
    }

    #[tokio::test]
    async fn a_wake_skips_only_the_connection_the_message_came_over() {
        let hub = Arc::new(Hub::default());
        let mut first = hub.subscribe("d1");
        let mut second = hub.subscribe("d1");
        let devices = vec!["d1".to_owned()];
        hub.deliver_except(&devices, &ServerFrame::Inbox, Some(first.origin()));
        assert!(first.rx.try_recv().is_err());
        assert!(second.rx.try_recv().is_ok());
        // The same connection id on another node is another connection.
        let elsewhere = Origin {
            node: first.origin().node.wrapping_add(1),
            conn: first.origin().conn,
        };
        hub.deliver_except(&devices, &ServerFrame::Inbox, Some(elsewhere));
        assert!(first.rx.try_recv().is_ok());
        assert!(second.rx.try_recv().is_ok());
    }
}
