//! Attachment blobs: files encrypted on the sending device (`sotto_proto::attachment`), uploaded
//! resumably and downloaded whole or by byte range. The server never sees a key.
//!
//! Uploads follow tus 1.0 (core, creation, termination) as thin handlers:
//! - `POST /v1/blobs` with `Upload-Length` and `Upload-Metadata: conversation <base64 id>`
//!   creates an upload for a conversation the device is a member of. The size limit is checked
//!   here, before any byte of the file is sent (413), and announced by `OPTIONS /v1/blobs`
//!   (`Tus-Max-Size`) and in the OpenAPI document.
//! - `PATCH /v1/blobs/{id}` with `Upload-Offset` appends; `HEAD` says how much has arrived, so a
//!   client whose connection dropped resumes from there. Each PATCH is stored as one piece once it
//!   has arrived whole, so a dropped PATCH costs that piece (clients send a few MiB at a time).
//! - `DELETE /v1/blobs/{id}` removes an upload or a blob.
//! - `GET /v1/blobs/{id}` serves a finished blob to member devices of its conversation, whole or
//!   one `Range` (the segments of `sotto_proto::attachment` verify on their own).
//!
//! The id is 32 random bytes: a capability as well as a name. A device that is not a member
//! device of the blob's conversation gets 404, as for a blob that does not exist.
//!
//! Storage is an [`ObjectStore`] (the local filesystem under the data dir by default), laid out as
//! `meta/ID` (JSON: conversation, uploader, length), `part/ID/OFFSET` (pieces of an unfinished
//! upload) and `blob/ID`. Nothing is held in memory beyond a bounded buffer per request.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sotto_api::ErrorCode;

use crate::error::ApiError;
use crate::http::{ApiPath as UrlPath, Auth};
use crate::AppState;

/// The default largest file, in bytes (100 MiB, as Signal).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// The most an operator may allow per file (2 GiB).
pub const MAX_FILE_BYTES_CAP: u64 = 2 * 1024 * 1024 * 1024;
const TUS_VERSION: &str = "1.0.0";
/// How much of a request body is buffered before it is written on.
const WRITE_CHUNK: usize = 1024 * 1024;

/// The blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Largest file accepted, in bytes of blob.
    pub max_file_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    conversation: String,
    username: String,
    device: String,
    length: u64,
    created_at: i64,
    complete: bool,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    // The store's errors name paths, and a blob id in a path is a capability: not for the log.
    tracing::warn!(error = %without_ids(&e.to_string()), "blob store failure");
    ApiError::new(
        ErrorCode::Internal,
        "the blob store failed; nothing was changed",
    )
}

fn not_found() -> ApiError {
    ApiError::not_found("no such blob")
}

fn meta_path(id: &str) -> Path {
    Path::from(format!("meta/{id}"))
}

fn part_prefix(id: &str) -> Path {
    Path::from(format!("part/{id}"))
}

fn blob_path(id: &str) -> Path {
    Path::from(format!("blob/{id}"))
}

/// `s` with every run of 64 or more hex digits (a blob id) replaced by `<id>`.
fn without_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        out.push_str(if run.len() >= 64 {
            "<id>"
        } else {
            run.as_str()
        });
        run.clear();
    };
    for c in s.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A blob id (anything else is no blob: 404 without a lookup).
fn check_id(id: &str) -> Result<(), ApiError> {
    if sotto_proto::attachment::is_blob_id(id) {
        Ok(())
    } else {
        Err(not_found())
    }
}

