//! The IETF MIMI content format (draft-ietf-mimi-content-09) and message status reports
//! (draft-mahy-mimi-message-status-01), in deterministic CBOR.
//!
//! This module is the format only: it decodes every well-formed message, within the draft's limits
//! (`NestedPart`s at most 4 deep, extensions at most 4 deep, valid UTF-8, integer or short text map
//! keys) and Sotto's size bounds, and re-encodes it byte for byte. What a message *means* to Sotto
//! (a text, a reaction, an edit...) is [`crate::content`]'s business.
//!
//! ```text
//! mimiContent = [salt: bstr .size 16, replaces: null / MessageId, topicId: bstr,
//!                expires: null / [relative: bool, time: uint .size 4],
//!                inReplyTo: null / MessageId, extensions: {* key => any}, NestedPart]
//! NestedPart  = [disposition: uint, language: tstr, NullPart // SinglePart // ExternalPart // MultiPart]
//! ```

use sha2::{Digest, Sha256};

use crate::cbor::{self, Dec};
use crate::codec::CodecError;

/// The draft's bound on `NestedPart` nesting (the body is level 1).
pub const MAX_PART_DEPTH: usize = 4;
/// The draft's bound on nesting inside the extensions map (the map is level 1).
pub const MAX_EXTENSION_DEPTH: usize = 4;
/// The largest encoded extension value.
pub const MAX_EXTENSION_BYTES: usize = 4096;
/// At most this many extensions.
pub const MAX_EXTENSIONS: usize = 32;
/// At most this many parts in a whole message.
pub const MAX_PARTS: usize = 64;
/// The largest inline part content or text field.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;
const MAX_SHORT: usize = 1024;

/// Hash algorithm id of SHA-256 in the IANA named-information registry: a MIMI id's first byte.
pub const SHA256_ID: u8 = 1;

/// A MIMI message id: the hash algorithm id, then 31 bytes of the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MimiId(pub [u8; 32]);

impl MimiId {
    /// The id of the message whose encoding is `message` (which must carry `salt`), sent by
    /// `sender_uri` in `room_uri` (section "Message ID": each URI length-prefixed with its length
    /// in octets as a big-endian `u16`, then the message, then the salt again).
    ///
    /// Fails only for a URI longer than 65,535 bytes.
    pub fn compute(
        sender_uri: &str,
        room_uri: &str,
        message: &[u8],
        salt: &[u8; 16],
    ) -> Result<Self, CodecError> {
        let mut h = Sha256::new();
        for uri in [sender_uri, room_uri] {
            let len = u16::try_from(uri.len()).map_err(|_| CodecError::Invalid("URI length"))?;
            h.update(len.to_be_bytes());
            h.update(uri.as_bytes());
        }
        h.update(message);
        h.update(salt);
        let digest = h.finalize();
        let mut id = [0u8; 32];
        id[0] = SHA256_ID;
        id[1..].copy_from_slice(&digest[..31]);
        Ok(Self(id))
    }
}

/// When a message expires: `relative` seconds after it is read, or at a Unix time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiration {
    /// Relative to reading (true) or an absolute Unix time (false).
    pub relative: bool,
    /// Seconds.
    pub time: u32,
}

/// An extension's key: an integer (positive ones are registered by IANA; negative ones are for
/// private use) or a text name of 1 to 255 bytes (private use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionKey {
    /// An integer key.
    Int(i64),
    /// A text key.
    Text(String),
}

impl ExtensionKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Int(n) => cbor::int(out, *n),
            Self::Text(s) => cbor::text(out, s),
        }
    }
}

/// One extension: its key and its value as encoded CBOR.
#[derive(Clone, PartialEq, Eq)]
pub struct Extension {
    /// The key.
    pub key: ExtensionKey,
    /// The value's CBOR encoding (one well-formed item).
    pub value: Vec<u8>,
}

// Redacted: an extension's value is part of the plaintext.
impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extension({:?}, {} bytes)", self.key, self.value.len())
    }
}

/// The standard dispositions (others are kept as numbers).
pub mod disposition {
    /// Unspecified.
    pub const UNSPECIFIED: u8 = 0;
    /// Render according to local policy.
    pub const RENDER: u8 = 1;
    /// A reaction to another message.
    pub const REACTION: u8 = 2;
    /// Inline content.
    pub const INLINE: u8 = 4;
    /// An attachment, downloaded rather than shown at once.
    pub const ATTACHMENT: u8 = 6;
    /// A preview of something.
    pub const PREVIEW: u8 = 8;
}

