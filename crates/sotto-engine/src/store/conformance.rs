//! The one conformance suite every client store backend must pass (in-memory here, SQLite in
//! `sotto-client`, the browser's with the web client). Call [`run`] from a backend's tests with a
//! function that makes an empty store; it panics with the name of the first rule broken. A host
//! that cannot catch panics runs [`checks`] one by one instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// One rule of the contract: its name, and a check that panics on a fresh store if the rule is
/// broken.
pub type Check = (&'static str, fn(&dyn Store));

const CHECKS: &[Check] = &[
    ("settings", settings),
    ("rollback_on_drop", rollback_on_drop),
    ("reads_see_own_writes", reads_see_own_writes),
    ("pins", pins),
    ("conversations", conversations),
    ("one_dm_per_peer", one_dm_per_peer),
    ("messages_dedup_and_order", messages_dedup_and_order),
    ("outbox", outbox),
    ("actions", actions),
    ("attachments", attachments),
    ("receipts", receipts),
    ("expiry", expiry),
    ("history_order", history_order),
    ("undecryptable", undecryptable),
    ("mls_state", mls_state),
    ("mls_rollback", mls_rollback),
];

/// Every check, for a host that cannot catch a panic (WebAssembly aborts): it runs them one by
/// one, each on a fresh store, so that the one that fails is known by its name.
pub fn checks() -> &'static [Check] {
    CHECKS
}

/// Runs every check, each on a fresh store from `make`.
pub fn run(make: &dyn Fn() -> Box<dyn Store>) {
    for (name, check) in CHECKS {
        let store = make();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(store.as_ref())));
        if let Err(e) = outcome {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("store conformance check `{name}` failed: {why}");
        }
    }
}

/// The journaled [`MemoryStore`] as a host that persists it uses it (the web client's worker),
/// with a map for the host's disk: before each transaction, the changes committed so far are
/// written to the map, and the store is rebuilt from the map alone. The suite passing on it
/// shows that nothing the contract needs lives outside the records a host stores.
pub struct Reloaded {
    disk: std::cell::RefCell<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>,
    // Each rebuilt store is leaked: a transaction borrows the store it came from, and a
    // conformance run's few hundred small stores are not worth more machinery.
    current: std::cell::Cell<&'static MemoryStore>,
}

impl Reloaded {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            disk: std::cell::RefCell::default(),
            current: std::cell::Cell::new(Box::leak(Box::new(MemoryStore::journaled()))),
        }
    }
}

impl Default for Reloaded {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for Reloaded {
    fn begin(&self, write: bool) -> Result<Box<dyn Tx + '_>, StoreError> {
        let mut disk = self.disk.borrow_mut();
        for c in self.current.get().take_changes()? {
            match c.value {
                Some(v) => disk.insert(c.key, v),
                None => disk.remove(&c.key),
            };
        }
        let reloaded = MemoryStore::restore(disk.iter().map(|(k, v)| (k.clone(), v.clone())))?;
        self.current.set(Box::leak(Box::new(reloaded)));
        self.current.get().begin(write)
    }
}

fn write<T>(s: &dyn Store, f: impl FnOnce(&dyn Tx) -> T) -> T {
    let tx = s.begin(true).unwrap();
    let out = f(tx.as_ref());
    tx.commit().unwrap();
    out
}

fn read<T>(s: &dyn Store, f: impl FnOnce(&dyn Tx) -> T) -> T {
    let tx = s.begin(false).unwrap();
    f(tx.as_ref())
}

fn msg(conv: &str, id: &str, seq: Option<u64>, outgoing: bool, device: &str) -> MessageRecord {
    MessageRecord {
        conversation: conv.into(),
        id: id.into(),
        seq,
        sender: "alice".into(),
        sender_device: device.into(),
        sent_at_ms: 1_700_000_000_000,
        kind: ContentKind::Text,
        text: Some(format!("text {id}")),
        reply_to: None,
        target: None,
        salt: None,
        outgoing,
        shown: false,
        local_order: 0,
        accepted_at: seq.map_or(0, |s| 1_700_000_000 + s),
        attachment: None,
        expires_at: None,
        after_shown: None,
    }
}

