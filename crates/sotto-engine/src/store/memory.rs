//! The in-memory store: for tests, benchmarks, and WebAssembly hosts that keep the records
//! themselves. A transaction records how to undo each write and replays that on drop unless it was
//! committed, so a transaction costs what it changes, not the store's size.
//!
//! A *journaled* store ([`MemoryStore::journaled`], [`MemoryStore::restore`]) also collects, at
//! each commit, the records the transaction changed, as opaque key/value pairs
//! ([`MemoryStore::take_changes`]). The browser worker writes them to IndexedDB, encrypted, in one
//! IndexedDB transaction, before it performs the next request the engine asks for: nothing the
//! server or the user sees can depend on a change that is not on disk yet. At start it hands every
//! stored record back to [`MemoryStore::restore`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{
    AttachmentRecord, ContentKind, ConversationKind, ConversationRecord, MessageRecord, PinRecord,
    Store, StoreError, Tx, UndecryptableRecord,
};

#[derive(Default)]
struct State {
    settings: BTreeMap<String, Vec<u8>>,
    pins: BTreeMap<String, PinRecord>,
    conversations: BTreeMap<String, ConversationRecord>,
    messages: BTreeMap<(String, String), MessageRecord>,
    /// The actions on each message: (conversation, target) to the actions' ids. Kept by
    /// [`State::put_message`] and [`State::take_message`], the only ways messages come and go.
    targets: BTreeMap<(String, String), std::collections::BTreeSet<String>>,
    undecryptable: BTreeMap<(String, u64), UndecryptableRecord>,
    receipts: BTreeMap<(String, String, String), u8>,
    mls: BTreeMap<Vec<u8>, Vec<u8>>,
    next_order: u64,
}

enum Undo {
    Setting(String, Option<Vec<u8>>),
    Pin(String, Option<PinRecord>),
    Conversation(String, Option<ConversationRecord>),
    Message((String, String), Option<Box<MessageRecord>>),
    Undecryptable((String, u64), Option<UndecryptableRecord>),
    Receipt((String, String, String), Option<u8>),
    Mls(Vec<u8>, Option<Vec<u8>>),
    Order(u64),
}

/// Records changed by committed transactions and not yet taken: key to new value (`None`:
/// deleted). Later commits overwrite earlier ones' values, which is what the host must store.
type Journal = Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// A store that lives in memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    journal: Option<Journal>,
}

/// One record a committed transaction changed, for a host that keeps the records itself. Keys and
/// values are opaque to the host; values may hold secrets (keys, message text).
#[derive(Clone, PartialEq, Eq)]
pub struct Change {
    /// The record's key.
    pub key: Vec<u8>,
    /// Its new value; `None`: it was deleted.
    pub value: Option<Vec<u8>>,
}

// Redacted: values hold keys and text.
impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Change")
            .field("key_len", &self.key.len())
            .field("value_len", &self.value.as_ref().map(Vec::len))
            .finish()
    }
}

// Record kinds, the first byte of a record's key.
const SETTING: u8 = b's';
const PIN: u8 = b'p';
const CONVERSATION: u8 = b'c';
const MESSAGE: u8 = b'M';
const UNDECRYPTABLE: u8 = b'u';
const RECEIPT: u8 = b'r';
const MLS: u8 = b'm';
const ORDER: u8 = b'o';

fn tagged(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encoding a record: {e}")))
}

fn unjson<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    // Not serde's message: it can quote the record's content (a message's text).
    serde_json::from_slice(b)
        .map_err(|_| StoreError::Corrupt("a stored record does not decode".into()))
}