/// How the parts of a [`Part::Multi`] relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSemantics {
    /// Show one of them (alternatives).
    ChooseOne,
    /// They form one unit.
    SingleUnit,
    /// Process each of them.
    ProcessAll,
}

/// A body part reached through a URL (an attachment, a conference).
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalPart {
    /// Media type.
    pub content_type: String,
    /// Where the content is.
    pub url: String,
    /// When the URL expires (Unix seconds, 0: never).
    pub expires: u32,
    /// Size of the content in bytes.
    pub size: u64,
    /// AEAD algorithm id (0: not encrypted).
    pub enc_alg: u16,
    /// The content key.
    pub key: Vec<u8>,
    /// The AEAD nonce.
    pub nonce: Vec<u8>,
    /// Additional authenticated data.
    pub aad: Vec<u8>,
    /// Hash algorithm id of `content_hash` (0: none).
    pub hash_alg: u8,
    /// Hash of the content at the URL.
    pub content_hash: Vec<u8>,
    /// A description for the user.
    pub description: String,
    /// A file name.
    pub filename: String,
}

// Redacted: the key opens the content, and the URL, names and hash describe it.
impl std::fmt::Debug for ExternalPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalPart")
            .field("content_type", &self.content_type)
            .field("size", &self.size)
            .field("enc_alg", &self.enc_alg)
            .finish_non_exhaustive()
    }
}

impl Drop for ExternalPart {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// What a `NestedPart` holds.
#[derive(Clone, PartialEq, Eq)]
pub enum Part {
    /// Nothing (deletes, unlikes).
    Null,
    /// One inline part.
    Single {
        /// Media type.
        content_type: String,
        /// The content.
        content: Vec<u8>,
    },
    /// A part reached through a URL.
    External(Box<ExternalPart>),
    /// Several parts.
    Multi {
        /// How they relate.
        semantics: PartSemantics,
        /// Two or more parts.
        parts: Vec<NestedPart>,
    },
}

// Redacted: a part's content is message plaintext.
impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => f.write_str("Null"),
            Self::Single {
                content_type,
                content,
            } => write!(f, "Single({content_type}, {} bytes)", content.len()),
            Self::External(e) => write!(f, "External({}, {} bytes)", e.content_type, e.size),
            Self::Multi { semantics, parts } => f
                .debug_struct("Multi")
                .field("semantics", semantics)
                .field("parts", parts)
                .finish(),
        }
    }
}

/// A body part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedPart {
    /// Disposition (see [`disposition`]); 9 to 255 are unknown ones.
    pub disposition: u8,
    /// Empty, or a comma-separated list of language tags.
    pub language: String,
    /// The part.
    pub part: Part,
}

impl NestedPart {
    /// A single inline part with no language.
    pub fn single(disposition: u8, content_type: &str, content: Vec<u8>) -> Self {
        Self {
            disposition,
            language: String::new(),
            part: Part::Single {
                content_type: content_type.to_owned(),
                content,
            },
        }
    }