fn settings(s: &dyn Store) {
    write(s, |tx| {
        assert_eq!(tx.setting("a").unwrap(), None);
        tx.set_setting("a", b"1").unwrap();
        tx.set_setting("a", b"22").unwrap();
        tx.set_setting("b", &[0, 255]).unwrap();
    });
    read(s, |tx| {
        assert_eq!(tx.setting("a").unwrap().as_deref(), Some(&b"22"[..]));
        assert_eq!(tx.setting("b").unwrap().as_deref(), Some(&[0u8, 255][..]));
    });
    write(s, |tx| {
        tx.delete_setting("a").unwrap();
        tx.delete_setting("never").unwrap();
    });
    read(s, |tx| assert_eq!(tx.setting("a").unwrap(), None));
}

fn rollback_on_drop(s: &dyn Store) {
    write(s, |tx| tx.set_setting("kept", b"1").unwrap());
    {
        let tx = s.begin(true).unwrap();
        tx.set_setting("kept", b"2").unwrap();
        tx.set_setting("lost", b"x").unwrap();
        tx.put_conversation(&ConversationRecord::new(
            "c1",
            ConversationKind::Group,
            None,
        ))
        .unwrap();
        tx.insert_message(&msg("c1", "m1", Some(1), false, "d"))
            .unwrap();
        let mut reaction = msg("c1", "r1", Some(2), false, "d");
        reaction.kind = ContentKind::Reaction;
        reaction.target = Some("m0".into());
        tx.insert_message(&reaction).unwrap();
        assert_eq!(tx.messages_targeting("c1", "m0").unwrap().len(), 1);
        // dropped without commit
    }
    read(s, |tx| {
        assert_eq!(tx.setting("kept").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(tx.setting("lost").unwrap(), None);
        assert_eq!(tx.conversation("c1").unwrap(), None);
        assert!(tx.messages("c1").unwrap().is_empty());
        assert!(tx.messages_targeting("c1", "m0").unwrap().is_empty());
    });
    // The order counter rolled back too: the next message is still the first.
    write(s, |tx| {
        tx.insert_message(&msg("c1", "m1", Some(1), false, "d"))
            .unwrap();
    });
    let first = read(s, |tx| tx.message("c1", "m1").unwrap().unwrap().local_order);
    write(s, |tx| {
        tx.insert_message(&msg("c1", "m2", Some(2), false, "d"))
            .unwrap();
    });
    let second = read(s, |tx| tx.message("c1", "m2").unwrap().unwrap().local_order);
    assert!(second > first, "local_order must grow");
}

fn reads_see_own_writes(s: &dyn Store) {
    let tx = s.begin(true).unwrap();
    tx.set_setting("k", b"v").unwrap();
    assert_eq!(tx.setting("k").unwrap().as_deref(), Some(&b"v"[..]));
    tx.mls_put(b"m", b"1").unwrap();
    assert_eq!(tx.mls_get(b"m").unwrap().as_deref(), Some(&b"1"[..]));
    let mut c = ConversationRecord::new("c", ConversationKind::Dm, Some("bob"));
    tx.put_conversation(&c).unwrap();
    c.cursor = 7;
    tx.put_conversation(&c).unwrap();
    assert_eq!(tx.conversation("c").unwrap().unwrap().cursor, 7);
    tx.commit().unwrap();
}

fn pins(s: &dyn Store) {
    let p = PinRecord {
        username: "bob".into(),
        identity_key: vec![7; 32],
        pinned_at: 42,
    };
    write(s, |tx| tx.set_pin(&p).unwrap());
    read(s, |tx| {
        assert_eq!(tx.pin("bob").unwrap(), Some(p.clone()));
        assert_eq!(tx.pin("carol").unwrap(), None);
    });
    let repinned = PinRecord {
        identity_key: vec![8; 32],
        ..p
    };
    write(s, |tx| tx.set_pin(&repinned).unwrap());
    read(s, |tx| {
        assert_eq!(tx.pin("bob").unwrap(), Some(repinned.clone()))
    });
}

fn conversations(s: &dyn Store) {
    let mut g = ConversationRecord::new("bb", ConversationKind::Group, None);
    let d = ConversationRecord::new("aa", ConversationKind::Dm, Some("bob"));
    write(s, |tx| {
        tx.put_conversation(&g).unwrap();
        tx.put_conversation(&d).unwrap();
    });
    g.cursor = 9;
    g.status = ConversationStatus::Refused;
    g.status_detail = "a commit broke the rules".into();
    write(s, |tx| tx.put_conversation(&g).unwrap());
    read(s, |tx| {
        assert_eq!(tx.conversation("bb").unwrap(), Some(g.clone()));
        assert_eq!(tx.dm_with("bob").unwrap(), Some(d.clone()));
        assert_eq!(tx.dm_with("carol").unwrap(), None);
        let ids: Vec<String> = tx
            .conversations()
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["aa", "bb"], "conversations are listed by id");
    });
}

