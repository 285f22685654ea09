//! Attachment blobs: files encrypted on the sending device (`sotto_proto::attachment`), uploaded
//! resumably and downloaded whole or by byte range. The server never sees a key.
//!
//! Uploads follow tus 1.0 (core, creation, termination) as thin handlers:
//! - `POST /v1/blobs` with `Upload-Length` and `Upload-Metadata: conversation <base64 id>`
//!   creates an upload for a conversation the device is a member of. The size limit and the
//!   account's quota are checked here, before any byte of the file is sent (413). The limit is
//!   announced by `OPTIONS /v1/blobs` (`Tus-Max-Size`: the blob of the largest file, padded, with
//!   its tags) and in the OpenAPI document (`x-max-file-bytes`: the file itself).
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
//! Storage is an [`ObjectStore`] (the local filesystem under the data dir by default, or an
//! S3-compatible store), laid out as `meta/ID` (JSON: conversation, uploader, length, when it
//! was first sent), `part/ID/OFFSET` (the pieces the PATCHes left: a finished blob is served from
//! them in order, so nothing is copied when an upload ends) and `acct/USER/ID-LENGTH` (an empty
//! object per blob, so an account's usage is one listing). Nothing is held in memory beyond a
//! bounded buffer per request.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sotto_api::{ErrorBody, ErrorCode};

use crate::ds::DsError;
use crate::http::{ApiPath as UrlPath, Auth};
use crate::AppState;

/// The default largest file, in bytes (100 MiB, as Signal).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// The most an operator may allow per file (2 GiB).
pub const MAX_FILE_BYTES_CAP: u64 = 2 * 1024 * 1024 * 1024;
pub(crate) const TUS_VERSION: &str = "1.0.0";
/// How much of a request body is buffered before it is written on.
const WRITE_CHUNK: usize = 1024 * 1024;
/// The default bytes of blobs one account may keep (4 GiB).
pub const DEFAULT_ACCOUNT_QUOTA_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// How long an upload may stay unsent (unfinished, or finished and named by no message) before
/// it is removed.
pub const ORPHAN_SECS: i64 = 24 * 3600;
/// Most attachments one message may name.
pub const MAX_ATTACHMENTS: usize = 32;

/// The blob store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Largest file accepted, in bytes of blob.
    pub max_file_bytes: u64,
    /// Most bytes of blobs (finished or not) one account may keep; 0: no limit.
    pub account_quota_bytes: u64,
    creating: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    conversation: String,
    username: String,
    device: String,
    length: u64,
    created_at: i64,
    complete: bool,
    /// When a message first named it (`None`: an orphan, removed [`ORPHAN_SECS`] after its last
    /// PATCH).
    #[serde(default)]
    sent_at: Option<i64>,
    /// When its last PATCH arrived (0: none yet).
    #[serde(default)]
    updated_at: i64,
}

fn internal(e: impl std::fmt::Display) -> DsError {
    // The store's errors name paths, and a blob id in a path is a capability: not for the log.
    tracing::warn!(error = %without_ids(&e.to_string()), "blob store failure");
    DsError::new(
        ErrorCode::Internal,
        "the blob store failed; nothing was changed",
    )
}

fn not_found() -> DsError {
    DsError::not_found("no such blob")
}

fn meta_path(id: &str) -> Path {
    Path::from(format!("meta/{id}"))
}

fn part_prefix(id: &str) -> Path {
    Path::from(format!("part/{id}"))
}

/// The account's index of its blobs: one empty object per blob, named `ID-LENGTH`, so that the
/// account's usage is one listing.
fn account_prefix(username: &str) -> Path {
    Path::from(format!("acct/{username}"))
}

fn account_entry(username: &str, id: &str, length: u64) -> Path {
    Path::from(format!("acct/{username}/{id}-{length}"))
}

