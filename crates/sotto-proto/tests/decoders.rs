//! Property tests for every decoder of untrusted bytes: arbitrary input never panics, and valid values
//! round-trip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use proptest::prelude::*;
use sotto_proto::mls::{
    check_welcome, Conversation, DeviceKeys, Envelope, PendingJoin, ValidKeyPackage,
};
use sotto_proto::{AccountIdentity, DeviceCertificate, DeviceId, Username};

fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
    for (i, x) in flips {
        if !bytes.is_empty() {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
    }
    let keep = bytes.len().saturating_sub(cut % 8);
    bytes.truncate(keep);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn certificates_round_trip_and_garbage_never_panics(
        user in "[a-z0-9_.-]{3,32}",
        dev in any::<[u8; 16]>(),
        key in proptest::collection::vec(any::<u8>(), 0..64),
        at in any::<u64>(),
        junk in proptest::collection::vec(any::<u8>(), 0..300),
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        cut in any::<usize>(),
    ) {
        let id = AccountIdentity::generate();
        let cert = id.certify_device(&Username::new(&user).unwrap(), DeviceId(dev), &key, at);
        let bytes = cert.to_bytes();
        let back = DeviceCertificate::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &cert);
        back.verify(&id.public(), &key).unwrap();
        let _ = DeviceCertificate::decode(&junk);
        // Any mutation either fails to decode or fails to verify (or is the identity mutation).
        let m = mutate(bytes.clone(), &flips, cut);
        if m != bytes {
            if let Ok(c) = DeviceCertificate::decode(&m) {
                prop_assert!(c.verify(&id.public(), &key).is_err());
            }
        }
    }

    #[test]
    fn mls_decoders_never_panic_on_garbage_or_mutations(
        junk in proptest::collection::vec(any::<u8>(), 0..600),
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 1..4),
        cut in any::<usize>(),
    ) {
        let p = OpenMlsRustCrypto::default();
        let id = AccountIdentity::generate();
        let keys = DeviceKeys::generate(&id, &Username::new("alice").unwrap(), DeviceId::random(), 1);
        let (kps, _) = keys.key_packages(&p, sotto_proto::mls::DEFAULT_CIPHERSUITE, 1, false).unwrap();
        let mut g = Conversation::create(&p, &keys, b"g", sotto_proto::mls::DEFAULT_CIPHERSUITE, None).unwrap();
        for input in [junk.clone(), mutate(kps[0].clone(), &flips, cut)] {
            let _ = Envelope::parse(&input);
            let _ = check_welcome(&input);
            let _ = ValidKeyPackage::parse(p.crypto(), &input);
            let _ = PendingJoin::stage(&p, &input, None);
            let _ = PendingJoin::stage(&p, &input, Some(&input));
            let _ = g.process(&p, &input);
        }
        prop_assert_eq!(g.epoch(), 0);
    }

    /// The same checks as the `wire` fuzz target (fuzz/fuzz_targets/wire.rs).
    #[test]
    fn wire_decoders_round_trip_what_they_accept(
        junk in proptest::collection::vec(any::<u8>(), 0..400),
        name in proptest::option::of("[a-z0-9][a-z0-9 ]{0,38}[a-z0-9]"),
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        cut in any::<usize>(),
    ) {
        use sotto_proto::group::GroupMetadata;
        let mut meta = GroupMetadata::new(name.as_deref().unwrap_or("g"), Username::new("alice").unwrap()).unwrap();
        meta = meta.with_admin(&Username::new("bob").unwrap(), true);
        let bytes = meta.encode();
        prop_assert_eq!(GroupMetadata::decode(&bytes).unwrap(), meta);
        for input in [junk.clone(), mutate(bytes, &flips, cut)] {
            if let Ok(m) = GroupMetadata::decode(&input) {
                prop_assert_eq!(GroupMetadata::decode(&m.encode()).unwrap(), m);
            }
            if let Ok(c) = DeviceCertificate::decode(&input) {
                prop_assert_eq!(c.to_bytes(), input.clone());
            }
            if let Ok(t) = std::str::from_utf8(&input) {
                let _ = t.parse::<Username>();
                let _ = t.parse::<DeviceId>();
            }
        }
    }
}