fn one_dm_per_peer(s: &dyn Store) {
    write(s, |tx| {
        tx.put_conversation(&ConversationRecord::new(
            "d1",
            ConversationKind::Dm,
            Some("bob"),
        ))
        .unwrap()
    });
    let tx = s.begin(true).unwrap();
    assert!(
        tx.put_conversation(&ConversationRecord::new(
            "d2",
            ConversationKind::Dm,
            Some("bob")
        ))
        .is_err(),
        "a second DM with the same peer must be refused"
    );
    drop(tx);
    read(s, |tx| {
        assert_eq!(tx.dm_with("bob").unwrap().unwrap().id, "d1")
    });
}

fn messages_dedup_and_order(s: &dyn Store) {
    write(s, |tx| {
        assert!(tx
            .insert_message(&msg("c", "m1", Some(1), false, "d"))
            .unwrap());
        assert!(
            !tx.insert_message(&msg("c", "m1", Some(5), false, "d"))
                .unwrap(),
            "duplicate id"
        );
        assert!(tx
            .insert_message(&msg("c", "m2", Some(2), false, "d"))
            .unwrap());
        // The same id in another conversation is another message.
        assert!(tx
            .insert_message(&msg("other", "m1", Some(1), false, "d"))
            .unwrap());
    });
    read(s, |tx| {
        let m1 = tx.message("c", "m1").unwrap().unwrap();
        assert_eq!(m1.seq, Some(1), "a duplicate does not overwrite");
        let unshown: Vec<(String, String)> = tx
            .unshown_messages()
            .unwrap()
            .into_iter()
            .map(|m| (m.conversation, m.id))
            .collect();
        assert_eq!(
            unshown,
            [
                ("c".into(), "m1".into()),
                ("c".into(), "m2".into()),
                ("other".into(), "m1".into())
            ]
        );
    });
    write(s, |tx| tx.mark_shown("c", "m1").unwrap());
    read(s, |tx| {
        assert_eq!(tx.unshown_messages().unwrap().len(), 2);
        assert!(tx.message("c", "m1").unwrap().unwrap().shown);
    });
}

fn outbox(s: &dyn Store) {
    write(s, |tx| {
        let mut out1 = msg("c", "out1", None, true, "me");
        out1.salt = Some(vec![7; 16]);
        tx.insert_message(&out1).unwrap();
        tx.insert_message(&msg("c", "out2", None, true, "me"))
            .unwrap();
        tx.insert_message(&msg("c", "other-device", None, true, "other"))
            .unwrap();
        tx.insert_message(&msg("c", "in", Some(3), false, "me"))
            .unwrap();
    });
    read(s, |tx| {
        let unsent = tx.unsent_messages("me").unwrap();
        let ids: Vec<&str> = unsent.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["out1", "out2"]);
        assert_eq!(unsent[0].salt.as_deref(), Some(&[7; 16][..]));
    });
    write(s, |tx| {
        tx.set_message_seq("c", "out1", 10, 1_700_000_123).unwrap();
        tx.delete_unsent_message("c", "out1").unwrap(); // acknowledged: kept
        tx.delete_unsent_message("c", "out2").unwrap();
    });
    read(s, |tx| {
        let out1 = tx.message("c", "out1").unwrap().unwrap();
        assert_eq!((out1.seq, out1.accepted_at), (Some(10), 1_700_000_123));
        assert_eq!(
            tx.message("c", "in").unwrap().unwrap().accepted_at,
            1_700_000_003
        );
        assert_eq!(out1.salt.as_deref(), Some(&[7; 16][..]));
        assert_eq!(tx.message("c", "out2").unwrap(), None);
        assert!(tx.unsent_messages("me").unwrap().is_empty());
    });
}

