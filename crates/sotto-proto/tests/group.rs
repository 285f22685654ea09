//! Groups: admin rules enforced by members and by the server's public view, forward secrecy on
//! removal, no access to history on joining. Real openmls, in-memory storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use sotto_proto::group::{GroupMetadata, Kind};
use sotto_proto::mls::{
    Changes, Conversation, DeviceKeys, Incoming, MlsError, PendingJoin, ServerGroup, Trust,
    TrustedKeyPackage, ValidKeyPackage, CLASSIC_CIPHERSUITE,
};
use sotto_proto::{AccountIdentity, DeviceId, IdentityPublicKey, Username};

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
    g: Option<Conversation>,
}

fn u(s: &str) -> Username {
    Username::new(s).unwrap()
}

fn kp(d: &Dev, pins: &Pins) -> TrustedKeyPackage {
    let (one, _) = d
        .keys
        .key_packages(&d.p, CLASSIC_CIPHERSUITE, 1, false)
        .unwrap();
    ValidKeyPackage::parse(d.p.crypto(), &one[0])
        .unwrap()
        .verify(pins)
        .unwrap()
}

struct World {
    pins: Pins,
    devs: HashMap<&'static str, Dev>,
    server: ServerGroup,
}

const GID: &[u8] = b"group-under-test";

