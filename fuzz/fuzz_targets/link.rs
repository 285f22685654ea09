//! Device link codes as typed by a user, and sealed account bundles as served by the server.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<sotto_proto::LinkCode>();
    }
    // A sealed bundle from a hostile server never opens under a code it was not sealed for.
    let code = sotto_proto::LinkCode::generate();
    assert!(code.open(data).is_err());
});
