//! The engine stays without IO: none of the runtime, network or disk crates is among its normal
//! dependencies, natively or for the browser build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

const FORBIDDEN: &[&str] = &[
    "tokio",
    "reqwest",
    "rusqlite",
    "tokio-tungstenite",
    "tungstenite",
    "hyper",
    "mio",
    "libsqlite3-sys",
];

fn tree(extra: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "-p",
            "sotto-engine",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn no_io_crates_among_the_engines_dependencies() {
    for extra in [
        &[][..],
        &["--target", "wasm32-unknown-unknown", "--features", "js"][..],
    ] {
        let crates = tree(extra);
        assert!(
            crates.iter().any(|c| c == "openmls"),
            "the tree lists openmls: {crates:?}"
        );
        for f in FORBIDDEN {
            assert!(
                !crates.iter().any(|c| c == f),
                "sotto-engine depends on {f} ({extra:?})"
            );
        }
    }
}
