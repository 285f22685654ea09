//! Files: encrypted as they are read, uploaded resumably, downloaded with resume, and written to
//! their destination only once every byte verified. Memory stays at a few MiB whatever the size.
//!
//! Upload: a fresh key per file; the blob is made by `sotto_proto::attachment::Encryptor` a MiB
//! at a time and sent in [`PATCH_BYTES`] PATCHes (tus). What a run has done is kept in
//! `HOME/uploads/` (the upload's id, key and header, and the hash of what the server holds), so
//! a run killed part way goes on where the server's copy ends: the file is encrypted again to
//! the same bytes, those already uploaded are checked against the saved hash (a file changed in
//! between starts over) and skipped.
//!
//! Download: the blob is decrypted as it arrives (on a second thread) into `OUT.sotto-tmp`, each
//! segment verified before its bytes are written; only once the whole blob's hash verified too
//! is the file synced and renamed to `OUT`. After a cut the next run keeps the whole segments
//! `OUT.sotto-tmp` holds, encrypts them again (the same key and header give the same blob bytes)
//! to bring the blob's hash up to where they end, and fetches the rest with a Range request. A
//! blob that fails to verify leaves nothing behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sotto_engine::store::AttachmentRecord;
use sotto_engine::OutgoingFile;
use sotto_proto::attachment::{self, Decryptor, Encryptor, FileKey};
use sotto_proto::FileRef;

use crate::{Client, ClientError, Message, SyncReport};

/// Blob bytes per upload request.
pub const PATCH_BYTES: usize = 8 * 1024 * 1024;
/// File bytes read (and blob bytes written) at a time.
const READ_BYTES: usize = 1024 * 1024;
/// A download flushes its file to disk every this many bytes as it goes.
const SYNC_EVERY: usize = 32 * 1024 * 1024;
/// Images up to this size get a preview.
const PREVIEW_MAX_FILE: u64 = 32 * 1024 * 1024;

/// How far a transfer is: bytes of blob done of the total, and where this run started (above 0
/// when it resumed an earlier one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Blob bytes uploaded or downloaded so far.
    pub done: u64,
    /// The blob's size.
    pub total: u64,
    /// Where this run began.
    pub resumed_from: u64,
}

/// A file to send.
#[derive(Clone, Default)]
pub struct FileToSend {
    /// The file.
    pub path: PathBuf,
    /// Text shown with it.
    pub caption: Option<String>,
    /// Its media type (default: guessed from its first bytes, then its name).
    pub content_type: Option<String>,
    /// The name receivers see (default: the file's own, without directories).
    pub name: Option<String>,
}

// The caption is message text: its size only.
impl std::fmt::Debug for FileToSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileToSend")
            .field("path", &self.path)
            .field("caption_len", &self.caption.as_ref().map(String::len))
            .field("content_type", &self.content_type)
            .field("name", &self.name)
            .finish()
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ClientError {
    ClientError::Invalid(format!("{what} {}: {e}", path.display()))
}

/// What an interrupted upload left for the next run.
#[derive(serde::Serialize, serde::Deserialize)]
struct UploadState {
    blob: String,
    key: String,
    header: String,
    /// Blob bytes the server confirmed, and the SHA-256 of exactly those bytes.
    confirmed: u64,
    confirmed_hash: String,
    /// The PATCH under way: where it ends and the hash of the blob up to there (the server may
    /// hold it though the run died before it heard so).
    #[serde(default)]
    pending: Option<(u64, String)>,
}

fn hex(b: &[u8]) -> String {
    sotto_proto::identity::hex(b)
}

fn unhex(s: &str) -> Result<Vec<u8>, ClientError> {
    sotto_proto::identity::unhex(s)
        .ok_or_else(|| ClientError::Storage("an upload's saved state is not hex".into()))
}

