//! Attachment encryption: a file becomes a blob the server stores and cannot read, which a
//! receiver can fetch and verify whole or one 64 KiB segment at a time, in bounded memory.
//!
//! The blob is a header followed by segments:
//!
//! ```text
//! header  = "SOTTOATT" | version 1 | alg 1 | log2(segment) 16 | 0 | nonce prefix (7) | commitment (32)
//! segment = ChaCha20-Poly1305(key, prefix | BE32(index) | last flag, aad = header, plaintext) (+16)
//! ```
//!
//! - A fresh random 32-byte file key per file ([`FileKey`]); the AEAD key is derived from it with
//!   HKDF-SHA256 (salt: the nonce prefix).
//! - The segments are the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár), as the `aead`
//!   crate's `StreamBE32` builds it: each segment's nonce names its index and whether it is the
//!   last, so a segment moved, swapped, dropped from the end or appended is detected. The header
//!   is every segment's associated data, so its fields cannot be changed either.
//! - ChaCha20-Poly1305, like AES-GCM, does not commit to its key: one ciphertext can be made to
//!   decrypt under two keys ("invisible salamanders"), which would let a sender show an abuse
//!   reviewer other content than it showed the recipient. The header carries HMAC-SHA256 of the
//!   rest of the header under the file key, checked before anything is decrypted: the blob
//!   commits to the key.
//! - Before encryption the plaintext is padded with zeros to a bucket ([`padded_len`]: Signal's
//!   steps of 5 %, from 541 bytes, in integer arithmetic so every platform agrees), so the blob's
//!   size tells the server little. Receivers check the padding is zeros.
//! - The message carries the file key, the plaintext size and the SHA-256 of the whole blob
//!   (MIMI `ExternalPart`: `key`, `size`, `contentHash`); a whole download checks the hash too.
//!
//! ChaCha20-Poly1305 rather than AES-256-GCM: it is as fast in software as AES-GCM is with AES
//! instructions, and constant-time without them, as in the browser's WebAssembly.

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
/// Bytes a segment's tag adds.
pub const TAG: usize = 16;
/// Bytes of the header.
pub const HEADER_LEN: usize = 51;
/// The smallest padded size (Signal's).
pub const MIN_PADDED: u64 = 541;
/// The MIMI `encAlg` of this scheme: RFC 5116 keeps 32768-65535 for private use, and STREAM has
/// no IANA number.
pub const ENC_ALG: u16 = 0xF5A1;
/// The MIMI `hashAlg` of `contentHash` (IANA named-information: sha-256).
pub const HASH_ALG: u8 = 1;

const MAGIC: &[u8; 8] = b"SOTTOATT";
const VERSION: u8 = 1;
const ALG_STREAM_CHACHA20POLY1305: u8 = 1;
const SEGMENT_LOG2: u8 = 16;
const PREFIX_LEN: usize = 7;
const COMMITTED: usize = HEADER_LEN - 32;

/// Why a blob was refused. Every failure names where, never what the plaintext was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    /// The header is not one this version reads.
    #[error("the attachment's header is not a Sotto attachment header ({0})")]
    Header(&'static str),
    /// The header's key commitment does not match the key the message gave.
    #[error("the attachment was not encrypted with the key its message gives")]
    Commitment,
    /// A segment did not verify: changed, moved, or from another file.
    #[error("segment {0} of the attachment does not verify (changed, moved or from another file)")]
    Segment(u64),
    /// The padding after the file is not zeros.
    #[error("the attachment's padding is not zeros")]
    Padding,
    /// The blob ended early.
    #[error("the attachment is cut short")]
    Truncated,
    /// The blob goes on past its end.
    #[error("the attachment has bytes past its end")]
    TooLong,
    /// The whole blob's hash is not the one the message gives.
    #[error("the attachment's hash is not the one its message gives")]
    Hash,
    /// More or less plaintext than the size announced.
    #[error("the file is not the size announced ({0})")]
    Size(&'static str),
    /// A key of the wrong length.
    #[error("an attachment key must be 32 bytes")]
    Key,
}

/// The largest file a message may announce (2 GiB; servers choose their own limit below it).
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Whether `s` is a blob id as servers make them: 32 random bytes, as 64 lowercase hex digits.
pub fn is_blob_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A file's key. Zeroed on drop; never printed.
#[derive(Clone)]
pub struct FileKey(Zeroizing<[u8; 32]>);

impl PartialEq for FileKey {
    fn eq(&self, other: &Self) -> bool {
        self.0[..] == other.0[..]
    }
}

impl Eq for FileKey {}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(..)")
    }
}

