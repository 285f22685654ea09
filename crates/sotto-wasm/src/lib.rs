//! `sotto-wasm`: the engine for JavaScript hosts (the web client's worker, Node).
//!
//! A [`Device`] is one engine over a journaled in-memory store. The host persists the store:
//! after each step it takes the records that committed transactions changed ([`Device::take_changes`])
//! and writes them, and at start it hands them all back ([`Device::restore`]). The web client's
//! worker writes them to IndexedDB, encrypted, *before* it performs the request the step asked for,
//! so nothing the server or the user sees depends on a change that is not on disk.
//!
//! Operations: `start` takes a JSON request (`{"op": "register", ...}`, see [`Request`]), then
//! JavaScript calls `step` with the answer to the previous request until it says `done`. Each step
//! returns one JSON object: `{"op":"http", "method", "path", "body", "bearer"}`,
//! `{"op":"sleep","ms"}`, `{"op":"now"}` or `{"op":"done", "ok" | "error"}`; the host answers with
//! `{"status", "body"}` (or `{"error"}` if the request failed), `{"slept":true}` or `{"now": ms}`.
//! Reads that need no network (`query`, see [`Query`]) answer at once. The host performs the
//! fetches; the engine never sees a socket. The host is trusted with secrets: the records it
//! stores hold the device's keys and messages in the clear (the web client's worker seals them
//! before they reach IndexedDB), and it holds the bearer token for the push channel. The web
//! client's page is not the host: only its worker is.
//!
//! Record framing (both directions): for each record, its key length (u32, little-endian), the key,
//! its value length (u32 LE; `u32::MAX` for a deleted record, which has no value), the value.
#![cfg(target_arch = "wasm32")]
#![deny(missing_docs)]

use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};
use sotto_engine::account::Registration;
use sotto_engine::expiry::{Target, TimerMode};
use sotto_engine::store::{Change, ConversationKind};
use sotto_engine::OutgoingFile;
use sotto_engine::{
    Action, Answer, Engine, Error, HttpReply, MemoryStore, Method, Op, Step, Store, StoreError,
    SyncReport, Task, Tx,
};
use sotto_proto::attachment::FileKey;
use sotto_proto::identity::unhex;
use sotto_proto::{FileRef, Preview};
use wasm_bindgen::prelude::*;

/// The engine's store, shared with the [`Device`] that takes its changes.
struct Shared(Rc<MemoryStore>);

impl Store for Shared {
    fn begin(&self, write: bool) -> Result<Box<dyn Tx + '_>, StoreError> {
        self.0.begin(write)
    }
}

