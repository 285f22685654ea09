//! `sotto-engine`: every rule of a Sotto client, as a state machine that does no IO.
//!
//! The engine is handed server responses, pushed frames and the current time, and hands out the
//! requests to make and the events for the app. It depends only on `sotto-proto`, `sotto-api` and
//! the MLS and crypto crates: no tokio, no sockets, no filesystem, no clock, no sleeping. The async
//! SDK (`sotto-client`) is a thin shell that performs what the engine asks; the same engine builds
//! for `wasm32-unknown-unknown` and runs in a browser worker or under Node.
//!
//! Where things live:
//!
//! ```text
//! io          the boundary: Task, Op (HTTP, sleep, now), Answer; how the shell steps a task
//! store       the client store contract (Store, Tx), the in-memory backend, openmls storage over it,
//!             and the conformance suite every backend must pass
//! account     registration, linking, link codes, this device's keys, key-package top-up
//! pins        fetching accounts, first-use pins of identity keys, claiming verified key packages
//! devices     the account's device list, revocation and its follow-up, adding a newly linked device
//! commits     posting a commit, how a pending commit settles, one planned group change with retries
//! apply       applying a conversation's log: commits, messages, undecryptable entries and retries
//! inbox       applying welcomes
//! outbox      sending a message (stored first, re-sent with the same id until acknowledged)
//! rich        replies, reactions, edits, unsends, mentions: the rules, and what history shows
//! receipts    delivery and read receipts (MIMI message status), the read-receipt setting
//! dm          the DM-creation race and sending a DM
//! ephemeral   typing indicators: relayed to connected devices, never stored
//! groups      group creation, membership, admins, names, leaving, key updates
//! sync        the order of a full sync
//! push        pushed frames and read positions
//! views       what the app shows: messages, history, groups, devices, reports
//! ```
//!
//! So "apply a commit" is [`apply`], "re-send a message" is [`outbox`], and "add a newly linked
//! device" is [`devices`].
//!
//! An [`Engine`] is a cheap clone over one device's store. Every operation returns a [`Task`] to
//! step; tasks are not `Send` (the store is one transaction at a time) and must not be stepped
//! concurrently on one engine by two threads.
#![deny(missing_docs)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use openmls_rust_crypto::RustCrypto;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sotto_proto::identity::unhex;
use sotto_proto::mls::{DeviceKeys, Trust};
use sotto_proto::{DeviceCertificate, DeviceId, IdentityPublicKey, Username};

pub mod account;
pub mod apply;
pub mod commits;
pub mod devices;
pub mod dm;
pub mod ephemeral;
mod error;
pub mod expiry;
pub mod files;
pub mod groups;
pub mod inbox;
pub mod io;
pub mod outbox;
pub mod pins;
pub mod push;
pub mod receipts;
pub mod rich;
pub mod settings;
pub mod store;
pub mod sync;
pub mod views;

pub use error::Error;
pub use expiry::Expired;
pub use files::OutgoingFile;
pub use io::{Answer, HttpReply, HttpRequest, Method, Op, Step, Task};
pub use store::{MemoryStore, Store, StoreError, Tx};
pub use views::{
    Action, AttachmentView, ConversationLine, DeviceLine, GroupLine, HistoryItem, HistoryMessage,
    Message, SyncEvent, SyncReport, Update,
};

use error::storage_err;
use io::{json_body, Io};
use store::mls::Provider;
use store::{ConversationKind, ConversationRecord, ConversationStatus};

/// Groups of up to this many devices (counting every member device at creation) use the hybrid
/// post-quantum ciphersuite; larger ones the classic one. See DESIGN.md for the measurements.
pub const DEFAULT_PQ_GROUP_LIMIT: usize = 100;

/// How many times a change is tried after losing the commit race (with `n` members committing at
/// once, the last one may lose `n - 1` times).
pub(crate) const MAX_ATTEMPTS: usize = 32;

/// The registered device.
pub(crate) struct Me {
    pub(crate) username: Username,
    pub(crate) device_id: DeviceId,
    pub(crate) cert: DeviceCertificate,
    token: Option<zeroize::Zeroizing<String>>,
}

pub(crate) struct Inner {
    store: Box<dyn Store>,
    pub(crate) crypto: RustCrypto,
    me: RefCell<Option<Rc<Me>>>,
    /// Read positions not yet told to the server over the push channel.
    pub(crate) unacked: RefCell<BTreeMap<String, u64>>,
}