    /// A null part.
    pub fn null(disposition: u8) -> Self {
        Self {
            disposition,
            language: String::new(),
            part: Part::Null,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let len = match &self.part {
            Part::Null => 3,
            Part::Single { .. } => 5,
            Part::External(_) => 15,
            Part::Multi { .. } => 5,
        };
        cbor::array(out, len);
        cbor::uint(out, u64::from(self.disposition));
        cbor::text(out, &self.language);
        match &self.part {
            Part::Null => cbor::uint(out, 0),
            Part::Single {
                content_type,
                content,
            } => {
                cbor::uint(out, 1);
                cbor::text(out, content_type);
                cbor::bytes(out, content);
            }
            Part::External(e) => {
                cbor::uint(out, 2);
                cbor::text(out, &e.content_type);
                cbor::text(out, &e.url);
                cbor::uint(out, u64::from(e.expires));
                cbor::uint(out, e.size);
                cbor::uint(out, u64::from(e.enc_alg));
                cbor::bytes(out, &e.key);
                cbor::bytes(out, &e.nonce);
                cbor::bytes(out, &e.aad);
                cbor::uint(out, u64::from(e.hash_alg));
                cbor::bytes(out, &e.content_hash);
                cbor::text(out, &e.description);
                cbor::text(out, &e.filename);
            }
            Part::Multi { semantics, parts } => {
                cbor::uint(out, 3);
                cbor::uint(
                    out,
                    match semantics {
                        PartSemantics::ChooseOne => 0,
                        PartSemantics::SingleUnit => 1,
                        PartSemantics::ProcessAll => 2,
                    },
                );
                cbor::array(out, parts.len());
                for p in parts {
                    p.encode(out);
                }
            }
        }
    }

    fn decode(d: &mut Dec<'_>, depth: usize, budget: &mut usize) -> Result<Self, CodecError> {
        if depth > MAX_PART_DEPTH {
            return Err(CodecError::Invalid("parts nested too deeply"));
        }
        *budget = budget
            .checked_sub(1)
            .ok_or(CodecError::Invalid("too many parts"))?;
        let len = d.array(15, "part")?;
        let disposition = d.uint(255, "disposition")? as u8;
        let language = d.text(MAX_SHORT, "language")?.to_owned();
        let cardinality = d.uint(3, "cardinality")?;
        let want = [3, 5, 15, 5][cardinality as usize];
        if len != want {
            return Err(CodecError::Invalid("part length"));
        }
        let part = match cardinality {
            0 => Part::Null,
            1 => Part::Single {
                content_type: d.text(MAX_SHORT, "content type")?.to_owned(),
                content: d.bytes(MAX_FIELD_BYTES, "part content")?.to_vec(),
            },
            2 => Part::External(Box::new(ExternalPart {
                content_type: d.text(MAX_SHORT, "content type")?.to_owned(),
                url: d.text(MAX_FIELD_BYTES, "url")?.to_owned(),
                expires: d.uint(u64::from(u32::MAX), "url expiry")? as u32,
                size: d.uint(u64::MAX, "size")?,
                enc_alg: d.uint(u64::from(u16::MAX), "encryption algorithm")? as u16,
                key: d.bytes(MAX_SHORT, "key")?.to_vec(),
                nonce: d.bytes(MAX_SHORT, "nonce")?.to_vec(),
                aad: d.bytes(MAX_FIELD_BYTES, "aad")?.to_vec(),
                hash_alg: d.uint(u64::from(u8::MAX), "hash algorithm")? as u8,
                content_hash: d.bytes(MAX_SHORT, "content hash")?.to_vec(),
                description: d.text(MAX_FIELD_BYTES, "description")?.to_owned(),
                filename: d.text(MAX_SHORT, "file name")?.to_owned(),
            })),
            _ => {
                let semantics = match d.uint(2, "part semantics")? {
                    0 => PartSemantics::ChooseOne,
                    1 => PartSemantics::SingleUnit,
                    _ => PartSemantics::ProcessAll,
                };
                let n = d.array(MAX_PARTS, "parts")?;
                if n < 2 {
                    return Err(CodecError::Invalid("a multipart needs two parts or more"));
                }
                let mut parts = Vec::with_capacity(n);
                for _ in 0..n {
                    parts.push(Self::decode(d, depth + 1, budget)?);
                }
                Part::Multi { semantics, parts }
            }
        };
        Ok(Self {
            disposition,
            language,
            part,
        })
    }
}

/// A MIMI content message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimiContent {
    /// Per-message random salt.
    pub salt: [u8; 16],
    /// The message this one edits or deletes (always the first version).
    pub replaces: Option<MimiId>,
    /// Thread or topic (empty: none).
    pub topic_id: Vec<u8>,
    /// When it expires.
    pub expires: Option<Expiration>,
    /// The message this one replies or reacts to.
    pub in_reply_to: Option<MimiId>,
    /// Extensions, sorted by the bytes of their encoded keys.
    pub extensions: Vec<Extension>,
    /// The body.
    pub body: NestedPart,
}

impl MimiContent {
    /// A message with `salt` and `body` and nothing else.
    pub fn new(salt: [u8; 16], body: NestedPart) -> Self {
        Self {
            salt,
            replaces: None,
            topic_id: Vec::new(),
            expires: None,
            in_reply_to: None,
            extensions: Vec::new(),
            body,
        }
    }

