//! The delivery service: the rules of DESIGN.md, independent of any transport. The HTTP handlers
//! and the WebSocket loop authenticate and decode; a [`DeliveryService`] checks each operation's
//! rate limit, validates what was sent, applies it through the [`Store`] and wakes the devices
//! that need to know. It answers with its own [`DsError`].
//!
//! One file per resource, as mini-redis keeps one per command: [`accounts`] (accounts, devices and
//! links), [`key_packages`], [`conversations`], [`commits`] and [`messages`] (messages, typing
//! indicators, the log and the inbox). Authentication is `crate::auth`.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use rand::RngCore;
use sotto_api::{ConversationId, DeviceId, ServerFrame};
use sotto_proto::identity::hex;
use sotto_proto::mls::Envelope;
use sotto_proto::{DeviceCertificate, Username};

use crate::blobs::Blobs;
use crate::bus::{Bus, Hub};
use crate::limits::{Class, RateLimiter};
use crate::store::{ConversationRecord, Store};
use crate::{Config, Cursors};

pub mod accounts;
pub mod commits;
pub mod conversations;
mod error;
pub mod key_packages;
pub mod messages;

pub use error::DsError;

/// The most one-time key packages one upload may carry.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 200;
/// The most entries one log page returns.
pub const MAX_LOG_PAGE: u32 = 500;

/// An authenticated device.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its account.
    pub username: sotto_api::Username,
    /// The device id.
    pub device_id: DeviceId,
}

/// A request's body, read only once its sender has been admitted by the rate limits, so that a
/// refused flood costs no parsing: HTTP passes the future that reads its JSON body, the WebSocket
/// loop `std::future::ready` with the frame it has already decoded.
pub trait Body<T>: Future<Output = Result<T, DsError>> + Send {}

impl<T, F: Future<Output = Result<T, DsError>> + Send> Body<T> for F {}

/// The delivery service and everything it works with. Cheap to clone.
#[derive(Clone)]
pub struct DeliveryService {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Wake-ups to all nodes.
    pub bus: Arc<dyn Bus>,
    /// This node's connections (and its cache of verified tokens).
    pub hub: Arc<Hub>,
    /// Tunables.
    pub config: Arc<Config>,
    /// Read positions waiting to be saved.
    pub cursors: Arc<Cursors>,
    /// Rate limits.
    pub limiter: Arc<RateLimiter>,
    /// Attachment blobs.
    pub blobs: Arc<Blobs>,
}

impl std::fmt::Debug for DeliveryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The operations a rate limit applies to. Each is checked in one place: by the operation itself,
/// before its body is read.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// Registrations and links, per IP.
    Register,
    /// Key-package claims, per device and per IP.
    Claim,
    /// Messages and commits, per device and per IP, over HTTP and over the WebSocket alike.
    Send,
    /// Typing indicators, per device.
    Ephemeral,
    /// Push connections, per device and per IP.
    Connect,
}

impl DeliveryService {
    /// Takes a token from each bucket `limit` names, or refuses (`rate_limited` with a wait, or
    /// `unavailable` when the limiter cannot tell: it fails closed).
    async fn admit(
        &self,
        limit: Limit,
        device: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), DsError> {
        let (per_device, per_ip) = match limit {
            Limit::Register => (None, Some(Class::Register)),
            Limit::Claim => (Some(Class::Claim), Some(Class::ClaimIp)),
            Limit::Send => (Some(Class::Send), Some(Class::SendIp)),
            Limit::Ephemeral => (Some(Class::Ephemeral), None),
            Limit::Connect => (Some(Class::ConnectDevice), Some(Class::ConnectIp)),
        };
        if let (Some(class), Some(device)) = (per_device, device) {
            self.limiter.check(class, device).await?;
        }
        if let Some(class) = per_ip {
            self.limiter.check_ip(class, ip).await?;
        }
        Ok(())
    }

    /// Admits a new push connection of `caller` from `ip`.
    pub async fn admit_connection(
        &self,
        caller: &Caller,
        ip: Option<IpAddr>,
    ) -> Result<(), DsError> {
        self.admit(Limit::Connect, Some(&caller.device_id), ip)
            .await
    }

    /// The caller's certificate, as registered.
    async fn caller_cert(&self, caller: &Caller) -> Result<DeviceCertificate, DsError> {
        let acc = self
            .store
            .account(&caller.username)
            .await?
            .ok_or_else(DsError::unauthorized)?;
        let dev = acc
            .devices
            .into_iter()
            .find(|d| d.device_id == caller.device_id)
            .ok_or_else(DsError::unauthorized)?;
        DeviceCertificate::decode(&dev.certificate)
            .map_err(|_| DsError::internal("stored certificate unreadable"))
    }

    /// Loads a conversation the caller is a member of. A non-member gets the same 404 as a missing
    /// conversation, so ids cannot be probed.
    async fn member_conversation(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<ConversationRecord, DsError> {
        match self.store.conversation(id).await? {
            Some(c) if c.members.iter().any(|m| m == &caller.username) => Ok(c),
            _ => Err(DsError::not_found("no such conversation")),
        }
    }

    /// Wakes the conversation's member devices: there is more, up to `seq`.
    async fn wake_members(&self, id: &ConversationId, seq: u64) {
        match self.store.wake_list(id).await {
            Ok(devices) => self.bus.publish(
                devices,
                ServerFrame::Conversation {
                    id: id.clone(),
                    seq,
                },
            ),
            // The entry is durable; devices will find it on their next fetch.
            Err(e) => tracing::warn!(error = %e, "could not look up devices to wake"),
        }
    }

    /// Wakes every device of `accounts` to re-read their device lists.
    async fn wake_devices_of(&self, accounts: &[String]) {
        match self.store.devices_of(accounts).await {
            Ok(devices) => self.bus.publish(devices, ServerFrame::Devices),
            Err(e) => tracing::warn!(error = %e, "could not look up devices to wake"),
        }
    }
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex(&b)
}

fn parse_username(s: &str) -> Result<Username, DsError> {
    Username::new(s).map_err(|e| DsError::bad_request(e.to_string()))
}

/// Parses an MLS message for the conversation `conv_id`, which must be a commit or an application
/// message as `want_commit` says.
fn check_envelope(conv_id: &str, bytes: &[u8], want_commit: bool) -> Result<Envelope, DsError> {
    let env = Envelope::parse(bytes).map_err(|e| DsError::bad_request(e.to_string()))?;
    if env.is_commit != want_commit {
        return Err(DsError::bad_request(if want_commit {
            "expected an MLS commit"
        } else {
            "expected an MLS application message"
        }));
    }
    if hex(&env.group_id) != conv_id {
        return Err(DsError::bad_request(
            "MLS group id does not match the conversation",
        ));
    }
    Ok(env)
}