/// A file message keeps its attachment record whole, a download is noted on it, and an unsend
/// can wipe it.
fn attachments(s: &dyn Store) {
    let file = AttachmentRecord {
        blob: "ab".repeat(32),
        key: "cd".repeat(32),
        size: 65_537,
        hash: "ef".repeat(32),
        content_type: "image/png".into(),
        name: "cat \u{1F408}.png".into(),
        preview: Some(PreviewRecord {
            content_type: "image/png".into(),
            data: sotto_api::B64(vec![0x89, b'P', b'N', b'G']),
        }),
        downloaded: None,
    };
    let mut m = msg("c", "f1", Some(1), false, "d");
    m.kind = ContentKind::File;
    m.text = None;
    m.attachment = Some(file.clone());
    write(s, |tx| {
        tx.insert_message(&m).unwrap();
        tx.insert_message(&msg("c", "t1", Some(2), false, "d"))
            .unwrap();
    });
    read(s, |tx| {
        let got = tx.message("c", "f1").unwrap().unwrap();
        assert_eq!(got.kind, ContentKind::File);
        assert_eq!(got.attachment.as_ref(), Some(&file));
        assert_eq!(got.text, None);
        assert_eq!(tx.message("c", "t1").unwrap().unwrap().attachment, None);
    });
    let saved = AttachmentRecord {
        downloaded: Some("/tmp/cat.png".into()),
        ..file.clone()
    };
    write(s, |tx| tx.set_attachment("c", "f1", Some(&saved)).unwrap());
    read(s, |tx| {
        let got = tx.message_by_id("f1").unwrap().unwrap();
        assert_eq!(got.attachment.as_ref(), Some(&saved));
    });
    write(s, |tx| tx.set_attachment("c", "f1", None).unwrap());
    read(s, |tx| {
        assert_eq!(tx.message("c", "f1").unwrap().unwrap().attachment, None);
    });
}

/// Actions (reactions, edits, unsends) are found by their target; texts can be replaced or wiped;
/// messages are found by id alone; an action can be deleted and re-flagged unshown.
fn actions(s: &dyn Store) {
    write(s, |tx| {
        tx.insert_message(&msg("c", "m1", Some(1), false, "d"))
            .unwrap();
        for (id, seq, kind) in [
            ("r1", Some(3), ContentKind::Reaction),
            ("e1", Some(2), ContentKind::Edit),
            ("u1", None, ContentKind::Unsend),
        ] {
            let mut a = msg("c", id, seq, false, "d");
            a.kind = kind;
            a.target = Some("m1".into());
            a.reply_to = Some("r0".into());
            tx.insert_message(&a).unwrap();
        }
        let mut other = msg("c2", "r2", Some(1), false, "d");
        other.kind = ContentKind::Reaction;
        other.target = Some("m1".into());
        tx.insert_message(&other).unwrap();
    });
    read(s, |tx| {
        let ids: Vec<String> = tx
            .messages_targeting("c", "m1")
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(
            ids,
            ["e1", "r1", "u1"],
            "by seq, unacknowledged last; one conversation"
        );
        let r1 = tx.message("c", "r1").unwrap().unwrap();
        assert_eq!(r1.kind, ContentKind::Reaction);
        assert_eq!(r1.reply_to.as_deref(), Some("r0"));
        assert_eq!(tx.message_by_id("r2").unwrap().unwrap().conversation, "c2");
        assert_eq!(tx.message_by_id("nope").unwrap(), None);
    });
    write(s, |tx| {
        tx.set_message_text("c", "m1", None).unwrap();
        tx.set_message_text("c", "e1", Some("new")).unwrap();
        tx.delete_message("c", "r1").unwrap();
        tx.mark_shown("c", "u1").unwrap();
        tx.set_shown("c", "u1", false).unwrap();
        tx.set_shown("c", "e1", true).unwrap();
    });
    read(s, |tx| {
        assert_eq!(tx.message("c", "m1").unwrap().unwrap().text, None);
        assert_eq!(
            tx.message("c", "e1").unwrap().unwrap().text.as_deref(),
            Some("new")
        );
        assert_eq!(tx.message("c", "r1").unwrap(), None);
        let unshown: Vec<String> = tx
            .unshown_messages()
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert!(
            unshown.contains(&"u1".to_owned()) && !unshown.contains(&"e1".to_owned()),
            "{unshown:?}"
        );
    });
}