impl FileKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Self(k)
    }

    /// A key as a message carries it.
    pub fn from_bytes(b: &[u8]) -> Result<Self, AttachmentError> {
        let a: [u8; 32] = b.try_into().map_err(|_| AttachmentError::Key)?;
        Ok(Self(Zeroizing::new(a)))
    }

    /// The key's bytes, for the message.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn commitment(&self, header: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"sotto attachment v1 key commitment");
        mac.update(&header[..COMMITTED]);
        mac
    }

    fn stream(&self, prefix: &[u8]) -> StreamBE32<ChaCha20Poly1305> {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(prefix), self.0.as_ref());
        let mut k = Zeroizing::new([0u8; 32]);
        hk.expand(b"sotto attachment v1 segment key", k.as_mut())
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF length"));
        let aead = ChaCha20Poly1305::new(k.as_ref().into());
        StreamBE32::from_aead(aead, prefix.into())
    }
}

/// The size a file of `size` bytes is padded to: 541 bytes, then steps of 5 % (each step at
/// least one byte), the first step at least `size`.
pub fn padded_len(size: u64) -> u64 {
    let mut b = MIN_PADDED;
    while b < size {
        b = b.saturating_add((b / 20).max(1));
    }
    b
}

/// How many segments a file of `size` bytes is encrypted in.
pub fn segment_count(size: u64) -> u64 {
    padded_len(size).div_ceil(SEGMENT as u64)
}

/// The length of the blob of a file of `size` bytes.
pub fn blob_len(size: u64) -> u64 {
    HEADER_LEN as u64 + padded_len(size) + TAG as u64 * segment_count(size)
}

/// Where segment `index` of a file of `size` bytes sits in its blob: the byte range
/// `start..end`, for an HTTP Range request. `None` past the last segment.
pub fn segment_range(size: u64, index: u64) -> Option<std::ops::Range<u64>> {
    let n = segment_count(size);
    if index >= n {
        return None;
    }
    let start = HEADER_LEN as u64 + index * (SEGMENT + TAG) as u64;
    let plain = if index + 1 == n {
        padded_len(size) - index * SEGMENT as u64
    } else {
        SEGMENT as u64
    };
    Some(start..start + plain + TAG as u64)
}

fn position(index: u64) -> Result<u32, AttachmentError> {
    u32::try_from(index).map_err(|_| AttachmentError::Size("too many segments"))
}

/// Encrypts a file of a size known in advance, a piece at a time: memory stays at about one
/// segment, whatever the file's size.
pub struct Encryptor {
    stream: StreamBE32<ChaCha20Poly1305>,
    header: [u8; HEADER_LEN],
    header_out: bool,
    size: u64,
    taken: u64,
    padded: u64,
    index: u64,
    count: u64,
    buf: Vec<u8>,
    hash: Sha256,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encryptor(segment {} of {})", self.index, self.count)
    }
}

impl Encryptor {
    /// Starts encrypting a file of exactly `size` bytes under `key`.
    pub fn new(key: &FileKey, size: u64) -> Self {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        header[9] = ALG_STREAM_CHACHA20POLY1305;
        header[10] = SEGMENT_LOG2;
        rand::rngs::OsRng.fill_bytes(&mut header[12..12 + PREFIX_LEN]);
        let commit = key.commitment(&header).finalize().into_bytes();
        header[COMMITTED..].copy_from_slice(&commit);
        Self::start(key, size, header)
    }

    /// Starts encrypting again with the header of an earlier run ([`Encryptor::header`]): the
    /// same key, header and file give the same blob byte for byte, so an upload cut off part way
    /// can go on where the server's copy ends. The header must be one made for `key`.
    pub fn resume(key: &FileKey, size: u64, header: &[u8]) -> Result<Self, AttachmentError> {
        check_header(key, header)?;
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(header);
        Ok(Self::start(key, size, h))
    }

