//! Sotto's own wire types: device certificates, group metadata, usernames and device ids.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = sotto_proto::DeviceCertificate::decode(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(cert.to_bytes(), data);
    }
    if let Ok(meta) = sotto_proto::group::GroupMetadata::decode(data) {
        let again = sotto_proto::group::GroupMetadata::decode(&meta.encode()).expect("round trip");
        assert_eq!(again, meta);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<sotto_proto::Username>();
        let _ = s.parse::<sotto_proto::DeviceId>();
    }
});
