//! One storage contract, every backend: the same suite runs against SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `SOTTO_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`);
//! each run works in a schema of its own and drops it afterwards. Without a reachable server the
//! PostgreSQL half is skipped with a message, except under CI (`CI` set), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sotto_server::store::postgres::PostgresStore;
use sotto_server::store::prelude::*;
use sotto_server::store::{DeviceRecord, KeyPackages, NewCommit, StoreError};
use sotto_server::SqliteStore;

// Ids as the delivery service hands them to the store: devices and conversations are 32 hex
// digits (the store reads them back as typed ids and refuses anything else).
const A1: &str = "a1000000000000000000000000000000";
const A2: &str = "a2000000000000000000000000000000";
const A3: &str = "a3000000000000000000000000000000";
const A9: &str = "a9000000000000000000000000000000";
const B1: &str = "b1000000000000000000000000000000";
const B2: &str = "b2000000000000000000000000000000";
const B3: &str = "b3000000000000000000000000000000";
const B9: &str = "b9000000000000000000000000000000";
const C1: &str = "c1000000000000000000000000000000";
const GROUP: &str = "9a0b0000000000000000000000000000";
const DM: &str = "c0ffee00000000000000000000000000";
const OTHER: &str = "0e0e0000000000000000000000000000";

fn device(id: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: id.parse().unwrap(),
        certificate: vec![1, 2, 3],
        token_hash: [7; 32],
        created_at: 1,
    }
}

/// The default (post-quantum hybrid) and classic ciphersuites' IANA numbers.
const PQ: u16 = 0x004F;
const CLASSIC: u16 = 0x0001;

fn kps(tag: u8, n: u8) -> KeyPackages {
    KeyPackages {
        one_time: (0..n).map(|i| (PQ, vec![tag, i])).collect(),
        last_resort: vec![(PQ, vec![tag, 255])],
    }
}

fn commit(epoch: u64, sender: &str, welcome_to: &[&str]) -> NewCommit {
    NewCommit {
        epoch,
        sender_device: sender.into(),
        commit: vec![9, epoch as u8],
        welcome: (!welcome_to.is_empty()).then(|| {
            (
                vec![5, 5],
                welcome_to.iter().map(|s| s.to_string()).collect(),
            )
        }),
        ratchet_tree: None,
        state: vec![4, epoch as u8],
        expiry_secs: None,
        members: vec![(A1.into(), "alice".into()), (B1.into(), "bob".into())],
    }
}

/// alice (device a1) and bob (b1), two one-time key packages each.
async fn two_accounts(s: &dyn Store) {
    s.create_account("alice", &[1; 32], device(A1), kps(1, 2))
        .await
        .unwrap();
    s.create_account("bob", &[2; 32], device(B1), kps(2, 2))
        .await
        .unwrap();
}

/// alice, bob and carol; alice's group GROUP, which carol was in and left, at epoch 2 (seq 2).
async fn group_at_epoch_2(s: &dyn Store) {
    two_accounts(s).await;
    s.create_account("carol", &[4; 32], device(C1), kps(4, 1))
        .await
        .unwrap();
    s.create_group("alice", GROUP).await.unwrap();
    let member = |d: &str, u: &str| (d.to_owned(), u.to_owned());
    for (epoch, members) in [
        (
            0,
            vec![member(A1, "alice"), member(B1, "bob"), member(C1, "carol")],
        ),
        (1, vec![member(A1, "alice"), member(B1, "bob")]),
    ] {
        s.append_commit(
            GROUP,
            NewCommit {
                epoch,
                sender_device: A1.into(),
                commit: vec![epoch as u8],
                welcome: None,
                ratchet_tree: None,
                state: vec![42 + epoch as u8],
                expiry_secs: None,
                members,
            },
        )
        .await
        .unwrap();
    }
}

/// Accounts and devices: unique names and device ids, all or nothing.
async fn accounts_and_devices(s: Arc<dyn Store>) {
    s.create_account("alice", &[1; 32], device(A1), kps(1, 2))
        .await
        .unwrap();
    s.create_account("bob", &[2; 32], device(B1), kps(2, 2))
        .await
        .unwrap();
    assert!(matches!(
        s.create_account("alice", &[3; 32], device(A9), kps(3, 1))
            .await,
        Err(StoreError::UsernameTaken)
    ));
    // A device id clash leaves no account behind (all or nothing).
    assert!(matches!(
        s.create_account("carol", &[3; 32], device(A1), kps(3, 1))
            .await,
        Err(StoreError::DeviceExists)
    ));
    assert!(s.account("carol").await.unwrap().is_none());
    assert_eq!(s.device_auth(A1).await.unwrap().unwrap().username, "alice");
    assert!(s.device_auth("zz").await.unwrap().is_none());
    let acc = s.account("alice").await.unwrap().unwrap();
    assert_eq!((acc.identity_key, acc.devices.len()), (vec![1; 32], 1));
}

/// Key-package claims: one-time packages once each, then the last resort; ciphersuites never mix.
async fn key_package_claims(s: Arc<dyn Store>) {
    two_accounts(&*s).await;
    // Key packages: one-time ones once each, oldest first; then the last-resort one, again and again.
    assert_eq!(s.key_package_count(B1, PQ).await.unwrap(), 2);
    let c1 = s.claim_key_packages("bob", &[], A1, PQ).await.unwrap();
    let c2 = s.claim_key_packages("bob", &[], A1, PQ).await.unwrap();
    let c3 = s.claim_key_packages("bob", &[], A1, PQ).await.unwrap();
    let c4 = s.claim_key_packages("bob", &[], A1, PQ).await.unwrap();
    assert_eq!(
        [&c1[0].1, &c2[0].1, &c3[0].1, &c4[0].1],
        [&vec![2, 0], &vec![2, 1], &vec![2, 255], &vec![2, 255]]
    );
    assert_eq!(s.key_package_count(B1, PQ).await.unwrap(), 0);
    assert!(
        s.claim_key_packages("bob", &[], B1, PQ)
            .await
            .unwrap()
            .is_empty(),
        "the caller is excluded"
    );
    s.add_key_packages(
        B1,
        KeyPackages {
            one_time: vec![(PQ, vec![2, 7]), (CLASSIC, vec![2, 8])],
            last_resort: vec![(CLASSIC, vec![2, 254])],
        },
    )
    .await
    .unwrap();
    assert_eq!(s.key_package_count(B1, CLASSIC).await.unwrap(), 1);
    // Ciphersuites never mix: a classic claim gets the classic packages, then its last resort.
    let c = s.claim_key_packages("bob", &[], A1, CLASSIC).await.unwrap();
    assert_eq!(c[0].1, vec![2, 8]);
    let c = s.claim_key_packages("bob", &[], A1, CLASSIC).await.unwrap();
    assert_eq!(c[0].1, vec![2, 254]);
    assert_eq!(
        s.claim_key_packages("bob", &[B1.into()], A1, PQ)
            .await
            .unwrap()[0]
            .1,
        vec![2, 7]
    );
    assert!(s
        .claim_key_packages("bob", &["nope".into()], A1, PQ)
        .await
        .unwrap()
        .is_empty());
}

