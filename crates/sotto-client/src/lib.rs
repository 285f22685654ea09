//! `sotto-client`: the Sotto SDK, a thin async shell around [`sotto_engine`].
//!
//! The engine holds every rule of the client and does no IO; this crate gives it a store (SQLite
//! under the device's home, [`SqliteStore`]), performs the HTTP exchanges it asks for (reqwest,
//! rustls), keeps the WebSocket push channel open ([`Client::listen`]), and owns the clock and the
//! back-off. A [`Client`] is one device; it hands out handles per area: [`Client::account`],
//! [`Client::devices`], [`Client::dm`], [`Client::group`], [`Client::groups`].
//!
//! ```text
//! sqlite     the SQLite backend of the engine's store contract (and its migrations)
//! transport  HTTP to sottod: TLS settings, 429 waits, errors mapped to ClientError
//! listen     the push channel: frames to the engine, read positions back
//! handles    Account, Devices, Dm, Group, Groups: the facade per area
//! lib        Client: opens the store, steps the engine's tasks
//! ```
//!
//! Client futures are not `Send` (the engine's state is single-threaded); drive a client from one
//! task.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use sotto_engine::account::Registration;
use sotto_engine::{Answer, Engine, Op, Step, Task};

mod files;
mod handles;
mod listen;
mod sqlite;
mod transport;

pub use files::{guess_content_type, make_preview, FileToSend, Progress, PATCH_BYTES};
pub use handles::{Account, Devices, Dm, Group, Groups};
pub use listen::ListenEvent;
pub use sotto_engine;
pub use sotto_engine::{
    Action, AttachmentView, DeviceLine, GroupLine, HistoryItem, HistoryMessage, Message, SyncEvent,
    SyncReport, Update, DEFAULT_PQ_GROUP_LIMIT,
};
pub use sqlite::SqliteStore;

/// Errors of the SDK (the engine's): `Display` is one clear line, without secrets or message text.
pub type ClientError = sotto_engine::Error;

use transport::{TlsSettings, Transport};

