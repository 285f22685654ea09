//! Files in messages, end to end: real clients (SDK, SQLite stores) against a real sottod on a
//! real socket. Round trips at the segment edges, previews, resumes after a killed upload and a
//! killed download, tampered blobs refused with nothing written, unsend taking the blob with it,
//! quotas, orphans and retention swept, and the lingering close that lets a refusal reach a
//! client that is still sending.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use sotto_client::{Client, FileToSend, Progress};
use sotto_server::Config;
use support::{files, http, registered, token_of, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn to_send(path: &Path, caption: Option<&str>) -> FileToSend {
    FileToSend {
        path: path.to_owned(),
        caption: caption.map(str::to_owned),
        ..FileToSend::default()
    }
}

fn quiet() -> impl FnMut(Progress) {
    |_| {}
}

/// A progress callback that fires the returned receiver once a transfer passes `num/den` of its
/// total: the test then drops the transfer, as a killed process drops its connection.
fn cutter(num: u64, den: u64) -> (impl FnMut(Progress), tokio::sync::oneshot::Receiver<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let f = move |p: Progress| {
        if p.done > p.total * num / den {
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
        }
    };
    (f, rx)
}

/// The one stored piece of message `id`'s blob (as `reader` knows it) in the server's data dir
/// (a small file's upload is one PATCH, so one piece).
fn blob_file(server: &Server, reader: &Client, id: &str) -> PathBuf {
    let (_, rec) = reader.engine().attachment(id).unwrap().unwrap();
    let dir = server.data_dir.join("blobs/part").join(rec.blob);
    let pieces: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pieces.len(), 1, "{pieces:?}");
    pieces[0].clone()
}

async fn pair(dir: &Path, config: Config) -> (Server, Client, Client) {
    let server = Server::start_with(&dir.join("server"), "127.0.0.1:0", config).await;
    let a = registered(&dir.join("a"), &server.url, "alice").await;
    let b = registered(&dir.join("b"), &server.url, "bob").await;
    (server, a, b)
}