impl Undo {
    /// The key of the record this undo entry restores.
    fn key(&self) -> Result<Vec<u8>, StoreError> {
        Ok(match self {
            Undo::Setting(k, _) => tagged(SETTING, k.as_bytes()),
            Undo::Pin(k, _) => tagged(PIN, k.as_bytes()),
            Undo::Conversation(k, _) => tagged(CONVERSATION, k.as_bytes()),
            Undo::Message(k, _) => tagged(MESSAGE, &json(k)?),
            Undo::Undecryptable(k, _) => tagged(UNDECRYPTABLE, &json(k)?),
            Undo::Receipt(k, _) => tagged(RECEIPT, &json(k)?),
            Undo::Mls(k, _) => tagged(MLS, k),
            Undo::Order(_) => vec![ORDER],
        })
    }

    /// The current value of that record, encoded (`None`: it does not exist).
    fn value(&self, s: &State) -> Result<Option<Vec<u8>>, StoreError> {
        fn enc<T: serde::Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, StoreError> {
            v.map(json).transpose()
        }
        match self {
            Undo::Setting(k, _) => Ok(s.settings.get(k).cloned()),
            Undo::Pin(k, _) => enc(s.pins.get(k)),
            Undo::Conversation(k, _) => enc(s.conversations.get(k)),
            Undo::Message(k, _) => enc(s.messages.get(k)),
            Undo::Undecryptable(k, _) => enc(s.undecryptable.get(k)),
            Undo::Receipt(k, _) => enc(s.receipts.get(k)),
            Undo::Mls(k, _) => Ok(s.mls.get(k).cloned()),
            Undo::Order(_) => enc(Some(&s.next_order)),
        }
    }
}

impl State {
    /// A conversation's messages, as a range of the map (keys start with the conversation id).
    fn messages_of<'s>(
        &'s self,
        conversation: &'s str,
    ) -> impl Iterator<Item = &'s MessageRecord> + 's {
        self.messages
            .range((conversation.to_owned(), String::new())..)
            .take_while(move |((c, _), _)| c == conversation)
            .map(|(_, m)| m)
    }

    fn put_message(&mut self, key: (String, String), m: MessageRecord) {
        if let Some(t) = &m.target {
            self.targets
                .entry((key.0.clone(), t.clone()))
                .or_default()
                .insert(key.1.clone());
        }
        if let Some(old) = self.messages.insert(key.clone(), m) {
            self.untarget(&key, &old);
        }
    }

    fn take_message(&mut self, key: &(String, String)) -> Option<MessageRecord> {
        let old = self.messages.remove(key)?;
        self.untarget(key, &old);
        Some(old)
    }

    fn untarget(&mut self, key: &(String, String), m: &MessageRecord) {
        let Some(t) = &m.target else { return };
        // A replaced record with the same target keeps its entry.
        if self
            .messages
            .get(key)
            .is_some_and(|now| now.target.as_ref() == Some(t))
        {
            return;
        }
        let tk = (key.0.clone(), t.clone());
        if let Some(ids) = self.targets.get_mut(&tk) {
            ids.remove(&key.1);
            if ids.is_empty() {
                self.targets.remove(&tk);
            }
        }
    }

    /// Puts one record, as [`Undo::key`] and [`Undo::value`] encoded it.
    fn load(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| StoreError::Corrupt("a stored record's key is not UTF-8".into()))
        };
        let Some((&tag, rest)) = key.split_first() else {
            return Err(StoreError::Corrupt(
                "a stored record has an empty key".into(),
            ));
        };
        match tag {
            SETTING => {
                self.settings.insert(text(rest)?, value);
            }
            PIN => {
                self.pins.insert(text(rest)?, unjson(&value)?);
            }
            CONVERSATION => {
                self.conversations.insert(text(rest)?, unjson(&value)?);
            }
            MESSAGE => self.put_message(unjson(rest)?, unjson(&value)?),
            UNDECRYPTABLE => {
                self.undecryptable.insert(unjson(rest)?, unjson(&value)?);
            }
            RECEIPT => {
                self.receipts.insert(unjson(rest)?, unjson(&value)?);
            }
            MLS => {
                self.mls.insert(rest.to_vec(), value);
            }
            ORDER if rest.is_empty() => self.next_order = unjson(&value)?,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "a stored record has an unknown kind ({tag})"
                )))
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty journaled store: every commit's changed records can be taken with
    /// [`MemoryStore::take_changes`].
    pub fn journaled() -> Self {
        Self {
            state: Mutex::default(),
            journal: Some(Mutex::default()),
        }
    }

    /// A journaled store holding `records`: every key and value that [`MemoryStore::take_changes`]
    /// handed out and not deleted since, in any order. A record that does not decode is an error,
    /// and nothing is loaded.
    pub fn restore(
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, StoreError> {
        let mut state = State::default();
        for (key, value) in records {
            state.load(&key, value)?;
        }
        Ok(Self {
            state: Mutex::new(state),
            journal: Some(Mutex::default()),
        })
    }

    /// The records changed by transactions committed since the last call, each with its newest
    /// value, by key. Empty for a store that is not journaled.
    pub fn take_changes(&self) -> Result<Vec<Change>, StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(Vec::new());
        };
        let mut j = journal
            .lock()
            .map_err(|_| StoreError::Backend("memory store journal lock poisoned".into()))?;
        Ok(std::mem::take(&mut *j)
            .into_iter()
            .map(|(key, value)| Change { key, value })
            .collect())
    }
}

