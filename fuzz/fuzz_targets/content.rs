//! Decrypted message content (MIMI CBOR or content v1, then zero padding): whatever a peer's
//! device put inside MLS. Also the MIMI decoders on their own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_proto::mimi::{decode_status, DerivedValues, MimiContent};
use sotto_proto::{MessageContent, Username};

fuzz_target!(|data: &[u8]| {
    let alice = Username::new("alice").expect("valid");
    if let Ok(content) = MessageContent::from_padded_bytes(data, &alice, b"room") {
        // Whatever decodes is sent again as the same bytes, and reads back the same.
        let again = MessageContent::from_padded_bytes(&content.to_padded_bytes(), &alice, b"room")
            .expect("round trip");
        assert_eq!(again, content);
    }
    // Deterministic CBOR: whatever decodes re-encodes to exactly the input.
    if let Ok(m) = MimiContent::from_bytes(data) {
        assert_eq!(m.to_bytes(), data);
    }
    if let Ok(v) = DerivedValues::from_bytes(data) {
        assert_eq!(v.to_bytes(), data);
    }
    let _ = decode_status(data);
});