/// Receipts only rise; `unreceipted` lists other accounts' acknowledged messages without one.
fn receipts(s: &dyn Store) {
    write(s, |tx| {
        tx.insert_message(&msg("c", "in1", Some(1), false, "d"))
            .unwrap();
        tx.insert_message(&msg("c", "in2", Some(2), false, "d"))
            .unwrap();
        tx.insert_message(&msg("c", "mine", Some(3), true, "me"))
            .unwrap();
        tx.insert_message(&msg("c", "pending", None, false, "d"))
            .unwrap();
        let mut r = msg("c", "r", Some(4), false, "d");
        r.kind = ContentKind::Receipt;
        tx.insert_message(&r).unwrap();
        tx.insert_message(&msg("c2", "other", Some(1), false, "d"))
            .unwrap();
    });
    read(s, |tx| {
        assert_eq!(tx.unreceipted("c", "me", 1).unwrap(), ["in1", "in2"]);
    });
    write(s, |tx| {
        assert!(tx.put_receipt("c", "in1", "me", 1).unwrap());
        assert!(tx.put_receipt("c", "in1", "me", 2).unwrap());
        assert!(
            !tx.put_receipt("c", "in1", "me", 1).unwrap(),
            "never goes down"
        );
        assert!(tx.put_receipt("c", "in2", "me", 1).unwrap());
        assert!(tx.put_receipt("c", "in1", "bob", 1).unwrap());
    });
    read(s, |tx| {
        assert!(tx.unreceipted("c", "me", 1).unwrap().is_empty());
        assert_eq!(tx.unreceipted("c", "me", 2).unwrap(), ["in2"]);
        assert_eq!(tx.unreceipted("c", "bob", 1).unwrap(), ["in2"]);
        assert_eq!(
            tx.receipts("c", "in1").unwrap(),
            [("bob".to_owned(), 1), ("me".to_owned(), 2)]
        );
        assert!(tx.receipts("c2", "in1").unwrap().is_empty());
    });
}

fn expiry(s: &dyn Store) {
    write(s, |tx| {
        let mut a = msg("c", "a", Some(1), false, "d");
        a.expires_at = Some(100);
        tx.insert_message(&a).unwrap();
        let mut b = msg("c", "b", Some(2), false, "d");
        b.after_shown = Some(30);
        tx.insert_message(&b).unwrap();
        let mut v = msg("c", "v", Some(3), false, "d");
        v.after_shown = Some(0);
        v.expires_at = Some(500);
        tx.insert_message(&v).unwrap();
        tx.insert_message(&msg("c", "keep", Some(4), false, "d"))
            .unwrap();
        tx.put_receipt("c", "a", "bob", 2).unwrap();
        tx.put_receipt("c", "keep", "bob", 2).unwrap();
    });
    read(s, |tx| {
        let ids = |v: Vec<MessageRecord>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert!(tx.expired_messages(99).unwrap().is_empty());
        assert_eq!(ids(tx.expired_messages(100).unwrap()), ["a"]);
        assert_eq!(ids(tx.expired_messages(u64::MAX).unwrap()), ["a", "v"]);
        assert_eq!(ids(tx.after_shown_messages().unwrap()), ["b", "v"]);
        let v = tx.message("c", "v").unwrap().unwrap();
        assert_eq!((v.expires_at, v.after_shown), (Some(500), Some(0)));
    });
    write(s, |tx| {
        tx.set_expiry("c", "b", Some(50), None).unwrap();
        tx.delete_receipts("c", "a").unwrap();
    });
    read(s, |tx| {
        let b = tx.message("c", "b").unwrap().unwrap();
        assert_eq!((b.expires_at, b.after_shown), (Some(50), None));
        assert_eq!(tx.expired_messages(60).unwrap()[0].id, "b");
        assert!(tx.receipts("c", "a").unwrap().is_empty());
        assert_eq!(tx.receipts("c", "keep").unwrap().len(), 1);
    });
}