impl Blobs {
    /// Blobs in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, max_file_bytes: u64) -> Self {
        Self {
            store,
            max_file_bytes: max_file_bytes.min(MAX_FILE_BYTES_CAP),
        }
    }

    /// Blobs in files under `dir` (created if missing).
    pub fn local(dir: &std::path::Path, max_file_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(std::io::Error::other)?;
        Ok(Self::new(Arc::new(fs), max_file_bytes))
    }

    /// Blobs in memory (for a server embedded in tests; lost on exit).
    pub fn memory(max_file_bytes: u64) -> Self {
        Self::new(
            Arc::new(object_store::memory::InMemory::new()),
            max_file_bytes,
        )
    }

    async fn meta(&self, id: &str) -> Result<Meta, ApiError> {
        check_id(id)?;
        match self.store.get(&meta_path(id)).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(internal)?;
                serde_json::from_slice(&bytes).map_err(internal)
            }
            Err(object_store::Error::NotFound { .. }) => Err(not_found()),
            Err(e) => Err(internal(e)),
        }
    }

    async fn put_meta(&self, id: &str, m: &Meta) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(m).map_err(internal)?;
        self.store
            .put(&meta_path(id), PutPayload::from(bytes))
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// The pieces of an unfinished upload, in order: (path, offset, size).
    async fn parts(&self, id: &str) -> Result<Vec<(Path, u64, u64)>, ApiError> {
        let mut out = Vec::new();
        let mut list = self.store.list(Some(&part_prefix(id)));
        while let Some(m) = list.next().await {
            let m = m.map_err(internal)?;
            let offset = m
                .location
                .filename()
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| internal("a piece with a bad name"))?;
            out.push((m.location, offset, m.size));
        }
        out.sort_by_key(|p| p.1);
        Ok(out)
    }

    /// How much of an unfinished upload has arrived: the pieces, which must follow each other.
    async fn offset(&self, id: &str) -> Result<u64, ApiError> {
        let mut at = 0;
        for (_, offset, size) in self.parts(id).await? {
            if offset != at {
                return Err(internal("pieces of an upload do not follow each other"));
            }
            at += size;
        }
        Ok(at)
    }

    /// Joins the pieces into the blob, then removes them.
    async fn assemble(&self, id: &str) -> Result<(), ApiError> {
        let parts = self.parts(id).await?;
        let upload = self
            .store
            .put_multipart(&blob_path(id))
            .await
            .map_err(internal)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, WRITE_CHUNK * 5);
        for (path, _, _) in &parts {
            let mut s = self.store.get(path).await.map_err(internal)?.into_stream();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(internal)?;
                w.wait_for_capacity(2).await.map_err(internal)?;
                w.write(&chunk);
            }
        }
        w.finish().await.map_err(internal)?;
        for (path, _, _) in parts {
            self.store.delete(&path).await.map_err(internal)?;
        }
        Ok(())
    }

    /// Removes everything of blob `id`.
    async fn remove(&self, id: &str) -> Result<(), ApiError> {
        for (path, _, _) in self.parts(id).await? {
            self.store.delete(&path).await.map_err(internal)?;
        }
        for p in [blob_path(id), meta_path(id)] {
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(internal(e)),
            }
        }
        Ok(())
    }
}

/// The blob routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/blobs", post(create).options(options))
        .route(
            "/v1/blobs/{id}",
            get(download).head(status).patch(append).delete(terminate),
        )
}

fn tus_headers(h: &mut HeaderMap) {
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn header_u64(h: &HeaderMap, name: &str) -> Result<u64, ApiError> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request(format!("missing or invalid {name} header")))
}

fn check_tus(h: &HeaderMap) -> Result<(), ApiError> {
    if h.get("tus-resumable").and_then(|v| v.to_str().ok()) != Some(TUS_VERSION) {
        return Err(ApiError::bad_request(
            "uploads speak tus 1.0.0: send Tus-Resumable: 1.0.0",
        ));
    }
    Ok(())
}

/// The conversation named in `Upload-Metadata` (`conversation <base64>`).
fn metadata_conversation(h: &HeaderMap) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "Upload-Metadata must name the conversation: `conversation <base64 of its id>`",
        )
    };
    let raw = h
        .get("upload-metadata")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(bad)?;
    for pair in raw.split(',') {
        let mut kv = pair.trim().splitn(2, ' ');
        if kv.next() == Some("conversation") {
            let v = base64::engine::general_purpose::STANDARD
                .decode(kv.next().ok_or_else(bad)?.trim())
                .map_err(|_| bad())?;
            let id = String::from_utf8(v).map_err(|_| bad())?;
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            return Ok(id);
        }
    }
    Err(bad())
}

/// `OPTIONS /v1/blobs`: what the server supports, and its size limit.
async fn options(State(state): State<AppState>) -> Response {
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert(
        "tus-extension",
        HeaderValue::from_static("creation,termination"),
    );
    h.insert(
        "tus-max-size",
        HeaderValue::from(state.blobs.max_file_bytes),
    );
    (StatusCode::NO_CONTENT, h).into_response()
}

/// `POST /v1/blobs`: creates an upload.
async fn create(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_tus(&headers)?;
    let length = header_u64(&headers, "upload-length")?;
    let max = state.blobs.max_file_bytes;
    if length > max {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the file is {length} bytes; this server takes files of at most {max} bytes"),
        ));
    }
    let conversation = metadata_conversation(&headers)?;
    state
        .store
        .membership(&conversation, &caller.username, &caller.device_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such conversation"))?;
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let id = sotto_proto::identity::hex(&raw);
    let meta = Meta {
        conversation,
        username: caller.username,
        device: caller.device_id,
        length,
        created_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        complete: length == 0,
    };
    state.blobs.put_meta(&id, &meta).await?;
    if length == 0 {
        state
            .blobs
            .store
            .put(&blob_path(&id), PutPayload::default())
            .await
            .map_err(internal)?;
    }
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/blobs/{id}")).map_err(internal)?,
    );
    h.insert("upload-offset", HeaderValue::from(0u64));
    Ok((StatusCode::CREATED, h).into_response())
}

/// `HEAD /v1/blobs/{id}`: how much of the upload has arrived.
async fn status(
    State(state): State<AppState>,
    Auth(caller): Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let meta = state.blobs.meta(&id).await?;
    let offset = if meta.complete {
        meta.length
    } else {
        if meta.device != caller.device_id {
            return Err(not_found());
        }
        state.blobs.offset(&id).await?
    };
    if meta.complete && !member(&state, &meta, &caller).await? {
        return Err(not_found());
    }
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    h.insert("upload-offset", HeaderValue::from(offset));
    h.insert("upload-length", HeaderValue::from(meta.length));
    Ok((StatusCode::OK, h).into_response())
}