impl Inner {
    /// The registered device's bearer token.
    fn bearer(&self) -> Option<String> {
        self.me
            .borrow()
            .as_ref()
            .and_then(|m| m.token.as_ref().map(|t| t.as_str().to_owned()))
    }
}

/// One device's client engine over its store.
#[derive(Clone)]
pub struct Engine {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("user", &self.username())
            .finish_non_exhaustive()
    }
}

/// Setting keys.
pub(crate) mod keys {
    pub(crate) const SIGNING_SEED: &str = "device_signing_seed";
    pub(crate) const SERVER: &str = "server";
    pub(crate) const USERNAME: &str = "username";
    pub(crate) const CERTIFICATE: &str = "certificate";
    pub(crate) const TOKEN: &str = "token";
    pub(crate) const CA_CERT: &str = "ca_cert";
    pub(crate) const IDENTITY_SECRET: &str = "identity_secret";
}

fn load_me(store: &dyn Store) -> Result<Option<Me>, Error> {
    let tx = store.begin(false)?;
    let username = tx.setting(keys::USERNAME)?;
    let cert = tx.setting(keys::CERTIFICATE)?;
    let token = tx.setting(keys::TOKEN)?;
    let (Some(u), Some(c)) = (username, cert) else {
        return Ok(None);
    };
    let cert = DeviceCertificate::decode(&c).map_err(storage_err)?;
    let u = String::from_utf8(u).map_err(storage_err)?;
    Ok(Some(Me {
        username: Username::new(&u).map_err(storage_err)?,
        device_id: cert.device_id,
        cert,
        token: token
            .and_then(|t| String::from_utf8(t).ok())
            .map(zeroize::Zeroizing::new),
    }))
}

impl Engine {
    /// An engine over a device's store (registered or not).
    pub fn new(store: Box<dyn Store>) -> Result<Self, Error> {
        let me = load_me(store.as_ref())?.map(Rc::new);
        Ok(Self {
            inner: Rc::new(Inner {
                store,
                crypto: RustCrypto::default(),
                me: RefCell::new(me),
                unacked: RefCell::new(BTreeMap::new()),
            }),
        })
    }

    /// The registered username, if any.
    pub fn username(&self) -> Option<String> {
        self.inner
            .me
            .borrow()
            .as_ref()
            .map(|m| m.username.to_string())
    }

    /// This device's id, if registered.
    pub fn device_id(&self) -> Option<String> {
        self.inner
            .me
            .borrow()
            .as_ref()
            .map(|m| m.device_id.to_hex())
    }

    /// The device's bearer token, for the shell's push connection. Never log it.
    pub fn dangerous_bearer_token(&self) -> Option<String> {
        self.inner.bearer()
    }

    /// A stored setting. Private: some settings are the device's secrets (its signing seed, the
    /// account's identity secret, the token); the shell reads only the ones below.
    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let tx = self.inner.store.begin(false)?;
        Ok(tx.setting(key)?)
    }

    /// The server URL stored at registration.
    pub fn server(&self) -> Result<Option<String>, Error> {
        Ok(self
            .setting(keys::SERVER)?
            .and_then(|v| String::from_utf8(v).ok()))
    }

    /// The private CA certificate (PEM) stored at registration, if any.
    pub fn ca_cert(&self) -> Result<Option<Vec<u8>>, Error> {
        self.setting(keys::CA_CERT)
    }

    /// A flow over this engine with a fresh IO slot.
    pub(crate) fn flow(&self) -> (Flow, Io) {
        let io = Io::default();
        (
            Flow {
                e: self.inner.clone(),
                io: io.clone(),
                full_sync: std::cell::Cell::new(false),
                retried: RefCell::new(std::collections::BTreeSet::new()),
            },
            io,
        )
    }

    /// A task running `f` on a new flow.
    pub(crate) fn task<T: 'static, F, Fut>(&self, f: F) -> Task<T>
    where
        F: FnOnce(Flow) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>> + 'static,
    {
        let (flow, io) = self.flow();
        Task::new(io, f(flow))
    }

    /// A flow for synchronous reads (no IO needed).
    pub(crate) fn local(&self) -> Flow {
        self.flow().0
    }
}