fn history_order(s: &dyn Store) {
    write(s, |tx| {
        tx.insert_message(&msg("c", "late-unsent", None, true, "me"))
            .unwrap();
        tx.insert_message(&msg("c", "seq5", Some(5), false, "d"))
            .unwrap();
        tx.insert_message(&msg("c", "seq2", Some(2), false, "d"))
            .unwrap();
        tx.insert_message(&msg("c", "unsent2", None, true, "me"))
            .unwrap();
    });
    read(s, |tx| {
        let ids: Vec<String> = tx
            .messages("c")
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["seq2", "seq5", "late-unsent", "unsent2"]);
    });
}

fn undecryptable(s: &dyn Store) {
    let u = |seq, state| UndecryptableRecord {
        conversation: "c".into(),
        seq,
        sender_device: "dev".into(),
        sender: Some("bob".into()),
        state,
        tries: 1,
        first_failed_ms: 5,
        last_error: "MLS message refused".into(),
    };
    write(s, |tx| {
        tx.put_undecryptable(&u(9, UndecryptableState::Waiting))
            .unwrap();
        tx.put_undecryptable(&u(3, UndecryptableState::Waiting))
            .unwrap();
        tx.put_undecryptable(&UndecryptableRecord {
            conversation: "other".into(),
            ..u(1, UndecryptableState::Waiting)
        })
        .unwrap();
    });
    let mut failed = u(9, UndecryptableState::Failed);
    failed.tries = 5;
    write(s, |tx| tx.put_undecryptable(&failed).unwrap());
    read(s, |tx| {
        let got = tx.undecryptable("c").unwrap();
        assert_eq!(got, [u(3, UndecryptableState::Waiting), failed.clone()]);
    });
    write(s, |tx| tx.delete_undecryptable("c", 3).unwrap());
    read(s, |tx| {
        assert_eq!(tx.undecryptable("c").unwrap(), [failed.clone()]);
        assert_eq!(tx.undecryptable("other").unwrap().len(), 1);
    });
}

fn mls_state(s: &dyn Store) {
    let big = vec![0xAB; 200_000];
    write(s, |tx| {
        tx.mls_put(b"tree\0g1", &big).unwrap();
        tx.mls_put(b"tree\0g2", b"small").unwrap();
        tx.mls_put(b"tree\0g2", b"replaced").unwrap();
    });
    read(s, |tx| {
        assert_eq!(tx.mls_get(b"tree\0g1").unwrap(), Some(big.clone()));
        assert_eq!(
            tx.mls_get(b"tree\0g2").unwrap().as_deref(),
            Some(&b"replaced"[..])
        );
        assert_eq!(tx.mls_get(b"tree\0g3").unwrap(), None);
        // Keys are compared as bytes: a prefix is another key.
        assert_eq!(tx.mls_get(b"tree").unwrap(), None);
    });
    write(s, |tx| {
        tx.mls_delete(b"tree\0g1").unwrap();
        tx.mls_delete(b"never").unwrap();
    });
    read(s, |tx| assert_eq!(tx.mls_get(b"tree\0g1").unwrap(), None));
}

fn mls_rollback(s: &dyn Store) {
    write(s, |tx| tx.mls_put(b"k", b"before").unwrap());
    {
        let tx = s.begin(true).unwrap();
        tx.mls_put(b"k", b"after").unwrap();
        tx.mls_put(b"new", b"x").unwrap();
        tx.mls_delete(b"k").unwrap();
    }
    read(s, |tx| {
        assert_eq!(tx.mls_get(b"k").unwrap().as_deref(), Some(&b"before"[..]));
        assert_eq!(tx.mls_get(b"new").unwrap(), None);
    });
}