/// One DM per pair of accounts, whoever asks, however often.
async fn one_dm_per_pair(s: Arc<dyn Store>) {
    two_accounts(&*s).await;
    // One DM per pair, whoever asks, however often.
    let dm = s.get_or_create_dm("bob", "alice", DM).await.unwrap();
    let again = s.get_or_create_dm("alice", "bob", OTHER).await.unwrap();
    assert_eq!(dm, again);
    assert_eq!((dm.id.as_str(), dm.epoch, dm.last_seq), (DM, 0, 0));
    assert_eq!(dm.members, ["alice", "bob"]);
    assert_eq!(s.conversations_of("alice").await.unwrap(), vec![dm.clone()]);
    let members: Vec<String> = dm.members.iter().map(|m| m.to_string()).collect();
    let mut devs = s.devices_of(&members).await.unwrap();
    devs.sort();
    assert_eq!(devs, [A1, B1]);
}

/// The commit rule, and a bundle's welcome stored with its commit only.
async fn the_first_commit_for_an_epoch_wins(s: Arc<dyn Store>) {
    two_accounts(&*s).await;
    s.get_or_create_dm("bob", "alice", DM).await.unwrap();
    // The commit rule: first commit for an epoch wins; the bundle's welcome lands with it.
    let acc = s.append_commit(DM, commit(0, A1, &[B1])).await.unwrap();
    assert_eq!((acc.seq, acc.epoch), (1, 1));
    assert!(matches!(
        s.append_commit(DM, commit(0, B1, &[A1])).await,
        Err(StoreError::StaleEpoch { current: 1 })
    ));
    assert!(matches!(
        s.append_commit("nope", commit(0, B1, &[])).await,
        Err(StoreError::NotFound(_))
    ));
    let inbox = s.inbox(B1).await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!((inbox[0].conversation.as_str(), inbox[0].seq), (DM, 1));
    assert!(
        s.inbox(A1).await.unwrap().is_empty(),
        "the refused bundle's welcome was not stored"
    );
    s.ack_inbox(B1, inbox[0].id).await.unwrap();
    assert!(s.inbox(B1).await.unwrap().is_empty());
}

/// Messages: the current epoch, a member device, sequence numbers that follow on.
async fn messages_need_the_current_epoch_and_a_member_device(s: Arc<dyn Store>) {
    alice_and_bob_at_epoch_1(&*s).await;
    // Messages: current epoch only, sequence numbers follow on.
    assert!(matches!(
        s.append_message(DM, "alice", A1, 0, b"x").await,
        Err(StoreError::StaleEpoch { current: 1 })
    ));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut times = Vec::new();
    for i in 0..3u8 {
        let a = s
            .append_message(DM, "bob", B1, 1, &[i])
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.accepted.seq, a.accepted.epoch), (2 + u64::from(i), 1));
        assert!(
            a.accepted.accepted_at >= before,
            "the server's acceptance time"
        );
        times.push(a.accepted.accepted_at);
        let mut wake = a.wake;
        wake.sort();
        assert_eq!(wake, [A1, B1], "the devices to wake come with the append");
    }
    // Only a member device may append: another account's device, a device claimed for the wrong
    // account, an unknown conversation. Nothing is written.
    for (conv, user, dev) in [(DM, "carol", C1), (DM, "alice", B1), ("nope", "alice", A1)] {
        assert_eq!(
            s.append_message(conv, user, dev, 1, b"x").await.unwrap(),
            None,
            "{conv} {user} {dev}"
        );
    }
    let log = s.log_after(DM, 1, 2).await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(log[0].data.0, vec![0]);
    assert_eq!(
        log.iter().map(|e| e.accepted_at).collect::<Vec<_>>(),
        times[..2],
        "the log says when each entry was accepted"
    );
    assert_eq!(s.conversation(DM).await.unwrap().unwrap().last_seq, 4);
}

/// Concurrency: one winner per epoch, gap-free sequence numbers.
async fn concurrent_commits_have_one_winner_and_appends_no_gaps(s: Arc<dyn Store>) {
    alice_and_bob_at_epoch_1(&*s).await;
    // Concurrency: one winner per epoch, gap-free sequence numbers.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.append_commit(DM, commit(1, &format!("d{i}"), &[])).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::StaleEpoch { current: 2 }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(wins, 1);
    let base = s.conversation(DM).await.unwrap().unwrap().last_seq + 1;
    let mut tasks = Vec::new();
    for i in 0..40u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.append_message(DM, "alice", A1, 2, &[i])
                .await
                .unwrap()
                .unwrap()
                .accepted
                .seq
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (base..base + 40).collect::<Vec<u64>>());
}

