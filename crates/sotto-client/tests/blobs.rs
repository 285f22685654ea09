//! Attachment blobs against a real sottod over real sockets: a file encrypted with
//! `sotto_proto::attachment` is uploaded resumably (tus), survives a connection killed mid-upload,
//! and is downloaded whole and by range by member devices only. No byte of the file's plaintext
//! reaches the server's files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use sotto_proto::attachment::{self, FileKey};
use support::{files, http, registered, token_of, Server};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_blob_uploads_resumably_and_downloads_to_member_devices_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server")).await;
    let home = |n: &str| dir.path().join(n);
    let a = registered(&home("a"), &server.url, "alice").await;
    let b = registered(&home("b"), &server.url, "bob").await;
    let _c = registered(&home("c"), &server.url, "carol").await;
    a.dm("bob").send("a file follows").await.unwrap();
    b.sync().await.unwrap();
    let dm = a.engine().dm_id("bob").unwrap().unwrap();
    let (ta, tb, tc) = (
        token_of(&home("a")),
        token_of(&home("b")),
        token_of(&home("c")),
    );
    let h = http();
    let url = |p: &str| format!("{}{p}", server.url);

    // A file of a marker pattern, encrypted on the device.
    let marker = b"SOTTO-PLAINTEXT-MARKER-";
    let file: Vec<u8> = marker.iter().cycle().take(300 * 1024).copied().collect();
    let key = FileKey::random();
    let (blob, hash) = attachment::encrypt(&key, &file).unwrap();
    let len = blob.len() as u64;

    // The limit is announced before any byte is sent, and enforced at creation.
    let o = h
        .request(reqwest::Method::OPTIONS, url("/v1/blobs"))
        .send()
        .await
        .unwrap();
    // The largest upload is the blob of the largest file: padded, with its tags.
    let max_blob = attachment::blob_len(100 * 1024 * 1024);
    assert!(max_blob > 100 * 1024 * 1024);
    assert_eq!(o.headers()["tus-max-size"], max_blob.to_string().as_str());
    let doc: serde_json::Value = h
        .get(url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["paths"]["/v1/blobs"]["post"]["x-max-file-bytes"],
        104857600
    );
    let meta = format!(
        "conversation {}",
        base64::engine::general_purpose::STANDARD.encode(&dm)
    );
    let create = |token: &str, length: u64| {
        h.post(url("/v1/blobs"))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", length.to_string())
            .header("upload-metadata", meta.clone())
            .send()
    };
    assert_eq!(
        doc["paths"]["/v1/blobs"]["post"]["x-max-upload-bytes"],
        max_blob
    );
    let big = create(&ta, max_blob + 1).await.unwrap();
    assert_eq!(big.status(), 413);
    let e: serde_json::Value = big.json().await.unwrap();
    assert_eq!(e["code"], "payload_too_large");
    // Only a member device of the conversation may upload for it.
    assert_eq!(create(&tc, len).await.unwrap().status(), 404);
    let made = create(&ta, len).await.unwrap();
    assert_eq!(made.status(), 201);
    let loc = made.headers()["location"].to_str().unwrap().to_owned();
    let id = loc.trim_start_matches("/v1/blobs/").to_owned();
    assert_eq!(id.len(), 64);

    let patch = |token: &str, offset: u64, bytes: Vec<u8>| {
        h.patch(url(&loc))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(bytes)
            .send()
    };
    let offset_of = || async {
        let r = h
            .head(url(&loc))
            .bearer_auth(&ta)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let first = 100_000u64;
    let r = patch(&ta, 0, blob[..first as usize].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], first.to_string().as_str());

    // The next piece's connection is killed halfway: nothing of it counts, and the upload
    // resumes from where the last whole piece ended.
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ta}\r\ntus-resumable: 1.0.0\r\nupload-offset: {first}\r\ncontent-type: application/offset+octet-stream\r\ncontent-length: 150000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&blob[first as usize..first as usize + 50_000])
        .await
        .unwrap();
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(offset_of().await, first);
    // A piece at another offset than the upload's is refused.
    assert_eq!(
        patch(&ta, first + 1, vec![0; 10]).await.unwrap().status(),
        409
    );
    // Another device may not append, nor see the upload.
    assert_eq!(
        patch(&tb, first, blob[first as usize..].to_vec())
            .await
            .unwrap()
            .status(),
        404
    );
    let r = patch(&ta, first, blob[first as usize..].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], len.to_string().as_str());

    // Bob downloads it whole and it decrypts to the file; one segment by range verifies alone.
    let got = h.get(url(&loc)).bearer_auth(&tb).send().await.unwrap();
    assert_eq!(got.status(), 200);
    let bytes = got.bytes().await.unwrap();
    assert_eq!(
        attachment::decrypt(&key, file.len() as u64, Some(hash), &bytes).unwrap(),
        file
    );
    let seg = attachment::segment_range(file.len() as u64, 2).unwrap();
    let header = h
        .get(url(&loc))
        .bearer_auth(&tb)
        .header("range", format!("bytes=0-{}", attachment::HEADER_LEN - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 206);
    let header = header.bytes().await.unwrap();
    let part = h
        .get(url(&loc))
        .bearer_auth(&tb)
        .header("range", format!("bytes={}-{}", seg.start, seg.end - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes {}-{}/{len}", seg.start, seg.end - 1).as_str()
    );
    let part = part.bytes().await.unwrap();
    let plain = attachment::open_segment(&key, &header, file.len() as u64, 2, &part).unwrap();
    assert_eq!(
        plain,
        file[2 * attachment::SEGMENT..3 * attachment::SEGMENT]
    );
    let bad_range = h
        .get(url(&loc))
        .bearer_auth(&tb)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_range.status(), 400);

    // Carol is no member: to her the blob does not exist. Without a token: 401.
    assert_eq!(
        h.get(url(&loc))
            .bearer_auth(&tc)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(h.get(url(&loc)).send().await.unwrap().status(), 401);

    // The server's files hold no trace of the plaintext.
    for (_, f) in files(&server.data_dir) {
        assert!(
            !f.windows(marker.len()).any(|w| w == marker),
            "the marker is in the server's files"
        );
    }

    // Only the uploader removes it; then it is gone for everyone.
    let del = |t: &str| {
        h.delete(url(&loc))
            .bearer_auth(t)
            .header("tus-resumable", "1.0.0")
            .send()
    };
    assert_eq!(del(&tb).await.unwrap().status(), 404);
    assert_eq!(del(&ta).await.unwrap().status(), 204);
    assert_eq!(
        h.get(url(&loc))
            .bearer_auth(&tb)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert!(files(&server.data_dir.join("blobs"))
        .iter()
        .all(|(_, f)| f.len() < 1000));
    server.stop().await;
}