#[tokio::test]
async fn files_round_trip_at_the_segment_edges_with_captions_and_previews() {
    let dir = tempfile::tempdir().unwrap();
    let (server, a, b) = pair(dir.path(), Config::default()).await;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let seg = sotto_proto::attachment::SEGMENT;
    let sizes = [0, 1, seg - 1, seg, seg + 1, 10_000_000];
    let mut sent = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let bytes = pattern(*n, i as u8);
        let path = write_file(&work, &format!("f{i}.bin"), &bytes);
        let caption = (i % 2 == 0).then(|| format!("file number {i}"));
        let (m, _) = a
            .dm("bob")
            .send_file(&to_send(&path, caption.as_deref()), &mut quiet())
            .await
            .unwrap();
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].size, *n as u64);
        assert_eq!(m.text, caption.clone().unwrap_or_default());
        sent.push((m.id, bytes, caption));
    }
    // An image gets a preview inside the message.
    let img = image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let img_path = work.join("cat.png");
    img.save(&img_path).unwrap();
    let (pic, _) = a
        .dm("bob")
        .send_file(&to_send(&img_path, Some("the cat")), &mut quiet())
        .await
        .unwrap();

    b.sync().await.unwrap();
    let got = b.take_unshown().unwrap();
    assert_eq!(got.len(), sizes.len() + 1);
    for (m, (id, bytes, caption)) in got.iter().zip(&sent) {
        assert_eq!(&m.id, id);
        assert_eq!(m.text, caption.clone().unwrap_or_default());
        let f = &m.attachments[0];
        assert_eq!(f.size, bytes.len() as u64);
        assert_eq!(f.content_type, "application/octet-stream");
        assert!(!f.downloaded);
        assert!(f.preview.is_none());
    }
    let shown = got.last().unwrap();
    assert_eq!(shown.id, pic.id);
    let f = &shown.attachments[0];
    assert_eq!(
        (f.name.as_str(), f.content_type.as_str()),
        ("cat.png", "image/png")
    );
    let preview = f.preview.as_ref().expect("a preview of the image");
    assert_eq!(preview.content_type, "image/jpeg");
    let thumb = image::load_from_memory(&preview.data.0).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (96, 72));
    assert!(preview.data.0.len() <= sotto_proto::content::MAX_PREVIEW_BYTES);

    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    for (id, bytes, _) in &sent {
        let out = downloads.join(format!("{id}.bin"));
        let saved = b.download(id, Some(&out), &mut quiet()).await.unwrap();
        assert_eq!(saved, out);
        assert_eq!(std::fs::read(&out).unwrap(), *bytes, "{id}");
        // Never overwritten.
        let again = b.download(id, Some(&out), &mut quiet()).await.unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }
    // Into a directory: under the sender's name for it.
    let saved = b
        .download(&pic.id, Some(&downloads), &mut quiet())
        .await
        .unwrap();
    assert_eq!(saved, downloads.join("cat.png"));
    assert_eq!(
        image::open(&saved).unwrap().to_rgb8().into_raw(),
        img.into_raw()
    );
    let history = b.dm("alice").history().unwrap();
    assert_eq!(history.len(), sizes.len() + 1);
    assert!(history.iter().all(|m| m.attachments[0].downloaded));
    // The sender's own history shows its files (not downloaded: it has the originals).
    let mine = a.dm("bob").history().unwrap();
    assert_eq!(mine.len(), sizes.len() + 1);
    assert!(mine
        .iter()
        .all(|m| m.outgoing && !m.attachments[0].downloaded));
    // A message without a file has nothing to download.
    let (text, _) = a.dm("bob").send("just text").await.unwrap();
    b.sync().await.unwrap();
    let e = b.download(&text.id, None, &mut quiet()).await.unwrap_err();
    assert!(e.to_string().contains("no file"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn a_killed_upload_and_a_killed_download_resume_where_they_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (server, a, b) = pair(dir.path(), Config::default()).await;
    let bytes = pattern(30 * 1024 * 1024, 7);
    let path = write_file(dir.path(), "video.bin", &bytes);
    let file = to_send(&path, Some("the long one"));

    // Killed once the server holds a third of it: the future is dropped mid-transfer, as a
    // killed process drops its connection.
    let (mut first, cut_rx) = cutter(1, 3);
    tokio::select! {
        r = a.dm("bob").send_file(&file, &mut first) => panic!("not cut: {r:?}"),
        _ = cut_rx => {}
    }
    let mut starts = Vec::new();
    let (m, _) = a
        .dm("bob")
        .send_file(&file, &mut |p: Progress| starts.push(p))
        .await
        .unwrap();
    let resumed = starts[0].resumed_from;
    let total = starts[0].total;
    assert!(
        resumed > total / 3 && resumed < total,
        "{resumed} of {total}"
    );
    assert_eq!(starts.last().unwrap().done, total);
    // Nothing of the upload is left for a next run.
    let uploads = dir.path().join("a/uploads");
    assert_eq!(std::fs::read_dir(&uploads).map_or(0, |d| d.count()), 0);

    b.sync().await.unwrap();
    let out = dir.path().join("got.bin");
    let (mut first, cut_rx) = cutter(2, 3);
    tokio::select! {
        r = b.download(&m.id, Some(&out), &mut first) => panic!("not cut: {r:?}"),
        _ = cut_rx => {}
    }
    assert!(
        !out.exists(),
        "nothing at the destination before it verified"
    );
    // The dropped download's decrypting thread writes what it was handed, then stops (a killed
    // process would just stop): wait until the partial file no longer grows.
    let partial = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("got.bin.") && n.ends_with(".sotto-tmp")
        })
        .expect("a partial download");
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = std::fs::metadata(&partial).unwrap().len();
        if now == last {
            break;
        }
        last = now;
    }
    // What a cut-off run kept is checked too: changed, the resume is refused and nothing stays.
    let kept = std::fs::read(&partial).unwrap();
    let mut changed = kept.clone();
    changed[1000] ^= 1;
    std::fs::write(&partial, &changed).unwrap();
    let e = b
        .download(&m.id, Some(&out), &mut quiet())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not verify"), "{e}");
    assert!(!partial.exists() && !out.exists());
    std::fs::write(&partial, &kept).unwrap();
    let mut starts = Vec::new();
    b.download(&m.id, Some(&out), &mut |p: Progress| starts.push(p))
        .await
        .unwrap();
    assert!(
        starts[0].resumed_from > total / 3 && starts[0].resumed_from < total,
        "{:?}",
        starts[0]
    );
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".sotto-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A file changed after its upload began starts over with a clear error, not a bad blob.
    let (mut first, cut_rx) = cutter(1, 3);
    let other = write_file(dir.path(), "other.bin", &pattern(20 * 1024 * 1024, 9));
    let f2 = to_send(&other, None);
    tokio::select! {
        r = a.dm("bob").send_file(&f2, &mut first) => panic!("not cut: {r:?}"),
        _ = cut_rx => {}
    }
    let mtime = std::fs::metadata(&other).unwrap().modified().unwrap();
    let changed = pattern(20 * 1024 * 1024, 10);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&other)
        .unwrap();
    std::io::Write::write_all(&mut &f, &changed).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let e = a.dm("bob").send_file(&f2, &mut quiet()).await.unwrap_err();
    assert!(e.to_string().contains("changed"), "{e}");
    let (m2, _) = a.dm("bob").send_file(&f2, &mut quiet()).await.unwrap();
    b.sync().await.unwrap();
    let out2 = dir.path().join("got2.bin");
    b.download(&m2.id, Some(&out2), &mut quiet()).await.unwrap();
    assert_eq!(std::fs::read(&out2).unwrap(), changed);
    server.stop().await;
}