/// The file's media type from its first bytes, else its extension.
pub fn guess_content_type(path: &Path, head: &[u8]) -> String {
    let by_magic: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"OggS", "audio/ogg"),
        (b"fLaC", "audio/flac"),
        (b"ID3", "audio/mpeg"),
    ];
    for (magic, ct) in by_magic {
        if head.starts_with(magic) {
            return (*ct).to_owned();
        }
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return "image/webp".into();
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return if &head[8..11] == b"M4A" {
            "audio/mp4".into()
        } else if &head[8..12] == b"qt  " {
            "video/quicktime".into()
        } else {
            "video/mp4".into()
        };
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "opus" | "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "tar" => "application/x-tar",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
    .to_owned()
}

/// A small JPEG of an image (at most 96 pixels a side, at most
/// `sotto_proto::content::MAX_PREVIEW_BYTES`), or `None` when it is not an image this version
/// decodes, is too large to decode in bounded memory, or fails to decode.
pub fn make_preview(path: &Path, content_type: &str, size: u64) -> Option<sotto_proto::Preview> {
    if !matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    ) || size > PREVIEW_MAX_FILE
    {
        return None;
    }
    let mut reader = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(128 * 1024 * 1024);
    limits.max_image_width = Some(12_000);
    limits.max_image_height = Some(12_000);
    reader.limits(limits);
    let img = reader.decode().ok()?;
    for (side, quality) in [(96u32, 70u8), (64, 60), (32, 50)] {
        let thumb = img.thumbnail(side, side).to_rgb8();
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
        if thumb.write_with_encoder(enc).is_err() {
            return None;
        }
        if out.len() <= sotto_proto::content::MAX_PREVIEW_BYTES {
            return Some(sotto_proto::Preview {
                content_type: "image/jpeg".into(),
                data: out,
            });
        }
    }
    None
}

/// Where an upload of this file to this conversation keeps its state between runs: named by the
/// conversation, the file's path, size and modification time (a changed file is a new upload).
fn state_path(home: &Path, conversation: &str, path: &Path, meta: &std::fs::Metadata) -> PathBuf {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut h = Sha256::new();
    h.update(conversation.as_bytes());
    h.update([0]);
    h.update(canonical.to_string_lossy().as_bytes());
    h.update([0]);
    h.update(meta.len().to_be_bytes());
    h.update(mtime.to_be_bytes());
    home.join("uploads").join(hex(&h.finalize()[..16]))
}

fn save_state(path: &Path, s: &UploadState) -> Result<(), ClientError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(s).map_err(|e| ClientError::Storage(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("writing", &tmp, e))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err("writing", path, e))
}

fn load_state(path: &Path) -> Option<UploadState> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A batch of blob bytes from the encrypting thread, with the SHA-256 of the blob up to its end.
struct Batch {
    bytes: Vec<u8>,
    hash_after: [u8; 32],
}

/// What the encrypting thread says.
enum Made {
    /// The next bytes to upload.
    Batch(Batch),
    /// The whole blob is made: its SHA-256.
    Done([u8; 32]),
}

/// Reads and encrypts the file on its own thread, so that the next batch is made while the last
/// one uploads. Bytes below `offset` (the server has them) are made again but not sent; they
/// must hash to what the earlier run saved, or the file changed since.
struct Maker {
    path: PathBuf,
    size: u64,
    enc: Encryptor,
    offset: u64,
    /// SHA-256 of the blob's first `offset` bytes, as an earlier run made them.
    vouched_hash: String,
    state_path: PathBuf,
}