/// The index of blobs that expire with their message: one empty object per blob, named
/// `AT-ID` with `AT` (Unix seconds) zero-padded so that names sort by time.
fn expiry_entry(at: u64, id: &str) -> Path {
    Path::from(format!("expiry/{at:012}-{id}"))
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
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
fn check_id(id: &str) -> Result<(), DsError> {
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
            account_quota_bytes: DEFAULT_ACCOUNT_QUOTA_BYTES,
            creating: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The largest upload: the blob of the largest file (padded and with its tags).
    pub fn max_blob_bytes(&self) -> u64 {
        sotto_proto::attachment::blob_len(self.max_file_bytes)
    }

    /// The same store with a per-account quota (0: no limit).
    pub fn with_account_quota(mut self, bytes: u64) -> Self {
        self.account_quota_bytes = bytes;
        self
    }

    /// The same blobs in the store a URL names: `file:///dir`, or
    /// `s3://BUCKET?endpoint=URL&region=R` (credentials from the usual `AWS_*` environment).
    pub fn from_url(url: &str, max_file_bytes: u64) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("--blob-store: {e}"))?;
        match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| "--blob-store: a file URL needs an absolute path".to_owned())?;
                Self::local(&dir, max_file_bytes)
                    .map_err(|e| format!("--blob-store: opening {}: {e}", dir.display()))
            }
            "s3" => {
                // The S3 client's TLS uses the process's default provider: ring, as elsewhere.
                let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| "--blob-store: s3://BUCKET names no bucket".to_owned())?;
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (k, v) in parsed.query_pairs() {
                    b = match k.as_ref() {
                        "endpoint" => b
                            .with_endpoint(v.as_ref())
                            .with_allow_http(v.starts_with("http://")),
                        "region" => b.with_region(v.as_ref()),
                        other => {
                            return Err(format!(
                                "--blob-store: unknown s3 option {other} (endpoint, region)"
                            ))
                        }
                    };
                }
                let s3 = b.build().map_err(|e| format!("--blob-store: {e}"))?;
                Ok(Self::new(Arc::new(s3), max_file_bytes))
            }
            other => Err(format!(
                "--blob-store: unknown scheme {other}: (file:///DIR or s3://BUCKET?endpoint=...)"
            )),
        }
    }

    /// Blobs in files under `dir` (created if missing).
    pub fn local(dir: &std::path::Path, max_file_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(std::io::Error::other)?
            .with_automatic_cleanup(true);
        Ok(Self::new(Arc::new(fs), max_file_bytes))
    }

    /// Blobs in memory (for a server embedded in tests; lost on exit).
    pub fn memory(max_file_bytes: u64) -> Self {
        Self::new(
            Arc::new(object_store::memory::InMemory::new()),
            max_file_bytes,
        )
    }

    async fn meta(&self, id: &str) -> Result<Meta, DsError> {
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

    async fn put_meta(&self, id: &str, m: &Meta) -> Result<(), DsError> {
        let bytes = serde_json::to_vec(m).map_err(internal)?;
        self.store
            .put(&meta_path(id), PutPayload::from(bytes))
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// The pieces of an unfinished upload, in order: (path, offset, size).
    async fn parts(&self, id: &str) -> Result<Vec<(Path, u64, u64)>, DsError> {
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
    async fn offset(&self, id: &str) -> Result<u64, DsError> {
        let mut at = 0;
        for (_, offset, size) in self.parts(id).await? {
            if offset != at {
                return Err(internal("pieces of an upload do not follow each other"));
            }
            at += size;
        }
        Ok(at)
    }

    /// The bytes `range` of a finished blob, read from its pieces in order (a blob is the pieces
    /// its PATCHes left: nothing is copied when the upload ends).
    async fn read(
        &self,
        id: &str,
        length: u64,
        range: std::ops::Range<u64>,
    ) -> Result<Body, DsError> {
        let pieces = self.parts(id).await?;
        let mut at = 0;
        let mut wanted = Vec::new();
        for (path, offset, size) in pieces {
            if offset != at {
                return Err(internal("pieces of a blob do not follow each other"));
            }
            at += size;
            let (start, end) = (range.start.max(offset), range.end.min(offset + size));
            if start < end {
                wanted.push((path, start - offset..end - offset));
            }
        }
        if at != length {
            return Err(internal(
                "a finished blob's pieces do not add up to its length",
            ));
        }
        let store = self.store.clone();
        let stream = futures_util::stream::iter(wanted)
            .then(move |(path, r)| {
                let store = store.clone();
                async move { piece_stream(store, path, r).await }
            })
            .try_flatten();
        Ok(Body::from_stream(stream))
    }

    /// Removes everything of blob `id` (its meta last, so that a failure part way leaves it
    /// findable for the next sweep).
    async fn remove(&self, id: &str, meta: &Meta) -> Result<(), DsError> {
        self.remove_indexed(id, account_entry(&meta.username, id, meta.length))
            .await
    }

    /// [`Blobs::remove`] for the blob `index` (its account's index entry) names.
    async fn remove_indexed(&self, id: &str, index: Path) -> Result<(), DsError> {
        for (path, _, _) in self.parts(id).await? {
            self.store.delete(&path).await.map_err(internal)?;
        }
        for p in [index, meta_path(id)] {
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(internal(e)),
            }
        }
        Ok(())
    }

    /// Removes every upload and blob of an account (`sottod admin delete`), as its index lists
    /// them. Returns how many.
    pub async fn remove_account(&self, username: &str) -> Result<u64, DsError> {
        let entries: Vec<Path> = self
            .store
            .list(Some(&account_prefix(username)))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(internal)?;
        let mut removed = 0;
        for entry in entries {
            let Some(id) = entry
                .filename()
                .and_then(|f| f.rsplit_once('-'))
                .map(|(id, _)| id.to_owned())
            else {
                continue;
            };
            self.remove_indexed(&id, entry).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Bytes of blobs, finished or not, the account keeps.
    async fn usage(&self, username: &str) -> Result<u64, DsError> {
        let mut total = 0u64;
        let mut list = self.store.list(Some(&account_prefix(username)));
        while let Some(m) = list.next().await {
            let m = m.map_err(internal)?;
            let length = m
                .location
                .filename()
                .and_then(|f| f.rsplit_once('-'))
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .ok_or_else(|| internal("an account index entry with a bad name"))?;
            total = total.saturating_add(length);
        }
        Ok(total)
    }

    /// Checks that every blob in `ids` is a finished upload of `username`'s for `conversation`,
    /// and marks those not yet sent as sent (a message now names them; they are no orphans).
    /// Sending the same message again is fine.
    pub(crate) async fn bind(
        &self,
        ids: &[sotto_api::BlobId],
        conversation: &str,
        username: &str,
    ) -> Result<(), DsError> {
        if ids.len() > MAX_ATTACHMENTS {
            return Err(DsError::bad_request(format!(
                "a message names at most {MAX_ATTACHMENTS} attachments"
            )));
        }
        let mut metas = Vec::with_capacity(ids.len());
        for id in ids {
            let refused = || {
                DsError::bad_request(
                    "an attachment the message names is not a finished upload of this account's \
                     for this conversation",
                )
            };
            let meta = match self.meta(id).await {
                Ok(m) => m,
                Err(e) if e.code == ErrorCode::NotFound => return Err(refused()),
                Err(e) => return Err(e),
            };
            if !meta.complete || meta.conversation != conversation || meta.username != username {
                return Err(refused());
            }
            metas.push(meta);
        }
        let now = now_secs();
        for (id, meta) in ids.iter().zip(metas) {
            if meta.sent_at.is_none() {
                self.put_meta(
                    id,
                    &Meta {
                        sent_at: Some(now),
                        ..meta
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Schedules blobs to go at `at` (Unix seconds), with the message that names them: their
    /// conversation has a disappearing timer. Should a blob have two such times (sent again), the
    /// earlier one removes it.
    pub(crate) async fn expire_at(
        &self,
        ids: &[sotto_api::BlobId],
        at: u64,
    ) -> Result<(), DsError> {
        for id in ids {
            self.store
                .put(&expiry_entry(at, id), PutPayload::default())
                .await
                .map_err(internal)?;
        }
        Ok(())
    }

    /// Removes the blobs whose expiry (see [`Blobs::expire_at`]) is at or before `now`: one
    /// listing of the expiry index, which names the time, so no meta is read for a blob that
    /// has time left.
    async fn sweep_expired(&self, now: i64) -> Result<u64, DsError> {
        let mut due = Vec::new();
        let mut list = self.store.list(Some(&Path::from("expiry")));
        while let Some(m) = list.next().await {
            let m = m.map_err(internal)?;
            let Some((at, id)) = m
                .location
                .filename()
                .and_then(|f| f.split_once('-'))
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
            else {
                continue;
            };
            if at <= now {
                due.push((m.location, id));
            }
        }
        let mut removed = 0;
        for (entry, id) in due {
            match self.meta(&id).await {
                Ok(meta) => {
                    self.remove(&id, &meta).await?;
                    removed += 1;
                }
                // Removed already (unsent, or an earlier expiry).
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
            match self.store.delete(&entry).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(internal(e)),
            }
        }
        Ok(removed)
    }

    /// Removes what has outlived its time: blobs whose message expired, uploads unsent after
    /// [`ORPHAN_SECS`], and blobs first sent before `sent_before` (the log's retention: their
    /// messages are gone). Returns how many blobs went.
    pub async fn sweep(&self, now: i64, sent_before: i64) -> Result<u64, DsError> {
        let expired = self.sweep_expired(now).await?;
        // A meta is written last when its time starts (creation, a PATCH, the first send), so one
        // written after the later of the two limits cannot have expired and is not read: a sweep
        // costs one listing plus the metas of blobs older than a day, not every blob's.
        let could_expire = sent_before.max(now - ORPHAN_SECS);
        let mut ids = Vec::new();
        let mut list = self.store.list(Some(&Path::from("meta")));
        while let Some(m) = list.next().await {
            let m = m.map_err(internal)?;
            if m.last_modified.timestamp() > could_expire {
                continue;
            }
            if let Some(id) = m.location.filename() {
                ids.push(id.to_owned());
            }
        }
        let mut removed = 0;
        for id in ids {
            let meta = match self.meta(&id).await {
                Ok(m) => m,
                // Gone meanwhile, or not a blob's meta: nothing to do.
                Err(e) if e.code == ErrorCode::NotFound => continue,
                Err(e) => return Err(e),
            };
            let expired = match meta.sent_at {
                Some(at) => at < sent_before,
                // Counted from the last sign of life: a slow upload that goes on is no orphan.
                None => meta.created_at.max(meta.updated_at) < now - ORPHAN_SECS,
            };
            if expired {
                self.remove(&id, &meta).await?;
                removed += 1;
            }
        }
        Ok(expired + removed)
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

fn header_u64(h: &HeaderMap, name: &str) -> Result<u64, DsError> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| DsError::bad_request(format!("missing or invalid {name} header")))
}

fn check_tus(h: &HeaderMap) -> Result<(), DsError> {
    if h.get("tus-resumable").and_then(|v| v.to_str().ok()) != Some(TUS_VERSION) {
        return Err(DsError::bad_request(
            "uploads speak tus 1.0.0: send Tus-Resumable: 1.0.0",
        ));
    }
    Ok(())
}

/// The conversation named in `Upload-Metadata` (`conversation <base64>`).
fn metadata_conversation(h: &HeaderMap) -> Result<String, DsError> {
    let bad = || {
        DsError::bad_request(
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
            // Well-formed but naming no conversation id: no conversation of the caller's.
            return String::from_utf8(v)
                .ok()
                .filter(|id| sotto_api::is_hex_id(id, 32))
                .ok_or_else(|| DsError::not_found("no such conversation"));
        }
    }
    Err(bad())
}

/// tus discovery: `Tus-Version`, `Tus-Extension` (creation, termination) and `Tus-Max-Size`.
#[utoipa::path(options, path = "/v1/blobs", tag = "blobs",
    responses((status = 204, description = "What this server supports", headers(
        ("Tus-Version" = String), ("Tus-Extension" = String),
        ("Tus-Max-Size" = u64, description = "The largest upload, in bytes")))))]
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
        HeaderValue::from(state.ds.blobs.max_blob_bytes()),
    );
    (StatusCode::NO_CONTENT, h).into_response()
}

/// Create a resumable upload (tus 1.0 creation) of an encrypted attachment.
///
/// For a conversation this device is a member of. A file over the limit (`x-max-file-bytes`, and
/// `Tus-Max-Size` from OPTIONS) is refused with 413 before any byte is sent.
#[utoipa::path(post, path = "/v1/blobs", tag = "blobs", security(("device" = [])),
    params(("Tus-Resumable" = crate::openapi::TusVersion, Header, description = "The tus version: 1.0.0"),
        ("Upload-Length" = u64, Header, description = "The upload's length in bytes"),
        ("Upload-Metadata" = crate::openapi::UploadMetadata, Header)),
    responses(
        (status = 201, description = "Created at `Location`", headers(
            ("Location" = String, description = "/v1/blobs/{id}"), ("Upload-Offset" = u64))),
        (status = 404, description = "No such conversation of the caller's", body = ErrorBody),
        (status = 413, description = "Over the file size limit or the account's quota", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
) -> Result<Response, DsError> {
    check_tus(&headers)?;
    let length = header_u64(&headers, "upload-length")?;
    let max = state.ds.blobs.max_file_bytes;
    let max_blob = state.ds.blobs.max_blob_bytes();
    if length > max_blob {
        return Err(DsError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the upload is {length} bytes; this server takes files of at most {max} bytes \
                 ({max_blob} bytes once encrypted and padded)"
            ),
        ));
    }
    let conversation = metadata_conversation(&headers)?;
    state
        .ds
        .store
        .membership(&conversation, &caller.username, &caller.device_id)
        .await?
        .ok_or_else(|| DsError::not_found("no such conversation"))?;
    let quota = state.ds.blobs.account_quota_bytes;
    // Creations on this node take turns between the usage check and the new index entry, so
    // concurrent uploads cannot all pass one quota (across nodes it stays a bound, not a ledger).
    let _turn = state.ds.blobs.creating.lock().await;
    if quota > 0 {
        let used = state.ds.blobs.usage(&caller.username).await?;
        if used.saturating_add(length) > quota {
            return Err(DsError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "over quota: this account keeps {used} bytes of files and may keep {quota}; \
                     this file needs {length} more (files go when their messages do)"
                ),
            ));
        }
    }
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let id = sotto_proto::identity::hex(&raw);
    let meta = Meta {
        conversation,
        username: caller.username.into_string(),
        device: caller.device_id.into_string(),
        length,
        created_at: now_secs(),
        complete: length == 0,
        sent_at: None,
        updated_at: 0,
    };
    state
        .ds
        .blobs
        .store
        .put(
            &account_entry(&meta.username, &id, length),
            PutPayload::default(),
        )
        .await
        .map_err(internal)?;
    state.ds.blobs.put_meta(&id, &meta).await?;
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/blobs/{id}")).map_err(internal)?,
    );
    h.insert("upload-offset", HeaderValue::from(0u64));
    Ok((StatusCode::CREATED, h).into_response())
}