/// One device: an engine over a journaled in-memory store, and the operation in progress.
#[wasm_bindgen]
pub struct Device {
    engine: Engine,
    store: Rc<MemoryStore>,
    task: Option<Task<Value>>,
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// An operation that talks to the server, started with `start`.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", deny_unknown_fields)]
enum Request {
    /// Registers a new account with this device.
    Register { username: String, server: String },
    /// Links this device to an account with a code from one of its devices.
    Link { code: String, server: String },
    /// Fetches and applies everything new.
    Sync,
    /// Sends a text to the DM with `peer` (setting it up first if needed).
    SendDm { peer: String, text: String },
    /// Sends a text to a group.
    SendGroup { group: String, text: String },
    /// Sets up the DM with `peer` if it does not exist; the result is its id.
    OpenDm { peer: String },
    /// Creates a group; the result is its id.
    CreateGroup { name: String, members: Vec<String> },
    /// Adds accounts to a group.
    GroupAdd { group: String, users: Vec<String> },
    /// Removes accounts from a group.
    GroupRemove { group: String, users: Vec<String> },
    /// Leaves a group.
    GroupLeave { group: String },
    /// Renames a group.
    GroupRename { group: String, name: String },
    /// Makes an account an admin of a group.
    GroupAdmin { group: String, user: String },
    /// Replies to, reacts to, edits or unsends a message.
    Act { message: String, action: ActionIn },
    /// Marks a conversation read (and sends read receipts, if they are on).
    MarkRead { conversation: String },
    /// Tells the conversation's connected devices that this account is typing.
    Typing { conversation: String },
    /// The account's devices.
    Devices,
    /// Revokes one of the account's devices.
    Revoke { device: String },
    /// A one-time code for linking another device.
    LinkCode,
    /// Applies a frame pushed over the WebSocket.
    Frame { frame: sotto_api::ServerFrame },
    /// Sets a conversation's disappearing timer (`secs: null` turns it off), counted from
    /// sending or, with `afterRead`, from reading.
    #[serde(rename_all = "camelCase")]
    SetTimer {
        conversation: String,
        secs: Option<u32>,
        after_read: bool,
    },
    /// Turns vanish mode on or off in a DM.
    SetVanish { conversation: String, on: bool },
    /// Turns read receipts on or off for the account (every device follows; reciprocal).
    SetReadReceipts { on: bool },
    /// Sends a file the host encrypted (`encryptFile`) and uploaded: its blob id, key and hash
    /// (hex), size before encryption, media type and name.
    #[serde(rename_all = "camelCase")]
    SendFile {
        conversation: String,
        blob: String,
        key: String,
        hash: String,
        size: u64,
        content_type: String,
        name: String,
        caption: Option<String>,
        /// A small JPEG or PNG shown before the download (base64; at most 16 KiB).
        #[serde(default)]
        preview: Option<sotto_api::B64>,
    },
}

/// What to do to a message.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
enum ActionIn {
    Reply { text: String },
    React { emoji: String },
    Unreact,
    Edit { text: String },
    Unsend,
}

/// A read of this device's state, answered at once by `query`.
#[derive(Deserialize)]
#[serde(tag = "q", rename_all = "camelCase", deny_unknown_fields)]
enum Query {
    /// This device: `{username, device, server}` (nulls before registration).
    Me,
    /// The conversation list, most recently active first.
    Conversations,
    /// A conversation's history, oldest first: its newest `limit` items (all without a limit).
    History {
        conversation: String,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// A group's name, admins and members.
    Group { group: String },
    /// Messages received and not shown yet; marks them shown.
    TakeUnshown,
    /// The file a message carries, without its key: `{blob, size, content_type, name}`, or null.
    Attachment { message: String },
    /// A conversation's disappearing settings: `{timer: {secs, afterRead} | null, vanish, text}`.
    Settings { conversation: String },
    /// Reactions, edits, unsends and receipts received and not shown yet; marks them shown.
    TakeUpdates,
    /// Read positions to send over the WebSocket.
    ReadAcks,
}

fn parse_answer(text: &str) -> Result<Option<Answer>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("host answer is not JSON: {e}")))?;
    if let Some(ms) = v.get("now").and_then(Value::as_u64) {
        return Ok(Some(Answer::Now(ms)));
    }
    if v.get("slept").is_some() {
        return Ok(Some(Answer::Slept));
    }
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Ok(Some(Answer::Http(Err(Error::Unreachable {
            server: e.to_owned(),
        }))));
    }
    let status = v
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(|| Error::Invalid("host answer has no status".into()))?;
    let body = v
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or("")
        .as_bytes()
        .to_vec();
    Ok(Some(Answer::Http(Ok(HttpReply { status, body }))))
}

fn op_json(op: Op) -> Value {
    match op {
        Op::Http(r) => json!({
            "op": "http",
            "method": match r.method { Method::Get => "GET", Method::Post => "POST", Method::Delete => "DELETE" },
            "path": r.path,
            "body": r.body.map(|b| String::from_utf8_lossy(&b).into_owned()),
            "bearer": r.bearer,
        }),
        Op::Sleep(ms) => json!({"op": "sleep", "ms": ms}),
        Op::Now => json!({"op": "now"}),
    }
}

fn report_json(r: SyncReport) -> Value {
    json!({"warnings": r.warnings, "events": r.events, "updates": r.updates})
}

/// Unix seconds from JavaScript's number (negative or not a number: 0).
fn secs(now: f64) -> u64 {
    if now.is_finite() && now > 0.0 {
        now as u64
    } else {
        0
    }
}

fn to_json<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Appends records in the framing the module's doc describes.
fn frame(out: &mut Vec<u8>, c: &Change) {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX - 1).to_le_bytes();
    out.extend_from_slice(&len(c.key.len()));
    out.extend_from_slice(&c.key);
    match &c.value {
        Some(v) => {
            out.extend_from_slice(&len(v.len()));
            out.extend_from_slice(v);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

/// Reads records framed as the module's doc describes; deleted ones are skipped.
fn unframe(mut b: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
    let bad = || Error::Invalid("stored records are cut short".into());
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, Error> {
        if b.len() < n {
            return Err(bad());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| bad())?);
        let key = take(&mut b, n as usize)?;
        let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| bad())?);
        if n == u32::MAX {
            continue;
        }
        out.push((key, take(&mut b, n as usize)?));
    }
    Ok(out)
}