impl Maker {
    fn run(
        mut self,
        tx: &tokio::sync::mpsc::Sender<Result<Made, ClientError>>,
    ) -> Result<(), ClientError> {
        let path = self.path.clone();
        let mut f = std::fs::File::open(&path).map_err(|e| io_err("reading", &path, e))?;
        let mut buf = vec![0u8; READ_BYTES];
        let mut out = Vec::with_capacity(READ_BYTES + 2 * attachment::SEGMENT);
        let mut batch = Vec::with_capacity(PATCH_BYTES + READ_BYTES + 2 * attachment::SEGMENT);
        let mut made = 0u64;
        let mut skipped = Sha256::new();
        let mut read = 0u64;
        let mut finished = None;
        loop {
            out.clear();
            if read < self.size {
                let n = f.read(&mut buf).map_err(|e| io_err("reading", &path, e))?;
                if n == 0 {
                    return Err(ClientError::Invalid(format!(
                        "{} shrank while it was being sent; send it again",
                        path.display()
                    )));
                }
                read += n as u64;
                if read > self.size {
                    return Err(ClientError::Invalid(format!(
                        "{} grew while it was being sent; send it again",
                        path.display()
                    )));
                }
                self.enc
                    .push(&buf[..n], &mut out)
                    .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
            } else {
                finished = self
                    .enc
                    .finish_step(&mut out)
                    .map_err(|e| ClientError::Invalid(e.to_string()))?;
            }
            let mut bytes = &out[..];
            if made < self.offset {
                let skip = ((self.offset - made) as usize).min(bytes.len());
                skipped.update(&bytes[..skip]);
                made += skip as u64;
                bytes = &bytes[skip..];
                if made == self.offset && hex(&skipped.clone().finalize()) != self.vouched_hash {
                    // The next run starts a new upload (the old one goes as an orphan).
                    let _ = std::fs::remove_file(&self.state_path);
                    return Err(ClientError::Invalid(
                        "the file changed since its upload began; send it again to start over"
                            .into(),
                    ));
                }
            }
            made += bytes.len() as u64;
            batch.extend_from_slice(bytes);
            if batch.len() >= PATCH_BYTES || (finished.is_some() && !batch.is_empty()) {
                let b = Batch {
                    bytes: std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(PATCH_BYTES + READ_BYTES + 2 * attachment::SEGMENT),
                    ),
                    hash_after: self.enc.hash_so_far(),
                };
                if tx.blocking_send(Ok(Made::Batch(b))).is_err() {
                    return Ok(()); // the upload gave up
                }
            }
            if let Some(h) = finished {
                let _ = tx.blocking_send(Ok(Made::Done(h)));
                return Ok(());
            }
        }
    }
}

impl Client {
    pub(crate) fn token(&self) -> Result<String, ClientError> {
        self.engine
            .dangerous_bearer_token()
            .ok_or_else(|| ClientError::Invalid("this device is not registered".into()))
    }