/// A burst of good and bad appends: each its own answer, the good ones gap-free.
async fn a_mixed_burst_answers_every_append(s: Arc<dyn Store>) {
    alice_and_bob_at_epoch_1(&*s).await;
    s.append_commit(DM, commit(1, A1, &[])).await.unwrap();
    let base = s.conversation(DM).await.unwrap().unwrap().last_seq;
    // A burst mixing good appends with stale, foreign and unknown ones (a backend may batch them
    // together): each gets its own answer, the good ones land gap-free with their own data.
    let mut tasks = Vec::new();
    for i in 0..48u8 {
        let s = s.clone();
        let (conv, user, dev, epoch) = match i % 4 {
            0 | 1 => (DM, "alice", A1, 2),
            2 if i % 8 == 2 => (DM, "alice", A1, 1),
            2 => (DM, "carol", C1, 2),
            _ if i % 8 == 3 => ("nope", "alice", A1, 2),
            _ => (DM, "bob", B1, 2),
        };
        tasks.push(tokio::spawn(async move {
            (i, s.append_message(conv, user, dev, epoch, &[i]).await)
        }));
    }
    let mut landed = Vec::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match (i % 8, r) {
            (0 | 1 | 4 | 5 | 7, Ok(Some(a))) => {
                assert_eq!(a.accepted.epoch, 2);
                landed.push((a.accepted.seq, i));
            }
            (2, Err(StoreError::StaleEpoch { current: 2 })) => {}
            (6 | 3, Ok(None)) => {}
            (k, r) => panic!("append {i} (kind {k}): {r:?}"),
        }
    }
    landed.sort();
    assert_eq!(
        landed.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (base + 1..base + 1 + landed.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(landed.len(), 30);
    let log = s.log_after(DM, base, 100).await.unwrap();
    assert_eq!(
        log.iter().map(|e| (e.seq, e.data.0[0])).collect::<Vec<_>>(),
        landed
    );
}

/// Racing creations of one DM.
async fn racing_dm_creations_agree(s: Arc<dyn Store>) {
    two_accounts(&*s).await;
    // Racing creations of one DM agree on it (or all fail: "carl" has no account).
    let dms: Vec<_> = {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.get_or_create_dm("alice", "carl", &format!("{i:032x}"))
                    .await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(c) => out.push(c.id),
                // "carl" has no account: the member row's foreign key refuses the conversation.
                Err(StoreError::Backend(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        out
    };
    assert!(dms.is_empty() || dms.windows(2).all(|w| w[0] == w[1]));
}

/// Device links: one-time, expiring, redeemed atomically with the registration.
async fn links_are_one_time_expiring_and_atomic(s: Arc<dyn Store>) {
    two_accounts(&*s).await;
    // Links: one-time, expiring, redeemed atomically with the device's registration.
    assert!(matches!(
        s.create_link("L0", "alice", B1, b"sealed", 100).await,
        Err(StoreError::CallerGone)
    ));
    s.create_link("L1", "alice", A1, b"sealed", 100)
        .await
        .unwrap();
    assert!(matches!(
        s.create_link("L1", "alice", A1, b"again", 100).await,
        Err(StoreError::LinkTaken)
    ));
    assert_eq!(
        s.fetch_link("L1", 50).await.unwrap(),
        Some(("alice".into(), b"sealed".to_vec()))
    );
    assert_eq!(s.fetch_link("L1", 100).await.unwrap(), None, "expired");
    assert!(matches!(
        s.redeem_link("L1", 50, device(A1), kps(1, 1)).await,
        Err(StoreError::DeviceExists)
    ));
    assert!(
        s.fetch_link("L1", 50).await.unwrap().is_some(),
        "a failed redemption leaves the link usable"
    );
    assert_eq!(
        s.redeem_link("L1", 50, device(A2), kps(1, 1))
            .await
            .unwrap(),
        "alice"
    );
    assert!(matches!(
        s.redeem_link("L1", 50, device(A3), kps(1, 1)).await,
        Err(StoreError::LinkExpired)
    ));
    assert_eq!(s.fetch_link("L1", 50).await.unwrap(), None);
    assert_eq!(s.account("alice").await.unwrap().unwrap().devices.len(), 2);
}

/// Groups: membership derived from commits, departures, one stored welcome for many devices,
/// read positions and pruning.
async fn groups_derive_membership_from_commits(s: Arc<dyn Store>) {
    two_accounts(&*s).await;
    s.create_account("carol", &[4; 32], device(C1), kps(4, 1))
        .await
        .unwrap();
    let g = s.create_group("alice", GROUP).await.unwrap();
    assert_eq!(g.kind.as_str(), "group");
    assert_eq!(g.members, ["alice"]);
    assert!(s.group_state(GROUP).await.unwrap().is_none());
    let members = vec![
        (A1.to_owned(), "alice".to_owned()),
        (B1.to_owned(), "bob".to_owned()),
        (C1.to_owned(), "carol".to_owned()),
    ];
    let first = NewCommit {
        epoch: 0,
        sender_device: A1.into(),
        commit: vec![1],
        welcome: Some((vec![7; 64], vec![B1.into(), C1.into()])),
        ratchet_tree: Some(vec![8; 32]),
        state: vec![42],
        expiry_secs: None,
        members: members.clone(),
    };
    let acc = s.append_commit(GROUP, first).await.unwrap();
    assert_eq!((acc.seq, acc.epoch), (1, 1));
    assert_eq!(s.group_state(GROUP).await.unwrap(), Some((1, vec![42])));
    let g = s.conversation(GROUP).await.unwrap().unwrap();
    assert_eq!(g.members, ["alice", "bob", "carol"]);
    // One welcome, delivered to both devices.
    let (wb, wc) = (s.inbox(B1).await.unwrap(), s.inbox(C1).await.unwrap());
    assert_eq!((wb.len(), wc.len()), (1, 1));
    assert_eq!(wb[0].welcome.0, vec![7; 64]);
    assert_eq!(wc[0].welcome.0, vec![7; 64]);
    assert_eq!(wc[0].ratchet_tree.as_ref().unwrap().0, vec![8; 32]);
    let mut wake = s.wake_list(GROUP).await.unwrap();
    wake.sort();
    assert_eq!(wake, [A1, B1, C1]);
    for i in 0..4u8 {
        s.append_message(GROUP, "alice", A1, 1, &[i]).await.unwrap();
    }
    // carol leaves: no longer a member or woken, but recorded until her devices are removed.
    // alice, the only admin, cannot leave while others remain; nothing changes.
    let admins = vec!["alice".to_owned()];
    assert!(matches!(
        s.leave(GROUP, "alice", &admins).await,
        Err(StoreError::LastAdmin)
    ));
    assert!(s.membership(GROUP, "alice", A1).await.unwrap().is_some());
    // Membership is per device: another device of a member account is not a member device, and
    // a device cannot borrow another account's membership.
    assert!(s.membership(GROUP, "alice", A2).await.unwrap().is_none());
    assert!(s.membership(GROUP, "alice", B1).await.unwrap().is_none());
    assert!(s
        .member_log(GROUP, "alice", A2, 0, 10)
        .await
        .unwrap()
        .is_none());
    s.leave(GROUP, "carol", &admins).await.unwrap();
    assert!(matches!(
        s.leave(GROUP, "carol", &admins).await,
        Err(StoreError::NotFound(_))
    ));
    let g = s.conversation(GROUP).await.unwrap().unwrap();
    assert_eq!(g.members, ["alice", "bob"]);
    assert_eq!(g.departed, ["carol"]);
    assert!(!s.wake_list(GROUP).await.unwrap().contains(&C1.to_owned()));
    // Read positions decide pruning: entries every current device has read go.
    s.save_cursors(vec![
        (GROUP.into(), A1.into(), 5),
        (GROUP.into(), B1.into(), 3),
        (GROUP.into(), C1.into(), 3),
    ])
    .await
    .unwrap();
    s.save_cursors(vec![(GROUP.into(), B1.into(), 2)])
        .await
        .unwrap(); // never backwards
    s.ack_inbox(B1, wb[0].id).await.unwrap();
    s.ack_inbox(C1, wc[0].id).await.unwrap();
    assert!(s.prune(0).await.unwrap() >= 3);
    let log = s.log_after(GROUP, 0, 100).await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    // The admin's commit removes carol's device: she is forgotten, the log floor moves.
    let second = NewCommit {
        epoch: 1,
        sender_device: A1.into(),
        commit: vec![2],
        welcome: None,
        ratchet_tree: None,
        state: vec![43],
        expiry_secs: None,
        members: members[..2].to_vec(),
    };
    let acc = s.append_commit(GROUP, second).await.unwrap();
    assert_eq!(acc.seq, 6);
    let g = s.conversation(GROUP).await.unwrap().unwrap();
    assert!(g.departed.is_empty());
    assert_eq!(g.members, ["alice", "bob"]);
    // Retention: everything older than the cut-off goes, read or not.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    s.prune(now + 10).await.unwrap();
    assert!(s.log_after(GROUP, 0, 100).await.unwrap().is_empty());
    assert_eq!(s.conversation(GROUP).await.unwrap().unwrap().last_seq, 6);
}

/// Revocation: immediate, cancels the device's links, never undone by a later commit.
async fn revocation_is_immediate_and_final(s: Arc<dyn Store>) {
    group_at_epoch_2(&*s).await;
    // bob links a second device; it joins the group; then bob revokes it.
    link_device(&*s, "bob", device(B2)).await;
    let members = vec![
        (A1.to_owned(), "alice".to_owned()),
        (B1.to_owned(), "bob".to_owned()),
        (B2.to_owned(), "bob".to_owned()),
    ];
    let add = NewCommit {
        epoch: 2,
        sender_device: B1.into(),
        commit: vec![3],
        welcome: Some((vec![6; 8], vec![B2.into()])),
        ratchet_tree: None,
        state: vec![44],
        expiry_secs: None,
        members: members.clone(),
    };
    s.append_commit(GROUP, add).await.unwrap();
    assert!(s.membership(GROUP, "bob", B2).await.unwrap().is_some());
    assert!(matches!(
        s.revoke_device("alice", B2, A1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.revoke_device("carol", C1, C1).await,
        Err(StoreError::LastDevice)
    ));
    // The revoked device made a link code before it was revoked: revoking cancels it.
    let pending = format!("{:064x}", rand_suffix());
    s.create_link(&pending, "bob", B2, &[2], i64::MAX / 2)
        .await
        .unwrap();
    // Only a current device of the account may revoke.
    assert!(matches!(
        s.revoke_device("bob", B2, A1).await,
        Err(StoreError::CallerGone)
    ));
    s.revoke_device("bob", B2, B1).await.unwrap();
    assert!(s.fetch_link(&pending, 1).await.unwrap().is_none());
    assert!(matches!(
        s.redeem_link(&pending, 1, device(B3), kps(6, 1)).await,
        Err(StoreError::LinkExpired)
    ));
    assert!(matches!(
        s.create_link("L9", "bob", B2, &[3], i64::MAX / 2).await,
        Err(StoreError::CallerGone)
    ));
    assert_eq!(s.account("bob").await.unwrap().unwrap().revoked, [B2]);
    assert!(s.device_auth(B2).await.unwrap().is_none());
    assert!(s.membership(GROUP, "bob", B2).await.unwrap().is_none());
    assert!(s.inbox(B2).await.unwrap().is_empty());
    assert_eq!(s.key_package_count(B2, PQ).await.unwrap(), 0);
    assert!(!s.wake_list(GROUP).await.unwrap().contains(&B2.to_owned()));
    assert_eq!(s.account("bob").await.unwrap().unwrap().devices.len(), 1);
    // A later commit that still carries its leaf does not make it a member device again, and the
    // device id can never be registered again.
    let other = NewCommit {
        epoch: 3,
        sender_device: A1.into(),
        commit: vec![4],
        welcome: None,
        ratchet_tree: None,
        state: vec![45],
        expiry_secs: None,
        members,
    };
    s.append_commit(GROUP, other).await.unwrap();
    assert!(s.membership(GROUP, "bob", B2).await.unwrap().is_none());
    assert!(matches!(
        s.create_account("dave", &[9; 32], device(B2), kps(9, 1))
            .await,
        Err(StoreError::DeviceExists)
    ));
    assert!(matches!(
        s.revoke_device("bob", B2, B1).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Every check above, as one test per backend and check: a failure names its behaviour and
/// hides no other.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = sotto_server::SqliteStore::open(dir.path()).unwrap();
                    super::$check(std::sync::Arc::new(store)).await;
                }
            )*
        }
        /// The same contract while the log is indexed every row (the default indexes in
        /// thousands): most reads then cross from `log_index` into the rows not indexed yet.
        mod sqlite_indexing_every_row {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    use sotto_server::store::sqlite::SqliteOptions;
                    let dir = tempfile::tempdir().unwrap();
                    let options = SqliteOptions {
                        log_index_every: Some(1),
                        ..Default::default()
                    };
                    let store = sotto_server::SqliteStore::open_with(dir.path(), options).unwrap();
                    super::$check(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some((store, schema, url)) = super::postgres_store().await else {
                        return;
                    };
                    super::$check(std::sync::Arc::new(store)).await;
                    super::drop_schema(&url, &schema).await;
                }
            )*
        }
    };
}

conformance!(
    accounts_and_devices,
    key_package_claims,
    one_dm_per_pair,
    the_first_commit_for_an_epoch_wins,
    messages_need_the_current_epoch_and_a_member_device,
    concurrent_commits_have_one_winner_and_appends_no_gaps,
    a_mixed_burst_answers_every_append,
    racing_dm_creations_agree,
    links_are_one_time_expiring_and_atomic,
    groups_derive_membership_from_commits,
    revocation_is_immediate_and_final,
);

/// Registers a device under an existing account through a one-time link, as `sotto link` does.
async fn link_device(s: &dyn Store, user: &str, dev: DeviceRecord) {
    let id = format!("{:064x}", rand_suffix());
    let by = s.account(user).await.unwrap().unwrap().devices[0]
        .device_id
        .clone();
    s.create_link(&id, user, &by, &[1], i64::MAX / 2)
        .await
        .unwrap();
    s.redeem_link(&id, 1, dev, kps(5, 1)).await.unwrap();
}

/// PostgreSQL batches concurrent appends into one transaction; one the database refuses as a
/// whole (here: a NUL byte, which a PostgreSQL text value cannot hold) is run again one append at
/// a time, so only the bad append fails and the others land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batch_refused_as_a_whole_is_retried_one_by_one() {
    let Some((s, schema, url)) = postgres_store().await else {
        return;
    };
    let s = Arc::new(s);
    alice_and_bob_at_epoch_1(&*s).await;
    for _round in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..32u8 {
            let s = s.clone();
            let conv = if i == 7 { "c0f\0fee" } else { DM };
            tasks.push(tokio::spawn(async move {
                (i, s.append_message(conv, "alice", A1, 1, &[i]).await)
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                (7, r) => assert!(r.is_err(), "{r:?}"),
                (i, r) => assert!(matches!(r, Ok(Some(_))), "{i}: {r:?}"),
            }
        }
    }
    let log = s.log_after(DM, 1, 1000).await.unwrap();
    assert_eq!(log.len(), 3 * 31);
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (2..2 + 93).collect::<Vec<u64>>()
    );
    drop(s);
    drop_schema(&url, &schema).await;
}