    /// The blob's header (not secret: it is the blob's first bytes).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.header
    }

    /// SHA-256 of the blob bytes produced so far.
    pub fn hash_so_far(&self) -> [u8; 32] {
        self.hash.clone().finalize().into()
    }

    fn start(key: &FileKey, size: u64, header: [u8; HEADER_LEN]) -> Self {
        Self {
            stream: key.stream(&header[12..12 + PREFIX_LEN]),
            header,
            header_out: false,
            size,
            taken: 0,
            padded: padded_len(size),
            index: 0,
            count: segment_count(size),
            buf: Vec::with_capacity(SEGMENT + TAG),
            hash: Sha256::new(),
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.hash.update(bytes);
        out.extend_from_slice(bytes);
    }

    fn header_once(&mut self, out: &mut Vec<u8>) {
        if !self.header_out {
            self.header_out = true;
            let h = self.header;
            self.emit(out, &h);
        }
    }

    /// Encrypts the segment in `buf` (full, or the last) and appends it to `out`.
    fn seal(&mut self, out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let last = self.index + 1 == self.count;
        let mut seg = std::mem::take(&mut self.buf);
        self.stream
            .encrypt_in_place(position(self.index)?, last, &self.header, &mut seg)
            .map_err(|_| AttachmentError::Size("segment"))?;
        self.emit(out, &seg);
        seg.clear();
        self.buf = seg;
        self.index += 1;
        Ok(())
    }

    /// Takes the next bytes of the file and appends to `out` what is ready of the blob (the
    /// header first, then each full segment).
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        if data.len() as u64 > self.size - self.taken {
            return Err(AttachmentError::Size("more bytes than announced"));
        }
        self.header_once(out);
        self.taken += data.len() as u64;
        while !data.is_empty() {
            let n = (SEGMENT - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            // A full segment is sealed once more follows it (plaintext or padding).
            if self.buf.len() == SEGMENT && self.index + 1 < self.count {
                self.seal(out)?;
            }
        }
        Ok(())
    }

    /// Once the whole file has been pushed: appends the padding's next segment (at most one per
    /// call, so memory stays bounded however much padding there is) and returns the SHA-256 of
    /// the whole blob when the last segment is out, else `None` (call again).
    pub fn finish_step(&mut self, out: &mut Vec<u8>) -> Result<Option<[u8; 32]>, AttachmentError> {
        if self.taken != self.size {
            return Err(AttachmentError::Size("fewer bytes than announced"));
        }
        if self.index >= self.count {
            return Err(AttachmentError::Size("already finished"));
        }
        self.header_once(out);
        let end = if self.index + 1 == self.count {
            (self.padded - self.index * SEGMENT as u64) as usize
        } else {
            SEGMENT
        };
        self.buf.resize(end, 0);
        self.seal(out)?;
        if self.index == self.count {
            return Ok(Some(self.hash.clone().finalize().into()));
        }
        Ok(None)
    }
}

/// Encrypts a whole file held in memory: (blob, SHA-256 of the blob). For small files and tests;
/// large ones go through [`Encryptor`].
pub fn encrypt(key: &FileKey, file: &[u8]) -> Result<(Vec<u8>, [u8; 32]), AttachmentError> {
    let mut enc = Encryptor::new(key, file.len() as u64);
    let mut out = Vec::with_capacity(blob_len(file.len() as u64) as usize);
    enc.push(file, &mut out)?;
    loop {
        if let Some(hash) = enc.finish_step(&mut out)? {
            return Ok((out, hash));
        }
    }
}

fn check_header(key: &FileKey, header: &[u8]) -> Result<(), AttachmentError> {
    if header.len() != HEADER_LEN {
        return Err(AttachmentError::Truncated);
    }
    if &header[..8] != MAGIC {
        return Err(AttachmentError::Header("magic"));
    }
    if header[8] != VERSION {
        return Err(AttachmentError::Header("version"));
    }
    if header[9] != ALG_STREAM_CHACHA20POLY1305 || header[10] != SEGMENT_LOG2 || header[11] != 0 {
        return Err(AttachmentError::Header("algorithm"));
    }
    key.commitment(header)
        .verify_slice(&header[COMMITTED..])
        .map_err(|_| AttachmentError::Commitment)
}