impl Store for MemoryStore {
    fn begin(&self, _write: bool) -> Result<Box<dyn Tx + '_>, StoreError> {
        let guard = self
            .state
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()))?;
        Ok(Box::new(MemoryTx {
            state: RefCell::new(guard),
            undo: RefCell::new(Vec::new()),
            committed: false,
            journal: self.journal.as_ref(),
        }))
    }
}

struct MemoryTx<'a> {
    state: RefCell<MutexGuard<'a, State>>,
    undo: RefCell<Vec<Undo>>,
    committed: bool,
    journal: Option<&'a Journal>,
}

impl Drop for MemoryTx<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut s = self.state.borrow_mut();
        for u in self.undo.borrow_mut().drain(..).rev() {
            fn restore<K: Ord, V>(m: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
                match v {
                    Some(v) => m.insert(k, v),
                    None => m.remove(&k),
                };
            }
            match u {
                Undo::Setting(k, v) => restore(&mut s.settings, k, v),
                Undo::Pin(k, v) => restore(&mut s.pins, k, v),
                Undo::Conversation(k, v) => restore(&mut s.conversations, k, v),
                Undo::Message(k, v) => match v {
                    Some(m) => s.put_message(k, *m),
                    None => {
                        s.take_message(&k);
                    }
                },
                Undo::Undecryptable(k, v) => restore(&mut s.undecryptable, k, v),
                Undo::Receipt(k, v) => restore(&mut s.receipts, k, v),
                Undo::Mls(k, v) => restore(&mut s.mls, k, v),
                Undo::Order(o) => s.next_order = o,
            }
        }
    }
}

fn by_seq_then_order(a: &MessageRecord, b: &MessageRecord) -> std::cmp::Ordering {
    (a.seq.unwrap_or(u64::MAX), a.local_order).cmp(&(b.seq.unwrap_or(u64::MAX), b.local_order))
}

impl MemoryTx<'_> {
    /// Changes a stored message in place (no-op if absent), with its undo entry.
    fn update(&self, conversation: &str, id: &str, f: impl FnOnce(&mut MessageRecord)) {
        let key = (conversation.to_owned(), id.to_owned());
        let mut s = self.state.borrow_mut();
        let Some(m) = s.messages.get_mut(&key) else {
            return;
        };
        let old = m.clone();
        f(m);
        drop(s);
        self.log(Undo::Message(key, Some(Box::new(old))));
    }

    fn log(&self, u: Undo) {
        self.undo.borrow_mut().push(u);
    }
}