    /// The deterministic encoding. Extensions are written in the order of their encoded keys
    /// whatever their order in [`MimiContent::extensions`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        cbor::array(out, 7);
        cbor::bytes(out, &self.salt);
        let id = |out: &mut Vec<u8>, id: &Option<MimiId>| match id {
            Some(id) => cbor::bytes(out, &id.0),
            None => cbor::null(out),
        };
        id(out, &self.replaces);
        cbor::bytes(out, &self.topic_id);
        match &self.expires {
            Some(e) => {
                cbor::array(out, 2);
                cbor::boolean(out, e.relative);
                cbor::uint(out, u64::from(e.time));
            }
            None => cbor::null(out),
        }
        id(out, &self.in_reply_to);
        let mut ext: Vec<(Vec<u8>, &[u8])> = self
            .extensions
            .iter()
            .map(|e| {
                let mut k = Vec::new();
                e.key.encode(&mut k);
                (k, e.value.as_slice())
            })
            .collect();
        ext.sort();
        cbor::map(out, ext.len());
        for (k, v) in ext {
            out.extend_from_slice(&k);
            out.extend_from_slice(v);
        }
        self.body.encode(out);
    }

    /// The encoding, as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(&mut out);
        out
    }

    /// Decodes one message from the front of `d`, leaving what follows it.
    pub fn decode(d: &mut Dec<'_>) -> Result<Self, CodecError> {
        if d.array(7, "MIMI content")? != 7 {
            return Err(CodecError::Invalid("MIMI content"));
        }
        let salt: [u8; 16] = d
            .bytes(16, "salt")?
            .try_into()
            .map_err(|_| CodecError::Invalid("salt"))?;
        let id = |d: &mut Dec<'_>, what| -> Result<Option<MimiId>, CodecError> {
            if d.null() {
                return Ok(None);
            }
            let b: [u8; 32] = d
                .bytes(32, what)?
                .try_into()
                .map_err(|_| CodecError::Invalid(what))?;
            Ok(Some(MimiId(b)))
        };
        let replaces = id(d, "replaces")?;
        let topic_id = d.bytes(MAX_SHORT, "topic id")?.to_vec();
        let expires = if d.null() {
            None
        } else {
            if d.array(2, "expiration")? != 2 {
                return Err(CodecError::Invalid("expiration"));
            }
            Some(Expiration {
                relative: d.boolean("expiration")?,
                time: d.uint(u64::from(u32::MAX), "expiration")? as u32,
            })
        };
        let in_reply_to = id(d, "in reply to")?;
        let n = d.map(MAX_EXTENSIONS, "extensions")?;
        let mut extensions = Vec::with_capacity(n);
        let mut last: Option<&[u8]> = None;
        for _ in 0..n {
            let k = d.extension_key()?;
            if last.is_some_and(|l| l >= k) {
                return Err(CodecError::Invalid(
                    "extension keys out of order or repeated",
                ));
            }
            last = Some(k);
            let key = {
                let mut kd = Dec::new(k);
                if k[0] >> 5 == 3 {
                    ExtensionKey::Text(kd.text(255, "extension name")?.to_owned())
                } else if k[0] >> 5 == 0 {
                    ExtensionKey::Int(kd.uint(cbor::MAX_SAFE_INT, "extension key")? as i64)
                } else {
                    // A negative integer: its head carries -1 - n.
                    let mut raw = k.to_vec();
                    raw[0] &= 0x1f;
                    let n = Dec::new(&raw).uint(cbor::MAX_SAFE_INT, "extension key")?;
                    ExtensionKey::Int(-1 - n as i64)
                }
            };
            // The map is level 1, so a value may nest three more levels.
            let value = d.value(MAX_EXTENSION_DEPTH - 1)?;
            if value.len() > MAX_EXTENSION_BYTES {
                return Err(CodecError::Invalid("extension too large"));
            }
            extensions.push(Extension {
                key,
                value: value.to_vec(),
            });
        }
        let mut budget = MAX_PARTS;
        let body = NestedPart::decode(d, 1, &mut budget)?;
        Ok(Self {
            salt,
            replaces,
            topic_id,
            expires,
            in_reply_to,
            extensions,
            body,
        })
    }

    /// Decodes exactly one message: nothing may follow it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut d = Dec::new(bytes);
        let m = Self::decode(&mut d)?;
        if !d.rest().is_empty() {
            return Err(CodecError::TrailingBytes(d.rest().len()));
        }
        Ok(m)
    }

    /// This message's id when `sender_uri` sends it in `room_uri`.
    pub fn id(&self, sender_uri: &str, room_uri: &str) -> Result<MimiId, CodecError> {
        MimiId::compute(sender_uri, room_uri, &self.to_bytes(), &self.salt)
    }

    /// The value of the extension with integer key `key`.
    pub fn extension(&self, key: i64) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.key == ExtensionKey::Int(key))
            .map(|e| e.value.as_slice())
    }
}