/// Decrypts one segment fetched on its own (random access: seeking in a video): `header` is the
/// blob's first [`HEADER_LEN`] bytes, `segment` the bytes at [`segment_range`]. Returns the
/// segment's file bytes (padding removed, and checked to be zeros).
pub fn open_segment(
    key: &FileKey,
    header: &[u8],
    size: u64,
    index: u64,
    segment: &[u8],
) -> Result<Vec<u8>, AttachmentError> {
    check_header(key, header)?;
    let range = segment_range(size, index).ok_or(AttachmentError::TooLong)?;
    if segment.len() as u64 != range.end - range.start {
        return Err(AttachmentError::Truncated);
    }
    let last = index + 1 == segment_count(size);
    let stream = key.stream(&header[12..12 + PREFIX_LEN]);
    let mut buf = segment.to_vec();
    stream
        .decrypt_in_place(position(index)?, last, header, &mut buf)
        .map_err(|_| AttachmentError::Segment(index))?;
    strip_padding(&mut buf, size, index)?;
    Ok(buf)
}

/// Cuts a decrypted segment at the file's end, checking what follows is zeros.
fn strip_padding(buf: &mut Vec<u8>, size: u64, index: u64) -> Result<(), AttachmentError> {
    let start = index * SEGMENT as u64;
    let keep = size.saturating_sub(start).min(buf.len() as u64) as usize;
    if buf[keep..].iter().any(|b| *b != 0) {
        return Err(AttachmentError::Padding);
    }
    buf.truncate(keep);
    Ok(())
}

/// Decrypts a blob as it arrives, a piece at a time, releasing each segment's file bytes only
/// once that segment has verified. The caller keeps what it gets aside (a temporary file) until
/// [`Decryptor::finish`] says the whole blob verified.
pub struct Decryptor {
    key: FileKey,
    stream: Option<StreamBE32<ChaCha20Poly1305>>,
    header: Vec<u8>,
    size: u64,
    count: u64,
    index: u64,
    buf: Vec<u8>,
    hash: Sha256,
    expected: Option<[u8; 32]>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Decryptor(segment {} of {})", self.index, self.count)
    }
}

impl Decryptor {
    /// Starts decrypting the blob of a file of `size` bytes under `key`; with `expected`, the
    /// whole blob must also hash to it.
    pub fn new(key: &FileKey, size: u64, expected: Option<[u8; 32]>) -> Self {
        Self {
            key: key.clone(),
            stream: None,
            header: Vec::with_capacity(HEADER_LEN),
            size,
            count: segment_count(size),
            index: 0,
            buf: Vec::with_capacity(SEGMENT + TAG),
            hash: Sha256::new(),
            expected,
        }
    }

    /// The length of segment `index` in the blob.
    fn segment_len(&self) -> usize {
        segment_range(self.size, self.index).map_or(0, |r| (r.end - r.start) as usize)
    }

    /// Takes the next bytes of the blob and appends to `out` the file bytes of every segment
    /// completed and verified.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        self.hash.update(data);
        if self.stream.is_none() {
            let n = (HEADER_LEN - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() < HEADER_LEN {
                return Ok(());
            }
            check_header(&self.key, &self.header)?;
            self.stream = Some(self.key.stream(&self.header[12..12 + PREFIX_LEN]));
        }
        while !data.is_empty() {
            if self.index >= self.count {
                return Err(AttachmentError::TooLong);
            }
            let want = self.segment_len();
            let n = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == want {
                self.open(out)?;
            }
        }
        Ok(())
    }

