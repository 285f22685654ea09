//! The in-memory store: for tests, benchmarks and WebAssembly hosts without a disk. Nothing
//! survives the process. A transaction records how to undo each write and replays that on drop
//! unless it was committed, so a transaction costs what it changes, not the store's size.

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

/// A store that lives in memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
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
        }))
    }
}

struct MemoryTx<'a> {
    state: RefCell<MutexGuard<'a, State>>,
    undo: RefCell<Vec<Undo>>,
    committed: bool,
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
                Undo::Message(k, v) => restore(&mut s.messages, k, v.map(|b| *b)),
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
        s.messages.insert(key.clone(), m);
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
            let old = s.messages.remove(&key);
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
        let mut v: Vec<MessageRecord> = self
            .state
            .borrow()
            .messages
            .values()
            .filter(|m| m.conversation == conversation && m.target.as_deref() == Some(target))
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
        let old = self.state.borrow_mut().messages.remove(&key);
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
            .keys()
            .filter(|(c, m, _)| c == conversation && m == message)
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
            .messages
            .values()
            .filter(|m| m.conversation == conversation)
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
            .iter()
            .filter(|((c, m, _), _)| c == conversation && m == message)
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
            .messages
            .values()
            .filter(|m| {
                m.conversation == conversation
                    && !m.outgoing
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
