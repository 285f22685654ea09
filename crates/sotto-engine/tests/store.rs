//! The in-memory backend passes the client store conformance suite.

use sotto_engine::store::{conformance, MemoryStore, Store};

#[test]
fn memory_store_conforms() {
    conformance::run(&|| Box::new(MemoryStore::new()) as Box<dyn Store>);
}