/// The values a receiver derives for a message instead of reading them from it (the draft's
/// "Implied Message Fields").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedValues {
    /// The message id.
    pub message_id: MimiId,
    /// When the hub accepted it, in milliseconds since the Unix epoch.
    pub hub_accepted_ms: u64,
    /// The MLS group id.
    pub mls_group_id: Vec<u8>,
    /// The sender's leaf index.
    pub sender_leaf_index: u32,
    /// The sending client's URI.
    pub sender_client_uri: String,
    /// The sending user's URI.
    pub sender_user_uri: String,
    /// The room's URI.
    pub room_uri: String,
}

impl DerivedValues {
    /// The deterministic encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        cbor::array(&mut out, 7);
        cbor::bytes(&mut out, &self.message_id.0);
        cbor::uint(&mut out, self.hub_accepted_ms);
        cbor::bytes(&mut out, &self.mls_group_id);
        cbor::uint(&mut out, u64::from(self.sender_leaf_index));
        for uri in [
            &self.sender_client_uri,
            &self.sender_user_uri,
            &self.room_uri,
        ] {
            cbor::text(&mut out, uri);
        }
        out
    }

    /// Decodes the values. The hub timestamp must be milliseconds (RFC 9581 extended time is not
    /// supported).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut d = Dec::new(bytes);
        if d.array(7, "derived values")? != 7 {
            return Err(CodecError::Invalid("derived values"));
        }
        let message_id = MimiId(
            d.bytes(32, "message id")?
                .try_into()
                .map_err(|_| CodecError::Invalid("message id"))?,
        );
        let v = Self {
            message_id,
            hub_accepted_ms: d.uint(u64::MAX, "hub timestamp")?,
            mls_group_id: d.bytes(MAX_SHORT, "group id")?.to_vec(),
            sender_leaf_index: d.uint(u64::from(u32::MAX), "leaf index")? as u32,
            sender_client_uri: d.text(MAX_SHORT, "client URI")?.to_owned(),
            sender_user_uri: d.text(MAX_SHORT, "user URI")?.to_owned(),
            room_uri: d.text(MAX_SHORT, "room URI")?.to_owned(),
        };
        if !d.rest().is_empty() {
            return Err(CodecError::TrailingBytes(d.rest().len()));
        }
        Ok(v)
    }
}

/// A message's status in a report (draft-mahy-mimi-message-status).
pub mod status {
    /// Not read yet.
    pub const UNREAD: u8 = 0;
    /// Received by a client of the reporter.
    pub const DELIVERED: u8 = 1;
    /// Read by the reporter.
    pub const READ: u8 = 2;
    /// Expired.
    pub const EXPIRED: u8 = 3;
    /// Deleted.
    pub const DELETED: u8 = 4;
}

/// The media type of a message status report.
pub const STATUS_CONTENT_TYPE: &str = "application/mimi-message-status";
/// At most this many messages in one status report.
pub const MAX_STATUS_ENTRIES: usize = 1024;

/// Encodes a message status report: a list of (message id, status).
pub fn encode_status(report: &[(MimiId, u8)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + report.len() * 36);
    cbor::array(&mut out, report.len());
    for (id, status) in report {
        cbor::array(&mut out, 2);
        cbor::bytes(&mut out, &id.0);
        cbor::uint(&mut out, u64::from(*status));
    }
    out
}

