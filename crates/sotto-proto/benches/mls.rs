//! MLS costs on one core: a 100-byte DM encrypted and decrypted, and setting up a DM between two
//! users with two devices each. In-memory openmls storage: this measures the protocol, not disks.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use sotto_proto::mls::{
    Conversation, DeviceKeys, Incoming, PendingJoin, Trust, TrustedKeyPackage, ValidKeyPackage,
};
use sotto_proto::{AccountIdentity, DeviceId, IdentityPublicKey, Username};

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

fn dev(id: &AccountIdentity, user: &str) -> Dev {
    let p = OpenMlsRustCrypto::default();
    let keys = DeviceKeys::generate(id, &Username::new(user).unwrap(), DeviceId::random(), 1);
    Dev { p, keys }
}

fn kp(d: &Dev, pins: &Pins) -> TrustedKeyPackage {
    let (one, _) = d
        .keys
        .key_packages(&d.p, sotto_proto::mls::DEFAULT_CIPHERSUITE, 1, false)
        .unwrap();
    ValidKeyPackage::parse(d.p.crypto(), &one[0])
        .unwrap()
        .verify(pins)
        .unwrap()
}

fn setup() -> (Pins, Dev, Vec<Dev>) {
    let (a, b) = (AccountIdentity::generate(), AccountIdentity::generate());
    let mut pins = Pins(HashMap::new());
    pins.0.insert(Username::new("alice").unwrap(), a.public());
    pins.0.insert(Username::new("bob").unwrap(), b.public());
    let creator = dev(&a, "alice");
    let others = vec![dev(&a, "alice"), dev(&b, "bob"), dev(&b, "bob")];
    (pins, creator, others)
}

fn bench(c: &mut Criterion) {
    // Encrypt + decrypt of a 100-byte DM between two established devices.
    let (pins, a, others) = setup();
    let b = &others[2];
    let mut ga = Conversation::create(
        &a.p,
        &a.keys,
        b"bench-dm",
        sotto_proto::mls::DEFAULT_CIPHERSUITE,
        None,
    )
    .unwrap();
    let bundle = ga.add_devices(&a.p, &a.keys, &[kp(b, &pins)]).unwrap();
    ga.merge_pending(&a.p).unwrap();
    let mut gb = PendingJoin::stage(
        &b.p,
        bundle.welcome.as_ref().unwrap(),
        Some(&ga.ratchet_tree().unwrap()),
    )
    .unwrap()
    .accept(&b.p, &pins)
    .unwrap();
    let text = "x".repeat(100);
    c.bench_function("dm_100B_encrypt_decrypt", |bench| {
        bench.iter(|| {
            let m = ga.compose_text(&a.p, &a.keys, &text, 0).unwrap();
            let ct = ga.encrypt(&a.p, &a.keys, &m).unwrap();
            match gb.process(&b.p, &ct).unwrap() {
                Incoming::Message { .. } => {}
                _ => unreachable!(),
            }
        })
    });

    // Creating a DM between 2 users x 2 devices: the creator makes the group and one commit adding
    // the other three devices (key packages already claimed and verified), and all three join.
    let mut g = c.benchmark_group("dm_create_2x2");
    g.sample_size(20);
    g.bench_function("create_commit_and_3_joins", |bench| {
        bench.iter_batched(
            || {
                let (pins, a, others) = setup();
                let kps: Vec<_> = others.iter().map(|d| kp(d, &pins)).collect();
                (pins, a, others, kps)
            },
            |(pins, a, others, kps)| {
                let mut g = Conversation::create(
                    &a.p,
                    &a.keys,
                    b"bench-create",
                    sotto_proto::mls::DEFAULT_CIPHERSUITE,
                    None,
                )
                .unwrap();
                let bundle = g.add_devices(&a.p, &a.keys, &kps).unwrap();
                g.merge_pending(&a.p).unwrap();
                let tree = g.ratchet_tree().unwrap();
                for d in &others {
                    PendingJoin::stage(&d.p, bundle.welcome.as_ref().unwrap(), Some(&tree))
                        .unwrap()
                        .accept(&d.p, &pins)
                        .unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("create_and_commit_only", |bench| {
        bench.iter_batched(
            || {
                let (pins, a, others) = setup();
                let kps: Vec<_> = others.iter().map(|d| kp(d, &pins)).collect();
                (a, kps)
            },
            |(a, kps)| {
                let mut g = Conversation::create(
                    &a.p,
                    &a.keys,
                    b"bench-create",
                    sotto_proto::mls::DEFAULT_CIPHERSUITE,
                    None,
                )
                .unwrap();
                g.add_devices(&a.p, &a.keys, &kps).unwrap();
                g.merge_pending(&a.p).unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