/// Accounts alice (device a1) and bob (b1) and their DM DM, at epoch 1 (seq 1).
async fn alice_and_bob_at_epoch_1(s: &dyn Store) {
    two_accounts(s).await;
    s.get_or_create_dm("alice", "bob", DM).await.unwrap();
    s.append_commit(DM, commit(0, A1, &[B1])).await.unwrap();
}

/// A PostgreSQL store in a schema of its own (see `sotto_server::testkit`).
pub async fn postgres_store() -> Option<(PostgresStore, String, String)> {
    let url = sotto_server::testkit::postgres().await?;
    let schema = sotto_server::testkit::schema_name("test");
    let store = PostgresStore::connect(&url, Some(&schema))
        .await
        .unwrap_or_else(|e| panic!("opening a store at {url}: {e}"));
    Some((store, schema, url))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

use sotto_server::testkit::drop_schema;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_out_of_space_refuses_cleanly_and_batches_lose_nothing() {
    use sotto_server::store::sqlite::SqliteOptions;
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(
        SqliteStore::open_with(
            dir.path(),
            SqliteOptions {
                max_bytes: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    alice_and_bob_at_epoch_1(&*s).await;
    // Waves of concurrent 20 KB appends (batched together by the writer) until the 1 MiB cap is
    // hit: every answer is a success or `Full`, never another error, and exactly the acknowledged
    // ones are in the log, gap-free.
    let mut acked: Vec<(u64, u8)> = Vec::new();
    let mut full = 0;
    for wave in 0..20u8 {
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let s = s.clone();
                let tag = wave.wrapping_mul(16).wrapping_add(i);
                tokio::spawn(async move {
                    (
                        tag,
                        s.append_message(DM, "alice", A1, 1, &vec![tag; 20_000])
                            .await,
                    )
                })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                (tag, Ok(Some(a))) => acked.push((a.accepted.seq, tag)),
                (_, Ok(None)) => panic!("a1 is a member"),
                (_, Err(StoreError::Full)) => full += 1,
                (_, Err(e)) => panic!("not a clean out-of-space error: {e}"),
            }
        }
    }
    assert!(full > 0, "the cap was never reached");
    acked.sort();
    let log = s.log_after(DM, 1, 1000).await.unwrap();
    assert_eq!(log.len(), acked.len());
    for (e, (seq, tag)) in log.iter().zip(&acked) {
        assert_eq!((e.seq, e.data.0[0]), (*seq, *tag));
    }
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (2..2 + log.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_moves_group_state_out_of_the_conversation_row() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        alice_and_bob_at_epoch_1(&s).await;
    }
    // Put the database back the way schema version 4 kept it: the state inside the row.
    {
        let c = rusqlite::Connection::open(dir.path().join("sotto.db")).unwrap();
        c.execute_batch(LOG_AS_IN_SCHEMA_5).unwrap();
        c.execute_batch(
            "UPDATE conversations SET state = (SELECT state FROM conversation_states WHERE conversation_id = 'c0ffee00000000000000000000000000');
             DROP TABLE conversation_states;
             ALTER TABLE conversations DROP COLUMN expiry_secs;
             PRAGMA user_version = 4;",
        )
        .unwrap();
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(
        s.group_state(DM).await.unwrap(),
        Some((1, vec![4, 0])),
        "the upgrade kept the group state"
    );
    let c = rusqlite::Connection::open(dir.path().join("sotto.db")).unwrap();
    let in_row: Option<Vec<u8>> = c
        .query_row(
            "SELECT state FROM conversations WHERE id = 'c0ffee00000000000000000000000000'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(in_row, None, "the conversation's row no longer carries it");
    // The store carries on: a message lands after the commit.
    let a = s
        .append_message(DM, "alice", A1, 1, b"hi")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.accepted.seq, 2);
}

/// The seqs `log_after(DM, after, limit)` answers.
async fn c0ffee_seqs(s: &SqliteStore, after: u64, limit: u32) -> Vec<u64> {
    s.log_after(DM, after, limit)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// Seqs `after+1 ..= min(last, after+limit)`, every window of the log of DM.
async fn assert_log_windows(s: &SqliteStore, last: u64) {
    for after in 0..=last + 1 {
        for limit in [1u32, 2, 3, 7, 1000] {
            let got = c0ffee_seqs(s, after, limit).await;
            let want: Vec<u64> = (after + 1..=last.min(after + u64::from(limit))).collect();
            assert_eq!(got, want, "after {after}, limit {limit}");
        }
    }
}

fn indexed_and_not(dir: &std::path::Path) -> (i64, i64) {
    let c = rusqlite::Connection::open(dir.join("sotto.db")).unwrap();
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    (
        count("SELECT count(*) FROM log_index"),
        count("SELECT count(*) FROM log WHERE id > (SELECT upto FROM log_indexed)"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_log_indexed_in_bulk_reads_whole_across_writes_and_restarts() {
    use sotto_server::store::sqlite::SqliteOptions;
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        log_index_every: Some(8),
        ..Default::default()
    };
    let s = Arc::new(SqliteStore::open_with(dir.path(), options).unwrap());
    alice_and_bob_at_epoch_1(&*s).await;
    // Readers run while appends land and index batches move rows out of the tail: every read is a
    // gap-free run from seq 2 that holds at least what was acknowledged before it started.
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let reader = {
        let (s, acked) = (s.clone(), acked.clone());
        tokio::spawn(async move {
            let mut reads = 0u32;
            loop {
                let floor = acked.load(std::sync::atomic::Ordering::SeqCst);
                let seqs = c0ffee_seqs(&s, 1, 10_000).await;
                let n = seqs.len() as u64;
                assert_eq!(seqs, (2..2 + n).collect::<Vec<_>>(), "a gap in the log");
                assert!(1 + n >= floor, "an acknowledged entry is missing");
                reads += 1;
                if floor >= 201 {
                    return reads;
                }
            }
        })
    };
    for wave in 0..20u8 {
        let tasks: Vec<_> = (0..10u8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.append_message(DM, "alice", A1, 1, &[wave, i])
                        .await
                        .unwrap()
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            let seq = t.await.unwrap().accepted.seq;
            acked.fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
        }
    }
    assert!(reader.await.unwrap() > 1);
    let (indexed, not) = indexed_and_not(dir.path());
    assert!(
        indexed > 0 && not > 0,
        "both kinds of row: {indexed} indexed, {not} not"
    );
    assert_log_windows(&s, 201).await;
    // A restart finds the rows that were not indexed yet.
    drop(s);
    let s = SqliteStore::open_with(dir.path(), options).unwrap();
    assert_log_windows(&s, 201).await;
    let a = s
        .append_message(DM, "alice", A1, 1, b"after")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.accepted.seq, 202);
    // Pruning takes what both devices read, indexed or not.
    s.save_cursors(vec![
        (DM.into(), A1.into(), 202),
        (DM.into(), B1.into(), 150),
    ])
    .await
    .unwrap();
    assert_eq!(s.prune(0).await.unwrap(), 150);
    let seqs = c0ffee_seqs(&s, 0, 1000).await;
    assert_eq!(seqs, (151..=202).collect::<Vec<_>>());
    let c = rusqlite::Connection::open(dir.path().join("sotto.db")).unwrap();
    let dangling: i64 = c
        .query_row(
            "SELECT count(*) FROM log_index i WHERE NOT EXISTS (SELECT 1 FROM log l WHERE l.id = i.row)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dangling, 0, "the index points only at rows that exist");
    // Retention takes the rest, index entries with their rows.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(s.prune(now + 10).await.unwrap(), 52);
    assert!(s.log_after(DM, 0, 1000).await.unwrap().is_empty());
    let left: i64 = c
        .query_row("SELECT count(*) FROM log_index", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "no index entry outlives its row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_prunes_a_long_log_in_pieces() {
    use sotto_server::store::sqlite::SqliteOptions;
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        log_index_every: Some(500),
        ..Default::default()
    };
    let s = Arc::new(SqliteStore::open_with(dir.path(), options).unwrap());
    alice_and_bob_at_epoch_1(&*s).await;
    // More rows than one pruning job takes (2,000), indexed and not.
    for wave in 0..45u16 {
        let tasks: Vec<_> = (0..100u16)
            .map(|i| {
                let s = s.clone();
                let tag = (wave * 100 + i).to_be_bytes();
                tokio::spawn(async move {
                    s.append_message(DM, "alice", A1, 1, &tag)
                        .await
                        .unwrap()
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    // Nothing has expired yet: nothing goes (nobody has read anything either).
    assert_eq!(s.prune(0).await.unwrap(), 0);
    assert_eq!(s.log_after(DM, 0, 10_000).await.unwrap().len(), 4501);
    // Read positions: more than one job's worth of one conversation.
    s.save_cursors(vec![
        (DM.into(), A1.into(), 3000),
        (DM.into(), B1.into(), 3000),
    ])
    .await
    .unwrap();
    assert_eq!(s.prune(0).await.unwrap(), 3000);
    let seqs = c0ffee_seqs(&s, 0, 10_000).await;
    assert_eq!(seqs, (3001..=4501).collect::<Vec<_>>());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(s.prune(now + 10).await.unwrap(), 1501);
    assert!(s.log_after(DM, 0, 10).await.unwrap().is_empty());
    assert_eq!(indexed_and_not(dir.path()), (0, 0));
    // The log goes on where it was.
    let a = s
        .append_message(DM, "alice", A1, 1, b"next")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.accepted.seq, 4502);
    assert_eq!(s.log_after(DM, 0, 10).await.unwrap().len(), 1);
}

/// Turns the log back into schema 5's: one table keyed by (conversation, seq), no `log_index`.
const LOG_AS_IN_SCHEMA_5: &str = "
    CREATE TABLE old_log (
        conversation_id TEXT NOT NULL REFERENCES conversations(id),
        seq INTEGER NOT NULL, epoch INTEGER NOT NULL, kind INTEGER NOT NULL,
        sender_device TEXT NOT NULL, data BLOB NOT NULL,
        created_at INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (conversation_id, seq));
    INSERT INTO old_log SELECT conversation_id, seq, epoch, kind, sender_device, data, created_at
        FROM log ORDER BY id DESC;
    DROP TABLE log; DROP TABLE log_index; DROP TABLE log_indexed; DROP TABLE log_expiry;
    ALTER TABLE old_log RENAME TO log;
    ALTER TABLE accounts DROP COLUMN locked;
    DROP TABLE deleted_accounts;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_moves_the_log_to_a_bulk_written_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        alice_and_bob_at_epoch_1(&s).await;
        for i in 0..5u8 {
            s.append_message(DM, "alice", A1, 1, &[i])
                .await
                .unwrap()
                .unwrap();
        }
    }
    // Put the log back the way schema version 5 kept it: keyed by (conversation, seq).
    {
        let c = rusqlite::Connection::open(dir.path().join("sotto.db")).unwrap();
        c.execute_batch(
            "ALTER TABLE log DROP COLUMN expires_at;
             ALTER TABLE conversations DROP COLUMN expiry_secs;",
        )
        .unwrap();
        c.execute_batch(LOG_AS_IN_SCHEMA_5).unwrap();
        c.execute_batch("PRAGMA user_version = 5").unwrap();
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    let log = s.log_after(DM, 0, 100).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(log[5].data.0, [4]);
    assert_eq!(
        indexed_and_not(dir.path()),
        (6, 0),
        "the upgrade indexed every row"
    );
    let a = s
        .append_message(DM, "alice", A1, 1, b"next")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.accepted.seq, 7);
    assert_log_windows(&s, 7).await;
}

/// Disappearing messages: a commit sets how long messages live; each later message carries its
/// `expires_at`; `expire` deletes exactly those past it, delivered or not, and never a commit.
async fn expiry(s: &dyn Store) {
    alice_and_bob_at_epoch_1(s).await;
    let before = s
        .append_message(DM, "alice", A1, 1, b"untimed")
        .await
        .unwrap()
        .unwrap()
        .accepted;
    assert_eq!(before.expires_at, None);
    let mut timed = commit(1, A1, &[]);
    timed.expiry_secs = Some(30);
    let c = s.append_commit(DM, timed).await.unwrap();
    assert_eq!(c.expires_at, None, "commits never expire");
    let m = s
        .append_message(DM, "alice", A1, 2, b"timed")
        .await
        .unwrap()
        .unwrap()
        .accepted;
    assert_eq!(m.expires_at, Some(m.accepted_at + 30));
    let log = s.log_after(DM, 0, 100).await.unwrap();
    assert_eq!(log.len(), 4);
    assert_eq!(log[3].expires_at, m.expires_at);
    assert!(log[..3].iter().all(|e| e.expires_at.is_none()));
    let at = m.expires_at.unwrap() as i64;
    assert_eq!(s.expire(at - 1).await.unwrap(), 0);
    assert_eq!(s.expire(at).await.unwrap(), 1);
    let log = s.log_after(DM, 0, 100).await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    // Turning the timer off stops stamping.
    s.append_commit(DM, commit(2, A1, &[])).await.unwrap();
    let m = s
        .append_message(DM, "alice", A1, 3, b"untimed again")
        .await
        .unwrap()
        .unwrap()
        .accepted;
    assert_eq!(m.expires_at, None);
    assert_eq!(s.expire(i64::MAX / 2).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_expires_timed_messages_only() {
    let dir = tempfile::tempdir().unwrap();
    expiry(&SqliteStore::open(dir.path()).unwrap()).await;
    // The same with every write batch indexing its rows: timed rows are then found through
    // `log_expiry`, not the unindexed tail.
    let dir = tempfile::tempdir().unwrap();
    let options = sotto_server::store::sqlite::SqliteOptions {
        log_index_every: Some(1),
        ..Default::default()
    };
    expiry(&SqliteStore::open_with(dir.path(), options).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_expires_timed_messages_only() {
    let Some((store, schema, url)) = postgres_store().await else {
        return;
    };
    expiry(&store).await;
    drop(store);
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_lists_indexed_timed_rows_for_the_purge() {
    let dir = tempfile::tempdir().unwrap();
    let options = sotto_server::store::sqlite::SqliteOptions {
        log_index_every: Some(1),
        ..Default::default()
    };
    let at = {
        let s = SqliteStore::open_with(dir.path(), options).unwrap();
        alice_and_bob_at_epoch_1(&s).await;
        let mut timed = commit(1, A1, &[]);
        timed.expiry_secs = Some(30);
        s.append_commit(DM, timed).await.unwrap();
        let m = s
            .append_message(DM, "alice", A1, 2, b"timed before the upgrade")
            .await
            .unwrap()
            .unwrap()
            .accepted;
        // One more write, so the timed row is indexed.
        s.append_message(DM, "alice", A1, 2, b"and another")
            .await
            .unwrap()
            .unwrap();
        m.expires_at.unwrap() as i64
    };
    // Back to schema 7: a partial index on log instead of log_expiry.
    {
        let c = rusqlite::Connection::open(dir.path().join("sotto.db")).unwrap();
        let indexed: i64 = c
            .query_row("SELECT COUNT(*) FROM log_expiry", [], |r| r.get(0))
            .unwrap();
        assert!(indexed >= 1, "the timed rows were indexed");
        c.execute_batch(
            "DROP TABLE log_expiry;
             CREATE INDEX log_expiring ON log(expires_at) WHERE expires_at IS NOT NULL;
             ALTER TABLE accounts DROP COLUMN locked;
             DROP TABLE deleted_accounts;
             PRAGMA user_version = 7;",
        )
        .unwrap();
    }
    let s = SqliteStore::open_with(dir.path(), options).unwrap();
    assert_eq!(s.expire(at - 1).await.unwrap(), 0);
    assert_eq!(s.expire(at + 1).await.unwrap(), 2);
    let log = s.log_after(DM, 0, 100).await.unwrap();
    assert!(log.iter().all(|e| e.expires_at.is_none()));
}

async fn admin(s: &dyn Store) {
    alice_and_bob_at_epoch_1(s).await;
    s.append_message(DM, "alice", A1, 1, b"hi")
        .await
        .unwrap()
        .unwrap();
    assert!(!s.device_auth(A1).await.unwrap().unwrap().locked);
    assert!(s.set_locked("alice", true).await.unwrap());
    assert!(s.device_auth(A1).await.unwrap().unwrap().locked);
    assert!(!s.device_auth(B1).await.unwrap().unwrap().locked);
    assert!(!s.set_locked("zed", true).await.unwrap(), "no such account");
    let accounts = s.admin_accounts().await.unwrap();
    let names: Vec<_> = accounts.iter().map(|a| a.username.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!((accounts[0].devices, accounts[0].locked), (1, true));
    assert!(accounts[0].last_active.is_some());
    assert_eq!(accounts[1].last_active, None);
    assert!(s.set_locked("alice", false).await.unwrap());
    assert!(!s.device_auth(A1).await.unwrap().unwrap().locked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locks_accounts_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    admin(&SqliteStore::open(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locks_accounts_and_lists_them() {
    let Some((store, schema, url)) = postgres_store().await else {
        return;
    };
    admin(&store).await;
    drop(store);
    drop_schema(&url, &schema).await;
}

/// `sottod admin delete`: bob goes with everything that was his, his conversations stay whole
/// for alice and carol, and his name stays taken.
async fn deletion(s: &dyn Store) {
    alice_and_bob_at_epoch_1(s).await;
    s.create_account("carol", &[3; 32], device(C1), kps(3, 1))
        .await
        .unwrap();
    s.create_group("alice", GROUP).await.unwrap();
    let members = vec![
        (A1.to_owned(), "alice".to_owned()),
        (B1.to_owned(), "bob".to_owned()),
        (C1.to_owned(), "carol".to_owned()),
    ];
    s.append_commit(
        GROUP,
        NewCommit {
            members,
            ..commit(0, A1, &[B1, C1])
        },
    )
    .await
    .unwrap();
    s.append_message(GROUP, "bob", B1, 1, b"from bob")
        .await
        .unwrap()
        .unwrap();
    s.create_link(&"b".repeat(64), "bob", B1, b"sealed", i64::MAX / 2)
        .await
        .unwrap();
    assert_eq!(s.inbox(B1).await.unwrap().len(), 2, "two welcomes");

    assert_eq!(s.delete_account("zed").await.unwrap(), None);
    let gone = s.delete_account("bob").await.unwrap().unwrap();
    assert_eq!(gone.devices, [B1]);
    assert_eq!(gone.conversations, [GROUP, DM]);
    assert_eq!(s.delete_account("bob").await.unwrap(), None, "once");

    // Everything of his is gone.
    assert!(s.account("bob").await.unwrap().is_none());
    assert!(s.device_auth(B1).await.unwrap().is_none());
    assert!(s.inbox(B1).await.unwrap().is_empty());
    assert_eq!(s.key_package_count(B1, PQ).await.unwrap(), 0);
    assert!(s.fetch_link(&"b".repeat(64), 1).await.unwrap().is_none());
    assert!(s.membership(GROUP, "bob", B1).await.unwrap().is_none());
    let names: Vec<String> = s
        .admin_accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.username)
        .collect();
    assert_eq!(names, ["alice", "carol"]);
    // His name stays taken: nobody else can be "bob" to the people who knew him.
    assert!(matches!(
        s.create_account("bob", &[9; 32], device(B9), kps(9, 1))
            .await,
        Err(StoreError::UsernameTaken)
    ));
    assert!(s.device_auth(B9).await.unwrap().is_none());

    // His conversations go on for the others, with him departed until they remove his devices.
    for id in [GROUP, DM] {
        let c = s.conversation(id).await.unwrap().unwrap();
        assert!(!c.members.iter().any(|m| m == "bob"), "{id}");
        assert_eq!(c.departed, ["bob"], "{id}");
    }
    assert_eq!(
        s.conversation(GROUP).await.unwrap().unwrap().members,
        ["alice", "carol"]
    );
    let mut wake = s.wake_list(GROUP).await.unwrap();
    wake.sort();
    assert!(wake.contains(&C1.to_owned()));
    let after = s
        .append_message(GROUP, "carol", C1, 1, b"still here")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.accepted.seq, 3);
    let log = s.log_after(GROUP, 0, 10).await.unwrap();
    assert_eq!(
        log.len(),
        3,
        "bob's message stays for those who have not read it"
    );
    // Carol's commit removing bob's devices clears him from the group.
    let removal = NewCommit {
        members: vec![
            (A1.to_owned(), "alice".to_owned()),
            (C1.to_owned(), "carol".to_owned()),
        ],
        ..commit(1, C1, &[])
    };
    s.append_commit(GROUP, removal).await.unwrap();
    assert!(s
        .conversation(GROUP)
        .await
        .unwrap()
        .unwrap()
        .departed
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deletes_accounts_and_keeps_their_conversations_whole() {
    let dir = tempfile::tempdir().unwrap();
    deletion(&SqliteStore::open(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deletes_accounts_and_keeps_their_conversations_whole() {
    let Some((store, schema, url)) = postgres_store().await else {
        return;
    };
    deletion(&store).await;
    drop(store);
    drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_id_in_the_database_is_refused_not_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path()).unwrap();
        alice_and_bob_at_epoch_1(&s).await;
    }
    // Changed behind the server's back: a member name no registration could have written.
    {
        let c = rusqlite::Connection::open(dir.path().join("sotto.db")).unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys = OFF;
             UPDATE conversation_members SET username = 'Not A Name' WHERE username = 'bob';",
        )
        .unwrap();
    }
    let s = SqliteStore::open(dir.path()).unwrap();
    match s.conversation(DM).await {
        Err(StoreError::Backend(m)) => {
            assert!(m.contains("invalid username"), "{m}");
            assert!(
                !m.contains("Not A Name"),
                "the bad value is not echoed: {m}"
            );
        }
        other => panic!("served a malformed member: {other:?}"),
    }
    // What was not changed is still served.
    assert_eq!(s.log_after(DM, 0, 10).await.unwrap().len(), 1);
}