async fn member(
    state: &AppState,
    meta: &Meta,
    caller: &crate::ds::Caller,
) -> Result<bool, ApiError> {
    Ok(state
        .store
        .membership(&meta.conversation, &caller.username, &caller.device_id)
        .await?
        .is_some())
}

/// `PATCH /v1/blobs/{id}`: appends at `Upload-Offset`.
async fn append(
    State(state): State<AppState>,
    Auth(caller): Auth,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_tus(&headers)?;
    let meta = state.blobs.meta(&id).await?;
    if meta.device != caller.device_id {
        return Err(not_found());
    }
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/offset+octet-stream")
    {
        return Err(ApiError::bad_request(
            "an upload's bytes go as Content-Type: application/offset+octet-stream",
        ));
    }
    let claimed = header_u64(&headers, "upload-offset")?;
    let offset = if meta.complete {
        meta.length
    } else {
        state.blobs.offset(&id).await?
    };
    if claimed != offset {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("the upload is at offset {offset}, not {claimed} (ask with HEAD)"),
        ));
    }
    let room = meta.length - offset;
    let piece = Path::from(format!("part/{id}/{offset:020}"));
    let upload = state
        .blobs
        .store
        .put_multipart(&piece)
        .await
        .map_err(internal)?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, WRITE_CHUNK * 5);
    let mut got = 0u64;
    let mut stream = body.into_data_stream();
    let mut failure: Option<ApiError> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(_) => {
                failure = Some(ApiError::bad_request("the upload's body broke off"));
                break;
            }
        };
        got += chunk.len() as u64;
        if got > room {
            failure = Some(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the upload is {} bytes; this piece goes past its end",
                    meta.length
                ),
            ));
            break;
        }
        if let Err(e) = w.wait_for_capacity(2).await {
            failure = Some(internal(e));
            break;
        }
        w.write(&chunk);
    }
    if let Some(e) = failure {
        let _ = w.abort().await;
        return Err(e);
    }
    if got == 0 {
        let _ = w.abort().await;
    } else {
        w.finish().await.map_err(internal)?;
    }
    let now = offset + got;
    if now == meta.length && !meta.complete {
        state.blobs.assemble(&id).await?;
        state
            .blobs
            .put_meta(
                &id,
                &Meta {
                    complete: true,
                    ..meta
                },
            )
            .await?;
    }
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    h.insert("upload-offset", HeaderValue::from(now));
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

/// `DELETE /v1/blobs/{id}`: the uploading device removes its upload or blob.
async fn terminate(
    State(state): State<AppState>,
    Auth(caller): Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let meta = state.blobs.meta(&id).await?;
    if meta.device != caller.device_id {
        return Err(not_found());
    }
    state.blobs.remove(&id).await?;
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

/// A single `Range: bytes=...` over a blob of `len` bytes: `Some(start..end)`, `None` if absent.
fn parse_range(h: &HeaderMap, len: u64) -> Result<Option<std::ops::Range<u64>>, ApiError> {
    let Some(v) = h.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("a Range must be one range of bytes within the blob's {len} bytes"),
        )
    };
    let spec = v
        .to_str()
        .ok()
        .and_then(|s| s.strip_prefix("bytes="))
        .ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| bad())?, len),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| bad())?;
            let b: u64 = b.parse().map_err(|_| bad())?;
            (a, b.saturating_add(1).min(len))
        }
    };
    if start >= end || start >= len {
        return Err(bad());
    }
    Ok(Some(start..end))
}

/// `GET /v1/blobs/{id}`: a finished blob, whole or one range, to member devices.
async fn download(
    State(state): State<AppState>,
    Auth(caller): Auth,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = state.blobs.meta(&id).await?;
    if !meta.complete || !member(&state, &meta, &caller).await? {
        return Err(not_found());
    }
    let range = parse_range(&headers, meta.length)?;
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let (status, opts, len) = match &range {
        Some(r) => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end - 1, meta.length))
                    .map_err(internal)?,
            );
            (
                StatusCode::PARTIAL_CONTENT,
                GetOptions {
                    range: Some(GetRange::Bounded(r.clone())),
                    ..GetOptions::default()
                },
                r.end - r.start,
            )
        }
        None => (StatusCode::OK, GetOptions::default(), meta.length),
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if len == 0 {
        return Ok((status, h).into_response());
    }
    let got = state
        .blobs
        .store
        .get_opts(&blob_path(&id), opts)
        .await
        .map_err(internal)?;
    let body = Body::from_stream(got.into_stream());
    Ok((status, h, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_errors_carry_no_blob_id() {
        let id = "ab".repeat(32);
        let e = format!("Object at location blob/{id} not found: No such file");
        let shown = without_ids(&e);
        assert!(!shown.contains(&id), "{shown}");
        assert_eq!(
            shown,
            "Object at location blob/<id> not found: No such file"
        );
        assert_eq!(
            without_ids("part/00000000000000000042"),
            "part/00000000000000000042"
        );
    }
}