    fn open(&mut self, out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let last = self.index + 1 == self.count;
        let Some(stream) = &self.stream else {
            return Err(AttachmentError::Truncated);
        };
        stream
            .decrypt_in_place(position(self.index)?, last, &self.header, &mut self.buf)
            .map_err(|_| AttachmentError::Segment(self.index))?;
        strip_padding(&mut self.buf, self.size, self.index)?;
        out.extend_from_slice(&self.buf);
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Whether every segment has arrived and verified, and (if expected) the blob's hash
    /// matches. Until this says so, nothing decrypted may be shown as the file.
    pub fn finish(self) -> Result<(), AttachmentError> {
        if self.index < self.count {
            return Err(AttachmentError::Truncated);
        }
        if let Some(want) = self.expected {
            let got: [u8; 32] = self.hash.finalize().into();
            if got != want {
                return Err(AttachmentError::Hash);
            }
        }
        Ok(())
    }
}

/// Decrypts a whole blob held in memory (for small files and tests).
pub fn decrypt(
    key: &FileKey,
    size: u64,
    expected: Option<[u8; 32]>,
    blob: &[u8],
) -> Result<Vec<u8>, AttachmentError> {
    let mut d = Decryptor::new(key, size, expected);
    let mut out = Vec::new();
    d.push(blob, &mut out)?;
    d.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_the_edges() {
        for n in [
            0,
            1,
            540,
            541,
            542,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            10_000_000,
        ] {
            let key = FileKey::random();
            let f = file(n);
            let (blob, hash) = encrypt(&key, &f).unwrap();
            assert_eq!(blob.len() as u64, blob_len(n as u64), "{n}");
            assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(&blob)));
            assert_eq!(
                decrypt(&key, n as u64, Some(hash), &blob).unwrap(),
                f,
                "{n}"
            );
        }
    }

    #[test]
    fn a_resumed_encryption_gives_the_same_blob_and_only_with_its_key() {
        let key = FileKey::random();
        let f = file(3 * SEGMENT + 5);
        let (blob, hash) = {
            let mut e = Encryptor::new(&key, f.len() as u64);
            let mut out = Vec::new();
            e.push(&f, &mut out).unwrap();
            let header = e.header();
            assert_eq!(&out[..HEADER_LEN], &header[..]);
            assert_eq!(e.hash_so_far(), <[u8; 32]>::from(Sha256::digest(&out)));
            let hash = loop {
                if let Some(h) = e.finish_step(&mut out).unwrap() {
                    break h;
                }
            };
            (out, hash)
        };
        let mut again = Encryptor::resume(&key, f.len() as u64, &blob[..HEADER_LEN]).unwrap();
        let mut out = Vec::new();
        again.push(&f, &mut out).unwrap();
        let h2 = loop {
            if let Some(h) = again.finish_step(&mut out).unwrap() {
                break h;
            }
        };
        assert_eq!((out, h2), (blob.clone(), hash));
        assert_eq!(
            Encryptor::resume(&FileKey::random(), f.len() as u64, &blob[..HEADER_LEN]).err(),
            Some(AttachmentError::Commitment)
        );
    }

    #[test]
    fn padding_hides_the_size_within_5_percent() {
        assert_eq!(padded_len(0), 541);
        assert_eq!(padded_len(541), 541);
        assert_eq!(padded_len(542), 568);
        let mut last = 0;
        for size in [1u64, 1000, 65_536, 1 << 20, 10_000_000, 2 << 30] {
            let p = padded_len(size);
            assert!(p >= size && p > last);
            assert!(
                p as f64 <= (size.max(541) as f64) * 1.05 + 1.0,
                "{size} -> {p}"
            );
            last = p;
        }
        // Files of nearby sizes make blobs of one size.
        assert_eq!(blob_len(1_000_000), blob_len(1_010_000));
    }

    #[test]
    fn any_change_is_refused() {
        let key = FileKey::random();
        let n = 3 * SEGMENT + 100;
        let f = file(n);
        let (blob, hash) = encrypt(&key, &f).unwrap();
        let size = n as u64;
        let open = |b: &[u8]| decrypt(&key, size, None, b);
        // One byte flipped anywhere in a segment.
        let mut b = blob.clone();
        b[HEADER_LEN + SEGMENT + TAG + 5] ^= 1;
        assert_eq!(open(&b), Err(AttachmentError::Segment(1)));
        // Two segments swapped.
        let (r0, r1) = (
            segment_range(size, 0).unwrap(),
            segment_range(size, 1).unwrap(),
        );
        let mut b = blob.clone();
        let s0 = blob[r0.start as usize..r0.end as usize].to_vec();
        let s1 = blob[r1.start as usize..r1.end as usize].to_vec();
        b[r0.start as usize..r0.end as usize].copy_from_slice(&s1);
        b[r1.start as usize..r1.end as usize].copy_from_slice(&s0);
        assert_eq!(open(&b), Err(AttachmentError::Segment(0)));
        // The tail cut: at a segment boundary, and inside one.
        let r3 = segment_range(size, 3).unwrap();
        assert_eq!(
            open(&blob[..r3.start as usize]),
            Err(AttachmentError::Truncated)
        );
        assert_eq!(
            open(&blob[..blob.len() - 1]),
            Err(AttachmentError::Truncated)
        );
        // A last segment claimed early: the file said to be shorter than it is.
        assert!(decrypt(&key, r3.start - HEADER_LEN as u64 - 100, None, &blob).is_err());
        // Bytes appended.
        let mut b = blob.clone();
        b.push(0);
        assert_eq!(open(&b), Err(AttachmentError::TooLong));
        // The header changed, or another key.
        let mut b = blob.clone();
        b[13] ^= 1;
        assert_eq!(open(&b), Err(AttachmentError::Commitment));
        assert_eq!(
            decrypt(&FileKey::random(), size, None, &blob),
            Err(AttachmentError::Commitment)
        );
        // A hash that is not the blob's.
        let mut other = hash;
        other[0] ^= 1;
        assert_eq!(
            decrypt(&key, size, Some(other), &blob),
            Err(AttachmentError::Hash)
        );
        assert_eq!(decrypt(&key, size, Some(hash), &blob).unwrap(), f);
    }

    #[test]
    fn one_segment_opens_on_its_own() {
        let key = FileKey::random();
        let n = 2 * SEGMENT + 10;
        let f = file(n);
        let (blob, _) = encrypt(&key, &f).unwrap();
        let size = n as u64;
        let header = &blob[..HEADER_LEN];
        for i in 0..segment_count(size) {
            let r = segment_range(size, i).unwrap();
            let got = open_segment(
                &key,
                header,
                size,
                i,
                &blob[r.start as usize..r.end as usize],
            )
            .unwrap();
            let from = i as usize * SEGMENT;
            assert_eq!(got, f[from..(from + SEGMENT).min(n)], "{i}");
        }
        // A segment given for another index does not open.
        let r1 = segment_range(size, 1).unwrap();
        assert_eq!(
            open_segment(
                &key,
                header,
                size,
                0,
                &blob[r1.start as usize..r1.end as usize]
            ),
            Err(AttachmentError::Segment(0))
        );
    }

    #[test]
    fn the_announced_size_is_held_to() {
        let key = FileKey::random();
        let mut e = Encryptor::new(&key, 10);
        let mut out = Vec::new();
        assert!(e.push(&[0; 11], &mut out).is_err());
        e.push(&[0; 5], &mut out).unwrap();
        assert_eq!(
            e.finish_step(&mut out),
            Err(AttachmentError::Size("fewer bytes than announced"))
        );
        assert!(format!("{key:?}").len() < 16);
    }

    #[test]
    fn nonzero_padding_is_refused() {
        // A modified sender encrypts a longer file and announces a shorter size: the segments
        // verify but the bytes after the announced end are not zeros.
        let key = FileKey::random();
        let (blob, _) = encrypt(&key, &[1u8; 500]).unwrap();
        assert_eq!(
            decrypt(&key, 400, None, &blob),
            Err(AttachmentError::Padding)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Fed in pieces of any sizes, both ways, the result is the same as in one piece.
        #[test]
        fn streaming_in_pieces_agrees(n in 0usize..200_000, cuts in proptest::collection::vec(1usize..70_000, 1..8)) {
            let key = FileKey::random();
            let f = file(n);
            let mut e = Encryptor::new(&key, n as u64);
            let mut blob = Vec::new();
            let mut rest = &f[..];
            for c in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let k = (*c).min(rest.len());
                e.push(&rest[..k], &mut blob).unwrap();
                rest = &rest[k..];
            }
            let hash = loop {
                if let Some(h) = e.finish_step(&mut blob).unwrap() { break h; }
            };
            prop_assert_eq!(blob.len() as u64, blob_len(n as u64));
            let mut d = Decryptor::new(&key, n as u64, Some(hash));
            let mut out = Vec::new();
            let mut rest = &blob[..];
            for c in cuts.iter().rev().cycle() {
                if rest.is_empty() { break; }
                let k = (*c).min(rest.len());
                d.push(&rest[..k], &mut out).unwrap();
                rest = &rest[k..];
            }
            d.finish().unwrap();
            prop_assert_eq!(out, f);
        }
    }
}