/// Decodes a message status report.
pub fn decode_status(bytes: &[u8]) -> Result<Vec<(MimiId, u8)>, CodecError> {
    let mut d = Dec::new(bytes);
    let n = d.array(MAX_STATUS_ENTRIES, "status report")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if d.array(2, "status entry")? != 2 {
            return Err(CodecError::Invalid("status entry"));
        }
        let id: [u8; 32] = d
            .bytes(32, "status message id")?
            .try_into()
            .map_err(|_| CodecError::Invalid("status message id"))?;
        out.push((MimiId(id), d.uint(255, "status")? as u8));
    }
    if !d.rest().is_empty() {
        return Err(CodecError::TrailingBytes(d.rest().len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text_part(s: &str) -> NestedPart {
        NestedPart::single(disposition::RENDER, "text/plain;charset=utf-8", s.into())
    }

    #[test]
    fn status_reports_round_trip() {
        let r = vec![(MimiId([1; 32]), status::READ), (MimiId([2; 32]), 200)];
        let b = encode_status(&r);
        assert_eq!(decode_status(&b).unwrap(), r);
        assert!(decode_status(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let mut part = text_part("x");
        for _ in 0..MAX_PART_DEPTH {
            part = NestedPart {
                disposition: disposition::RENDER,
                language: String::new(),
                part: Part::Multi {
                    semantics: PartSemantics::ChooseOne,
                    parts: vec![part.clone(), text_part("y")],
                },
            };
        }
        let deep = MimiContent::new([0; 16], part.clone()).to_bytes();
        assert_eq!(
            MimiContent::from_bytes(&deep),
            Err(CodecError::Invalid("parts nested too deeply"))
        );
        let Part::Multi { parts, .. } = part.part else {
            unreachable!()
        };
        let ok = MimiContent::new([0; 16], parts[0].clone()).to_bytes();
        assert!(MimiContent::from_bytes(&ok).is_ok());
    }

    #[test]
    fn extensions_are_sorted_and_bounded() {
        let mut m = MimiContent::new([3; 16], text_part("hi"));
        m.extensions = vec![
            Extension {
                key: ExtensionKey::Text("z".into()),
                value: vec![0x01],
            },
            Extension {
                key: ExtensionKey::Int(-1),
                value: vec![0x02],
            },
            Extension {
                key: ExtensionKey::Int(1),
                value: vec![0x60],
            },
        ];
        let b = m.to_bytes();
        let back = MimiContent::from_bytes(&b).unwrap();
        assert_eq!(back.to_bytes(), b);
        assert_eq!(back.extension(-1), Some(&[0x02][..]));
        // Sorted by encoded key: 1 (0x01), -1 (0x20), "z" (0x61 0x7a).
        assert_eq!(back.extensions[0].key, ExtensionKey::Int(1));
        assert_eq!(back.extensions[1].key, ExtensionKey::Int(-1));
        // A value nested 4 deep inside the map (5 levels with it) is refused.
        m.extensions = vec![Extension {
            key: ExtensionKey::Int(7),
            value: vec![0x81, 0x81, 0x81, 0x81, 0x01],
        }];
        assert!(MimiContent::from_bytes(&m.to_bytes()).is_err());
        // The draft's own example depth: map, array, array, tag (4 levels).
        m.extensions[0].value = vec![0x81, 0x81, 0xd8, 0x20, 0x61, 0x78];
        assert!(MimiContent::from_bytes(&m.to_bytes()).is_ok());
    }

    fn arb_part() -> impl Strategy<Value = NestedPart> {
        let leaf = prop_oneof![
            (any::<u8>(), ".{0,8}").prop_map(|(d, l)| NestedPart {
                disposition: d,
                language: l,
                part: Part::Null
            }),
            (
                any::<u8>(),
                ".{0,20}",
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(d, t, c)| NestedPart {
                    disposition: d,
                    language: String::new(),
                    part: Part::Single {
                        content_type: t,
                        content: c
                    }
                }),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            (0u8..3, proptest::collection::vec(inner, 2..4)).prop_map(|(s, parts)| NestedPart {
                disposition: 1,
                language: String::new(),
                part: Part::Multi {
                    semantics: [
                        PartSemantics::ChooseOne,
                        PartSemantics::SingleUnit,
                        PartSemantics::ProcessAll,
                    ][s as usize],
                    parts,
                },
            })
        })
    }

    proptest! {
        #[test]
        fn any_message_round_trips(
            salt in any::<[u8; 16]>(),
            replaces in any::<Option<[u8; 32]>>(),
            reply in any::<Option<[u8; 32]>>(),
            expires in any::<Option<(bool, u32)>>(),
            ints in proptest::collection::btree_set(-1000i64..1000, 0..4),
            body in arb_part(),
        ) {
            let m = MimiContent {
                salt,
                replaces: replaces.map(MimiId),
                topic_id: Vec::new(),
                expires: expires.map(|(relative, time)| Expiration { relative, time }),
                in_reply_to: reply.map(MimiId),
                extensions: ints.into_iter().map(|k| Extension { key: ExtensionKey::Int(k), value: vec![0xf6] }).collect(),
                body,
            };
            let b = m.to_bytes();
            let back = MimiContent::from_bytes(&b).unwrap();
            prop_assert_eq!(back.to_bytes(), b);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(m) = MimiContent::from_bytes(&bytes) {
                // Whatever decodes is deterministic: it re-encodes to the same bytes.
                prop_assert_eq!(m.to_bytes(), bytes.clone());
            }
            let _ = decode_status(&bytes);
        }
    }
}
