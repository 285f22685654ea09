//! One DM round trip over loopback, as the CLI does it: `send` (which first syncs the sender) and the
//! recipient's `sync`, against a real sottod (in-process, real socket, SQLite with fsync).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use sotto_client::Client;
use sotto_server::{AppState, Config, SqliteStore};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = rt.block_on(async {
        let store = SqliteStore::open(&dir.path().join("server")).unwrap();
        let (state, stop) = AppState::single_node(Arc::new(store), Config::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sotto_server::serve(
            listener,
            state,
            stop,
            std::future::pending(),
        ));
        url
    });
    let a = Client::open(&dir.path().join("a"), Some(&url)).unwrap();
    let b = Client::open(&dir.path().join("b"), Some(&url)).unwrap();
    rt.block_on(async {
        a.account().register("alice").await.unwrap();
        b.account().register("bob").await.unwrap();
        a.dm("bob").send("warm up").await.unwrap();
        b.sync().await.unwrap();
        b.take_unshown().unwrap();
    });
    let text = "x".repeat(100);
    let mut g = c.benchmark_group("sdk_roundtrip");
    g.sample_size(30);
    g.bench_function("send_then_sync_100B", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                a.dm("bob").send(&text).await.unwrap();
                b.sync().await.unwrap();
                assert_eq!(b.take_unshown().unwrap().len(), 1);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