#[tokio::test]
async fn a_tampered_blob_is_refused_with_a_clear_error_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let (server, a, b) = pair(dir.path(), Config::default()).await;
    let bytes = pattern(300 * 1024, 3);
    let path = write_file(dir.path(), "doc.bin", &bytes);
    let (m, _) = a
        .dm("bob")
        .send_file(&to_send(&path, None), &mut quiet())
        .await
        .unwrap();
    b.sync().await.unwrap();
    let stored = blob_file(&server, &b, &m.id);
    let original = std::fs::read(&stored).unwrap();
    let seg = sotto_proto::attachment::SEGMENT + sotto_proto::attachment::TAG;
    let header = sotto_proto::attachment::HEADER_LEN;
    let mut flipped = original.clone();
    flipped[header + seg + 100] ^= 1;
    let mut swapped = original.clone();
    swapped[header..header + 2 * seg].rotate_left(seg);
    let mut header_changed = original.clone();
    header_changed[13] ^= 0x80;
    let out = dir.path().join("out.bin");
    for (what, blob, says) in [
        ("a byte flipped", flipped, "segment 1"),
        ("two segments swapped", swapped, "segment 0"),
        ("the header changed", header_changed, "key"),
    ] {
        std::fs::write(&stored, &blob).unwrap();
        let e = b
            .download(&m.id, Some(&out), &mut quiet())
            .await
            .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("did not verify") && shown.contains(says),
            "{what}: {shown}"
        );
        assert!(!out.exists(), "{what}: something was written");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("out.bin"))
            .collect();
        assert!(left.is_empty(), "{what}: {left:?}");
    }
    // The tail cut: the download ends early, is refused, and writes nothing.
    std::fs::write(&stored, &original[..original.len() - 100]).unwrap();
    let e = b
        .download(&m.id, Some(&out), &mut quiet())
        .await
        .unwrap_err();
    assert!(!out.exists(), "cut tail: something was written ({e})");
    // Restored, the same download (resuming what it kept) verifies.
    std::fs::write(&stored, &original).unwrap();
    b.download(&m.id, Some(&out), &mut quiet()).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    server.stop().await;
}

