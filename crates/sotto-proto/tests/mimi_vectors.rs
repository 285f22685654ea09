//! The MIMI content examples of draft-ietf-mimi-content (copied unchanged from
//! `shared/test-vectors/mimi-content` into `tests/vectors/`): every one decodes, re-encodes byte
//! for byte, and reproduces the message id its `.edn` names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use sotto_proto::cbor::Dec;
use sotto_proto::mimi::{DerivedValues, MimiContent, MimiId};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/mimi-content")
}

/// The id in an `.edn`'s header comment: `# message ID = h'<32 hex>` then `#   <32 hex>'`.
fn expected_id(edn: &str) -> Option<[u8; 32]> {
    let start = edn.find("message ID = h'")? + "message ID = h'".len();
    let hex: String = edn[start..]
        .chars()
        .take_while(|c| *c != '\'')
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn uri(m: &MimiContent, key: i64) -> String {
    let v = m.extension(key).expect("URI extension");
    Dec::new(v).text(1024, "uri").unwrap().to_owned()
}

#[test]
fn every_example_decodes_re_encodes_and_reproduces_its_id() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".cbor").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 15, "{names:?}");
    let mut ids = 0;
    for name in &names {
        let cbor = std::fs::read(dir().join(format!("{name}.cbor"))).unwrap();
        let edn = std::fs::read_to_string(dir().join(format!("{name}.edn"))).unwrap();
        if name == "implied-original" {
            let v = DerivedValues::from_bytes(&cbor).unwrap();
            assert_eq!(v.to_bytes(), cbor, "{name} re-encodes");
            assert_eq!(v.hub_accepted_ms, 1_644_387_225_019);
            assert_eq!(v.sender_user_uri, "mimi://example.com/u/alice-smith");
            continue;
        }
        let m = MimiContent::from_bytes(&cbor).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.to_bytes(), cbor, "{name} re-encodes byte for byte");
        let want = expected_id(&edn).unwrap_or_else(|| panic!("{name}: no id in the .edn"));
        let got = MimiId::compute(&uri(&m, 1), &uri(&m, 2), &cbor, &m.salt).unwrap();
        assert_eq!(got, MimiId(want), "{name}'s message id");
        assert_eq!(m.id(&uri(&m, 1), &uri(&m, 2)).unwrap(), got);
        ids += 1;
    }
    assert_eq!(ids, 14);
}

#[test]
fn the_examples_refer_to_each_other_by_id() {
    let load = |n: &str| {
        MimiContent::from_bytes(&std::fs::read(dir().join(format!("{n}.cbor"))).unwrap()).unwrap()
    };
    let id_of = |m: &MimiContent| m.id(&uri(m, 1), &uri(m, 2)).unwrap();
    let original = load("original");
    let reply = load("reply");
    let reaction = load("reaction");
    assert_eq!(reply.in_reply_to, Some(id_of(&original)));
    assert_eq!(load("edit").replaces, Some(id_of(&reply)));
    assert_eq!(load("delete").replaces, Some(id_of(&reply)));
    assert_eq!(reaction.in_reply_to, Some(id_of(&original)));
    assert_eq!(load("unlike").replaces, Some(id_of(&reaction)));
}

#[test]
fn a_changed_byte_is_refused_or_changes_the_id() {
    let cbor = std::fs::read(dir().join("original.cbor")).unwrap();
    let m = MimiContent::from_bytes(&cbor).unwrap();
    let id = m.id(&uri(&m, 1), &uri(&m, 2)).unwrap();
    for i in 0..cbor.len() {
        let mut b = cbor.clone();
        b[i] ^= 0x01;
        if let Ok(m2) = MimiContent::from_bytes(&b) {
            assert_eq!(m2.to_bytes(), b, "byte {i}: still deterministic");
            let id2 = MimiId::compute(
                "mimi://example.com/u/alice-smith",
                "mimi://example.com/r/engineering_team",
                &b,
                &m2.salt,
            )
            .unwrap();
            assert_ne!(id2, id, "byte {i}");
        }
    }
}