/// One device's Sotto client.
pub struct Client {
    home: PathBuf,
    engine: Engine,
    transport: Option<Transport>,
    tls: TlsSettings,
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
            .field("user", &self.engine.username())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        let store = SqliteStore::open(home)?;
        Self::with_store(Box::new(store), home, server, options)
    }

    /// A client over any store that keeps the engine's contract (the in-memory one, say: a
    /// device that keeps nothing after the process ends). `home` is only shown in `Debug`.
    pub fn with_store(
        store: Box<dyn sotto_engine::Store>,
        home: &Path,
        server: Option<&str>,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let engine = Engine::new(store)?;
        let ca_pem = match &options.ca_cert {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ClientError::Invalid(format!(
                    "reading the CA certificate {}: {e}",
                    path.display()
                ))
            })?),
            None => engine.ca_cert()?,
        };
        let tls = TlsSettings {
            ca_pem,
            insecure: options.insecure,
        };
        let transport = match server.map(str::to_owned).or(engine.server()?) {
            Some(s) => Some(Transport::new(&s, &tls)?),
            None => None,
        };
        let client = Self {
            home: home.to_owned(),
            engine,
            transport,
            tls,
        };
        // A device that was off while messages expired deletes them before it shows anything.
        client.purge_expired(false)?;
        Ok(client)
    }

    /// Deletes the messages whose time is up, with their saved files, and starts the clocks of
    /// after-read messages shown since; `leaving`: the user leaves the conversations shown (the
    /// end of a command, closing a view), so vanish-mode messages that went through go too.
    /// Returns what went.
    pub fn purge_expired(&self, leaving: bool) -> Result<Vec<sotto_engine::Expired>, ClientError> {
        let gone = self.engine.purge_expired(now_ms() / 1000, leaving)?;
        // The files of this purge, and of an earlier one whose process stopped before deleting
        // them: the engine keeps the list until they are reported gone.
        let files = self.engine.files_to_delete()?;
        if files.is_empty() {
            return Ok(gone);
        }
        let mut deleted = Vec::with_capacity(files.len());
        let mut failed = None;
        for path in files {
            match std::fs::remove_file(&path) {
                Ok(()) => deleted.push(path),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => deleted.push(path),
                Err(err) => failed = Some(err.kind()),
            }
        }
        self.engine.files_deleted(&deleted)?;
        if let Some(kind) = failed {
            // Kept on the list: the next purge tries again.
            return Err(ClientError::Storage(format!(
                "could not delete an expired message's file: {kind}"
            )));
        }
        Ok(gone)
    }

    /// Sets the account's default disappearing timer for new conversations (`None`: none).
    pub async fn set_default_timer(&self, secs: Option<u32>) -> Result<SyncReport, ClientError> {
        self.run(self.engine.set_default_timer(secs)).await
    }

    /// The account's default timer for new conversations, as this device knows it.
    pub fn default_timer(&self) -> Result<Option<u32>, ClientError> {
        self.engine.default_timer()
    }

    /// The engine under this client (for what the facade does not cover).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The registered username, if any.
    pub fn username(&self) -> Option<String> {
        self.engine.username()
    }

    /// This device's id, if registered.
    pub fn device_id(&self) -> Option<String> {
        self.engine.device_id()
    }

    pub(crate) fn transport(&self) -> Result<&Transport, ClientError> {
        self.transport.as_ref().ok_or(ClientError::NoServer)
    }

    /// Steps an engine task to its end, doing what it asks: HTTP exchanges, pauses, the time.
    pub async fn run<T: 'static>(&self, mut task: Task<T>) -> Result<T, ClientError> {
        let mut answer = None;
        loop {
            match task.step(answer.take()) {
                Step::Done(r) => return r,
                Step::Op(Op::Http(req)) => {
                    let reply = match self.transport() {
                        Ok(t) => t.send(&req).await,
                        Err(e) => Err(e),
                    };
                    answer = Some(Answer::Http(reply));
                }
                Step::Op(Op::Sleep(ms)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    answer = Some(Answer::Slept);
                }
                Step::Op(Op::Now) => answer = Some(Answer::Now(now_ms())),
            }
        }
    }

    pub(crate) fn registration(&self) -> Result<Registration, ClientError> {
        Ok(Registration {
            server: self.transport()?.base.clone(),
            ca_pem: self.tls.ca_pem.clone(),
        })
    }

    /// This device's account: register, link, link codes.
    pub fn account(&self) -> Account<'_> {
        Account(self)
    }

    /// The account's devices: list, revoke.
    pub fn devices(&self) -> Devices<'_> {
        Devices(self)
    }

    /// The DM with `peer` (created on the first send).
    pub fn dm<'a>(&'a self, peer: &'a str) -> Dm<'a> {
        Dm { client: self, peer }
    }

    /// A group, by id or by its name where only one of this device's groups has it.
    pub fn group<'a>(&'a self, group: &'a str) -> Group<'a> {
        Group {
            client: self,
            group,
        }
    }

    /// This device's groups: create, list.
    pub fn groups(&self) -> Groups<'_> {
        Groups(self)
    }

    /// Fetches and applies everything pending: welcomes, commits and messages; adds this account's
    /// new devices to its conversations, removes revoked ones, re-sends the outbox, tops up key
    /// packages.
    pub async fn sync(&self) -> Result<SyncReport, ClientError> {
        self.run(self.engine.sync()).await
    }

    /// Messages received but not yet shown; marks them shown.
    pub fn take_unshown(&self) -> Result<Vec<Message>, ClientError> {
        self.purge_expired(false)?;
        self.engine.take_unshown_at(now_ms() / 1000)
    }

    /// Marks messages shown.
    pub fn mark_shown(&self, msgs: &[Message]) -> Result<(), ClientError> {
        self.engine.mark_shown(msgs)
    }

    /// Messages received but not yet shown, oldest first.
    pub fn unshown(&self) -> Result<Vec<Message>, ClientError> {
        self.engine.unshown()
    }

    /// Whether this device sends and shows read receipts.
    pub fn read_receipts(&self) -> Result<bool, ClientError> {
        self.engine.read_receipts()
    }

    /// Turns read receipts on or off for the account, on this device and (through the account's
    /// own-devices group) on its other devices. They are reciprocal: off, none are sent or shown.
    pub async fn set_read_receipts(&self, on: bool) -> Result<SyncReport, ClientError> {
        self.run(self.engine.set_read_receipts(on)).await
    }

    /// Reactions, edits, unsends and receipts received but not yet shown; marks them shown.
    pub fn take_updates(&self) -> Result<Vec<Update>, ClientError> {
        self.engine.take_updates()
    }

    /// Acts on a message by id, in whichever conversation holds it (a reply, a reaction, an
    /// edit, an unsend; after a sync). Returns the id of the message sent for it.
    pub async fn act(
        &self,
        message_id: &str,
        action: Action,
    ) -> Result<(String, SyncReport), ClientError> {
        self.run(self.engine.act(message_id, action)).await
    }

    /// A local conversation's status and its detail.
    pub fn conversation_status(&self, id: &str) -> Result<Option<(String, String)>, ClientError> {
        self.engine.conversation_status(id)
    }
}
