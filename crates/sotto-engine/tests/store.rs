//! The in-memory backend passes the client store conformance suite, and so does the journaled
//! store that the browser worker persists, reloaded from its persisted records before every
//! transaction (`conformance::Reloaded`; the web client's browser test runs the same suite on it
//! inside Chromium).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sotto_engine::store::{conformance, MemoryStore, Store, StoreError};

#[test]
fn memory_store_conforms() {
    conformance::run(&|| Box::new(MemoryStore::new()) as Box<dyn Store>);
}

#[test]
fn journaled_store_reloaded_from_its_records_conforms() {
    conformance::run(&|| Box::new(conformance::Reloaded::new()) as Box<dyn Store>);
}

#[test]
fn a_rolled_back_transaction_journals_nothing() {
    let s = MemoryStore::journaled();
    let tx = s.begin(true).unwrap();
    tx.set_setting("k", b"v").unwrap();
    tx.mls_put(b"key", b"value").unwrap();
    drop(tx);
    assert!(s.take_changes().unwrap().is_empty());

    let tx = s.begin(true).unwrap();
    tx.set_setting("k", b"v1").unwrap();
    tx.set_setting("k", b"v2").unwrap();
    tx.mls_put(b"gone", b"x").unwrap();
    tx.mls_delete(b"gone").unwrap();
    tx.commit().unwrap();
    let changes = s.take_changes().unwrap();
    // One change per record, with its value at commit: "k" is v2, "gone" is deleted.
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes
        .iter()
        .any(|c| c.value.as_deref() == Some(&b"v2"[..])));
    assert!(changes.iter().any(|c| c.value.is_none()));
    assert!(s.take_changes().unwrap().is_empty(), "taken once");
}

#[test]
fn a_record_that_does_not_decode_is_refused() {
    let err = MemoryStore::restore([(b"cnot-a-conversation".to_vec(), b"{".to_vec())])
        .expect_err("refused");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let err = MemoryStore::restore([(b"?".to_vec(), b"1".to_vec())]).expect_err("refused");
    assert!(err.to_string().contains("unknown kind"), "{err}");
}