    /// Encrypts and uploads a file for `conversation` (resuming an earlier run's upload of the
    /// same file), then sends it there. `progress` hears of every PATCH.
    pub async fn send_file_to(
        &self,
        conversation: &str,
        file: &FileToSend,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Message, SyncReport), ClientError> {
        let path = &file.path;
        let meta = std::fs::metadata(path).map_err(|e| io_err("reading", path, e))?;
        if !meta.is_file() {
            return Err(ClientError::Invalid(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let size = meta.len();
        if size > attachment::MAX_FILE_BYTES {
            return Err(ClientError::Invalid(format!(
                "{} is {size} bytes; files are at most {} bytes",
                path.display(),
                attachment::MAX_FILE_BYTES
            )));
        }
        let mut head = [0u8; 16];
        let got = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| io_err("reading", path, e))?;
        let content_type = file
            .content_type
            .clone()
            .unwrap_or_else(|| guess_content_type(path, &head[..got]));
        let name = match &file.name {
            Some(n) => n.clone(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into()),
        };
        let preview = make_preview(path, &content_type, size);
        let state_path = state_path(&self.home, conversation, path, &meta);
        let (key, hash, blob) = self
            .upload(conversation, path, size, &state_path, progress)
            .await?;
        let outgoing = OutgoingFile {
            file: FileRef {
                blob,
                key,
                size,
                hash,
                content_type,
                name,
            },
            caption: file.caption.clone(),
            preview,
        };
        let sent = self
            .run(self.engine.send_file(conversation, outgoing))
            .await;
        // Sent, or kept in the outbox with its file reference: the upload's state is done with.
        if matches!(&sent, Ok(_) | Err(ClientError::Queued { .. })) {
            let _ = std::fs::remove_file(&state_path);
        }
        sent
    }

    /// Uploads the blob of the file at `path`: (key, blob hash, blob id).
    async fn upload(
        &self,
        conversation: &str,
        path: &Path,
        size: u64,
        state_path: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(FileKey, [u8; 32], String), ClientError> {
        let t = self.transport()?;
        let token = self.token()?;
        let total = attachment::blob_len(size);
        // An earlier run's upload, if the server still has it.
        let mut resumed = None;
        if let Some(s) = load_state(state_path) {
            if let Some(offset) = t.blob_offset(&token, &s.blob).await? {
                resumed = Some((s, offset));
            }
        }
        let (state, offset, enc, key) = match resumed {
            Some((s, offset)) => {
                let key = FileKey::from_bytes(&unhex(&s.key)?)
                    .map_err(|e| ClientError::Storage(e.to_string()))?;
                let enc = Encryptor::resume(&key, size, &unhex(&s.header)?)
                    .map_err(|e| ClientError::Storage(e.to_string()))?;
                (s, offset, enc, key)
            }
            None => {
                let key = FileKey::random();
                let enc = Encryptor::new(&key, size);
                let blob = t.blob_create(&token, conversation, total).await?;
                let s = UploadState {
                    blob,
                    key: hex(key.as_bytes()),
                    header: hex(&enc.header()),
                    confirmed: 0,
                    confirmed_hash: String::new(),
                    pending: None,
                };
                save_state(state_path, &s)?;
                (s, 0, enc, key)
            }
        };
        // What the server holds must end where this device knows the blob's hash: at the last
        // confirmed PATCH, or at the end of the one under way when the run died.
        let vouched = match &state.pending {
            Some((end, hash)) if *end == offset => Some(hash.clone()),
            _ if offset == state.confirmed => Some(state.confirmed_hash.clone()),
            _ => None,
        };
        let Some(vouched_hash) = vouched else {
            let _ = std::fs::remove_file(state_path);
            return Err(ClientError::Protocol(
                "the server's copy of the upload is not what this device sent; send the file again"
                    .into(),
            ));
        };
        let blob = state.blob.clone();
        progress(Progress {
            done: offset,
            total,
            resumed_from: offset,
        });
        // One batch in the channel and one being made: memory stays at a few PATCHes.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let maker = Maker {
            path: path.to_owned(),
            size,
            enc,
            offset,
            vouched_hash,
            state_path: state_path.to_owned(),
        };
        let thread = std::thread::spawn(move || {
            if let Err(e) = maker.run(&tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let mut state = state;
        let mut at = offset;
        let outcome = loop {
            let made = match rx.recv().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => break Err(e),
                None => {
                    break Err(ClientError::Protocol(
                        "the file's encryption stopped early".into(),
                    ))
                }
            };
            match made {
                Made::Done(hash) => break Ok(hash),
                Made::Batch(b) => {
                    let n = b.bytes.len() as u64;
                    state.pending = Some((at + n, hex(&b.hash_after)));
                    if let Err(e) = save_state(state_path, &state) {
                        break Err(e);
                    }
                    let now = match t.blob_patch(&token, &blob, at, b.bytes).await {
                        Ok(now) => now,
                        Err(e) => break Err(e),
                    };
                    if now != at + n {
                        break Err(ClientError::Protocol(format!(
                            "the server took the upload to offset {now}, not {}",
                            at + n
                        )));
                    }
                    at = now;
                    // Everything made so far is on the server: remember how far, and its hash.
                    state.confirmed = at;
                    state.confirmed_hash = hex(&b.hash_after);
                    state.pending = None;
                    if let Err(e) = save_state(state_path, &state) {
                        break Err(e);
                    }
                    progress(Progress {
                        done: at,
                        total,
                        resumed_from: offset,
                    });
                }
            }
        };
        drop(rx);
        let _ = thread.join();
        let hash = outcome?;
        if at != total {
            return Err(ClientError::Protocol(format!(
                "the upload ended at {at} of {total} bytes"
            )));
        }
        Ok((key, hash, blob))
    }

    /// Downloads message `message_id`'s file to `out` (default: its name, in the current
    /// directory), resuming a download cut off earlier. Nothing is written at `out` unless the
    /// whole file verified; an existing `out` is never overwritten. Returns where it went.
    pub async fn download(
        &self,
        message_id: &str,
        out: Option<&Path>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PathBuf, ClientError> {
        let (_, rec) = self.engine.attachment(message_id)?.ok_or_else(|| {
            ClientError::Invalid(format!(
                "no file in message {message_id} on this device (unsent, or run `sotto sync`?)"
            ))
        })?;
        let out = match out {
            Some(p) if p.is_dir() => p.join(&rec.name),
            Some(p) => p.to_owned(),
            None => PathBuf::from(&rec.name),
        };
        if out.exists() {
            return Err(ClientError::Invalid(format!(
                "{} already exists; choose another path with --out",
                out.display()
            )));
        }
        // Named by the blob, so a cut-off download of another file to the same path is not
        // taken for this one's.
        let tmp = with_suffix(&out, &format!(".{}.sotto-tmp", &rec.hash[..16]));
        let total = attachment::blob_len(rec.size);
        match self.fetch_blob(&rec, &tmp, total, progress).await {
            Ok(()) => {}
            Err(Stop::Refused(e)) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            // Cut off: what verified stays for a resume.
            Err(Stop::Other(e)) => return Err(e),
        }
        let appeared = || {
            let _ = std::fs::remove_file(&tmp);
            ClientError::Invalid(format!(
                "{} appeared during the download; the file is not written",
                out.display()
            ))
        };
        // A hard link fails if `out` appeared meanwhile (a rename would replace it).
        match std::fs::hard_link(&tmp, &out) {
            Ok(()) => {
                let _ = std::fs::remove_file(&tmp);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(appeared()),
            // A filesystem without hard links: rename, after one more look.
            Err(_) if out.exists() => return Err(appeared()),
            Err(_) => std::fs::rename(&tmp, &out).map_err(|e| io_err("writing", &out, e))?,
        }
        let shown = std::fs::canonicalize(&out).unwrap_or_else(|_| out.clone());
        self.engine
            .set_downloaded(message_id, &shown.to_string_lossy())?;
        Ok(out)
    }

    /// Fetches the blob while a second thread decrypts it into `tmp`; returns once every segment
    /// and the whole hash verified and `tmp` is on disk. A `tmp` left by a cut-off run holds
    /// verified segments: they are kept, encrypted again (the same key and header give the same
    /// bytes) to bring the blob's hash up to where they end, and the fetch goes on from there.
    async fn fetch_blob(
        &self,
        rec: &AttachmentRecord,
        tmp: &Path,
        total: u64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), Stop> {
        let t = self.transport()?;
        let token = self.token()?;
        let seg = attachment::SEGMENT as u64;
        let count = attachment::segment_count(rec.size);
        let kept = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
        // Whole segments kept, never the last one (it comes with the blob's end).
        let k = (kept / seg).min(count.saturating_sub(1));
        let (header, from) = if k > 0 {
            let h = t
                .blob_range(&token, &rec.blob, 0..attachment::HEADER_LEN as u64, total)
                .await?;
            (
                Some(h),
                attachment::HEADER_LEN as u64 + k * (seg + attachment::TAG as u64),
            )
        } else {
            (None, 0)
        };
        progress(Progress {
            done: from,
            total,
            resumed_from: from,
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(8);
        let opener = {
            let (rec, tmp) = (rec.clone(), tmp.to_owned());
            tokio::task::spawn_blocking(move || open_blob(&rec, &tmp, k * seg, header, rx))
        };
        let fetched = async {
            let mut resp = t.blob_get(&token, &rec.blob, from, total).await?;
            let mut done = from;
            let mut since = 0usize;
            let broke = |done: u64| {
                ClientError::Protocol(format!(
                    "the download broke off at {done} of {total} bytes; run it again to resume"
                ))
            };
            // The socket hands over a few KiB at a time; the decrypting thread gets a MiB.
            let mut batch = Vec::with_capacity(READ_BYTES + 64 * 1024);
            loop {
                // A minute of silence ends it (TCP keep-alives find a vanished peer sooner).
                let next = tokio::time::timeout(std::time::Duration::from_secs(60), resp.chunk())
                    .await
                    .map_err(|_| broke(done))?
                    .map_err(|_| broke(done))?;
                let Some(chunk) = next else { break };
                done += chunk.len() as u64;
                if done > total {
                    return Err(ClientError::Protocol(
                        "the server sent more than the file's blob".into(),
                    ));
                }
                since += chunk.len();
                batch.extend_from_slice(&chunk);
                if batch.len() >= READ_BYTES || done == total {
                    let full =
                        std::mem::replace(&mut batch, Vec::with_capacity(READ_BYTES + 64 * 1024));
                    if tx.send(Some(full)).await.is_err() {
                        // The opener stopped: it says why below.
                        return Ok(());
                    }
                }
                if since >= PATCH_BYTES || done == total {
                    since = 0;
                    progress(Progress {
                        done,
                        total,
                        resumed_from: from,
                    });
                }
            }
            if done != total {
                // What did arrive goes to the thread, to be kept for the resume.
                if !batch.is_empty() {
                    let _ = tx.send(Some(batch)).await;
                }
                return Err(broke(done));
            }
            Ok::<(), ClientError>(())
        }
        .await;
        if fetched.is_ok() {
            let _ = tx.send(None).await;
        }
        drop(tx);
        let opened = opener
            .await
            .map_err(|e| ClientError::Storage(format!("the decrypting task failed: {e}")))?;
        // A refusal from the opener (the blob did not verify) says more than a cut-off fetch.
        match (opened, fetched) {
            (Err(stop), _) => Err(stop),
            (Ok(_), Err(e)) => Err(Stop::Other(e)),
            (Ok(true), Ok(())) => Ok(()),
            (Ok(false), Ok(())) => Err(Stop::Other(ClientError::Protocol(
                "the decrypting task ended before the file did".into(),
            ))),
        }
    }
}

/// A piece of blob on its way from the socket to the decrypting thread; `None`: that was all
/// of it, check it whole.
type Chunk = Option<Vec<u8>>;

/// Why a download stopped: the blob (or what a cut-off run kept of it) did not verify, so nothing
/// of it may stay; or something else (a cut, a full disk), after which what verified stays for a
/// resume.
enum Stop {
    Refused(ClientError),
    Other(ClientError),
}

impl From<ClientError> for Stop {
    fn from(e: ClientError) -> Self {
        Stop::Other(e)
    }
}

fn refused(e: attachment::AttachmentError) -> Stop {
    Stop::Refused(ClientError::Protocol(format!(
        "the file did not verify, so nothing was written: {e}"
    )))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Decrypts a blob into `tmp` as it arrives. The first `kept` bytes of `tmp` (whole segments
/// a cut-off run verified) stay: they are encrypted again under the blob's `header` and fed to
/// the decryptor, so that it and the blob's hash stand where the fetch goes on (kept bytes that
/// changed fail the whole hash at the end). Every segment and the whole hash must verify.
/// `Ok(false)`: the pieces stopped before the end was announced (a cut-off fetch).
fn open_blob(
    rec: &AttachmentRecord,
    tmp: &Path,
    kept: u64,
    header: Option<Vec<u8>>,
    mut rx: tokio::sync::mpsc::Receiver<Chunk>,
) -> Result<bool, Stop> {
    let key =
        FileKey::from_bytes(&unhex(&rec.key)?).map_err(|e| ClientError::Storage(e.to_string()))?;
    let hash: [u8; 32] = unhex(&rec.hash)?
        .try_into()
        .map_err(|_| ClientError::Storage("a stored file hash is not 32 bytes".into()))?;
    let mut d = Decryptor::new(&key, rec.size, Some(hash));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(tmp)
        .map_err(|e| io_err("writing", tmp, e))?;
    file.set_len(kept).map_err(|e| io_err("writing", tmp, e))?;
    let mut plain = Vec::with_capacity(READ_BYTES + attachment::SEGMENT);
    if kept > 0 {
        let header =
            header.ok_or_else(|| ClientError::Protocol("no header to resume with".into()))?;
        let mut enc = Encryptor::resume(&key, rec.size, &header).map_err(refused)?;
        let mut buf = vec![0u8; READ_BYTES];
        let mut cipher = Vec::with_capacity(READ_BYTES + 2 * attachment::SEGMENT);
        let mut left = kept;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            file.read_exact(&mut buf[..n])
                .map_err(|e| io_err("reading", tmp, e))?;
            cipher.clear();
            enc.push(&buf[..n], &mut cipher).map_err(refused)?;
            plain.clear();
            d.push(&cipher, &mut plain).map_err(refused)?;
            left -= n as u64;
        }
    }
    // Writing (and flushing to disk as it goes) runs on a third thread, so that the disk's time
    // overlaps the decryption instead of following it in one long sync at the end.
    let (wtx, wrx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let writer = {
        let tmp = tmp.to_owned();
        std::thread::spawn(move || -> Result<std::fs::File, ClientError> {
            let mut file = file;
            let mut unsynced = 0usize;
            for piece in wrx {
                file.write_all(&piece)
                    .map_err(|e| io_err("writing", &tmp, e))?;
                unsynced += piece.len();
                if unsynced >= SYNC_EVERY {
                    unsynced = 0;
                    file.sync_data().map_err(|e| io_err("writing", &tmp, e))?;
                }
            }
            Ok(file)
        })
    };
    let finish_writer =
        |wtx: std::sync::mpsc::SyncSender<Vec<u8>>,
         writer: std::thread::JoinHandle<Result<std::fs::File, ClientError>>| {
            drop(wtx);
            writer
                .join()
                .map_err(|_| ClientError::Storage("the writing thread failed".into()))?
        };
    let mut verified = true;
    loop {
        match rx.blocking_recv() {
            Some(Some(chunk)) => {
                let mut plain = Vec::with_capacity(chunk.len());
                if let Err(e) = d.push(&chunk, &mut plain) {
                    let _ = finish_writer(wtx, writer);
                    return Err(refused(e));
                }
                if wtx.send(plain).is_err() {
                    break; // the writer failed: it says why below
                }
            }
            Some(None) => break,
            // The fetch stopped early: nothing to verify yet (the next run resumes).
            None => {
                verified = false;
                break;
            }
        }
    }
    let file = finish_writer(wtx, writer)?;
    if !verified {
        return Ok(false);
    }
    d.finish().map_err(refused)?;
    file.sync_all().map_err(|e| io_err("writing", tmp, e))?;
    Ok(true)
}

impl crate::Dm<'_> {
    /// Sends a file (creating the DM first if needed); see [`Client::send_file_to`].
    pub async fn send_file(
        self,
        file: &FileToSend,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Message, SyncReport), ClientError> {
        let conv = self
            .client
            .run(self.client.engine.dm_conversation(self.peer))
            .await?;
        self.client.send_file_to(&conv, file, progress).await
    }
}

impl crate::Group<'_> {
    /// Sends a file to the group (after a sync); see [`Client::send_file_to`].
    pub async fn send_file(
        self,
        file: &FileToSend,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Message, SyncReport), ClientError> {
        self.client.sync().await?;
        let conv = self.client.engine.group_conversation(self.group)?;
        self.client.send_file_to(&conv, file, progress).await
    }
}