/// One operation's view of the engine: its state and its IO slot.
pub(crate) struct Flow {
    pub(crate) e: Rc<Inner>,
    pub(crate) io: Io,
    /// Set by a full sync: waiting undecryptable entries are retried.
    pub(crate) full_sync: std::cell::Cell<bool>,
    /// (conversation, seq) of the undecryptable entries this task tried (each once).
    pub(crate) retried: RefCell<std::collections::BTreeSet<(String, u64)>>,
}

impl Flow {
    /// The ids of the conversations this device follows.
    pub(crate) fn followed_conversations(&self) -> Result<Vec<String>, Error> {
        self.read(|tx, _| {
            Ok(tx
                .conversations()?
                .into_iter()
                .filter(|c| c.status == ConversationStatus::Ok)
                .map(|c| c.id)
                .collect())
        })
    }

    pub(crate) fn me(&self) -> Result<Rc<Me>, Error> {
        self.e.me.borrow().clone().ok_or(Error::NotRegistered)
    }

    pub(crate) fn set_me(&self, me: Me) {
        *self.e.me.borrow_mut() = Some(Rc::new(me));
    }

    fn bearer(&self) -> Option<String> {
        self.e.bearer()
    }

    /// Runs `f` in one write transaction with an MLS provider over it: MLS state and the rest of
    /// the store change together or not at all.
    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnOnce(&dyn Tx, &Provider<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self.e.store.begin(true)?;
        let out = {
            let provider = Provider::new(&self.e.crypto, tx.as_ref());
            f(tx.as_ref(), &provider)?
        };
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a read-only transaction (rolled back).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&dyn Tx, &Provider<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self.e.store.begin(false)?;
        let provider = Provider::new(&self.e.crypto, tx.as_ref());
        f(tx.as_ref(), &provider)
    }

    pub(crate) fn keys(&self, tx: &dyn Tx) -> Result<DeviceKeys, Error> {
        let seed = zeroize::Zeroizing::new(
            tx.setting(keys::SIGNING_SEED)?
                .ok_or(Error::NotRegistered)?,
        );
        Ok(DeviceKeys::from_seed(&seed, self.me()?.cert.clone())?)
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.io
            .request(io::Method::Get, path, None, self.bearer())
            .await
    }

    pub(crate) async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let body = json_body(body)?;
        self.io
            .request(io::Method::Post, path, Some(body), self.bearer())
            .await
    }

    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.io
            .request(io::Method::Delete, path, None, self.bearer())
            .await
    }
}

/// The pinned identity keys, read from a transaction.
pub(crate) struct Pins<'a>(pub(crate) &'a dyn Tx);

impl Trust for Pins<'_> {
    fn pinned_identity(&self, username: &Username) -> Option<IdentityPublicKey> {
        self.0
            .pin(username.as_str())
            .ok()
            .flatten()
            .and_then(|p| IdentityPublicKey::from_bytes(&p.identity_key).ok())
    }
}

pub(crate) fn group_id_bytes(conversation: &str) -> Result<Vec<u8>, Error> {
    unhex(conversation).ok_or_else(|| Error::Protocol("malformed conversation id".into()))
}

/// Inserts a conversation if new; else sets its peer when one is given.
pub(crate) fn upsert_conversation(
    tx: &dyn Tx,
    id: &str,
    kind: ConversationKind,
    peer: Option<&str>,
) -> Result<(), Error> {
    match tx.conversation(id)? {
        Some(mut c) => {
            if peer.is_some() && c.peer.as_deref() != peer {
                c.peer = peer.map(str::to_owned);
                tx.put_conversation(&c)?;
            }
        }
        None => tx.put_conversation(&ConversationRecord::new(id, kind, peer))?,
    }
    Ok(())
}

/// Moves a conversation's cursor forward (never back).
pub(crate) fn set_cursor(tx: &dyn Tx, id: &str, seq: u64) -> Result<(), Error> {
    if let Some(mut c) = tx.conversation(id)? {
        if seq > c.cursor {
            c.cursor = seq;
            tx.put_conversation(&c)?;
        }
    }
    Ok(())
}

/// Sets a conversation's status.
pub(crate) fn set_status(
    tx: &dyn Tx,
    id: &str,
    status: ConversationStatus,
    detail: &str,
) -> Result<(), Error> {
    if let Some(mut c) = tx.conversation(id)? {
        c.status = status;
        c.status_detail = detail.to_owned();
        tx.put_conversation(&c)?;
    }
    Ok(())
}

/// An RFC 3339 timestamp for milliseconds since the Unix epoch (empty if out of range).
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