#[tokio::test]
async fn unsend_takes_the_file_with_it_and_no_plaintext_reaches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, a, b) = pair(dir.path(), Config::default()).await;
    let c = registered(&dir.path().join("c"), &server.url, "carol").await;
    let marker = b"SOTTO-PLAINTEXT-MARKER-";
    let bytes: Vec<u8> = marker
        .iter()
        .cycle()
        .take(2 * 1024 * 1024)
        .copied()
        .collect();
    let path = write_file(dir.path(), "secret.txt", &bytes);
    let (m, _) = a
        .dm("bob")
        .send_file(&to_send(&path, Some("SOTTO-CAPTION-MARKER")), &mut quiet())
        .await
        .unwrap();
    b.sync().await.unwrap();
    let (_, rec) = b.engine().attachment(&m.id).unwrap().unwrap();
    assert_eq!(rec.content_type, "text/plain");
    for (name, content) in files(&server.data_dir) {
        for needle in [&marker[..], b"SOTTO-CAPTION-MARKER", b"secret.txt"] {
            assert!(
                !content.windows(needle.len()).any(|w| w == needle),
                "{name} holds {}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // A non-member device cannot fetch it, even with the id.
    let url = format!("{}/v1/blobs/{}", server.url, rec.blob);
    let h = http();
    let as_carol = h
        .get(&url)
        .bearer_auth(token_of(&dir.path().join("c")))
        .send()
        .await
        .unwrap();
    assert_eq!(as_carol.status(), 404);
    // Nor name it in a message of its own: the server refuses a blob that is not the sender's.
    c.dm("alice").send("hi").await.unwrap();
    let theirs = sotto_proto::Body::File {
        file: Box::new(sotto_proto::FileRef {
            blob: rec.blob.clone(),
            key: sotto_proto::attachment::FileKey::random(),
            size: 1,
            hash: [0; 32],
            content_type: "text/plain".into(),
            name: "x.txt".into(),
        }),
        caption: None,
        reply_to: None,
        preview: None,
    };
    let conv = c.engine().dm_id("alice").unwrap().unwrap();
    let e = c
        .run(c.engine().dangerous_send_unchecked(&conv, theirs))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a finished upload"), "{e}");

    // Unsent: gone from the server, and from every device's record.
    a.act(&m.id, sotto_client::Action::Unsend).await.unwrap();
    assert!(!server.data_dir.join("blobs/part").join(&rec.blob).exists());
    assert!(!server.data_dir.join("blobs/meta").join(&rec.blob).exists());
    let as_bob = h
        .get(&url)
        .bearer_auth(token_of(&dir.path().join("b")))
        .send()
        .await
        .unwrap();
    assert_eq!(as_bob.status(), 404);
    b.sync().await.unwrap();
    let e = b.download(&m.id, None, &mut quiet()).await.unwrap_err();
    assert!(e.to_string().contains("no file"), "{e}");
    let h = b.dm("alice").history().unwrap();
    assert!(h[0].deleted && h[0].attachments.is_empty() && h[0].text.is_none());
    server.stop().await;
}

#[tokio::test]
async fn quotas_orphans_and_retention_bound_what_the_server_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        prune_interval_secs: 1,
        ..Config::default()
    };
    let blobs = sotto_server::blobs::Blobs::local(
        &dir.path().join("server/blobs"),
        sotto_server::blobs::DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap()
    .with_account_quota(1024 * 1024);
    let server = Server::start_with_blobs(&dir.path().join("server"), config, blobs).await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let _b = registered(&dir.path().join("b"), &server.url, "bob").await;
    let one = write_file(dir.path(), "one.bin", &pattern(600 * 1024, 1));
    let two = write_file(dir.path(), "two.bin", &pattern(600 * 1024, 2));
    let (m, _) = a
        .dm("bob")
        .send_file(&to_send(&one, None), &mut quiet())
        .await
        .unwrap();
    // Over quota: refused before any byte of the file is sent.
    let e = a
        .dm("bob")
        .send_file(&to_send(&two, None), &mut quiet())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("over quota"), "{e}");

    // An upload no message names: an orphan, removed a day after it began.
    let conv = a.engine().dm_id("bob").unwrap().unwrap();
    let h = http();
    let made = h
        .post(format!("{}/v1/blobs", server.url))
        .bearer_auth(token_of(&dir.path().join("a")))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "0")
        .header("upload-metadata", {
            use base64::Engine as _;
            format!(
                "conversation {}",
                base64::engine::general_purpose::STANDARD.encode(&conv)
            )
        })
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let orphan = made.headers()["location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let meta_dir = dir.path().join("server/blobs/meta");
    let sent_blob = a.engine().attachment(&m.id).unwrap().unwrap().1.blob;
    // Time passes for a blob: its meta's field, and the meta file's own time with it (written
    // when that time started).
    let age = |id: &str, field: &str, secs: i64| {
        let p = meta_dir.join(id);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v[field] = serde_json::json!(v[field].as_i64().unwrap() - secs);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(secs as u64);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(then)
            .unwrap();
    };
    // Both began 25 hours ago; only the orphan goes.
    age(&orphan, "created_at", 25 * 3600);
    age(&sent_blob, "created_at", 25 * 3600);
    let gone = |id: &str| !meta_dir.join(id).exists();
    for _ in 0..50 {
        if gone(&orphan) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone(&orphan), "the orphan is still there");
    assert!(!gone(&sent_blob), "a sent file went as an orphan");
    // The sent one goes with its message at the log's retention (30 days by default).
    age(&sent_blob, "sent_at", 31 * 24 * 3600);
    for _ in 0..50 {
        if gone(&sent_blob) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        gone(&sent_blob),
        "the file outlived its message's retention"
    );
    assert!(!dir
        .path()
        .join("server/blobs/part")
        .join(&sent_blob)
        .exists());
    // And the quota counts it no more.
    a.dm("bob")
        .send_file(&to_send(&two, None), &mut quiet())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_refused_upload_reads_the_body_so_the_client_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let id = "ab".repeat(32);
    let body = vec![7u8; 6 * 1024 * 1024];
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "PATCH /v1/blobs/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\n\
         Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The whole body goes (a client that does not wait for 100-continue), then the answer is
    // read: a 401, not a reset connection.
    s.write_all(&body).await.expect("the server kept reading");
    let mut answer = vec![0u8; 4096];
    let n = s.read(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_uploads_cannot_all_pass_one_quota() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = sotto_server::blobs::Blobs::local(
        &dir.path().join("server/blobs"),
        sotto_server::blobs::DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap()
    .with_account_quota(1024 * 1024);
    let server =
        Server::start_with_blobs(&dir.path().join("server"), Config::default(), blobs).await;
    let a = registered(&dir.path().join("a"), &server.url, "alice").await;
    let _b = registered(&dir.path().join("b"), &server.url, "bob").await;
    a.dm("bob").send("hi").await.unwrap();
    let conv = a.engine().dm_id("bob").unwrap().unwrap();
    let token = token_of(&dir.path().join("a"));
    let meta = {
        use base64::Engine as _;
        format!(
            "conversation {}",
            base64::engine::general_purpose::STANDARD.encode(&conv)
        )
    };
    let h = http();
    // Eight creations of 400,000 bytes at once: two fit in 1 MiB, three do not.
    let tries = (0..8).map(|_| {
        h.post(format!("{}/v1/blobs", server.url))
            .bearer_auth(&token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "400000")
            .header("upload-metadata", meta.clone())
            .send()
    });
    let statuses: Vec<u16> = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let made = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 413).count();
    assert_eq!((made, refused), (2, 6), "{statuses:?}");
    server.stop().await;
}
