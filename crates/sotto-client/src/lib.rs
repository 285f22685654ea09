//! `sotto-client`: the Sotto SDK.
//!
//! A [`Client`] is one device: its keys and MLS state live in SQLite under its home directory, it
//! talks to `sottod` over HTTP and a WebSocket, and its sync engine applies welcomes, commits and
//! messages in log order, verifying every new leaf's device certificate against the identity key it
//! pinned for that account on first contact.
//!
//! ```text
//! db         local SQLite: openmls state + conversations, messages, pins, config
//! transport  HTTP to sottod
//! lib        Client: register, link, devices, send, sync, listen
//! ```
//!
//! Client futures are not `Send` (the local store is a single SQLite connection); drive a client from
//! one task.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures_util::StreamExt;
use openmls_rust_crypto::RustCrypto;
use rusqlite::{params, Connection, TransactionBehavior};
use sotto_api::*;
use sotto_proto::group::{GroupMetadata, Kind};
use sotto_proto::identity::unhex;
use sotto_proto::mls::{
    Changes, Conversation, DeviceKeys, Incoming, MlsError, PendingJoin, Trust, ValidKeyPackage,
    CLASSIC_CIPHERSUITE, DEFAULT_CIPHERSUITE,
};
use sotto_proto::{
    AccountBundle, AccountIdentity, Body, DeviceCertificate, DeviceId, IdentityPublicKey, LinkCode,
    MessageContent, Username,
};
use thiserror::Error;

mod db;
mod transport;

use db::{storage_err, Pins, Provider};
use transport::{TlsSettings, Transport};

/// How many one-time key packages a device keeps on the server.
const KEY_PACKAGE_TARGET: usize = 50;
/// How often `listen` tells the server how far it has read (the server prunes what every device
/// has read; a late acknowledgement only delays that).
const READ_ACK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Replenish below this many.
const KEY_PACKAGE_LOW: u64 = 10;
/// How often a change is retried after losing the commit race (with `n` members committing at
/// once, the last one may lose `n - 1` times).
const MAX_ATTEMPTS: usize = 32;

/// How long a commit posted by another process of this device may still be awaiting its answer
/// (longer than the HTTP request timeout).
const IN_FLIGHT_GRACE_SECS: u64 = 35;

fn in_flight_key(conversation: &str) -> String {
    format!("commit_in_flight:{conversation}")
}

/// After losing a commit race: wait a little, growing and jittered, so that racing devices spread
/// out instead of colliding again.
async fn backoff_after_lost_race(attempt: usize) {
    let cap_ms = 10 * (attempt as u64 + 1).min(20);
    let ms = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=cap_ms);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}
/// Groups of up to this many devices (counting every member device at creation) use the hybrid
/// post-quantum ciphersuite; larger ones the classic one. See DESIGN.md for the measurements.
pub const DEFAULT_PQ_GROUP_LIMIT: usize = 100;

/// Errors of the SDK. `Display` is one clear line, without secrets or message text.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// This home has no registered device.
    #[error("this device is not registered: run `sotto register USERNAME` or `sotto link CODE`")]
    NotRegistered,
    /// This home already has a registered device.
    #[error("this device is already registered as {0}")]
    AlreadyRegistered(String),
    /// No server URL is known.
    #[error("no server configured: pass --server URL")]
    NoServer,
    /// The server could not be reached.
    #[error("server unreachable at {server}")]
    Unreachable {
        /// The server URL.
        server: String,
    },
    /// The server refused the request.
    #[error("server refused: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: ErrorCode,
        /// Server's message.
        message: String,
        /// Current epoch, for stale-epoch refusals.
        current_epoch: Option<u64>,
    },
    /// The named account does not exist.
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// An account's identity key differs from the one pinned on first contact.
    #[error("identity key of {0} changed since it was first seen; refusing to trust it")]
    IdentityChanged(String),
    /// The conversation was refused because a member failed verification.
    #[error("conversation {id} is blocked: {detail}")]
    ConversationRefused {
        /// Conversation id.
        id: String,
        /// Why.
        detail: String,
    },
    /// The conversation exists but this device has not been added to it yet.
    #[error("this device has not been added to the conversation with {0} yet; run `sotto sync` on one of your other devices, then retry")]
    NotYetAdded(String),
    /// Invalid input from the user.
    #[error("{0}")]
    Invalid(String),
    /// MLS processing failed.
    #[error(transparent)]
    Mls(#[from] MlsError),
    /// The server said something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local store failed.
    #[error("local storage error: {0}")]
    Storage(String),
    /// A commit adds a device of an account whose identity key is not pinned yet (internal: the
    /// sync engine fetches it and applies the entry again).
    #[doc(hidden)]
    #[error("identity keys of {0:?} are not known yet")]
    PinNeeded(Vec<String>),
    /// A welcome older than this device's state of the group (internal: skipped).
    #[doc(hidden)]
    #[error("welcome older than this device's state")]
    StaleWelcome,
    /// Gave up after repeatedly losing commit races.
    #[error("gave up after {0} attempts: the conversation keeps changing")]
    TooManyAttempts(usize),
    /// A message was stored on this device but the server did not acknowledge it (unreachable,
    /// failed mid-request, busy or full). It is kept and posted again by the next sync with the same
    /// id (receivers keep one copy): do not send it again yourself.
    #[error("message {id} not acknowledged yet ({reason}); it is kept and will be sent by the next `sotto sync`")]
    Queued {
        /// The message id.
        id: String,
        /// Why it was not acknowledged.
        reason: Box<ClientError>,
    },
}

impl ClientError {
    /// Whether the server definitely refused the request (a 4xx other than a rate limit): sending
    /// it again as it is cannot succeed.
    fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if (400..500).contains(status) && *status != 429)
    }

    fn is_stale_epoch(&self) -> bool {
        matches!(
            self,
            ClientError::Api {
                code: ErrorCode::StaleEpoch,
                ..
            }
        )
    }
}

/// A message as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// Sender-chosen message id (hex).
    pub id: String,
    /// Conversation id.
    pub conversation: String,
    /// Group id for group messages; `None` for DMs.
    pub group: Option<String>,
    /// Sender's username.
    pub sender: String,
    /// Sender's device id.
    pub sender_device: String,
    /// The text.
    pub text: String,
    /// Sender's clock, RFC 3339.
    pub sent_at: String,
    /// Whether this device's account sent it.
    pub outgoing: bool,
}

/// A group as this device knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupLine {
    /// Group id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Admin accounts.
    pub admins: Vec<String>,
    /// Member accounts and their device ids, sorted.
    pub members: Vec<(String, Vec<String>)>,
    /// Whether the group uses the hybrid post-quantum ciphersuite.
    pub post_quantum: bool,
    /// Current MLS epoch.
    pub epoch: u64,
}

/// One planned group commit.
#[derive(Debug, Default)]
struct Plan {
    add_users: Vec<String>,
    add_only: Vec<String>,
    remove: Vec<u32>,
    metadata: Option<GroupMetadata>,
    self_update: bool,
}

/// A group's line, from its local MLS state (`None` if this device holds none, or it is a DM).
fn group_line(provider: &Provider<'_>, id: String) -> Result<Option<GroupLine>, ClientError> {
    let Some(g) = Conversation::load(provider, &group_id_bytes(&id)?)? else {
        return Ok(None);
    };
    let Some(meta) = g.metadata() else {
        return Ok(None);
    };
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for m in g.members() {
        let u = m.cert.username.to_string();
        let d = m.cert.device_id.to_hex();
        match members.iter_mut().find(|(x, _)| *x == u) {
            Some((_, devs)) => devs.push(d),
            None => members.push((u, vec![d])),
        }
    }
    members.sort();
    Ok(Some(GroupLine {
        id,
        name: meta.name.clone(),
        admins: meta.admins.iter().map(|a| a.to_string()).collect(),
        members,
        post_quantum: g.ciphersuite() == DEFAULT_CIPHERSUITE,
        epoch: g.epoch(),
    }))
}

/// Removing every device of `users`, and dropping any of them from the admins.
fn removal_plan(g: &Conversation, users: &[Username]) -> Option<Plan> {
    let remove: Vec<u32> = g
        .members()
        .into_iter()
        .filter(|m| users.contains(&m.cert.username))
        .map(|m| m.leaf_index)
        .collect();
    if remove.is_empty() {
        return None;
    }
    let metadata = g.metadata().and_then(|m| {
        let mut out = m.clone();
        for u in users {
            out = out.with_admin(u, false);
        }
        (out != m).then_some(out)
    });
    Some(Plan {
        remove,
        metadata,
        ..Plan::default()
    })
}

/// One device of the account, as listed by [`Client::devices`].
#[derive(Debug, Clone)]
pub struct DeviceLine {
    /// Device id.
    pub device_id: String,
    /// Registered at (RFC 3339).
    pub created_at: String,
    /// Whether it is this device.
    pub this_device: bool,
    /// Whether its certificate verifies against the account's pinned identity key.
    pub verified: bool,
}

/// What a sync noticed besides messages.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    /// Things the user should know (refused members, undecryptable entries).
    pub warnings: Vec<String>,
}

/// What [`Client::listen`] reports.
#[derive(Debug, Clone)]
pub enum ListenEvent {
    /// Connected to the push channel.
    Connected,
    /// New messages.
    Messages(Vec<Message>),
    /// A warning.
    Warning(String),
    /// Lost the connection; retrying.
    Disconnected(String),
}

struct Me {
    username: Username,
    device_id: DeviceId,
    cert: DeviceCertificate,
}

/// One device's Sotto client.
pub struct Client {
    home: PathBuf,
    conn: Mutex<Connection>,
    crypto: RustCrypto,
    transport: Option<Transport>,
    tls: TlsSettings,
    me: Option<Me>,
}