/// How much of an upload has arrived (`Upload-Offset`, `Upload-Length`): where to resume.
#[utoipa::path(head, path = "/v1/blobs/{id}", tag = "blobs", security(("device" = [])), params(("id" = sotto_api::schema::BlobId, Path, description = "The blob")),
    responses(
        (status = 200, description = "Its progress", headers(("Upload-Offset" = u64), ("Upload-Length" = u64))),
        (status = 404, description = "No such upload of this device, or blob of its conversations")))]
async fn status(
    State(state): State<AppState>,
    Auth(caller): Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, DsError> {
    let meta = state.ds.blobs.meta(&id).await?;
    let offset = if meta.complete {
        meta.length
    } else {
        if meta.device != caller.device_id {
            return Err(not_found());
        }
        state.ds.blobs.offset(&id).await?
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
) -> Result<bool, DsError> {
    Ok(state
        .ds
        .store
        .membership(&meta.conversation, &caller.username, &caller.device_id)
        .await?
        .is_some())
}

/// Append to an upload at `Upload-Offset`; the last byte finishes the blob.
#[utoipa::path(patch, path = "/v1/blobs/{id}", tag = "blobs", security(("device" = [])),
    params(("id" = sotto_api::schema::BlobId, Path, description = "The blob"), ("Tus-Resumable" = crate::openapi::TusVersion, Header, description = "The tus version: 1.0.0"), ("Upload-Offset" = u64, Header, description = "Where these bytes go")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Appended", headers(("Upload-Offset" = u64))),
        (status = 404, description = "No such upload of this device", body = ErrorBody),
        (status = 409, description = "The offset is not the upload's (ask with HEAD)", body = ErrorBody),
        (status = 413, description = "Past the upload's length", body = ErrorBody)))]
