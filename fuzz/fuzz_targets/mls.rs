//! MLS messages from the network: envelopes, key packages, welcomes, and commits/messages
//! processed by a real group.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use sotto_proto::mls::{check_welcome, Conversation, DeviceKeys, Envelope, PendingJoin, ValidKeyPackage};
use sotto_proto::{AccountIdentity, DeviceId, Username};

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::parse(data);
    let _ = check_welcome(data);
    let p = OpenMlsRustCrypto::default();
    let _ = ValidKeyPackage::parse(p.crypto(), data);
    let _ = PendingJoin::stage(&p, data, None);
    let id = AccountIdentity::generate();
    let keys = DeviceKeys::generate(&id, &Username::new("alice").expect("name"), DeviceId::random(), 1);
    let mut g = Conversation::create(&p, &keys, b"fuzz", sotto_proto::mls::CLASSIC_CIPHERSUITE, None)
        .expect("group");
    let _ = g.process(&p, data);
    assert_eq!(g.epoch(), 0);
});