fn world(names: &[&'static str]) -> World {
    let mut pins = Pins::default();
    let mut devs = HashMap::new();
    for n in names {
        let id = AccountIdentity::generate();
        pins.0.insert(u(n), id.public());
        let keys = DeviceKeys::generate(&id, &u(n), DeviceId::random(), 1);
        devs.insert(
            *n,
            Dev {
                p: OpenMlsRustCrypto::default(),
                keys,
                g: None,
            },
        );
    }
    // names[0] creates the group with the next two as members.
    let meta = GroupMetadata::new("team", u(names[0])).unwrap();
    let kps: Vec<_> = names[1..3].iter().map(|n| kp(&devs[n], &pins)).collect();
    let creator = devs.get_mut(names[0]).unwrap();
    let mut g = Conversation::create(
        &creator.p,
        &creator.keys,
        GID,
        CLASSIC_CIPHERSUITE,
        Some(&meta),
    )
    .unwrap();
    let bundle = g.add_devices(&creator.p, &creator.keys, &kps).unwrap();
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let mut server = ServerGroup::start(
        &crypto,
        bundle.initial_group_info.as_ref().unwrap(),
        GID,
        true,
    )
    .unwrap();
    let effect = server
        .process_commit(&crypto, &bundle.commit, &Kind::Group)
        .unwrap();
    assert_eq!(effect.added.len(), 2);
    g.merge_pending(&creator.p).unwrap();
    let tree = server.ratchet_tree().unwrap();
    creator.g = Some(g);
    for n in &names[1..3] {
        let d = devs.get_mut(n).unwrap();
        d.g = Some(
            PendingJoin::stage(&d.p, bundle.welcome.as_ref().unwrap(), Some(&tree))
                .unwrap()
                .accept(&d.p, &pins)
                .unwrap(),
        );
    }
    World { pins, devs, server }
}

impl World {
    /// `who` commits `changes`; the server and every other member with a group process it.
    /// Returns the server's verdict; members must agree with it.
    fn commit(
        &mut self,
        who: &str,
        f: impl FnOnce(
            &Pins,
            &HashMap<&'static str, Dev>,
        ) -> (Vec<TrustedKeyPackage>, Vec<u32>, Option<GroupMetadata>),
    ) -> Result<sotto_proto::mls::CommitBundle, MlsError> {
        let (add, remove, meta) = f(&self.pins, &self.devs);
        let d = self.devs.get_mut(who).unwrap();
        let g = d.g.as_mut().unwrap();
        let bundle = g
            .commit(
                &d.p,
                &d.keys,
                Changes {
                    add: &add,
                    remove,
                    metadata: meta.as_ref(),
                    self_update: false,
                },
            )
            .unwrap();
        let crypto = openmls_rust_crypto::RustCrypto::default();
        let verdict = self
            .server
            .process_commit(&crypto, &bundle.commit, &Kind::Group);
        for (name, other) in self.devs.iter_mut() {
            if *name == who {
                continue;
            }
            let Some(g) = other.g.as_mut() else { continue };
            let epoch = g.epoch();
            let res = match g.process(&other.p, &bundle.commit) {
                Ok(Incoming::Commit(pending)) => {
                    g.merge_verified(&other.p, pending, &self.pins, &Kind::Group)
                }
                Ok(x) => panic!("unexpected {x:?}"),
                Err(e) => Err(e),
            };
            assert_eq!(
                res.is_ok(),
                verdict.is_ok(),
                "{name} and the server disagree: {res:?} vs {verdict:?}"
            );
            if res.is_err() {
                assert_eq!(g.epoch(), epoch, "{name} merged nothing");
            }
        }
        let d = self.devs.get_mut(who).unwrap();
        let g = d.g.as_mut().unwrap();
        match &verdict {
            Ok(_) => g.merge_pending(&d.p).unwrap(),
            Err(_) => g.clear_pending(&d.p).unwrap(),
        }
        verdict.map(|_| bundle)
    }

    fn send(&mut self, who: &str, text: &str) -> Vec<u8> {
        let d = self.devs.get_mut(who).unwrap();
        let g = d.g.as_mut().unwrap();
        let m = g.compose_text(&d.p, &d.keys, text, 1).unwrap();
        g.encrypt(&d.p, &d.keys, &m).unwrap()
    }

    fn read(&mut self, who: &str, ct: &[u8]) -> Result<String, MlsError> {
        let d = self.devs.get_mut(who).unwrap();
        match d.g.as_mut().unwrap().process(&d.p, ct)? {
            Incoming::Message { content, .. } => match content.body {
                sotto_proto::Body::Text { text, .. } => Ok(text),
                _ => panic!(),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn only_admins_change_membership_and_metadata_members_and_server_agree() {
    let mut w = world(&["alice", "bob", "carol", "dave"]);
    // bob (not an admin) tries to add dave, rename, and remove alice: all refused everywhere.
    let err = w
        .commit("bob", |pins, devs| {
            (vec![kp(&devs["dave"], pins)], vec![], None)
        })
        .unwrap_err();
    assert!(matches!(err, MlsError::Policy(_)), "{err}");
    let meta = w.devs["alice"].g.as_ref().unwrap().metadata().unwrap();
    let renamed = meta.renamed("bob's").unwrap();
    assert!(matches!(
        w.commit("bob", |_, _| (vec![], vec![], Some(renamed))),
        Err(MlsError::Policy(_))
    ));
    assert!(matches!(
        w.commit("bob", |_, _| (vec![], vec![0], None)),
        Err(MlsError::Policy(_))
    ));
    // alice makes bob an admin; now bob's rename goes through and everyone sees it.
    let with_bob = meta.with_admin(&u("bob"), true);
    w.commit("alice", |_, _| (vec![], vec![], Some(with_bob)))
        .unwrap();
    let renamed = meta.with_admin(&u("bob"), true).renamed("renamed").unwrap();
    w.commit("bob", |_, _| (vec![], vec![], Some(renamed)))
        .unwrap();
    for n in ["alice", "bob", "carol"] {
        let m = w.devs[n].g.as_ref().unwrap().metadata().unwrap();
        assert_eq!(m.name, "renamed");
        assert_eq!(m.admins, vec![u("alice"), u("bob")]);
    }
    assert_eq!(w.server.metadata().unwrap().name, "renamed");
    // Making a non-member an admin, or removing every admin, is refused.
    let m = w.server.metadata().unwrap();
    let outsider = m.with_admin(&u("zed"), true);
    assert!(matches!(
        w.commit("alice", |_, _| (vec![], vec![], Some(outsider))),
        Err(MlsError::Policy(_))
    ));
    // alice removes bob's only device while bob stays listed as admin: refused (admin not member).
    let bob_leaf = w.devs["alice"]
        .g
        .as_ref()
        .unwrap()
        .members()
        .iter()
        .find(|m| m.cert.username.as_str() == "bob")
        .unwrap()
        .leaf_index;
    assert!(matches!(
        w.commit("alice", |_, _| (vec![], vec![bob_leaf], None)),
        Err(MlsError::Policy(_))
    ));
    // Dropping him from the admins in the same commit is fine.
    let m = w.server.metadata().unwrap().with_admin(&u("bob"), false);
    w.commit("alice", |_, _| (vec![], vec![bob_leaf], Some(m)))
        .unwrap();
    assert_eq!(w.server.members().len(), 2);
    // Server state survives a snapshot.
    let snap = w.server.snapshot().unwrap();
    let back = ServerGroup::load(&snap, GID).unwrap();
    assert_eq!(back.epoch(), w.server.epoch());
    assert_eq!(back.members().len(), 2);
}

#[test]
fn only_admins_set_a_groups_timer_and_everyone_agrees_on_it() {
    use sotto_proto::group::{Settings, Timer, TimerMode};
    let mut w = world(&["alice", "bob", "carol"]);
    let meta = w.server.metadata().unwrap();
    let hour = Settings {
        timer: Some(Timer::new(3600, TimerMode::AfterRead).unwrap()),
        vanish: false,
    };
    let timed = meta.with_settings(hour).unwrap();
    // bob is no admin: his timer is refused by the server and by every member.
    let t = timed.clone();
    assert!(matches!(
        w.commit("bob", |_, _| (vec![], vec![], Some(t))),
        Err(MlsError::Policy(_))
    ));
    assert_eq!(w.server.settings(), Settings::default());
    w.commit("alice", |_, _| (vec![], vec![], Some(timed)))
        .unwrap();
    assert_eq!(w.server.settings(), hour);
    for n in ["alice", "bob", "carol"] {
        assert_eq!(w.devs[n].g.as_ref().unwrap().settings(), hour, "{n}");
    }
    // Vanish mode is for DMs, and a group cannot take a DM's metadata.
    assert!(meta
        .with_settings(Settings {
            timer: None,
            vanish: true
        })
        .is_err());
    let dm_form = GroupMetadata::dm(Settings::default());
    assert!(matches!(
        w.commit("alice", |_, _| (vec![], vec![], Some(dm_form))),
        Err(MlsError::Policy(_))
    ));
    assert_eq!(w.server.settings(), hour);
}

#[test]
fn removed_member_cannot_read_later_messages_and_new_member_cannot_read_earlier_ones() {
    let mut w = world(&["alice", "bob", "carol", "dave"]);
    let before = w.send("alice", "before dave joined");
    assert_eq!(w.read("carol", &before).unwrap(), "before dave joined");
    // alice removes carol and adds dave in one commit.
    let carol_leaf = w.devs["alice"]
        .g
        .as_ref()
        .unwrap()
        .members()
        .iter()
        .find(|m| m.cert.username.as_str() == "carol")
        .unwrap()
        .leaf_index;
    // carol keeps a copy of her state from before the removal: the attacker's best case.
    let bundle = w
        .commit("alice", |pins, devs| {
            (vec![kp(&devs["dave"], pins)], vec![carol_leaf], None)
        })
        .unwrap();
    let tree = w.server.ratchet_tree().unwrap();
    let dave = w.devs.get_mut("dave").unwrap();
    dave.g = Some(
        PendingJoin::stage(&dave.p, bundle.welcome.as_ref().unwrap(), Some(&tree))
            .unwrap()
            .accept(&dave.p, &w.pins)
            .unwrap(),
    );
    let after = w.send("alice", "after the change");
    assert_eq!(w.read("bob", &after).unwrap(), "after the change");
    assert_eq!(w.read("dave", &after).unwrap(), "after the change");
    // carol processed her removal (the commit went to her too): she is no longer active and
    // cannot decrypt what follows.
    assert!(!w.devs["carol"].g.as_ref().unwrap().is_active());
    assert!(w.read("carol", &after).is_err());
    // dave cannot read what was sent before he joined.
    assert!(w.read("dave", &before).is_err());
}

/// Signs with a raw Ed25519 key (what a modified client would do).
struct RawSigner(ed25519_dalek::SigningKey);
impl openmls_traits::signatures::Signer for RawSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, openmls_traits::signatures::SignerError> {
        use ed25519_dalek::Signer as _;
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }
    fn signature_scheme(&self) -> openmls_traits::types::SignatureScheme {
        openmls_traits::types::SignatureScheme::ED25519
    }
}

#[test]
fn a_member_cannot_swap_its_certificate_in_an_update() {
    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::*;
    let mut w = world(&["alice", "bob", "carol", "dave"]);
    // bob's client, modified: it refreshes its leaf with a certificate claiming to be another
    // account (made with a key of its own), keeping its signature key so it can still sign.
    let bob = w.devs.get_mut("bob").unwrap();
    let cert = bob.keys.certificate().clone();
    let mallory = AccountIdentity::generate();
    let forged = mallory.certify_device(&u("dave"), cert.device_id, &cert.mls_signature_key, 1);
    let signer = RawSigner(
        ed25519_dalek::SigningKey::try_from(bob.keys.dangerous_signing_seed().as_slice()).unwrap(),
    );
    let mut raw = MlsGroup::load(bob.p.storage(), &GroupId::from_slice(GID))
        .unwrap()
        .unwrap();
    let params = LeafNodeParameters::builder()
        .with_credential_with_key(CredentialWithKey {
            credential: BasicCredential::new(forged.to_bytes()).into(),
            signature_key: cert.mls_signature_key.clone().into(),
        })
        .build();
    let bundle = raw.self_update(&bob.p, &signer, params).unwrap();
    let commit = bundle.commit().tls_serialize_detached().unwrap();
    // The server refuses it, and so does every member; nobody's epoch moves.
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let epoch = w.server.epoch();
    assert!(matches!(
        w.server.process_commit(&crypto, &commit, &Kind::Group),
        Err(MlsError::Policy(_))
    ));
    assert_eq!(w.server.epoch(), epoch);
    for n in ["alice", "carol"] {
        let d = w.devs.get_mut(n).unwrap();
        let g = d.g.as_mut().unwrap();
        let Incoming::Commit(pending) = g.process(&d.p, &commit).unwrap() else {
            panic!("not a commit")
        };
        assert!(matches!(
            g.merge_verified(&d.p, pending, &w.pins, &Kind::Group),
            Err(MlsError::Policy(_))
        ));
        assert_eq!(g.epoch(), epoch);
    }
}
