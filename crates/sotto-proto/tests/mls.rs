//! MLS conversation wrapper: real openmls, in-memory storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use openmls_rust_crypto::OpenMlsRustCrypto;
use sotto_proto::mls::{
    Conversation, DeviceKeys, Incoming, MlsError, PendingJoin, Trust, ValidKeyPackage,
};
use sotto_proto::{AccountIdentity, Body, DeviceId, IdentityPublicKey, Username};

#[derive(Default)]
struct Pins(HashMap<Username, IdentityPublicKey>);
impl Trust for Pins {
    fn pinned_identity(&self, u: &Username) -> Option<IdentityPublicKey> {
        self.0.get(u).copied()
    }
}

struct Dev {
    p: OpenMlsRustCrypto,
    keys: DeviceKeys,
}

fn device(id: &AccountIdentity, user: &str) -> Dev {
    let p = OpenMlsRustCrypto::default();
    let keys = DeviceKeys::generate(id, &Username::new(user).unwrap(), DeviceId::random(), 1);
    Dev { p, keys }
}

fn kp(d: &Dev, pins: &Pins) -> sotto_proto::mls::TrustedKeyPackage {
    let (one, _) = d
        .keys
        .key_packages(&d.p, sotto_proto::mls::DEFAULT_CIPHERSUITE, 1, false)
        .unwrap();
    ValidKeyPackage::parse(d.p.crypto(), &one[0])
        .unwrap()
        .verify(pins)
        .unwrap()
}

use openmls_traits::OpenMlsProvider as _;

#[test]
fn dm_between_two_accounts_round_trips() {
    let alice_id = AccountIdentity::generate();
    let bob_id = AccountIdentity::generate();
    let mut pins = Pins::default();
    pins.0
        .insert(Username::new("alice").unwrap(), alice_id.public());
    pins.0
        .insert(Username::new("bob").unwrap(), bob_id.public());
    let a = device(&alice_id, "alice");
    let b1 = device(&bob_id, "bob");
    let b2 = device(&bob_id, "bob");

    let mut ga = Conversation::create(
        &a.p,
        &a.keys,
        b"conv-1",
        sotto_proto::mls::DEFAULT_CIPHERSUITE,
        None,
    )
    .unwrap();
    let bundle = ga
        .add_devices(&a.p, &a.keys, &[kp(&b1, &pins), kp(&b2, &pins)])
        .unwrap();
    assert_eq!(bundle.epoch, 0);
    assert_eq!(bundle.welcome_devices.len(), 2);
    ga.merge_pending(&a.p).unwrap();
    let env = sotto_proto::mls::Envelope::parse(&bundle.commit).unwrap();
    assert!(env.is_commit);
    assert_eq!(env.epoch, 0);

    let welcome = bundle.welcome.unwrap();
    let tree = ga.ratchet_tree().unwrap();
    let mut gb1 = PendingJoin::stage(&b1.p, &welcome, Some(&tree))
        .unwrap()
        .accept(&b1.p, &pins)
        .unwrap();
    let mut gb2 = PendingJoin::stage(&b2.p, &welcome, Some(&tree))
        .unwrap()
        .accept(&b2.p, &pins)
        .unwrap();
    assert_eq!(gb1.epoch(), 1);
    assert_eq!(gb1.members().len(), 3);

    let m = ga.compose_text(&a.p, &a.keys, "hi bob", 5).unwrap();
    let ct = ga.encrypt(&a.p, &a.keys, &m).unwrap();
    let env = sotto_proto::mls::Envelope::parse(&ct).unwrap();
    assert!(!env.is_commit);
    for (g, d) in [(&mut gb1, &b1), (&mut gb2, &b2)] {
        match g.process(&d.p, &ct).unwrap() {
            Incoming::Message { sender, content } => {
                assert_eq!(sender.username.as_str(), "alice");
                assert_eq!(content, m);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A device's own message is not decryptable by itself but is recognised.
    assert!(matches!(
        ga.process(&a.p, &ct).unwrap(),
        Incoming::OwnMessage
    ));
    // Garbage is refused and the group keeps working.
    assert!(matches!(
        gb1.process(&b1.p, b"garbage"),
        Err(MlsError::Malformed(_))
    ));
    let hey = gb1.compose_text(&b1.p, &b1.keys, "hey", 6).unwrap();
    let reply = gb1.encrypt(&b1.p, &b1.keys, &hey).unwrap();
    match ga.process(&a.p, &reply).unwrap() {
        Incoming::Message { content, .. } => {
            assert!(matches!(content.body, Body::Text { ref text, .. } if text == "hey"))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn leaf_with_forged_certificate_is_refused() {
    let alice_id = AccountIdentity::generate();
    let bob_id = AccountIdentity::generate();
    let mallory_id = AccountIdentity::generate();
    let mut pins = Pins::default();
    pins.0
        .insert(Username::new("alice").unwrap(), alice_id.public());
    pins.0
        .insert(Username::new("bob").unwrap(), bob_id.public());
    let a = device(&alice_id, "alice");
    let b = device(&bob_id, "bob");
    // Mallory (think: a malicious server) certifies a device as "bob" with her own identity key.
    let fake = device(&mallory_id, "bob");

    // Alice refuses the forged key package outright.
    let (one, _) = fake
        .keys
        .key_packages(&fake.p, sotto_proto::mls::DEFAULT_CIPHERSUITE, 1, false)
        .unwrap();
    let valid = ValidKeyPackage::parse(fake.p.crypto(), &one[0]).unwrap();
    assert!(matches!(
        valid.clone().verify(&pins),
        Err(MlsError::Certificate { .. })
    ));

    // Someone who skips the check (Mallory's own group) adds it; bob refuses the commit.
    let mut ga = Conversation::create(
        &a.p,
        &a.keys,
        b"conv-2",
        sotto_proto::mls::DEFAULT_CIPHERSUITE,
        None,
    )
    .unwrap();
    let bundle = ga.add_devices(&a.p, &a.keys, &[kp(&b, &pins)]).unwrap();
    ga.merge_pending(&a.p).unwrap();
    let mut gb = PendingJoin::stage(
        &b.p,
        bundle.welcome.as_ref().unwrap(),
        Some(&ga.ratchet_tree().unwrap()),
    )
    .unwrap()
    .accept(&b.p, &pins)
    .unwrap();
    let mut lax = Pins::default();
    lax.0
        .insert(Username::new("bob").unwrap(), mallory_id.public());
    let forged = valid.verify(&lax).unwrap();
    let bad = ga.add_devices(&a.p, &a.keys, &[forged]).unwrap();
    let Incoming::Commit(pending) = gb.process(&b.p, &bad.commit).unwrap() else {
        panic!()
    };
    let epoch = gb.epoch();
    assert!(matches!(
        gb.merge_verified(
            &b.p,
            pending,
            &pins,
            &sotto_proto::group::Kind::Dm([
                Username::new("alice").unwrap(),
                Username::new("bob").unwrap()
            ])
        ),
        Err(MlsError::Certificate { .. })
    ));
    assert_eq!(gb.epoch(), epoch, "nothing merged");
    // And a welcome naming the forged leaf is refused by the fake device's would-be peers.
    ga.merge_pending(&a.p).unwrap();
    assert_eq!(ga.members().len(), 3);
}