async fn append(
    State(state): State<AppState>,
    Auth(caller): Auth,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DsError> {
    check_tus(&headers)?;
    let meta = state.ds.blobs.meta(&id).await?;
    if meta.device != caller.device_id {
        return Err(not_found());
    }
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/offset+octet-stream")
    {
        return Err(DsError::bad_request(
            "an upload's bytes go as Content-Type: application/offset+octet-stream",
        ));
    }
    let claimed = header_u64(&headers, "upload-offset")?;
    let offset = if meta.complete {
        meta.length
    } else {
        state.ds.blobs.offset(&id).await?
    };
    if claimed != offset {
        return Err(DsError::new(
            ErrorCode::Conflict,
            format!("the upload is at offset {offset}, not {claimed} (ask with HEAD)"),
        ));
    }
    let room = meta.length - offset;
    let piece = Path::from(format!("part/{id}/{offset:020}"));
    let upload = state
        .ds
        .blobs
        .store
        .put_multipart(&piece)
        .await
        .map_err(internal)?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, WRITE_CHUNK * 5);
    let mut got = 0u64;
    let mut stream = body.into_data_stream();
    let mut failure: Option<DsError> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(_) => {
                failure = Some(DsError::bad_request("the upload's body broke off"));
                break;
            }
        };
        got += chunk.len() as u64;
        if got > room {
            failure = Some(DsError::new(
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
    metrics::counter!("sotto_blob_bytes_total", "direction" => "in").increment(got);
    if got > 0 {
        state
            .ds
            .blobs
            .put_meta(
                &id,
                &Meta {
                    complete: now == meta.length,
                    updated_at: now_secs(),
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

/// Remove an upload or blob (its uploading account only, from any of its devices: a message
/// unsent from another device takes its file with it).
#[utoipa::path(delete, path = "/v1/blobs/{id}", tag = "blobs", security(("device" = [])), params(("id" = sotto_api::schema::BlobId, Path, description = "The blob")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such upload or blob of this account", body = ErrorBody)))]
async fn terminate(
    State(state): State<AppState>,
    Auth(caller): Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, DsError> {
    let meta = state.ds.blobs.meta(&id).await?;
    if meta.username != caller.username {
        return Err(not_found());
    }
    state.ds.blobs.remove(&id, &meta).await?;
    let mut h = HeaderMap::new();
    tus_headers(&mut h);
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

/// A single `Range: bytes=...` over a blob of `len` bytes: `Some(start..end)`, `None` if absent.
fn parse_range(h: &HeaderMap, len: u64) -> Result<Option<std::ops::Range<u64>>, DsError> {
    let Some(v) = h.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        DsError::new(
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

/// Download a finished blob, whole or one `Range`, as a member device of its conversation.
#[utoipa::path(get, path = "/v1/blobs/{id}", tag = "blobs", security(("device" = [])),
    params(("id" = sotto_api::schema::BlobId, Path, description = "The blob"), ("Range" = Option<crate::openapi::ByteRange>, Header, description = "One range of bytes")),
    responses(
        (status = 200, description = "The blob", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("Content-Range" = String))),
        (status = 404, description = "No such blob of the caller's conversations", body = ErrorBody)))]
async fn download(
    State(state): State<AppState>,
    Auth(caller): Auth,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, DsError> {
    let meta = state.ds.blobs.meta(&id).await?;
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
    let (status, r) = match range {
        Some(r) => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{}", r.start, r.end - 1, meta.length))
                    .map_err(internal)?,
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        None => (StatusCode::OK, 0..meta.length),
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.end - r.start));
    if r.is_empty() {
        return Ok((status, h).into_response());
    }
    metrics::counter!("sotto_blob_bytes_total", "direction" => "out").increment(r.end - r.start);
    let body = state.ds.blobs.read(&id, meta.length, r).await?;
    Ok((status, h, body).into_response())
}

/// How much of a local file is read at a time when serving it (object_store's own stream reads
/// 8 KiB at a time, a thread hop each).
const READ_CHUNK: u64 = 1024 * 1024;

/// The bytes `range` of one piece, as a stream: local files read a MiB at a time, other stores
/// as they stream.
async fn piece_stream(
    store: Arc<dyn ObjectStore>,
    path: Path,
    range: std::ops::Range<u64>,
) -> Result<
    futures_util::stream::BoxStream<'static, Result<axum::body::Bytes, std::io::Error>>,
    std::io::Error,
> {
    let opts = GetOptions {
        range: Some(GetRange::Bounded(range)),
        ..GetOptions::default()
    };
    let got = store
        .get_opts(&path, opts)
        .await
        .map_err(|e| std::io::Error::other(without_ids(&e.to_string())))?;
    let r = got.range.clone();
    match got.payload {
        object_store::GetResultPayload::File(file, _) => {
            let state = (Some(file), r.start, r.end);
            Ok(
                futures_util::stream::try_unfold(state, |(file, at, end)| async move {
                    let Some(mut file) = file else {
                        return Ok(None);
                    };
                    if at >= end {
                        return Ok(None);
                    }
                    let n = (end - at).min(READ_CHUNK) as usize;
                    let (file, buf) = tokio::task::spawn_blocking(move || {
                        use std::io::{Read, Seek, SeekFrom};
                        file.seek(SeekFrom::Start(at))?;
                        let mut buf = vec![0u8; n];
                        file.read_exact(&mut buf)?;
                        Ok::<_, std::io::Error>((file, buf))
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    Ok(Some((
                        axum::body::Bytes::from(buf),
                        (Some(file), at + n as u64, end),
                    )))
                })
                .boxed(),
            )
        }
        object_store::GetResultPayload::Stream(s) => Ok(s
            .map(|c| c.map_err(|e| std::io::Error::other(without_ids(&e.to_string()))))
            .boxed()),
    }
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