#[wasm_bindgen]
impl Device {
    /// A new, unregistered device.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<Device, JsError> {
        Self::over(MemoryStore::journaled())
    }

    /// The device whose records are `records` (framed; every record `takeChanges` handed out and
    /// not deleted since). Refused, with nothing loaded, if a record does not decode.
    pub fn restore(records: &[u8]) -> Result<Device, JsError> {
        let records = unframe(records).map_err(js_err)?;
        Self::over(MemoryStore::restore(records).map_err(js_err)?)
    }

    fn over(store: MemoryStore) -> Result<Device, JsError> {
        let store = Rc::new(store);
        Ok(Device {
            engine: Engine::new(Box::new(Shared(store.clone()))).map_err(js_err)?,
            store,
            task: None,
        })
    }

    /// The records changed since the last call (framed; a deleted record has no value). The host
    /// must store them, all or none, before it performs the request the last step asked for.
    #[wasm_bindgen(js_name = takeChanges)]
    pub fn take_changes(&self) -> Result<Vec<u8>, JsError> {
        let mut out = Vec::new();
        for c in self.store.take_changes().map_err(js_err)? {
            frame(&mut out, &c);
        }
        Ok(out)
    }

    /// Starts an operation (a JSON [`Request`]); `step` runs it. One at a time.
    pub fn start(&mut self, request: &str) -> Result<(), JsError> {
        if self.task.is_some() {
            return Err(js_err("an operation is already in progress"));
        }
        let req: Request =
            serde_json::from_str(request).map_err(|e| js_err(format!("bad request: {e}")))?;
        let e = &self.engine;
        let task: Task<Value> = match req {
            Request::Register { username, server } => e
                .register(
                    &username,
                    Registration {
                        server,
                        ca_pem: None,
                    },
                )
                .map(|()| Value::Null),
            Request::Link { code, server } => e
                .link(
                    &code,
                    Registration {
                        server,
                        ca_pem: None,
                    },
                )
                .map(|()| Value::Null),
            Request::Sync => e.sync().map(report_json),
            Request::SendDm { peer, text } => e.send_dm(&peer, &text).map(|(m, _)| to_json(m)),
            Request::SendGroup { group, text } => {
                e.send_group(&group, &text).map(|(m, _)| to_json(m))
            }
            Request::OpenDm { peer } => e.dm_conversation(&peer).map(Value::String),
            Request::CreateGroup { name, members } => e
                .create_group(&name, &members, sotto_engine::DEFAULT_PQ_GROUP_LIMIT)
                .map(|(id, _)| Value::String(id)),
            Request::GroupAdd { group, users } => e.group_add(&group, &users).map(report_json),
            Request::GroupRemove { group, users } => {
                e.group_remove(&group, &users).map(report_json)
            }
            Request::GroupLeave { group } => e.group_leave(&group).map(|()| Value::Null),
            Request::GroupRename { group, name } => e.group_rename(&group, &name).map(report_json),
            Request::GroupAdmin { group, user } => {
                e.group_make_admin(&group, &user).map(report_json)
            }
            Request::Act { message, action } => {
                let action = match action {
                    ActionIn::Reply { text } => Action::Reply(text),
                    ActionIn::React { emoji } => Action::React(emoji),
                    ActionIn::Unreact => Action::Unreact,
                    ActionIn::Edit { text } => Action::Edit(text),
                    ActionIn::Unsend => Action::Unsend,
                };
                e.act(&message, action).map(|(id, _)| Value::String(id))
            }
            Request::MarkRead { conversation } => match self.dm_peer(&conversation)? {
                Some(peer) => e.mark_read_dm(&peer),
                None => e.mark_read_group(&conversation),
            }
            .map(|(n, _)| json!(n)),
            Request::Typing { conversation } => match self.dm_peer(&conversation)? {
                Some(peer) => e.typing_dm(&peer),
                None => e.typing_group(&conversation),
            }
            .map(|()| Value::Null),
            Request::Devices => e.devices().map(|ds| {
                ds.into_iter()
                    .map(|d| {
                        json!({"device": d.device_id, "created_at": d.created_at,
                               "this_device": d.this_device, "verified": d.verified})
                    })
                    .collect()
            }),
            Request::Revoke { device } => e.revoke_device(&device).map(report_json),
            Request::LinkCode => e.create_link_code().map(Value::String),
            Request::Frame { frame } => e.handle_frame(frame).map(report_json),
            Request::SetTimer {
                conversation,
                secs,
                after_read,
            } => {
                let mode = if after_read {
                    TimerMode::AfterRead
                } else {
                    TimerMode::AfterSend
                };
                e.set_timer(self.target(&conversation)?, secs.map(|s| (s, mode)))
                    .map(report_json)
            }
            Request::SendFile {
                conversation,
                blob,
                key,
                hash,
                size,
                content_type,
                name,
                caption,
                preview,
            } => {
                let bad = || js_err("bad file reference");
                let key = unhex(&key)
                    .and_then(|k| FileKey::from_bytes(&k).ok())
                    .ok_or_else(bad)?;
                let hash: [u8; 32] = unhex(&hash)
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(bad)?;
                if !sotto_proto::attachment::is_blob_id(&blob) {
                    return Err(bad());
                }
                let file = OutgoingFile {
                    file: FileRef {
                        blob,
                        key,
                        size,
                        hash,
                        content_type,
                        name,
                    },
                    caption: caption.filter(|c| !c.is_empty()),
                    preview: preview.map(|p| Preview {
                        content_type: if p.0.starts_with(b"\x89PNG") {
                            "image/png".into()
                        } else {
                            "image/jpeg".into()
                        },
                        data: p.0,
                    }),
                };
                e.send_file(&conversation, file).map(|(m, _)| to_json(m))
            }
            Request::SetReadReceipts { on } => e.set_read_receipts(on).map(report_json),
            Request::SetVanish { conversation, on } => match self.dm_peer(&conversation)? {
                Some(peer) => e.set_vanish(&peer, on).map(report_json),
                None => return Err(js_err("vanish mode is for DMs")),
            },
        };
        self.task = Some(task);
        Ok(())
    }

    /// The DM or group a settings change is for.
    fn target(&self, conversation: &str) -> Result<Target, JsError> {
        Ok(match self.dm_peer(conversation)? {
            Some(peer) => Target::Dm(peer),
            None => Target::Group(conversation.to_owned()),
        })
    }

    /// The peer of a DM this device has, `None` for any other conversation.
    fn dm_peer(&self, conversation: &str) -> Result<Option<String>, JsError> {
        let tx = self.store.begin(false).map_err(js_err)?;
        Ok(tx
            .conversation(conversation)
            .map_err(js_err)?
            .filter(|c| c.kind == ConversationKind::Dm)
            .and_then(|c| c.peer))
    }

    /// Steps the operation in progress with the answer to its last request (`""` the first time).
    pub fn step(&mut self, answer: &str) -> Result<String, JsError> {
        let task = self
            .task
            .as_mut()
            .ok_or_else(|| js_err("no operation in progress"))?;
        let step = match parse_answer(answer) {
            Ok(a) => task.step(a),
            Err(e) => Step::Done(Err(e)),
        };
        let out = match step {
            Step::Op(op) => op_json(op),
            Step::Done(r) => {
                self.task = None;
                match r {
                    Ok(v) => json!({"op": "done", "ok": v}),
                    Err(e) => {
                        // The server's stable code, so the host can tell a revoked device
                        // (`unauthorized`) or a full server (`storage_full`) from the rest.
                        let code = match &e {
                            Error::Api { code, .. } => to_json(code),
                            _ => Value::Null,
                        };
                        json!({"op": "done", "error": e.to_string(),
                               "refused": e.is_refusal(), "code": code})
                    }
                }
            }
        };
        Ok(out.to_string())
    }

    /// Answers a JSON [`Query`] from this device's state, as JSON.
    pub fn query(&self, query: &str) -> Result<String, JsError> {
        let q: Query =
            serde_json::from_str(query).map_err(|e| js_err(format!("bad query: {e}")))?;
        let e = &self.engine;
        let v = match q {
            Query::Me => json!({
                "username": e.username(),
                "device": e.device_id(),
                "server": e.server().map_err(js_err)?,
                "read_receipts": e.read_receipts().unwrap_or(true),
            }),
            Query::Conversations => to_json(e.conversation_list().map_err(js_err)?),
            Query::History {
                conversation,
                limit,
            } => to_json(
                e.history_tail(&conversation, limit.unwrap_or(usize::MAX))
                    .map_err(js_err)?,
            ),
            Query::Group { group } => to_json(e.group_info(&group).map_err(js_err)?),
            Query::TakeUnshown => to_json(e.take_unshown().map_err(js_err)?),
            Query::Attachment { message } => match e.attachment(&message).map_err(js_err)? {
                Some((_, a)) => json!({"blob": a.blob, "size": a.size,
                                       "content_type": a.content_type, "name": a.name}),
                None => Value::Null,
            },
            Query::Settings { conversation } => {
                let s = e.conversation_settings(&conversation).map_err(js_err)?;
                json!({
                    "timer": s.timer.map(|t| json!({
                        "secs": t.secs(),
                        "afterRead": t.mode() == TimerMode::AfterRead,
                    })),
                    "vanish": s.vanish,
                    "text": sotto_engine::expiry::describe(&s),
                })
            }
            Query::TakeUpdates => to_json(e.take_updates().map_err(js_err)?),
            Query::ReadAcks => to_json(e.read_acks()),
        };
        Ok(v.to_string())
    }

    /// Marks a conversation's messages shown (it is on screen) and starts the clocks of its
    /// after-read messages at `now` (Unix seconds). A write: the host stores the changes.
    #[wasm_bindgen(js_name = showConversation)]
    pub fn show_conversation(&self, conversation: &str, now: f64) -> Result<(), JsError> {
        self.engine
            .show_conversation(conversation, secs(now))
            .map_err(js_err)
    }

    /// Deletes what has expired at `now` (Unix seconds); with `leaving` (the user left the
    /// conversation), also the vanish-mode messages that went through. Returns the messages that
    /// went, as JSON `[{id, conversation, shown}]`. A write: the host stores the changes.
    pub fn purge(&self, now: f64, leaving: bool) -> Result<String, JsError> {
        let gone = self
            .engine
            .purge_expired(secs(now), leaving)
            .map_err(js_err)?;
        serde_json::to_string(&gone).map_err(js_err)
    }

    /// Encrypts a file for sending (`sotto_proto::attachment`, under a fresh key): the result is
    /// the key (32 bytes), the blob's SHA-256 (32 bytes), then the blob to upload.
    #[wasm_bindgen(js_name = encryptFile)]
    pub fn encrypt_file(file: &[u8]) -> Result<Vec<u8>, JsError> {
        let key = FileKey::random();
        let (blob, hash) = sotto_proto::attachment::encrypt(&key, file).map_err(js_err)?;
        let mut out = Vec::with_capacity(64 + blob.len());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&hash);
        out.extend_from_slice(&blob);
        Ok(out)
    }

    /// Decrypts the blob of message `message`'s file with the key this device holds for it,
    /// checking its hash and size: the file, or an error if it does not open.
    #[wasm_bindgen(js_name = decryptFile)]
    pub fn decrypt_file(&self, message: &str, blob: &[u8]) -> Result<Vec<u8>, JsError> {
        let (_, a) = self
            .engine
            .attachment(message)
            .map_err(js_err)?
            .ok_or_else(|| js_err("no file in that message on this device"))?;
        let bad = || js_err("the stored file reference is damaged");
        let key = unhex(&a.key)
            .and_then(|k| FileKey::from_bytes(&k).ok())
            .ok_or_else(bad)?;
        let hash: [u8; 32] = unhex(&a.hash)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(bad)?;
        sotto_proto::attachment::decrypt(&key, a.size, Some(hash), blob)
            .map_err(|_| js_err("the file does not open: it was changed or cut short"))
    }

    /// When the next message of this device expires (Unix seconds), if any.
    #[wasm_bindgen(js_name = nextExpiry)]
    pub fn next_expiry(&self) -> Result<Option<f64>, JsError> {
        Ok(self.engine.next_expiry().map_err(js_err)?.map(|s| s as f64))
    }

    /// The bearer token for the push channel's WebSocket (the browser cannot set a header there;
    /// it offers the token as a subprotocol). Never log it.
    #[wasm_bindgen(js_name = pushToken)]
    pub fn push_token(&self) -> Option<String> {
        self.engine.dangerous_bearer_token()
    }
}

/// The names of the client store conformance checks, in order.
#[cfg(feature = "conformance")]
#[wasm_bindgen(js_name = conformanceChecks)]
pub fn conformance_checks() -> Vec<String> {
    sotto_engine::store::conformance::checks()
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

/// Runs conformance check number `index` on a fresh journaled store that is rebuilt from its
/// stored records before every transaction, as the web client's worker keeps it. A broken rule
/// traps (WebAssembly cannot catch the check's panic): the host reports the check by its name.
#[cfg(feature = "conformance")]
#[wasm_bindgen(js_name = conformanceRun)]
pub fn conformance_run(index: usize) -> Result<(), JsError> {
    let (_, check) = sotto_engine::store::conformance::checks()
        .get(index)
        .ok_or_else(|| js_err("no such check"))?;
    check(&sotto_engine::store::conformance::Reloaded::new());
    Ok(())
}
