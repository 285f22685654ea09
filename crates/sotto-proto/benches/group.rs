//! Large-group costs on one core, both ciphersuites: creating a group of N member devices (one
//! commit adding N-1 verified key packages), one member's update commit in it (create, and process
//! by another member and by the server's public view), with the sizes of what goes on the wire.
//! In-memory openmls storage: this measures the protocol, not disks.
//!
//! `SOTTO_BENCH_SIZES=100,1000 cargo bench -p sotto-proto --bench group` (default 1000).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use openmls_traits::types::Ciphersuite;
use openmls_traits::OpenMlsProvider as _;
use sotto_proto::group::{GroupMetadata, Kind};
use sotto_proto::mls::{
    Changes, Conversation, DeviceKeys, Incoming, PendingJoin, ServerGroup, Trust,
    TrustedKeyPackage, ValidKeyPackage, CLASSIC_CIPHERSUITE, DEFAULT_CIPHERSUITE,
};
use sotto_proto::{AccountIdentity, DeviceId, IdentityPublicKey, Username};

/// Every member belongs to one account here: certificates verify the same way whatever the account.
struct OneKey(IdentityPublicKey);
impl Trust for OneKey {
    fn pinned_identity(&self, _: &Username) -> Option<IdentityPublicKey> {
        Some(self.0)
    }
}

struct Member {
    p: OpenMlsRustCrypto,
    keys: DeviceKeys,
}

fn member(id: &AccountIdentity, i: usize) -> Member {
    let user = Username::new(&format!("user{i}")).unwrap();
    Member {
        p: OpenMlsRustCrypto::default(),
        keys: DeviceKeys::generate(id, &user, DeviceId::random(), 1),
    }
}

fn kp(m: &Member, suite: Ciphersuite, trust: &OneKey) -> TrustedKeyPackage {
    let (one, _) = m.keys.key_packages(&m.p, suite, 1, false).unwrap();
    ValidKeyPackage::parse(m.p.crypto(), &one[0])
        .unwrap()
        .verify(trust)
        .unwrap()
}

fn sizes() -> Vec<usize> {
    std::env::var("SOTTO_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000])
}

fn bench(c: &mut Criterion) {
    let id = AccountIdentity::generate();
    let trust = OneKey(id.public());
    for n in sizes() {
        for (label, suite) in [
            ("classic", CLASSIC_CIPHERSUITE),
            ("pq", DEFAULT_CIPHERSUITE),
        ] {
            let creator = member(&id, 0);
            let joiner = member(&id, 1);
            let others: Vec<Member> = (2..n).map(|i| member(&id, i)).collect();
            let mut kps = vec![kp(&joiner, suite, &trust)];
            kps.extend(others.iter().map(|m| kp(m, suite, &trust)));
            let meta = GroupMetadata::new("big", Username::new("user0").unwrap()).unwrap();

            let mut g = c.benchmark_group(format!("group_{n}_{label}"));
            g.sample_size(10);
            g.measurement_time(Duration::from_secs(20));
            let mut create_sizes = (0, 0);
            let mut count = 0u32;
            g.bench_function("create_with_all_members", |b| {
                b.iter(|| {
                    count += 1;
                    let gid = format!("g-{n}-{label}-{count}");
                    let mut conv = Conversation::create(
                        &creator.p,
                        &creator.keys,
                        gid.as_bytes(),
                        suite,
                        Some(&meta),
                    )
                    .unwrap();
                    let bundle = conv.add_devices(&creator.p, &creator.keys, &kps).unwrap();
                    conv.merge_pending(&creator.p).unwrap();
                    create_sizes = (bundle.commit.len(), bundle.welcome.as_ref().unwrap().len());
                })
            });

            // One group for the update benchmarks: the creator, one joined member, the server.
            let gid = format!("upd-{n}-{label}");
            let mut conv = Conversation::create(
                &creator.p,
                &creator.keys,
                gid.as_bytes(),
                suite,
                Some(&meta),
            )
            .unwrap();
            let bundle = conv.add_devices(&creator.p, &creator.keys, &kps).unwrap();
            conv.merge_pending(&creator.p).unwrap();
            let crypto = RustCrypto::default();
            let mut server = ServerGroup::start(
                &crypto,
                bundle.initial_group_info.as_ref().unwrap(),
                gid.as_bytes(),
                true,
            )
            .unwrap();
            server
                .process_commit(&crypto, &bundle.commit, &Kind::Group)
                .unwrap();
            let t = Instant::now();
            let tree = server.ratchet_tree().unwrap();
            let mut other =
                PendingJoin::stage(&joiner.p, bundle.welcome.as_ref().unwrap(), Some(&tree))
                    .unwrap()
                    .accept(&joiner.p, &trust)
                    .unwrap();
            let join_time = t.elapsed();
            let snapshot_len = server.snapshot().unwrap().len();

            let mut update_len = 0;
            g.bench_function("update_commit_create_and_process", |b| {
                b.iter_custom(|iters| {
                    let (mut create, mut process, mut serve) =
                        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
                    for _ in 0..iters {
                        let t = Instant::now();
                        let bundle = conv
                            .commit(
                                &creator.p,
                                &creator.keys,
                                Changes {
                                    self_update: true,
                                    ..Changes::default()
                                },
                            )
                            .unwrap();
                        create += t.elapsed();
                        update_len = bundle.commit.len();
                        let t = Instant::now();
                        let mut s =
                            ServerGroup::load(&server.snapshot().unwrap(), gid.as_bytes())
                                .unwrap();
                        s.process_commit(&crypto, &bundle.commit, &Kind::Group)
                            .unwrap();
                        let _ = s.snapshot().unwrap();
                        serve += t.elapsed();
                        server = s;
                        conv.merge_pending(&creator.p).unwrap();
                        let t = Instant::now();
                        let Incoming::Commit(pending) =
                            other.process(&joiner.p, &bundle.commit).unwrap()
                        else {
                            panic!("not a commit")
                        };
                        other
                            .merge_verified(&joiner.p, pending, &trust, &Kind::Group)
                            .unwrap();
                        process += t.elapsed();
                    }
                    eprintln!(
                        "group_{n}_{label}: update create {:?}, member process {:?}, server load+process+save {:?} (per commit)",
                        create / iters as u32,
                        process / iters as u32,
                        serve / iters as u32
                    );
                    create + process
                })
            });
            g.finish();
            eprintln!(
                "group_{n}_{label}: create commit {} B, welcome {} B, update commit {} B, server state {} B, one member's join {:?}",
                create_sizes.0, create_sizes.1, update_len, snapshot_len, join_time
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