impl Tx for MemoryTx<'_> {
    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        if let Some(journal) = self.journal {
            // Encode everything first: if a record cannot be encoded, the transaction rolls back
            // (on drop) and the journal is untouched.
            let s = self.state.borrow();
            let mut changed = BTreeMap::new();
            for u in self.undo.borrow().iter() {
                if let std::collections::btree_map::Entry::Vacant(e) = changed.entry(u.key()?) {
                    e.insert(u.value(&s)?);
                }
            }
            drop(s);
            journal
                .lock()
                .map_err(|_| StoreError::Backend("memory store journal lock poisoned".into()))?
                .extend(changed);
        }
        self.committed = true;
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.borrow().settings.get(key).cloned())
    }

    fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let old = self
            .state
            .borrow_mut()
            .settings
            .insert(key.to_owned(), value.to_vec());
        self.log(Undo::Setting(key.to_owned(), old));
        Ok(())
    }

    fn delete_setting(&self, key: &str) -> Result<(), StoreError> {
        let old = self.state.borrow_mut().settings.remove(key);
        self.log(Undo::Setting(key.to_owned(), old));
        Ok(())
    }

    fn pin(&self, username: &str) -> Result<Option<PinRecord>, StoreError> {
        Ok(self.state.borrow().pins.get(username).cloned())
    }

    fn set_pin(&self, pin: &PinRecord) -> Result<(), StoreError> {
        let old = self
            .state
            .borrow_mut()
            .pins
            .insert(pin.username.clone(), pin.clone());
        self.log(Undo::Pin(pin.username.clone(), old));
        Ok(())
    }

    fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self.state.borrow().conversations.get(id).cloned())
    }

    fn dm_with(&self, peer: &str) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self
            .state
            .borrow()
            .conversations
            .values()
            .find(|c| c.kind == ConversationKind::Dm && c.peer.as_deref() == Some(peer))
            .cloned())
    }

    fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError> {
        Ok(self
            .state
            .borrow()
            .conversations
            .values()
            .cloned()
            .collect())
    }

    fn put_conversation(&self, c: &ConversationRecord) -> Result<(), StoreError> {
        if c.kind == ConversationKind::Dm {
            if let Some(peer) = &c.peer {
                if let Some(other) = self.dm_with(peer)? {
                    if other.id != c.id {
                        return Err(StoreError::Backend(format!(
                            "a DM with {peer} is already stored"
                        )));
                    }
                }
            }
        }
        let old = self
            .state
            .borrow_mut()
            .conversations
            .insert(c.id.clone(), c.clone());
        self.log(Undo::Conversation(c.id.clone(), old));
        Ok(())
    }

    fn insert_message(&self, m: &MessageRecord) -> Result<bool, StoreError> {
        let key = (m.conversation.clone(), m.id.clone());
        let mut s = self.state.borrow_mut();
        if s.messages.contains_key(&key) {
            return Ok(false);
        }
        let order = s.next_order;
        s.next_order += 1;
        let mut m = m.clone();
        m.local_order = order + 1;
        s.put_message(key.clone(), m);
        drop(s);
        self.log(Undo::Order(order));
        self.log(Undo::Message(key, None));
        Ok(true)
    }

    fn message(&self, conversation: &str, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self
            .state
            .borrow()
            .messages
            .get(&(conversation.to_owned(), id.to_owned()))
            .cloned())
    }

    fn set_message_seq(
        &self,
        conversation: &str,
        id: &str,
        seq: u64,
        accepted_at: u64,
    ) -> Result<(), StoreError> {
        self.update(conversation, id, |m| {
            m.seq = Some(seq);
            m.accepted_at = accepted_at;
        });
        Ok(())
    }

    fn set_attachment(
        &self,
        conversation: &str,
        id: &str,
        attachment: Option<&AttachmentRecord>,
    ) -> Result<(), StoreError> {
        self.update(conversation, id, |m| m.attachment = attachment.cloned());
        Ok(())
    }

    fn delete_unsent_message(&self, conversation: &str, id: &str) -> Result<(), StoreError> {
        let key = (conversation.to_owned(), id.to_owned());
        let mut s = self.state.borrow_mut();
        if s.messages.get(&key).is_some_and(|m| m.seq.is_none()) {
            let old = s.take_message(&key);
            drop(s);
            self.log(Undo::Message(key, old.map(Box::new)));
        }
        Ok(())
    }

    fn message_by_id(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self
            .state
            .borrow()
            .messages
            .values()
            .find(|m| m.id == id)
            .cloned())
    }

    fn messages_targeting(
        &self,
        conversation: &str,
        target: &str,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let s = self.state.borrow();
        let Some(ids) = s.targets.get(&(conversation.to_owned(), target.to_owned())) else {
            return Ok(Vec::new());
        };
        let mut v: Vec<MessageRecord> = ids
            .iter()
            .filter_map(|id| s.messages.get(&(conversation.to_owned(), id.clone())))
            .cloned()
            .collect();
        v.sort_by(by_seq_then_order);
        Ok(v)
    }

    fn set_message_text(
        &self,
        conversation: &str,
        id: &str,
        text: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update(conversation, id, |m| m.text = text.map(str::to_owned));
        Ok(())
    }

    fn delete_message(&self, conversation: &str, id: &str) -> Result<(), StoreError> {
        let key = (conversation.to_owned(), id.to_owned());
        let old = self.state.borrow_mut().take_message(&key);
        if old.is_some() {
            self.log(Undo::Message(key, old.map(Box::new)));
        }
        Ok(())
    }

    fn set_expiry(
        &self,
        conversation: &str,
        id: &str,
        expires_at: Option<u64>,
        after_shown: Option<u32>,
    ) -> Result<(), StoreError> {
        self.update(conversation, id, |m| {
            m.expires_at = expires_at;
            m.after_shown = after_shown;
        });
        Ok(())
    }

    fn expired_messages(&self, now: u64) -> Result<Vec<MessageRecord>, StoreError> {
        let mut v: Vec<MessageRecord> = self
            .state
            .borrow()
            .messages
            .values()
            .filter(|m| m.expires_at.is_some_and(|at| at <= now))
            .cloned()
            .collect();
        v.sort_by_key(|m| (m.expires_at, m.local_order));
        Ok(v)
    }

    fn after_shown_messages(&self) -> Result<Vec<MessageRecord>, StoreError> {
        let mut v: Vec<MessageRecord> = self
            .state
            .borrow()
            .messages
            .values()
            .filter(|m| m.after_shown.is_some())
            .cloned()
            .collect();
        v.sort_by_key(|m| m.local_order);
        Ok(v)
    }

    fn delete_receipts(&self, conversation: &str, message: &str) -> Result<(), StoreError> {
        let keys: Vec<(String, String, String)> = self
            .state
            .borrow()
            .receipts
            .range((conversation.to_owned(), message.to_owned(), String::new())..)
            .map(|(k, _)| k)
            .take_while(|(c, m, _)| c == conversation && m == message)
            .cloned()
            .collect();
        for key in keys {
            let old = self.state.borrow_mut().receipts.remove(&key);
            self.log(Undo::Receipt(key, old));
        }
        Ok(())
    }

    fn set_shown(&self, conversation: &str, id: &str, shown: bool) -> Result<(), StoreError> {
        self.update(conversation, id, |m| m.shown = shown);
        Ok(())
    }

    fn unshown_messages(&self) -> Result<Vec<MessageRecord>, StoreError> {
        let mut v: Vec<MessageRecord> = self
            .state
            .borrow()
            .messages
            .values()
            .filter(|m| !m.shown)
            .cloned()
            .collect();
        v.sort_by_key(|m| m.local_order);
        Ok(v)
    }

    fn messages(&self, conversation: &str) -> Result<Vec<MessageRecord>, StoreError> {
        let mut v: Vec<MessageRecord> = self
            .state
            .borrow()
            .messages_of(conversation)
            .cloned()
            .collect();
        v.sort_by(by_seq_then_order);
        Ok(v)
    }

    fn unsent_messages(&self, sender_device: &str) -> Result<Vec<MessageRecord>, StoreError> {
        let mut v: Vec<MessageRecord> = self
            .state
            .borrow()
            .messages
            .values()
            .filter(|m| m.outgoing && m.seq.is_none() && m.sender_device == sender_device)
            .cloned()
            .collect();
        v.sort_by_key(|m| m.local_order);
        Ok(v)
    }

    fn put_receipt(
        &self,
        conversation: &str,
        message: &str,
        user: &str,
        status: u8,
    ) -> Result<bool, StoreError> {
        let key = (conversation.to_owned(), message.to_owned(), user.to_owned());
        let mut s = self.state.borrow_mut();
        let old = s.receipts.get(&key).copied();
        if old.is_some_and(|o| o >= status) {
            return Ok(false);
        }
        s.receipts.insert(key.clone(), status);
        drop(s);
        self.log(Undo::Receipt(key, old));
        Ok(true)
    }

    fn receipts(&self, conversation: &str, message: &str) -> Result<Vec<(String, u8)>, StoreError> {
        Ok(self
            .state
            .borrow()
            .receipts
            .range((conversation.to_owned(), message.to_owned(), String::new())..)
            .take_while(|((c, m, _), _)| c == conversation && m == message)
            .map(|((_, _, u), s)| (u.clone(), *s))
            .collect())
    }

    fn unreceipted(
        &self,
        conversation: &str,
        user: &str,
        status: u8,
    ) -> Result<Vec<String>, StoreError> {
        let s = self.state.borrow();
        let mut v: Vec<&MessageRecord> = s
            .messages_of(conversation)
            .filter(|m| {
                !m.outgoing
                    && m.seq.is_some()
                    && matches!(m.kind, ContentKind::Text | ContentKind::File)
                    && s.receipts
                        .get(&(conversation.to_owned(), m.id.clone(), user.to_owned()))
                        .is_none_or(|r| *r < status)
            })
            .collect();
        v.sort_by(|a, b| by_seq_then_order(a, b));
        Ok(v.into_iter().map(|m| m.id.clone()).collect())
    }

    fn put_undecryptable(&self, u: &UndecryptableRecord) -> Result<(), StoreError> {
        let key = (u.conversation.clone(), u.seq);
        let old = self
            .state
            .borrow_mut()
            .undecryptable
            .insert(key.clone(), u.clone());
        self.log(Undo::Undecryptable(key, old));
        Ok(())
    }

    fn delete_undecryptable(&self, conversation: &str, seq: u64) -> Result<(), StoreError> {
        let key = (conversation.to_owned(), seq);
        let old = self.state.borrow_mut().undecryptable.remove(&key);
        self.log(Undo::Undecryptable(key, old));
        Ok(())
    }

    fn undecryptable(&self, conversation: &str) -> Result<Vec<UndecryptableRecord>, StoreError> {
        Ok(self
            .state
            .borrow()
            .undecryptable
            .range((conversation.to_owned(), 0)..=(conversation.to_owned(), u64::MAX))
            .map(|(_, u)| u.clone())
            .collect())
    }

    fn mls_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.borrow().mls.get(key).cloned())
    }

    fn mls_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let old = self
            .state
            .borrow_mut()
            .mls
            .insert(key.to_vec(), value.to_vec());
        self.log(Undo::Mls(key.to_vec(), old));
        Ok(())
    }

    fn mls_delete(&self, key: &[u8]) -> Result<(), StoreError> {
        let old = self.state.borrow_mut().mls.remove(key);
        self.log(Undo::Mls(key.to_vec(), old));
        Ok(())
    }
}