/// How a client reaches its server.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// A PEM file of the private certificate authority that signed the server's certificate (trusted
    /// instead of the system's roots). Stored at register/link, so later runs need not repeat it.
    pub ca_cert: Option<PathBuf>,
    /// Allow plain `http://` to a host other than this machine (the device token and metadata would
    /// cross the network unencrypted). Never stored.
    pub insecure: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("home", &self.home)
            .field("user", &self.me.as_ref().map(|m| m.username.to_string()))
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn group_id_bytes(conversation: &str) -> Result<Vec<u8>, ClientError> {
    unhex(conversation).ok_or_else(|| ClientError::Protocol("malformed conversation id".into()))
}

impl Client {
    /// Opens the device at `home`. `server` overrides the stored server URL for this session.
    pub fn open(home: &Path, server: Option<&str>) -> Result<Self, ClientError> {
        Self::open_with(home, server, &ConnectOptions::default())
    }

    /// [`Client::open`] with transport options (a private CA, plain HTTP to a remote host).
    pub fn open_with(
        home: &Path,
        server: Option<&str>,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let conn = db::open(home)?;
        let ca_pem = match &options.ca_cert {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ClientError::Invalid(format!(
                    "reading the CA certificate {}: {e}",
                    path.display()
                ))
            })?),
            None => db::get_config(&conn, "ca_cert")?,
        };
        let tls = TlsSettings {
            ca_pem,
            insecure: options.insecure,
        };
        let stored_server = db::get_config_str(&conn, "server")?;
        let token = db::get_config_str(&conn, "token")?;
        let me = match (
            db::get_config_str(&conn, "username")?,
            db::get_config(&conn, "certificate")?,
        ) {
            (Some(u), Some(c)) => {
                let cert = DeviceCertificate::decode(&c).map_err(storage_err)?;
                Some(Me {
                    username: Username::new(&u).map_err(storage_err)?,
                    device_id: cert.device_id,
                    cert,
                })
            }
            _ => None,
        };
        let transport = match server.map(str::to_owned).or(stored_server) {
            Some(s) => Some(Transport::new(&s, token, &tls)?),
            None => None,
        };
        Ok(Self {
            home: home.to_owned(),
            conn: Mutex::new(conn),
            crypto: RustCrypto::default(),
            transport,
            tls,
            me,
        })
    }

    /// The registered username, if any.
    pub fn username(&self) -> Option<&str> {
        self.me.as_ref().map(|m| m.username.as_str())
    }

    /// This device's id, if registered.
    pub fn device_id(&self) -> Option<String> {
        self.me.as_ref().map(|m| m.device_id.to_hex())
    }

    fn transport(&self) -> Result<&Transport, ClientError> {
        self.transport.as_ref().ok_or(ClientError::NoServer)
    }

    fn me(&self) -> Result<&Me, ClientError> {
        self.me.as_ref().ok_or(ClientError::NotRegistered)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, ClientError> {
        self.conn
            .lock()
            .map_err(|_| ClientError::Storage("local store lock poisoned".into()))
    }

    /// Runs `f` in one immediate transaction on the local store, with an MLS provider over it:
    /// MLS state and Sotto's tables change together or not at all.
    fn with_tx<T>(
        &self,
        f: impl FnOnce(&Connection, &Provider<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut guard = self.lock()?;
        let tx = guard
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage_err)?;
        let out = {
            let provider = Provider::new(&self.crypto, &tx);
            f(&tx, &provider)?
        };
        tx.commit().map_err(storage_err)?;
        Ok(out)
    }

    fn keys(&self, conn: &Connection) -> Result<DeviceKeys, ClientError> {
        let seed = zeroize::Zeroizing::new(
            db::get_config(conn, "device_signing_seed")?.ok_or(ClientError::NotRegistered)?,
        );
        Ok(DeviceKeys::from_seed(&seed, self.me()?.cert.clone())?)
    }

    /// Makes this device's keys and key packages; returns the registration body.
    fn new_device(
        &self,
        identity: &AccountIdentity,
        username: &Username,
    ) -> Result<(DeviceKeys, NewDevice), ClientError> {
        self.with_tx(|_, p| {
            let keys = DeviceKeys::generate(identity, username, DeviceId::random(), now_secs());
            let mut one_time = Vec::new();
            let mut last_resort = Vec::new();
            for (suite, n) in [
                (DEFAULT_CIPHERSUITE, KEY_PACKAGE_TARGET),
                (CLASSIC_CIPHERSUITE, KEY_PACKAGE_TARGET),
            ] {
                let (one, lr) = keys.key_packages(p, suite, n, true)?;
                let lr =
                    lr.ok_or_else(|| ClientError::Protocol("no last-resort key package".into()))?;
                one_time.extend(one.into_iter().map(B64));
                last_resort.push(B64(lr));
            }
            let device = NewDevice {
                certificate: B64(keys.certificate().to_bytes()),
                key_packages: one_time,
                last_resort_key_packages: last_resort,
            };
            Ok((keys, device))
        })
    }

    fn save_registration(
        &mut self,
        server: &str,
        identity: &AccountIdentity,
        keys: DeviceKeys,
        token: &str,
    ) -> Result<(), ClientError> {
        let cert = keys.certificate().clone();
        self.with_tx(|conn, _| {
            db::set_config(
                conn,
                "device_signing_seed",
                keys.dangerous_signing_seed().as_ref(),
            )?;
            db::set_config(conn, "server", server.as_bytes())?;
            db::set_config(conn, "username", cert.username.as_str().as_bytes())?;
            db::set_config(conn, "certificate", &cert.to_bytes())?;
            db::set_config(conn, "token", token.as_bytes())?;
            if let Some(ca) = &self.tls.ca_pem {
                db::set_config(conn, "ca_cert", ca)?;
            }
            db::set_config(conn, "identity_secret", identity.dangerous_secret_bytes().as_ref())?;
            conn.execute(
                "INSERT OR REPLACE INTO sotto_pins (username, identity_key, pinned_at) VALUES (?1, ?2, ?3)",
                params![cert.username.as_str(), &identity.public().to_bytes()[..], now_secs() as i64],
            )
            .map_err(storage_err)?;
            Ok(())
        })?;
        self.transport = Some(Transport::new(server, Some(token.to_owned()), &self.tls)?);
        self.me = Some(Me {
            username: cert.username.clone(),
            device_id: cert.device_id,
            cert,
        });
        Ok(())
    }

    /// Registers a new account with this as its first device.
    pub async fn register(&mut self, username: &str) -> Result<(), ClientError> {
        if let Some(me) = &self.me {
            return Err(ClientError::AlreadyRegistered(me.username.to_string()));
        }
        let username = Username::new(username).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let transport = self.transport()?.clone();
        let identity = AccountIdentity::generate();
        let (keys, device) = self.new_device(&identity, &username)?;
        let req = RegisterRequest {
            username: username.to_string(),
            identity_key: B64(identity.public().to_bytes().to_vec()),
            device,
        };
        let resp: RegisterResponse = transport.post("/v1/accounts", &req).await?;
        self.save_registration(&transport.base, &identity, keys, &resp.token)
    }

    /// Creates a one-time link code for adding a new device to this account.
    pub async fn create_link_code(&self) -> Result<String, ClientError> {
        let me = self.me()?;
        let secret = {
            let conn = self.lock()?;
            db::get_config(&conn, "identity_secret")?.ok_or(ClientError::NotRegistered)?
        };
        let identity = AccountIdentity::from_secret_bytes(&secret).map_err(storage_err)?;
        let code = LinkCode::generate();
        let bundle = AccountBundle {
            username: me.username.clone(),
            identity,
        };
        let req = CreateLinkRequest {
            link_id: code.link_id(),
            bundle: B64(code.seal(&bundle)),
        };
        let _: LinkCreated = self.transport()?.post("/v1/links", &req).await?;
        Ok(code.dangerous_to_text())
    }

    /// Registers this device under an existing account, using a link code from one of its devices.
    pub async fn link(&mut self, code: &str) -> Result<(), ClientError> {
        if let Some(me) = &self.me {
            return Err(ClientError::AlreadyRegistered(me.username.to_string()));
        }
        let code: LinkCode = code
            .parse()
            .map_err(|e: sotto_proto::LinkError| ClientError::Invalid(e.to_string()))?;
        let transport = self.transport()?.clone();
        let fetched: LinkBundle = transport
            .post(
                "/v1/links/fetch",
                &LinkFetchRequest {
                    link_id: code.link_id(),
                },
            )
            .await?;
        let bundle = code
            .open(&fetched.bundle.0)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        if bundle.username.as_str() != fetched.username {
            return Err(ClientError::Protocol(
                "link bundle names another account".into(),
            ));
        }
        let (keys, device) = self.new_device(&bundle.identity, &bundle.username)?;
        let resp: RegisterResponse = transport
            .post(
                "/v1/links/redeem",
                &LinkRedeemRequest {
                    link_id: code.link_id(),
                    device,
                },
            )
            .await?;
        self.save_registration(&transport.base, &bundle.identity, keys, &resp.token)
    }

    /// Fetches an account, pins its identity key on first contact, and refuses a changed key.
    async fn fetch_account(
        &self,
        username: &str,
    ) -> Result<(AccountInfo, IdentityPublicKey), ClientError> {
        let acc: AccountInfo = match self
            .transport()?
            .get(&format!("/v1/accounts/{username}"))
            .await
        {
            Err(ClientError::Api {
                code: ErrorCode::NotFound,
                ..
            }) => return Err(ClientError::UnknownUser(username.to_owned())),
            other => other?,
        };
        let key = IdentityPublicKey::from_bytes(&acc.identity_key.0)
            .map_err(|_| ClientError::Protocol("server sent a malformed identity key".into()))?;
        let user =
            Username::new(&acc.username).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if user.as_str() != username {
            return Err(ClientError::Protocol(
                "server answered for another account".into(),
            ));
        }
        self.with_tx(|conn, _| match Pins(conn).pinned_identity(&user) {
            Some(pinned) if pinned != key => Err(ClientError::IdentityChanged(username.to_owned())),
            Some(_) => Ok(()),
            None => conn
                .execute(
                    "INSERT INTO sotto_pins (username, identity_key, pinned_at) VALUES (?1, ?2, ?3)",
                    params![username, &key.to_bytes()[..], now_secs() as i64],
                )
                .map(|_| ())
                .map_err(storage_err),
        })?;
        Ok((acc, key))
    }

    /// Pins the keys of accounts that still exist (an account that is gone stays unpinned, and
    /// whatever needs it is refused).
    async fn pin_if_known(&self, usernames: &[String]) -> Result<(), ClientError> {
        for u in usernames {
            match self.fetch_account(u).await {
                Ok(_) | Err(ClientError::UnknownUser(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn ensure_pinned(&self, usernames: &[String]) -> Result<(), ClientError> {
        for u in usernames {
            let user = Username::new(u).map_err(|e| ClientError::Protocol(e.to_string()))?;
            let pinned = {
                let conn = self.lock()?;
                Pins(&conn).pinned_identity(&user).is_some()
            };
            if !pinned {
                self.fetch_account(u).await?;
            }
        }
        Ok(())
    }

    /// This account's devices, each checked against the pinned identity key.
    pub async fn devices(&self) -> Result<Vec<DeviceLine>, ClientError> {
        let me = self.me()?;
        let (acc, key) = self.fetch_account(me.username.as_str()).await?;
        Ok(acc
            .devices
            .into_iter()
            .map(|d| {
                let verified = DeviceCertificate::decode(&d.certificate.0)
                    .map(|c| {
                        c.identity_key == key
                            && c.verify_self_signed().is_ok()
                            && c.device_id.to_hex() == d.device_id
                    })
                    .unwrap_or(false);
                DeviceLine {
                    this_device: d.device_id == me.device_id.to_hex(),
                    device_id: d.device_id,
                    created_at: d.created_at,
                    verified,
                }
            })
            .collect())
    }

    /// Revokes a device of this account (another one, or this one). The server stops accepting it at
    /// once and it stops being served any conversation; unless it is this device, the conversations'
    /// MLS groups then drop it (this device commits its removal now; the account's other devices
    /// would on their next sync), so it cannot decrypt anything sent afterwards.
    pub async fn revoke_device(&self, device_id: &str) -> Result<SyncReport, ClientError> {
        let me = self.me()?;
        let id = device_id.trim().to_ascii_lowercase();
        if id.parse::<DeviceId>().is_err() {
            return Err(ClientError::Invalid(format!(
                "not a device id: {device_id} (see `sotto devices`)"
            )));
        }
        let () = self
            .transport()?
            .delete(&format!("/v1/devices/{id}"))
            .await
            .map_err(|e| match e {
                ClientError::Api {
                    code: ErrorCode::NotFound,
                    ..
                } => ClientError::Invalid(format!(
                    "your account has no device {id} (see `sotto devices`)"
                )),
                other => other,
            })?;
        if id == me.device_id.to_hex() {
            return Ok(SyncReport::default());
        }
        self.sync().await
    }

    /// Claims key packages for `username`'s devices (`only` these, if not empty) and keeps those whose
    /// device certificate verifies against the pinned identity key; the others are reported and left
    /// out, so a device slipped in by the server never joins.
    async fn claim(
        &self,
        username: &str,
        only: &[String],
        suite: u16,
        report: &mut SyncReport,
    ) -> Result<Vec<sotto_proto::mls::TrustedKeyPackage>, ClientError> {
        self.ensure_pinned(&[username.to_owned()]).await?;
        let resp: ClaimResponse = self
            .transport()?
            .post(
                "/v1/key-packages/claim",
                &ClaimRequest {
                    username: username.to_owned(),
                    devices: only.to_vec(),
                    ciphersuite: Some(suite),
                },
            )
            .await?;
        let conn = self.lock()?;
        let mut out = Vec::new();
        for c in resp.key_packages {
            let checked = ValidKeyPackage::parse(&self.crypto, &c.key_package.0).and_then(|kp| {
                if kp.certificate().username.as_str() != username
                    || kp.certificate().device_id.to_hex() != c.device_id
                    || u16::from(kp.ciphersuite()) != suite
                {
                    return Err(MlsError::Rejected(
                        "key package is for another device".into(),
                    ));
                }
                kp.verify(&Pins(&conn))
            });
            match checked {
                Ok(kp) => out.push(kp),
                Err(e) => report
                    .warnings
                    .push(format!("refused device {} of {username}: {e}", c.device_id)),
            }
        }
        Ok(out)
    }

    /// Posts a commit bundle; on success merges it. On a definite refusal (4xx, including a lost
    /// race) drops it. When the outcome is unknown (transport error, 5xx) the commit stays pending:
    /// the next sync merges it if the server has it in the log, or drops it once the log shows the
    /// epoch never moved (see [`Client::resolve_pending`]).
    async fn post_commit(
        &self,
        conversation: &str,
        bundle: sotto_proto::mls::CommitBundle,
    ) -> Result<Accepted, ClientError> {
        let gid = group_id_bytes(conversation)?;
        let req = CommitRequest {
            epoch: bundle.epoch,
            commit: B64(bundle.commit),
            welcome: bundle.welcome.map(B64),
            initial_group_info: bundle.initial_group_info.map(B64),
        };
        // Marks the commit as in flight, so that another process on this device (say `listen`
        // while `send` runs) does not settle it as lost while this one still awaits the answer.
        let in_flight = in_flight_key(conversation);
        self.with_tx(|conn, _| db::set_config(conn, &in_flight, &now_secs().to_be_bytes()))?;
        let res: Result<Accepted, ClientError> = self
            .transport()?
            .post(&format!("/v1/conversations/{conversation}/commits"), &req)
            .await;
        match res {
            Ok(acc) => {
                self.with_tx(|conn, p| {
                    let mut g = Conversation::load(p, &gid)?
                        .ok_or_else(|| ClientError::Storage("group vanished".into()))?;
                    if g.has_pending_commit() {
                        g.merge_pending(p)?;
                    }
                    db::delete_config(conn, &in_flight)?;
                    db::set_status(conn, conversation, "ok", "")?;
                    Ok(())
                })?;
                Ok(acc)
            }
            Err(e) => {
                if matches!(e, ClientError::Api { status, .. } if status < 500) {
                    self.with_tx(|conn, p| {
                        if let Some(mut g) = Conversation::load(p, &gid)? {
                            g.clear_pending(p)?;
                        }
                        db::delete_config(conn, &in_flight)
                    })?;
                }
                Err(e)
            }
        }
    }

    /// Settles a commit of ours whose outcome was unknown, once the log has been applied up to the
    /// server's `server_epoch`: if the epoch never moved, the commit did not land; a group that
    /// never got past epoch 0 is dropped (it will be made again).
    fn resolve_pending(&self, id: &str, server_epoch: u64) -> Result<(), ClientError> {
        let gid = group_id_bytes(id)?;
        let in_flight = in_flight_key(id);
        self.with_tx(|conn, p| {
            let Some(mut g) = Conversation::load(p, &gid)? else {
                return Ok(());
            };
            if !g.has_pending_commit() || g.epoch() != server_epoch {
                return Ok(());
            }
            let posted_at = db::get_config(conn, &in_flight)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_be_bytes);
            if posted_at.is_some_and(|t| now_secs().saturating_sub(t) < IN_FLIGHT_GRACE_SECS) {
                return Ok(()); // another process may still be waiting for the answer
            }
            if g.epoch() == 0 {
                g.delete(p)?;
            } else {
                g.clear_pending(p)?;
            }
            db::delete_config(conn, &in_flight)
        })
    }

    /// Fetches and applies everything pending: welcomes, commits and messages, then adds this
    /// account's new devices to its conversations and tops up key packages.
    pub async fn sync(&self) -> Result<SyncReport, ClientError> {
        self.me()?;
        let mut report = SyncReport::default();
        self.process_inbox(&mut report).await?;
        let list: ConversationList = self.transport()?.get("/v1/conversations").await?;
        let mut members: Vec<String> = list
            .conversations
            .iter()
            .flat_map(|c| c.members.clone())
            .collect();
        members.sort();
        members.dedup();
        self.ensure_pinned(&members).await?;
        for c in &list.conversations {
            self.sync_conversation(&c.id, Some(c.last_seq), &mut report)
                .await?;
            self.resolve_pending(&c.id, c.epoch)?;
        }
        self.forget_lost_conversations(&list).await?;
        for c in list.conversations.iter().filter(|c| !c.departed.is_empty()) {
            if let Err(e) = self.remove_departed(c, &mut report).await {
                report.warnings.push(format!(
                    "could not remove the members who left group {}: {e}",
                    c.id
                ));
            }
        }
        self.reconcile_devices(&mut report).await?;
        self.resend_pending(&mut report).await?;
        self.replenish_key_packages().await?;
        Ok(report)
    }

    async fn process_inbox(&self, report: &mut SyncReport) -> Result<(), ClientError> {
        let inbox: Inbox = self.transport()?.get("/v1/inbox").await?;
        if inbox.items.is_empty() {
            return Ok(());
        }
        let mut handled: Option<u64> = None;
        let list: ConversationList = self.transport()?.get("/v1/conversations").await?;
        for item in &inbox.items {
            let Some(info) = list
                .conversations
                .iter()
                .find(|c| c.id == item.conversation)
            else {
                handled = Some(item.id); // not a conversation of ours: nothing to join
                continue;
            };
            self.ensure_pinned(&info.members).await?;
            let gid = group_id_bytes(&item.conversation)?;
            let peer = self.me()?.username.as_str();
            let dm_peer = if info.kind == "dm" {
                info.members.iter().find(|m| m.as_str() != peer).cloned()
            } else {
                None
            };
            let join_with = |pinned_retry: bool| {
                self.with_tx(|conn, p| {
                    // Local state for this group may be stale: this device was removed and added
                    // again while away, or its own setup of the conversation lost to the one this
                    // welcome comes from. openmls will not stage a welcome over an existing group,
                    // so drop it first; if the welcome turns out to be older than that state, the
                    // transaction rolls back and the group is kept.
                    let mut kept: Option<(u64, bool)> = None;
                    if let Some(g) = Conversation::load(p, &gid)? {
                        let own_setup_lost = g.epoch() == 0 && g.has_pending_commit();
                        if g.is_active() && !own_setup_lost {
                            kept = Some((g.epoch(), true));
                        }
                        g.delete(p)?;
                    }
                    let join = PendingJoin::stage(
                        p,
                        &item.welcome.0,
                        item.ratchet_tree.as_ref().map(|t| t.0.as_slice()),
                    )?;
                    if let Some((epoch, true)) = kept {
                        if join.epoch() <= epoch {
                            return Err(ClientError::StaleWelcome);
                        }
                    }
                    if join.group_id() != gid.as_slice() {
                        return Err(ClientError::Protocol(
                            "welcome is for another conversation".into(),
                        ));
                    }
                    // Members who left since the welcome was made are not in the server's member
                    // list: fetch and pin their keys first (then verify as usual).
                    let unknown: Vec<String> = join
                        .accounts()
                        .into_iter()
                        .filter(|u| Pins(conn).pinned_identity(u).is_none())
                        .map(|u| u.to_string())
                        .collect();
                    if !unknown.is_empty() && !pinned_retry {
                        return Err(ClientError::PinNeeded(unknown));
                    }
                    join.accept(p, &Pins(conn))?;
                    db::upsert_conversation(
                        conn,
                        &item.conversation,
                        &info.kind,
                        dm_peer.as_deref(),
                    )?;
                    db::set_status(conn, &item.conversation, "ok", "")?;
                    db::set_cursor(conn, &item.conversation, item.seq)?;
                    Ok(())
                })
            };
            let res = match join_with(false) {
                Err(ClientError::PinNeeded(users)) => {
                    self.pin_if_known(&users).await?;
                    join_with(true)
                }
                other => other,
            };
            match res {
                Ok(()) | Err(ClientError::StaleWelcome) => {}
                // A local failure may pass: keep this welcome (and the ones after it) for the next
                // sync instead of acknowledging it away.
                Err(e @ ClientError::Storage(_)) => {
                    report.warnings.push(format!(
                        "could not apply an invitation to conversation {} yet: {e}",
                        item.conversation
                    ));
                    break;
                }
                Err(e) => report.warnings.push(format!(
                    "refused an invitation to conversation {}: {e}",
                    item.conversation
                )),
            }
            handled = Some(item.id);
        }
        if let Some(up_to) = handled {
            let _: () = self
                .transport()?
                .post("/v1/inbox/ack", &InboxAck { up_to })
                .await?;
        }
        Ok(())
    }

    /// Applies a conversation's log after the local cursor.
    async fn sync_conversation(
        &self,
        id: &str,
        known_last: Option<u64>,
        report: &mut SyncReport,
    ) -> Result<(), ClientError> {
        let gid = group_id_bytes(id)?;
        loop {
            let local = {
                let conn = self.lock()?;
                db::conversation(&conn, id)?
            };
            let Some(local) = local else { return Ok(()) };
            if local.status != "ok" {
                return Ok(());
            }
            if known_last.is_some_and(|l| l <= local.cursor) {
                return Ok(());
            }
            let has_group = {
                let conn = self.lock()?;
                Conversation::load(&Provider::new(&self.crypto, &conn), &gid)?.is_some()
            };
            if !has_group {
                return Ok(());
            }
            let page: LogPage = self
                .transport()?
                .get(&format!(
                    "/v1/conversations/{id}/log?after={}",
                    local.cursor
                ))
                .await?;
            if page.entries.is_empty() {
                return Ok(());
            }
            let mut stop = false;
            for entry in &page.entries {
                let applied = match self.apply_entry(id, &gid, entry, report, false) {
                    Err(ClientError::PinNeeded(users)) => {
                        // A commit adds accounts we never saw (they may have left since): pin
                        // their keys, then verify the commit against them.
                        self.pin_if_known(&users).await?;
                        self.apply_entry(id, &gid, entry, report, true)?
                    }
                    other => other?,
                };
                if !applied {
                    stop = true;
                    break;
                }
            }
            if stop || !page.more {
                return Ok(());
            }
        }
    }

    /// Applies an entry the server pushed inline if it is the next one this device expects;
    /// otherwise fetches the log as for a wake-up.
    async fn apply_pushed(
        &self,
        id: &str,
        entry: &LogEntry,
        report: &mut SyncReport,
    ) -> Result<(), ClientError> {
        let gid = group_id_bytes(id)?;
        let next = {
            let conn = self.lock()?;
            let local = db::conversation(&conn, id)?;
            local.is_some_and(|l| l.status == "ok" && l.cursor + 1 == entry.seq)
                && Conversation::load(&Provider::new(&self.crypto, &conn), &gid)?.is_some()
        };
        if !next {
            return self.sync_conversation(id, Some(entry.seq), report).await;
        }
        match self.apply_entry(id, &gid, entry, report, false) {
            Err(ClientError::PinNeeded(users)) => {
                self.pin_if_known(&users).await?;
                self.apply_entry(id, &gid, entry, report, true)?;
            }
            other => {
                other?;
            }
        }
        Ok(())
    }

    /// Applies one log entry in one transaction. Returns false if the conversation got refused.
    fn apply_entry(
        &self,
        id: &str,
        gid: &[u8],
        entry: &LogEntry,
        report: &mut SyncReport,
        pinned_retry: bool,
    ) -> Result<bool, ClientError> {
        let me = self.me()?;
        let mine = entry.sender_device == me.device_id.to_hex();
        let mut refused: Option<String> = None;
        let mut warning: Option<String> = None;
        let mut lost_setup = false;
        self.with_tx(|conn, p| {
            let Some(local) = db::conversation(conn, id)? else { return Ok(()) };
            if entry.seq <= local.cursor {
                return Ok(()); // another process of this device got here first
            }
            if entry.seq > local.cursor + 1 {
                warning = Some(format!(
                    "conversation {id}: {} entries expired on the server before this device fetched them",
                    entry.seq - local.cursor - 1
                ));
            }
            let mut g = Conversation::load(p, gid)?.ok_or_else(|| ClientError::Storage("group vanished".into()))?;
            let kind = match local.peer.as_deref().map(Username::new) {
                Some(Ok(peer)) if local.kind == "dm" => g.kind(&me.username, Some(&peer))?,
                _ => g.kind(&me.username, None).unwrap_or(Kind::Group),
            };
            match entry.kind {
                EntryKind::Commit if entry.epoch < g.epoch() => {} // already applied (ours, merged on acceptance)
                EntryKind::Commit if !mine && g.epoch() == 0 && g.has_pending_commit() => {
                    // Our own setup of this conversation never landed and another device's did:
                    // drop ours; that device's welcome brings us in.
                    g.delete(p)?;
                    lost_setup = true;
                    return Ok(());
                }
                EntryKind::Commit if mine && entry.epoch == g.epoch() => {
                    // Our commit, accepted while we were not looking (crash between post and merge).
                    if g.has_pending_commit() {
                        g.merge_pending(p)?;
                        db::delete_config(conn, &in_flight_key(id))?;
                    } else {
                        // Its secrets are gone: this device cannot follow the group any more.
                        let detail = "this device's own commit was accepted after it had been dropped locally; the device must be added to the conversation again".to_owned();
                        db::set_status(conn, id, "broken", &detail)?;
                        refused = Some(detail);
                        return Ok(());
                    }
                }
                EntryKind::Commit if mine => {}
                EntryKind::Commit => {
                    if g.has_pending_commit() {
                        g.clear_pending(p)?; // we lost the race for this epoch
                    }
                    match g.process(p, &entry.data.0) {
                        Ok(Incoming::Commit(pending)) => match g.merge_verified(p, pending, &Pins(conn), &kind) {
                            Ok(()) => {
                                if !g.is_active() {
                                    db::set_status(conn, id, "removed", "this device was removed from the conversation")?;
                                }
                            }
                            Err(MlsError::UnknownAccount(u)) if !pinned_retry => {
                                return Err(ClientError::PinNeeded(vec![u.to_string()]));
                            }
                            Err(e @ (MlsError::Certificate { .. } | MlsError::UnknownAccount(_))) => {
                                let detail = format!("a commit tried to add a device that failed verification ({e})");
                                db::set_status(conn, id, "refused", &detail)?;
                                refused = Some(detail);
                                return Ok(());
                            }
                            Err(e @ MlsError::Policy(_)) => {
                                let detail = format!("the server delivered a commit that breaks the group's rules ({e})");
                                db::set_status(conn, id, "refused", &detail)?;
                                refused = Some(detail);
                                return Ok(());
                            }
                            Err(e) => return Err(e.into()),
                        },
                        // The server checked this commit against the group's public state: if
                        // this device cannot apply it, its own state has diverged (an expired
                        // entry, a lost commit). Going on would skip an epoch silently.
                        other => {
                            let why = match other {
                                Ok(_) => "not a commit".to_owned(),
                                Err(e) => e.to_string(),
                            };
                            let detail = format!("this device cannot apply commit {} ({why}); it must be added to the conversation again", entry.seq);
                            db::set_status(conn, id, "broken", &detail)?;
                            refused = Some(detail);
                            return Ok(());
                        }
                    }
                }
                EntryKind::Message if mine => {}
                EntryKind::Message => match g.process(p, &entry.data.0) {
                    Ok(Incoming::Message { sender, content }) => {
                        if sender.device_id.to_hex() != entry.sender_device {
                            warning = Some(format!("conversation {id}: entry {} claims another sending device", entry.seq));
                        } else {
                            let (text, reply) = match &content.body {
                                Body::Text { text, reply_to } => (Some(text.as_str()), reply_to.map(|r| r.to_hex())),
                                _ => (None, None),
                            };
                            db::insert_message(conn, &db::NewMessage {
                                conversation: id,
                                message_id: &content.id.to_hex(),
                                seq: Some(entry.seq),
                                sender: sender.username.as_str(),
                                sender_device: &sender.device_id.to_hex(),
                                sent_at_ms: content.sent_at_ms,
                                text,
                                reply_to: reply.as_deref(),
                                outgoing: sender.username == me.username,
                                shown: false,
                            })?;
                        }
                    }
                    Ok(_) => warning = Some(format!("conversation {id}: entry {} is not a message", entry.seq)),
                    Err(e) => warning = Some(format!("conversation {id}: could not decrypt entry {}: {e}", entry.seq)),
                },
            }
            db::set_cursor(conn, id, entry.seq)
        })?;
        if let Some(w) = warning {
            report.warnings.push(w);
        }
        if lost_setup {
            return Ok(false);
        }
        if let Some(detail) = refused {
            report
                .warnings
                .push(format!("conversation {id} blocked: {detail}"));
            return Ok(false);
        }
        Ok(true)
    }

    /// Adds this account's devices that are missing from its conversations.
    async fn reconcile_devices(&self, report: &mut SyncReport) -> Result<(), ClientError> {
        let me = self.me()?;
        let (acc, key) = self.fetch_account(me.username.as_str()).await?;
        let mut mine: Vec<String> = Vec::new();
        for d in &acc.devices {
            match DeviceCertificate::decode(&d.certificate.0) {
                Ok(c)
                    if c.identity_key == key
                        && c.verify_self_signed().is_ok()
                        && c.device_id.to_hex() == d.device_id =>
                {
                    mine.push(d.device_id.clone())
                }
                _ => report.warnings.push(format!(
                    "ignoring device {} of your account: its certificate does not verify",
                    d.device_id
                )),
            }
        }
        let ids: Vec<String> = {
            let conn = self.lock()?;
            let mut stmt = conn
                .prepare("SELECT id FROM sotto_conversations WHERE status = 'ok' ORDER BY id")
                .map_err(storage_err)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(storage_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage_err)?;
            rows
        };
        for id in ids {
            if let Err(e) = self
                .remove_revoked_devices(&id, &acc.revoked_devices, report)
                .await
            {
                report.warnings.push(format!(
                    "could not remove your revoked devices from conversation {id}: {e}"
                ));
            }
            if let Err(e) = self.add_missing_devices(&id, &mine, report).await {
                report.warnings.push(format!(
                    "could not add your new devices to conversation {id}: {e}"
                ));
            }
        }
        Ok(())
    }

    /// Removes from a conversation's MLS group every device of this account that the server lists
    /// as revoked, so that it cannot decrypt what is sent from now on. (Only devices explicitly
    /// revoked: a device missing from a stale device list, such as one linked a moment ago, stays.)
    async fn remove_revoked_devices(
        &self,
        id: &str,
        revoked: &[String],
        report: &mut SyncReport,
    ) -> Result<(), ClientError> {
        if revoked.is_empty() {
            return Ok(());
        }
        let me = self.me()?;
        let this = me.device_id.to_hex();
        let stale = |g: &Conversation| -> Vec<u32> {
            g.members()
                .into_iter()
                .filter(|m| m.cert.username == me.username)
                .filter(|m| {
                    let d = m.cert.device_id.to_hex();
                    d != this && revoked.contains(&d)
                })
                .map(|m| m.leaf_index)
                .collect()
        };
        {
            let conn = self.lock()?;
            match Conversation::load(&Provider::new(&self.crypto, &conn), &group_id_bytes(id)?)? {
                Some(g) if g.is_active() && !stale(&g).is_empty() => {}
                _ => return Ok(()),
            }
        }
        self.change_group(id, report, |g| {
            let remove = stale(g);
            Ok((!remove.is_empty()).then(|| Plan {
                remove,
                ..Plan::default()
            }))
        })
        .await
        .map(|_| ())
    }

    async fn add_missing_devices(
        &self,
        id: &str,
        mine: &[String],
        report: &mut SyncReport,
    ) -> Result<(), ClientError> {
        let me = self.me()?;
        let gid = group_id_bytes(id)?;
        for attempt in 0..MAX_ATTEMPTS {
            let missing: Vec<String> = {
                let conn = self.lock()?;
                let Some(g) = Conversation::load(&Provider::new(&self.crypto, &conn), &gid)? else {
                    return Ok(());
                };
                if !g.is_active() {
                    return Ok(());
                }
                let present: Vec<String> = g
                    .members()
                    .into_iter()
                    .filter(|m| m.cert.username == me.username)
                    .map(|m| m.cert.device_id.to_hex())
                    .collect();
                mine.iter()
                    .filter(|d| !present.contains(d))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            let suite = self.suite_of(&gid)?;
            let kps = self
                .claim(me.username.as_str(), &missing, suite, report)
                .await?;
            if kps.is_empty() {
                return Ok(());
            }
            let keys_bundle = self.with_tx(|conn, p| {
                let keys = self.keys(conn)?;
                let mut g = Conversation::load(p, &gid)?
                    .ok_or_else(|| ClientError::Storage("group vanished".into()))?;
                Ok(g.add_devices(p, &keys, &kps)?)
            })?;
            match self.post_commit(id, keys_bundle).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_stale_epoch() => {
                    backoff_after_lost_race(attempt).await;
                    self.sync_conversation(id, None, report).await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::TooManyAttempts(MAX_ATTEMPTS))
    }

    async fn replenish_key_packages(&self) -> Result<(), ClientError> {
        let count: KeyPackageCount = self.transport()?.get("/v1/key-packages/count").await?;
        let mut suites = Vec::new();
        if count.count < KEY_PACKAGE_LOW {
            suites.push(DEFAULT_CIPHERSUITE);
        }
        if count.classic_count < KEY_PACKAGE_LOW {
            suites.push(CLASSIC_CIPHERSUITE);
        }
        if suites.is_empty() {
            return Ok(());
        }
        let kps = self.with_tx(|conn, p| {
            let keys = self.keys(conn)?;
            let mut out = Vec::new();
            for s in &suites {
                out.extend(keys.key_packages(p, *s, KEY_PACKAGE_TARGET, false)?.0);
            }
            Ok(out)
        })?;
        let _: KeyPackageCount = self
            .transport()?
            .post(
                "/v1/key-packages",
                &UploadKeyPackages {
                    key_packages: kps.into_iter().map(B64).collect(),
                    last_resort_key_packages: Vec::new(),
                },
            )
            .await?;
        Ok(())
    }

    /// The ciphersuite (IANA number) of a local group.
    fn suite_of(&self, gid: &[u8]) -> Result<u16, ClientError> {
        let conn = self.lock()?;
        let g = Conversation::load(&Provider::new(&self.crypto, &conn), gid)?
            .ok_or_else(|| ClientError::Protocol("not a member of this conversation".into()))?;
        Ok(u16::from(g.ciphersuite()))
    }

    /// Makes sure the DM with `peer` exists and this device is in its MLS group; returns its id.
    async fn ensure_dm(&self, peer: &str, report: &mut SyncReport) -> Result<String, ClientError> {
        let me = self.me()?;
        let peer_user = Username::new(peer).map_err(|e| ClientError::Invalid(e.to_string()))?;
        if peer_user == me.username {
            return Err(ClientError::Invalid(
                "you cannot send a DM to yourself".into(),
            ));
        }
        self.ensure_pinned(&[peer.to_owned()]).await?;
        for _ in 0..MAX_ATTEMPTS {
            let info: ConversationInfo = match self
                .transport()?
                .post(
                    "/v1/dms",
                    &CreateDmRequest {
                        peer: peer.to_owned(),
                    },
                )
                .await
            {
                Err(ClientError::Api {
                    code: ErrorCode::NotFound,
                    ..
                }) => return Err(ClientError::UnknownUser(peer.to_owned())),
                other => other?,
            };
            let gid = group_id_bytes(&info.id)?;
            let has_group = self.with_tx(|conn, p| {
                db::upsert_conversation(conn, &info.id, "dm", Some(peer))?;
                Ok(Conversation::load(p, &gid)?.is_some())
            })?;
            if let Some(c) = {
                let conn = self.lock()?;
                db::conversation(&conn, &info.id)?
            } {
                if c.status != "ok" {
                    return Err(ClientError::ConversationRefused {
                        id: c.id,
                        detail: c.status_detail,
                    });
                }
            }
            if has_group {
                let pending = {
                    let conn = self.lock()?;
                    Conversation::load(&Provider::new(&self.crypto, &conn), &gid)?
                        .is_some_and(|g| g.has_pending_commit())
                };
                if !pending {
                    return Ok(info.id);
                }
                // A commit of ours whose outcome was unknown: settle it, then look again.
                self.sync_conversation(&info.id, None, report).await?;
                self.resolve_pending(&info.id, info.epoch)?;
                continue;
            }
            if info.epoch > 0 {
                self.process_inbox(report).await?;
                let joined = {
                    let conn = self.lock()?;
                    Conversation::load(&Provider::new(&self.crypto, &conn), &gid)?.is_some()
                };
                if joined {
                    return Ok(info.id);
                }
                return Err(ClientError::NotYetAdded(peer.to_owned()));
            }
            // Nobody has set the conversation up yet: create the group with every device of both
            // accounts. If someone beats us to it, our commit is refused and their welcome arrives.
            let pq = u16::from(DEFAULT_CIPHERSUITE);
            let mut kps = self.claim(peer, &[], pq, report).await?;
            if kps.is_empty() {
                return Err(ClientError::Protocol(format!(
                    "none of {peer}'s devices could be verified"
                )));
            }
            kps.extend(self.claim(me.username.as_str(), &[], pq, report).await?);
            let bundle = self.with_tx(|conn, p| {
                let keys = self.keys(conn)?;
                let mut g = Conversation::create(p, &keys, &gid, DEFAULT_CIPHERSUITE, None)?;
                Ok(g.add_devices(p, &keys, &kps)?)
            })?;
            match self.post_commit(&info.id, bundle).await {
                Ok(_) => return Ok(info.id),
                Err(e) if e.is_stale_epoch() => {
                    self.with_tx(|_, p| {
                        if let Some(g) = Conversation::load(p, &gid)? {
                            g.delete(p)?;
                        }
                        Ok(())
                    })?;
                    self.process_inbox(report).await?;
                }
                Err(e @ ClientError::Api { status, .. }) if status < 500 => {
                    self.with_tx(|_, p| {
                        if let Some(g) = Conversation::load(p, &gid)? {
                            g.delete(p)?;
                        }
                        Ok(())
                    })?;
                    return Err(e);
                }
                // Unknown outcome: the next sync settles it (resolve_pending).
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::TooManyAttempts(MAX_ATTEMPTS))
    }

    /// Marks conversations the server no longer lists for this account (removed, or left) and drops
    /// their MLS state: nothing sent there afterwards can be read by this device anyway.
    async fn forget_lost_conversations(&self, list: &ConversationList) -> Result<(), ClientError> {
        let listed: std::collections::HashSet<&str> =
            list.conversations.iter().map(|c| c.id.as_str()).collect();
        let local: Vec<(String, String)> = {
            let conn = self.lock()?;
            let mut stmt = conn
                .prepare("SELECT id, status FROM sotto_conversations WHERE kind = 'group'")
                .map_err(storage_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(storage_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage_err)?;
            rows
        };
        let candidates: Vec<(String, String)> = local
            .into_iter()
            .filter(|(id, status)| !listed.contains(id.as_str()) && status != "left")
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        // Ask again: another process of this device may have created or joined a group since
        // `list` was fetched.
        let fresh: ConversationList = self.transport()?.get("/v1/conversations").await?;
        for (id, status) in candidates {
            if fresh.conversations.iter().any(|c| c.id == id) {
                continue;
            }
            let gid = group_id_bytes(&id)?;
            self.with_tx(|conn, p| {
                if let Some(g) = Conversation::load(p, &gid)? {
                    g.delete(p)?;
                }
                if status != "removed" {
                    db::set_status(
                        conn,
                        &id,
                        "removed",
                        "you are no longer a member of this group",
                    )?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// As an admin, removes the devices of accounts that left a group.
    async fn remove_departed(
        &self,
        info: &ConversationInfo,
        report: &mut SyncReport,
    ) -> Result<(), ClientError> {
        let me = self.me()?;
        let gid = group_id_bytes(&info.id)?;
        let admin = {
            let conn = self.lock()?;
            Conversation::load(&Provider::new(&self.crypto, &conn), &gid)?
                .and_then(|g| g.metadata())
                .is_some_and(|m| m.is_admin(&me.username))
        };
        if !admin {
            return Ok(());
        }
        let departed: Vec<Username> = info
            .departed
            .iter()
            .filter_map(|u| Username::new(u).ok())
            .collect();
        self.change_group(&info.id, report, |g| Ok(removal_plan(g, &departed)))
            .await
            .map(|_| ())
    }

    /// Makes one commit to a group, planned by `plan` from the group's current state, retrying
    /// after catching up when another commit wins the epoch. `Ok(None)`: nothing to do.
    async fn change_group(
        &self,
        id: &str,
        report: &mut SyncReport,
        mut plan: impl FnMut(&Conversation) -> Result<Option<Plan>, ClientError>,
    ) -> Result<Option<Accepted>, ClientError> {
        let gid = group_id_bytes(id)?;
        for attempt in 0..MAX_ATTEMPTS {
            let (todo, suite) = {
                let conn = self.lock()?;
                let g = Conversation::load(&Provider::new(&self.crypto, &conn), &gid)?.ok_or_else(
                    || ClientError::Invalid(format!("you are not a member of group {id}")),
                )?;
                if !g.is_active() {
                    return Err(ClientError::Invalid(format!(
                        "you are not a member of group {id}"
                    )));
                }
                (plan(&g)?, u16::from(g.ciphersuite()))
            };
            let Some(todo) = todo else { return Ok(None) };
            let mut kps = Vec::new();
            for u in &todo.add_users {
                let got = self.claim(u, &todo.add_only, suite, report).await?;
                if got.is_empty() {
                    return Err(ClientError::Protocol(format!(
                        "none of {u}'s devices could be verified"
                    )));
                }
                kps.extend(got);
            }
            let bundle = self.with_tx(|conn, p| {
                let keys = self.keys(conn)?;
                let mut g = Conversation::load(p, &gid)?
                    .ok_or_else(|| ClientError::Storage("group vanished".into()))?;
                Ok(g.commit(
                    p,
                    &keys,
                    Changes {
                        add: &kps,
                        remove: todo.remove.clone(),
                        metadata: todo.metadata.as_ref(),
                        self_update: todo.self_update,
                    },
                )?)
            })?;
            match self.post_commit(id, bundle).await {
                Ok(acc) => return Ok(Some(acc)),
                Err(e) if e.is_stale_epoch() => {
                    backoff_after_lost_race(attempt).await;
                    self.sync_conversation(id, None, report).await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::TooManyAttempts(MAX_ATTEMPTS))
    }

    /// Finds a group by id (or by its exact name, if exactly one group has it).
    fn resolve_group(&self, group: &str) -> Result<String, ClientError> {
        let by_id = {
            let conn = self.lock()?;
            db::conversation(&conn, group)?.is_some_and(|c| c.kind == "group" && c.status == "ok")
        };
        if by_id {
            return Ok(group.to_owned());
        }
        let groups = self.groups()?;
        let named: Vec<&GroupLine> = groups.iter().filter(|g| g.name == group).collect();
        match named.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(ClientError::Invalid(format!(
                "no group {group} on this device (run `sotto sync`?)"
            ))),
            _ => Err(ClientError::Invalid(format!(
                "several groups are named {group}: use the group id"
            ))),
        }
    }

    /// Creates a group named `name` with the given accounts (all their devices) and this account's
    /// devices; this account is its admin. Returns the group id. The ciphersuite is the hybrid
    /// post-quantum one up to the post-quantum group limit (in devices), the classic one above.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[String],
        pq_limit: usize,
    ) -> Result<(String, SyncReport), ClientError> {
        let me = self.me()?;
        let meta = GroupMetadata::new(name, me.username.clone()).map_err(|_| {
            ClientError::Invalid(format!(
                "invalid group name: 1 to {} bytes, no control characters",
                sotto_proto::group::MAX_NAME_BYTES
            ))
        })?;
        let mut users: Vec<String> = Vec::new();
        for m in members {
            let u = Username::new(m).map_err(|e| ClientError::Invalid(e.to_string()))?;
            if u != me.username && !users.contains(&m.to_string()) {
                users.push(u.to_string());
            }
        }
        let mut report = self.sync().await?;
        let mut devices = 0usize;
        for u in users
            .iter()
            .chain(std::iter::once(&me.username.to_string()))
        {
            let (acc, _) = self.fetch_account(u).await?;
            devices += acc.devices.len();
        }
        let suite = if devices <= pq_limit {
            DEFAULT_CIPHERSUITE
        } else {
            CLASSIC_CIPHERSUITE
        };
        let info: ConversationInfo = self
            .transport()?
            .post("/v1/groups", &CreateGroupRequest::default())
            .await?;
        let gid = group_id_bytes(&info.id)?;
        let mut kps = Vec::new();
        for u in &users {
            let got = self.claim(u, &[], u16::from(suite), &mut report).await?;
            if got.is_empty() {
                return Err(ClientError::Protocol(format!(
                    "none of {u}'s devices could be verified"
                )));
            }
            kps.extend(got);
        }
        kps.extend(
            self.claim(me.username.as_str(), &[], u16::from(suite), &mut report)
                .await?,
        );
        let bundle = self.with_tx(|conn, p| {
            let keys = self.keys(conn)?;
            let mut g = Conversation::create(p, &keys, &gid, suite, Some(&meta))?;
            db::upsert_conversation(conn, &info.id, "group", None)?;
            Ok(g.add_devices(p, &keys, &kps)?)
        })?;
        match self.post_commit(&info.id, bundle).await {
            Ok(_) => Ok((info.id, report)),
            Err(e) => {
                self.with_tx(|conn, p| {
                    if let Some(g) = Conversation::load(p, &gid)? {
                        g.delete(p)?;
                    }
                    db::set_status(conn, &info.id, "removed", "the group could not be set up")?;
                    Ok(())
                })?;
                Err(e)
            }
        }
    }

    /// Adds accounts (all their devices) to a group. Needs an admin; the server and every member
    /// refuse it otherwise.
    pub async fn group_add(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<SyncReport, ClientError> {
        let mut report = self.sync().await?;
        let id = self.resolve_group(group)?;
        let mut wanted = Vec::new();
        for u in users {
            let user = Username::new(u).map_err(|e| ClientError::Invalid(e.to_string()))?;
            self.ensure_pinned(&[user.to_string()]).await?;
            wanted.push(user);
        }
        self.change_group(&id, &mut report, |g| {
            let present: Vec<Username> = g.members().into_iter().map(|m| m.cert.username).collect();
            let add: Vec<String> = wanted
                .iter()
                .filter(|u| !present.contains(u))
                .map(|u| u.to_string())
                .collect();
            Ok((!add.is_empty()).then(|| Plan {
                add_users: add,
                ..Plan::default()
            }))
        })
        .await?;
        Ok(report)
    }

    /// Removes accounts (all their devices) from a group; an admin removed is dropped from the
    /// admins in the same commit.
    pub async fn group_remove(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<SyncReport, ClientError> {
        let mut report = self.sync().await?;
        let id = self.resolve_group(group)?;
        let me = self.me()?;
        let mut gone = Vec::new();
        for u in users {
            let user = Username::new(u).map_err(|e| ClientError::Invalid(e.to_string()))?;
            if user == me.username {
                return Err(ClientError::Invalid(
                    "to remove yourself, use `sotto group leave`".into(),
                ));
            }
            gone.push(user);
        }
        let missing: Vec<String> = {
            let conn = self.lock()?;
            let g = Conversation::load(&Provider::new(&self.crypto, &conn), &group_id_bytes(&id)?)?
                .ok_or_else(|| {
                    ClientError::Invalid(format!("you are not a member of group {id}"))
                })?;
            let present: Vec<Username> = g.members().into_iter().map(|m| m.cert.username).collect();
            gone.iter()
                .filter(|u| !present.contains(u))
                .map(|u| u.to_string())
                .collect()
        };
        if !missing.is_empty() {
            return Err(ClientError::Invalid(format!(
                "not a member of the group: {}",
                missing.join(", ")
            )));
        }
        self.change_group(&id, &mut report, |g| Ok(removal_plan(g, &gone)))
            .await?;
        Ok(report)
    }

    /// Leaves a group: this account stops being a member at once (on every device); an admin's
    /// device removes its devices from the MLS group on its next sync.
    pub async fn group_leave(&self, group: &str) -> Result<(), ClientError> {
        self.sync().await?;
        let id = self.resolve_group(group)?;
        let _: () = self
            .transport()?
            .post(
                &format!("/v1/conversations/{id}/leave"),
                &serde_json::json!({}),
            )
            .await?;
        let gid = group_id_bytes(&id)?;
        self.with_tx(|conn, p| {
            if let Some(g) = Conversation::load(p, &gid)? {
                g.delete(p)?;
            }
            db::set_status(conn, &id, "left", "you left this group")
        })
    }

    /// Renames a group (admins only).
    pub async fn group_rename(&self, group: &str, name: &str) -> Result<SyncReport, ClientError> {
        let mut report = self.sync().await?;
        let id = self.resolve_group(group)?;
        self.change_group(&id, &mut report, |g| {
            let m = g
                .metadata()
                .ok_or_else(|| ClientError::Invalid("not a group".into()))?;
            let renamed = m.renamed(name).map_err(|_| {
                ClientError::Invalid(format!(
                    "invalid group name: 1 to {} bytes, no control characters",
                    sotto_proto::group::MAX_NAME_BYTES
                ))
            })?;
            Ok((renamed != m).then(|| Plan {
                metadata: Some(renamed),
                ..Plan::default()
            }))
        })
        .await?;
        Ok(report)
    }

    /// Makes a member an admin (admins only).
    pub async fn group_make_admin(
        &self,
        group: &str,
        user: &str,
    ) -> Result<SyncReport, ClientError> {
        let mut report = self.sync().await?;
        let id = self.resolve_group(group)?;
        let user = Username::new(user).map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.change_group(&id, &mut report, |g| {
            let m = g
                .metadata()
                .ok_or_else(|| ClientError::Invalid("not a group".into()))?;
            if !g.members().iter().any(|d| d.cert.username == user) {
                return Err(ClientError::Invalid(format!(
                    "{user} is not a member of the group"
                )));
            }
            Ok((!m.is_admin(&user)).then(|| Plan {
                metadata: Some(m.with_admin(&user, true)),
                ..Plan::default()
            }))
        })
        .await?;
        Ok(report)
    }

    /// Refreshes this device's keys in a group (a self-update commit): whatever an attacker may
    /// have learned of its earlier keys stops opening later messages.
    pub async fn group_update_keys(&self, group: &str) -> Result<SyncReport, ClientError> {
        let mut report = SyncReport::default();
        let id = self.resolve_group(group)?;
        self.change_group(&id, &mut report, |_| {
            Ok(Some(Plan {
                self_update: true,
                ..Plan::default()
            }))
        })
        .await?;
        Ok(report)
    }

    /// The groups this device is in, as it knows them (run [`Client::sync`] first to be current).
    pub fn groups(&self) -> Result<Vec<GroupLine>, ClientError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare("SELECT id FROM sotto_conversations WHERE kind = 'group' AND status = 'ok' ORDER BY id")
            .map_err(storage_err)?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(storage_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage_err)?;
        let provider = Provider::new(&self.crypto, &conn);
        let mut out = Vec::new();
        for id in ids {
            out.extend(group_line(&provider, id)?);
        }
        Ok(out)
    }

    /// One group, by id or unique name.
    pub fn group_info(&self, group: &str) -> Result<GroupLine, ClientError> {
        let id = self.resolve_group(group)?;
        let conn = self.lock()?;
        group_line(&Provider::new(&self.crypto, &conn), id)?
            .ok_or_else(|| ClientError::Invalid(format!("no group {group}")))
    }

    /// Sends a message to a group.
    pub async fn send_group(
        &self,
        group: &str,
        text: &str,
    ) -> Result<(Message, SyncReport), ClientError> {
        let me = self.me()?;
        if text.len() > sotto_proto::content::MAX_TEXT_BYTES {
            return Err(ClientError::Invalid(format!(
                "message too long: at most {} bytes",
                sotto_proto::content::MAX_TEXT_BYTES
            )));
        }
        let mut report = self.sync().await?;
        let id = self.resolve_group(group)?;
        let content = MessageContent::text(text, now_ms(), None);
        self.post_message(&id, &content, &mut report).await?;
        Ok((
            Message {
                id: content.id.to_hex(),
                conversation: id.clone(),
                group: Some(id),
                sender: me.username.to_string(),
                sender_device: me.device_id.to_hex(),
                text: text.to_owned(),
                sent_at: rfc3339_ms(content.sent_at_ms),
                outgoing: true,
            },
            report,
        ))
    }

    /// Every message of a group, oldest first.
    pub fn group_history(&self, group: &str) -> Result<Vec<Message>, ClientError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare(
                "SELECT m.message_id, m.conversation, m.sender, m.sender_device, m.text, m.sent_at_ms, m.outgoing
                 FROM sotto_messages m WHERE m.conversation = ?1
                 ORDER BY COALESCE(m.seq, 9223372036854775807), m.local_order",
            )
            .map_err(storage_err)?;
        let rows = stmt
            .query_map(params![group], |r| {
                let conversation: String = r.get(1)?;
                Ok(Message {
                    id: r.get(0)?,
                    group: Some(conversation.clone()),
                    conversation,
                    sender: r.get(2)?,
                    sender_device: r.get(3)?,
                    text: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    sent_at: rfc3339_ms(u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0)),
                    outgoing: r.get::<_, i64>(6)? != 0,
                })
            })
            .map_err(storage_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage_err)?;
        Ok(rows)
    }

    /// A local conversation's status (`ok`, `refused`, `removed`, `left`) and its detail.
    pub fn conversation_status(&self, id: &str) -> Result<Option<(String, String)>, ClientError> {
        let conn = self.lock()?;
        Ok(db::conversation(&conn, id)?.map(|c| (c.status, c.status_detail)))
    }

    /// Sends a DM to `peer`, creating the conversation on first use. Returns the sent message.
    pub async fn send_dm(
        &self,
        peer: &str,
        text: &str,
    ) -> Result<(Message, SyncReport), ClientError> {
        let me = self.me()?;
        if text.len() > sotto_proto::content::MAX_TEXT_BYTES {
            return Err(ClientError::Invalid(format!(
                "message too long: at most {} bytes",
                sotto_proto::content::MAX_TEXT_BYTES
            )));
        }
        let mut report = self.sync().await?;
        let id = self.ensure_dm(peer, &mut report).await?;
        let content = MessageContent::text(text, now_ms(), None);
        self.post_message(&id, &content, &mut report).await?;
        Ok((
            Message {
                id: content.id.to_hex(),
                conversation: id,
                group: None,
                sender: me.username.to_string(),
                sender_device: me.device_id.to_hex(),
                text: text.to_owned(),
                sent_at: rfc3339_ms(content.sent_at_ms),
                outgoing: true,
            },
            report,
        ))
    }

    /// Encrypts `content` for the conversation's current epoch and posts it; on a stale epoch
    /// catches up and re-encrypts. The message is stored locally (as pending, `seq` unset) before it
    /// is posted, so one whose outcome is unknown (the server died mid-request) is posted again by
    /// the next sync with the same message id, and receivers keep exactly one copy.
    ///
    /// Errors: before the message was stored, as they are; after, a definite refusal (4xx) drops the
    /// pending copy and is returned as it is, anything else (transport, 5xx, 429, 507, lost races)
    /// is [`ClientError::Queued`]: kept, and sent by the next sync.
    async fn post_message(
        &self,
        id: &str,
        content: &MessageContent,
        report: &mut SyncReport,
    ) -> Result<Accepted, ClientError> {
        let mut stored = false;
        match self
            .try_post_message(id, content, report, &mut stored)
            .await
        {
            Ok(a) => Ok(a),
            Err(e) if !stored => Err(e),
            Err(e) if e.is_refusal() => {
                let conn = self.lock()?;
                conn.execute(
                    "DELETE FROM sotto_messages WHERE conversation = ?1 AND message_id = ?2 AND seq IS NULL",
                    params![id, content.id.to_hex()],
                )
                .map_err(storage_err)?;
                Err(e)
            }
            Err(e) => Err(ClientError::Queued {
                id: content.id.to_hex(),
                reason: Box::new(e),
            }),
        }
    }

    async fn try_post_message(
        &self,
        id: &str,
        content: &MessageContent,
        report: &mut SyncReport,
        stored: &mut bool,
    ) -> Result<Accepted, ClientError> {
        let me = self.me()?;
        let gid = group_id_bytes(id)?;
        let msg_id = content.id.to_hex();
        let (text, reply_to) = match &content.body {
            Body::Text { text, reply_to } => (Some(text.as_str()), reply_to.map(|r| r.to_hex())),
            _ => (None, None),
        };
        for attempt in 0..MAX_ATTEMPTS {
            let bytes = self.with_tx(|conn, p| {
                let keys = self.keys(conn)?;
                let mut g = Conversation::load(p, &gid)?.ok_or_else(|| {
                    ClientError::Protocol(format!("not a member of conversation {id}"))
                })?;
                let bytes = g.encrypt(p, &keys, content)?;
                db::insert_message(
                    conn,
                    &db::NewMessage {
                        conversation: id,
                        message_id: &msg_id,
                        seq: None,
                        sender: me.username.as_str(),
                        sender_device: &me.device_id.to_hex(),
                        sent_at_ms: content.sent_at_ms,
                        text,
                        reply_to: reply_to.as_deref(),
                        outgoing: true,
                        shown: true,
                    },
                )?;
                Ok(bytes)
            })?;
            *stored = true;
            let res: Result<Accepted, ClientError> = self
                .transport()?
                .post(
                    &format!("/v1/conversations/{id}/messages"),
                    &SendRequest {
                        message: B64(bytes),
                    },
                )
                .await;
            match res {
                Ok(acc) => {
                    let conn = self.lock()?;
                    conn.execute(
                        "UPDATE sotto_messages SET seq = ?3 WHERE conversation = ?1 AND message_id = ?2",
                        params![id, msg_id, acc.seq as i64],
                    )
                    .map_err(storage_err)?;
                    return Ok(acc);
                }
                Err(e) if e.is_stale_epoch() => {
                    backoff_after_lost_race(attempt).await;
                    self.sync_conversation(id, None, report).await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::TooManyAttempts(MAX_ATTEMPTS))
    }

    /// Posts again this device's messages whose acknowledgement never arrived.
    async fn resend_pending(&self, report: &mut SyncReport) -> Result<(), ClientError> {
        let me = self.me()?;
        let pending: Vec<(String, MessageContent)> = {
            let conn = self.lock()?;
            let mut stmt = conn
                .prepare(
                    "SELECT m.conversation, m.message_id, m.sent_at_ms, m.text, m.reply_to
                     FROM sotto_messages m JOIN sotto_conversations c ON c.id = m.conversation
                     WHERE m.outgoing = 1 AND m.sender_device = ?1 AND m.seq IS NULL AND c.status = 'ok'
                     ORDER BY m.local_order",
                )
                .map_err(storage_err)?;
            let rows = stmt
                .query_map(params![me.device_id.to_hex()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })
                .map_err(storage_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage_err)?;
            rows.into_iter()
                .filter_map(|(conv, id, at, text, reply)| {
                    let id: [u8; 16] = unhex(&id)?.try_into().ok()?;
                    let reply_to = match reply {
                        Some(r) => Some(sotto_proto::MessageId(unhex(&r)?.try_into().ok()?)),
                        None => None,
                    };
                    Some((
                        conv,
                        MessageContent {
                            id: sotto_proto::MessageId(id),
                            sent_at_ms: u64::try_from(at).unwrap_or(0),
                            body: Body::Text {
                                text: text?,
                                reply_to,
                            },
                        },
                    ))
                })
                .collect()
        };
        for (conv, content) in pending {
            match self.post_message(&conv, &content, report).await {
                Ok(_) => {}
                Err(ClientError::Queued { reason, .. }) => report.warnings.push(format!(
                    "message {} to conversation {conv} not sent yet: {reason}",
                    content.id.to_hex()
                )),
                Err(e) if e.is_refusal() => report.warnings.push(format!(
                    "message {} to conversation {conv} was refused by the server and dropped: {e}",
                    content.id.to_hex()
                )),
                Err(e) => report.warnings.push(format!(
                    "message {} to conversation {conv} not sent yet: {e}",
                    content.id.to_hex()
                )),
            }
        }
        Ok(())
    }

    /// Messages received but not yet shown; marks them shown.
    pub fn take_unshown(&self) -> Result<Vec<Message>, ClientError> {
        let msgs = self.unshown()?;
        self.mark_shown(&msgs)?;
        Ok(msgs)
    }

    /// Marks messages shown (after [`Client::unshown`] and displaying them: a process killed in
    /// between shows them again next time rather than never).
    pub fn mark_shown(&self, msgs: &[Message]) -> Result<(), ClientError> {
        self.with_tx(|conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE sotto_messages SET shown = 1 WHERE conversation = ?1 AND message_id = ?2",
                )
                .map_err(storage_err)?;
            for m in msgs {
                stmt.execute(params![m.conversation, m.id])
                    .map_err(storage_err)?;
            }
            Ok(())
        })
    }

    /// Messages received but not yet shown, oldest first (see [`Client::mark_shown`]).
    pub fn unshown(&self) -> Result<Vec<Message>, ClientError> {
        self.with_tx(|conn, _| {
            let mut stmt = conn
                .prepare(
                    "SELECT m.message_id, m.conversation, c.kind, m.sender, m.sender_device, m.text, m.sent_at_ms, m.outgoing
                     FROM sotto_messages m JOIN sotto_conversations c ON c.id = m.conversation
                     WHERE m.shown = 0 ORDER BY m.local_order",
                )
                .map_err(storage_err)?;
            let rows = stmt
                .query_map([], |r| {
                    let kind: String = r.get(2)?;
                    let conversation: String = r.get(1)?;
                    Ok(Message {
                        id: r.get(0)?,
                        group: (kind != "dm").then(|| conversation.clone()),
                        conversation,
                        sender: r.get(3)?,
                        sender_device: r.get(4)?,
                        text: r.get::<_, Option<String>>(5)?.unwrap_or_else(|| "[unsupported message kind]".into()),
                        sent_at: rfc3339_ms(u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0)),
                        outgoing: r.get::<_, i64>(7)? != 0,
                    })
                })
                .map_err(storage_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage_err)?;
            Ok(rows)
        })
    }

    /// Every message of a conversation with `peer`, oldest first (for history views and tests).
    pub fn history(&self, peer: &str) -> Result<Vec<Message>, ClientError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare(
                "SELECT m.message_id, m.conversation, m.sender, m.sender_device, m.text, m.sent_at_ms, m.outgoing
                 FROM sotto_messages m JOIN sotto_conversations c ON c.id = m.conversation
                 WHERE c.kind = 'dm' AND c.peer = ?1 ORDER BY COALESCE(m.seq, 9223372036854775807), m.local_order",
            )
            .map_err(storage_err)?;
        let rows = stmt
            .query_map(params![peer], |r| {
                Ok(Message {
                    id: r.get(0)?,
                    conversation: r.get(1)?,
                    group: None,
                    sender: r.get(2)?,
                    sender_device: r.get(3)?,
                    text: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    sent_at: rfc3339_ms(u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0)),
                    outgoing: r.get::<_, i64>(6)? != 0,
                })
            })
            .map_err(storage_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage_err)?;
        Ok(rows)
    }

    /// Stays connected to the push channel and syncs whenever the server says there is something
    /// new, reporting through `on_event`. Reconnects with backoff; returns only on a fatal error.
    pub async fn listen(&self, mut on_event: impl FnMut(ListenEvent)) -> Result<(), ClientError> {
        self.me()?;
        let transport = self.transport()?.clone();
        let token = transport
            .token()
            .ok_or(ClientError::NotRegistered)?
            .to_owned();
        let mut backoff = std::time::Duration::from_millis(200);
        loop {
            let mut request =
                match tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    transport.ws_url(),
                ) {
                    Ok(r) => r,
                    Err(e) => return Err(ClientError::Invalid(format!("bad server URL: {e}"))),
                };
            let header = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::Invalid("token is not a valid header".into()))?;
            request.headers_mut().insert("authorization", header);
            match tokio_tungstenite::connect_async_tls_with_config(
                request,
                None,
                true,
                transport.ws_connector(),
            )
            .await
            {
                Ok((mut ws, _)) => {
                    use futures_util::SinkExt;
                    backoff = std::time::Duration::from_millis(200);
                    on_event(ListenEvent::Connected);
                    // Read positions to acknowledge (so the server can prune), sent once a second.
                    let mut unacked: HashMap<String, u64> = HashMap::new();
                    let mut ack_timer = tokio::time::interval(READ_ACK_EVERY);
                    loop {
                        let msg = tokio::select! {
                            msg = ws.next() => msg,
                            _ = ack_timer.tick() => {
                                for (id, seq) in unacked.drain() {
                                    let Ok(text) = serde_json::to_string(&ClientFrame::Read { id, seq }) else { continue };
                                    if ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into())).await.is_err() {
                                        break;
                                    }
                                }
                                continue;
                            }
                        };
                        let Some(msg) = msg else { break };
                        let text = match msg {
                            Ok(tokio_tungstenite::tungstenite::Message::Text(t)) => t,
                            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => break,
                            Ok(_) => continue,
                        };
                        let frame: ServerFrame = match serde_json::from_str(&text) {
                            Ok(f) => f,
                            Err(_) => continue,
                        };
                        let mut report = SyncReport::default();
                        let mut touched = None;
                        let res = match frame {
                            ServerFrame::Ready | ServerFrame::Devices | ServerFrame::Resync => {
                                self.sync().await.map(|r| report = r)
                            }
                            ServerFrame::Inbox => self.process_inbox(&mut report).await,
                            ServerFrame::Conversation { id, seq } => {
                                let r = self.sync_conversation(&id, Some(seq), &mut report).await;
                                touched = Some(id);
                                r
                            }
                            ServerFrame::Entry { id, entry } => {
                                let r = self.apply_pushed(&id, &entry, &mut report).await;
                                touched = Some(id);
                                r
                            }
                            // Answers to sends over this socket; `listen` posts none.
                            ServerFrame::Sent { .. } | ServerFrame::Refused { .. } => Ok(()),
                        };
                        if let Some(id) = touched {
                            let cursor = {
                                let conn = self.lock()?;
                                db::conversation(&conn, &id)?.map(|c| c.cursor)
                            };
                            if let Some(c) = cursor.filter(|c| *c > 0) {
                                unacked.insert(id, c);
                            }
                        }
                        match res {
                            Ok(()) => {}
                            Err(e @ ClientError::NotRegistered) => return Err(e),
                            Err(e) => on_event(ListenEvent::Warning(e.to_string())),
                        }
                        for w in report.warnings {
                            on_event(ListenEvent::Warning(w));
                        }
                        let msgs = self.take_unshown()?;
                        if !msgs.is_empty() {
                            on_event(ListenEvent::Messages(msgs));
                        }
                    }
                    on_event(ListenEvent::Disconnected("connection closed".into()));
                }
                Err(e) => {
                    let why = match e {
                        tokio_tungstenite::tungstenite::Error::Http(resp)
                            if resp.status() == 401 =>
                        {
                            return Err(ClientError::Api {
                                status: 401,
                                code: ErrorCode::Unauthorized,
                                message: "device token refused".into(),
                                current_epoch: None,
                            })
                        }
                        _ => format!("server unreachable at {}", transport.base),
                    };
                    on_event(ListenEvent::Disconnected(why));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
        }
    }
}
