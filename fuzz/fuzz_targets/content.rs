//! Decrypted message content (padded, tagged): whatever a peer's device put inside MLS.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sotto_proto::Body;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = sotto_proto::MessageContent::from_padded_bytes(data) {
        // Kinds this version does not know decode (as `Unsupported`) but are never re-sent;
        // text re-encodes to the same content.
        if let Body::Text { .. } = content.body {
            let bytes = content.to_padded_bytes().expect("text re-encodes");
            let again = sotto_proto::MessageContent::from_padded_bytes(&bytes).expect("round trip");
            assert_eq!(again, content);
        }
    }
});
