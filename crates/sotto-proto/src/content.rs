//! The plaintext of a message: what MLS encrypts, and what it means to Sotto.
//!
//! Since content v2 the plaintext is one MIMI content message ([`crate::mimi`], deterministic
//! CBOR) followed by zero padding. Its id is MIMI's: a hash of the sender's URI, the room's URI,
//! the encoded message and its salt, so a receiver computes it from what MLS authenticated and a
//! sender cannot choose it (nor claim another sender's). The URIs are not carried in the message:
//! they come from the MLS credential and the group id ([`sender_uri`], [`room_uri`]).
//!
//! How Sotto's features map onto MIMI (the draft's own mapping):
//!
//! ```text
//! text        disposition render, text/plain;charset=utf-8          inReplyTo: the replied message
//! reaction    disposition reaction, text/plain (one emoji)          inReplyTo: the message
//! unreact     disposition reaction, null part, replaces: the reaction message, inReplyTo: the message
//! edit        disposition render, text/plain, replaces: the first version
//! unsend      disposition render, null part, replaces: the message
//! receipts    application/mimi-message-status (draft-mahy-mimi-message-status)
//! typing      application/vnd.sotto.typing, empty (sent as an ephemeral, never stored)
//! ```
//! The sender's clock rides in the private-use extension -1 (milliseconds since the Unix epoch).
//!
//! Content v1 (Sotto's own format, before MIMI) still decodes, so that messages already in device
//! stores and server logs read as before:
//!
//! ```text
//! v1      = version:u8(=1) id:[16] sent_at_ms:u64 kind:u8 payload:bytes  padding:zeros
//! text    = text:bytes reply:u8(0|1) [reply_to:[16]]
//! ```
//!
//! Both are padded with zeros to a bucket size before encryption, so that ciphertext lengths leak
//! little about the text. A MIMI message starts with `0x87` (an array of 7), a v1 one with `0x01`.

use rand::RngCore;

use crate::attachment::FileKey;
use crate::cbor::{self, Dec};
use crate::codec::{put_bytes, CodecError, Reader};
use crate::identity::Username;
use crate::mimi::{self, disposition, MimiContent, MimiId, NestedPart, Part, PartSemantics};

const VERSION_1: u8 = 1;
const MIMI_FIRST_BYTE: u8 = 0x87;
const KIND_TEXT: u8 = 1;
/// The longest text a message may carry, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
const MAX_PAYLOAD: usize = MAX_TEXT_BYTES + 64;
/// The longest reaction, in bytes of UTF-8: room for one emoji of any kind (a flag of a
/// subdivision is 28 bytes), not for a sentence.
pub const MAX_REACTION_BYTES: usize = 32;
/// The media type of Sotto's text.
pub const TEXT_CONTENT_TYPE: &str = "text/plain;charset=utf-8";
/// The media type of a typing indicator (a Sotto extension; MIMI has none).
pub const TYPING_CONTENT_TYPE: &str = "application/vnd.sotto.typing";
/// Media type of account settings, sent among one account's own devices: a CBOR map from setting
/// names to values.
pub const SETTINGS_CONTENT_TYPE: &str = "application/vnd.sotto.account-settings+cbor";
/// Most settings one message carries.
pub const MAX_SETTINGS: usize = 32;
/// Longest setting name, in bytes.
pub const MAX_SETTING_NAME: usize = 64;
/// The private-use extension carrying the sender's clock.
pub const SENT_AT_EXTENSION: i64 = -1;
/// The provider part of Sotto's MIMI URIs (no federation yet, so no real domain).
pub const PROVIDER: &str = "sotto.invalid";

/// A user's MIMI URI.
pub fn sender_uri(user: &Username) -> String {
    format!("mimi://{PROVIDER}/u/{user}")
}

/// A conversation's MIMI URI, from its MLS group id.
pub fn room_uri(group_id: &[u8]) -> String {
    format!("mimi://{PROVIDER}/r/{}", crate::identity::hex(group_id))
}

/// A message id: MIMI's 32 bytes, or the 16 random bytes a content v1 message carried.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    len: u8,
    bytes: [u8; 32],
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

impl MessageId {
    /// A content v1 id.
    pub fn v1(b: [u8; 16]) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&b);
        Self { len: 16, bytes }
    }

    /// A fresh random content v1 id (for tests of the old format).
    pub fn random_v1() -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self::v1(b)
    }

    /// The id as bytes (16 or 32 of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The MIMI id, for a MIMI message's id.
    pub fn mimi(&self) -> Option<MimiId> {
        (self.len == 32).then_some(MimiId(self.bytes))
    }

    /// The id as hex (64 digits, or 32 for content v1).
    pub fn to_hex(&self) -> String {
        crate::identity::hex(self.as_bytes())
    }

    /// Parses 64 or 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = crate::identity::unhex(s)?;
        match b.len() {
            32 => Some(Self::from(MimiId(b.try_into().ok()?))),
            16 => Some(Self::v1(b.try_into().ok()?)),
            _ => None,
        }
    }
}

impl From<MimiId> for MessageId {
    fn from(id: MimiId) -> Self {
        Self {
            len: 32,
            bytes: id.0,
        }
    }
}

/// Where a file sent as an attachment is, and how to open it ([`crate::attachment`]).
#[derive(Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The blob's id on the server (64 hex digits).
    pub blob: String,
    /// The file key.
    pub key: FileKey,
    /// The file's size in bytes (before padding).
    pub size: u64,
    /// SHA-256 of the whole blob.
    pub hash: [u8; 32],
    /// Media type, as the sender gave it.
    pub content_type: String,
    /// File name, as the sender gave it (no directories).
    pub name: String,
}

// Redacted: key, name, hash and blob id all describe or open the file.
impl std::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileRef({}, {} bytes)", self.content_type, self.size)
    }
}

/// A small image shown before a file is downloaded: a MIMI part of disposition `preview` beside
/// the file's `ExternalPart`.
#[derive(Clone, PartialEq, Eq)]
pub struct Preview {
    /// `image/png` or `image/jpeg`.
    pub content_type: String,
    /// The image.
    pub data: Vec<u8>,
}

/// Largest preview image, in bytes.
pub const MAX_PREVIEW_BYTES: usize = 16 * 1024;

impl std::fmt::Debug for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Preview({}, {} bytes)",
            self.content_type,
            self.data.len()
        )
    }
}

impl Preview {
    fn check(&self) -> Result<(), CodecError> {
        if !matches!(self.content_type.as_str(), "image/png" | "image/jpeg") {
            return Err(CodecError::Invalid("preview type"));
        }
        if self.data.is_empty() || self.data.len() > MAX_PREVIEW_BYTES {
            return Err(CodecError::Invalid("preview size"));
        }
        Ok(())
    }
}

/// Where a blob is, as an `ExternalPart` URL names it: `mimi://sotto.invalid/b/ID`.
const BLOB_URL_PREFIX: &str = "mimi://sotto.invalid/b/";
/// Longest file name, in bytes.
pub const MAX_FILE_NAME: usize = 255;

impl FileRef {
    /// Why this reference is not one every Sotto client takes.
    fn check(&self) -> Result<(), CodecError> {
        if !crate::attachment::is_blob_id(&self.blob) {
            return Err(CodecError::Invalid("attachment blob id"));
        }
        if self.size > crate::attachment::MAX_FILE_BYTES {
            return Err(CodecError::Invalid("attachment size"));
        }
        let ct = &self.content_type;
        if ct.is_empty()
            || ct.len() > 127
            || !ct.contains('/')
            || !ct.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(CodecError::Invalid("attachment content type"));
        }
        let n = &self.name;
        if n.is_empty()
            || n.len() > MAX_FILE_NAME
            || n == "."
            || n == ".."
            || n.chars().any(|c| c == '/' || c == '\\' || c.is_control())
        {
            return Err(CodecError::Invalid("attachment file name"));
        }
        Ok(())
    }

    fn to_external(&self) -> mimi::ExternalPart {
        mimi::ExternalPart {
            content_type: self.content_type.clone(),
            url: format!("{BLOB_URL_PREFIX}{}", self.blob),
            expires: 0,
            size: self.size,
            enc_alg: crate::attachment::ENC_ALG,
            key: self.key.as_bytes().to_vec(),
            nonce: Vec::new(),
            aad: Vec::new(),
            hash_alg: crate::attachment::HASH_ALG,
            content_hash: self.hash.to_vec(),
            description: String::new(),
            filename: self.name.clone(),
        }
    }

    fn from_external(e: &mimi::ExternalPart) -> Result<Self, CodecError> {
        let blob = e
            .url
            .strip_prefix(BLOB_URL_PREFIX)
            .ok_or(CodecError::Invalid("attachment URL"))?;
        if !e.nonce.is_empty() || !e.aad.is_empty() || e.hash_alg != crate::attachment::HASH_ALG {
            return Err(CodecError::Invalid("attachment parameters"));
        }
        let f = Self {
            blob: blob.to_owned(),
            key: FileKey::from_bytes(&e.key).map_err(|_| CodecError::Invalid("attachment key"))?,
            size: e.size,
            hash: e
                .content_hash
                .as_slice()
                .try_into()
                .map_err(|_| CodecError::Invalid("attachment hash"))?,
            content_type: e.content_type.clone(),
            name: e.filename.clone(),
        };
        f.check()?;
        Ok(f)
    }
}

/// What a message says or does.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// A text message, optionally replying to an earlier one.
    Text {
        /// The text.
        text: String,
        /// The message this one replies to.
        reply_to: Option<MessageId>,
    },
    /// A reaction to a message (one per sender per message: a new one replaces the old).
    Reaction {
        /// The message reacted to.
        to: MessageId,
        /// The emoji.
        emoji: String,
    },
    /// Removes a reaction.
    Unreact {
        /// The message reacted to.
        to: MessageId,
        /// The reaction message removed.
        reaction: MessageId,
    },
    /// A new version of a text message.
    Edit {
        /// The first version.
        original: MessageId,
        /// The new text.
        text: String,
        /// The message the original replies to, if any.
        reply_to: Option<MessageId>,
    },
    /// Deletes a message for everyone.
    Unsend {
        /// The message.
        original: MessageId,
    },
    /// Delivery or read receipts for messages of the conversation.
    Receipts {
        /// (message, status) pairs; statuses are [`mimi::status`] values.
        report: Vec<(MessageId, u8)>,
    },
    /// A file, with an optional caption, optionally replying to an earlier message.
    File {
        /// Where it is and how to open it.
        file: Box<FileRef>,
        /// Text shown with it.
        caption: Option<String>,
        /// The message this one replies to.
        reply_to: Option<MessageId>,
        /// A small image shown before the download.
        preview: Option<Preview>,
    },
    /// The sender is typing.
    Typing,
    /// Account settings from one of the account's own devices: each named setting's new value.
    /// Names are lowercase ASCII with `_`; values of kinds this version does not know are left
    /// out when decoding, so a newer device's settings do not stop an older one from taking the
    /// rest.
    Settings {
        /// (name, value) pairs, names unique.
        settings: Vec<(String, SettingValue)>,
    },
    /// Content this version does not act on (an attachment, a new kind); shown as unsupported.
    Unsupported {
        /// What it is (a media type or a v1 kind), for the user.
        what: String,
    },
}

// Redacted: a body's text is message plaintext, and `{:?}` must never put it in a log.
impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text { text, reply_to } => {
                write!(f, "Text({} bytes, reply_to: {reply_to:?})", text.len())
            }
            Self::Reaction { to, .. } => write!(f, "Reaction(to: {to:?})"),
            Self::Unreact { to, reaction } => write!(f, "Unreact(to: {to:?}, {reaction:?})"),
            Self::Edit { original, text, .. } => {
                write!(f, "Edit(of: {original:?}, {} bytes)", text.len())
            }
            Self::Unsend { original } => write!(f, "Unsend(of: {original:?})"),
            Self::Receipts { report } => write!(f, "Receipts({} messages)", report.len()),
            Self::File { file, caption, .. } => write!(
                f,
                "File({file:?}, caption: {} bytes)",
                caption.as_ref().map_or(0, String::len)
            ),
            Self::Typing => f.write_str("Typing"),
            Self::Settings { settings } => write!(f, "Settings({settings:?})"),
            Self::Unsupported { what } => write!(f, "Unsupported({what})"),
        }
    }
}

impl Body {
    /// The MIMI message for this body.
    fn to_mimi(&self, salt: [u8; 16], sent_at_ms: u64) -> Result<MimiContent, CodecError> {
        let text_part = |d: u8, s: &str| NestedPart::single(d, TEXT_CONTENT_TYPE, s.into());
        let mut m = match self {
            Self::Text { text, reply_to } => {
                check_text(text)?;
                let mut m = MimiContent::new(salt, text_part(disposition::RENDER, text));
                m.in_reply_to = mimi_ref(reply_to)?;
                m
            }
            Self::Reaction { to, emoji } => {
                check_reaction(emoji)?;
                let mut m = MimiContent::new(salt, text_part(disposition::REACTION, emoji));
                m.in_reply_to = mimi_ref(&Some(*to))?;
                m
            }
            Self::Unreact { to, reaction } => {
                let mut m = MimiContent::new(salt, NestedPart::null(disposition::REACTION));
                m.in_reply_to = mimi_ref(&Some(*to))?;
                m.replaces = mimi_ref(&Some(*reaction))?;
                m
            }
            Self::Edit {
                original,
                text,
                reply_to,
            } => {
                check_text(text)?;
                let mut m = MimiContent::new(salt, text_part(disposition::RENDER, text));
                m.replaces = mimi_ref(&Some(*original))?;
                m.in_reply_to = mimi_ref(reply_to)?;
                m
            }
            Self::Unsend { original } => {
                let mut m = MimiContent::new(salt, NestedPart::null(disposition::RENDER));
                m.replaces = mimi_ref(&Some(*original))?;
                m
            }
            Self::Receipts { report } => {
                if report.is_empty() || report.len() > mimi::MAX_STATUS_ENTRIES {
                    return Err(CodecError::Invalid("receipt count"));
                }
                let ids = report
                    .iter()
                    .map(|(id, s)| Ok((id.mimi().ok_or(CodecError::Invalid("v1 id"))?, *s)))
                    .collect::<Result<Vec<_>, CodecError>>()?;
                MimiContent::new(
                    salt,
                    NestedPart::single(
                        disposition::UNSPECIFIED,
                        mimi::STATUS_CONTENT_TYPE,
                        mimi::encode_status(&ids),
                    ),
                )
            }
            Self::File {
                file,
                caption,
                reply_to,
                preview,
            } => {
                file.check()?;
                let mut parts = Vec::with_capacity(3);
                if let Some(c) = caption {
                    check_text(c)?;
                    parts.push(text_part(disposition::RENDER, c));
                }
                parts.push(NestedPart {
                    disposition: disposition::ATTACHMENT,
                    language: String::new(),
                    part: Part::External(Box::new(file.to_external())),
                });
                if let Some(p) = preview {
                    p.check()?;
                    parts.push(NestedPart::single(
                        disposition::PREVIEW,
                        &p.content_type,
                        p.data.clone(),
                    ));
                }
                let body = if parts.len() == 1 {
                    parts.remove(0)
                } else {
                    NestedPart {
                        disposition: disposition::RENDER,
                        language: String::new(),
                        part: Part::Multi {
                            semantics: PartSemantics::ProcessAll,
                            parts,
                        },
                    }
                };
                let mut m = MimiContent::new(salt, body);
                m.in_reply_to = mimi_ref(reply_to)?;
                m
            }
            Self::Typing => MimiContent::new(
                salt,
                NestedPart::single(disposition::UNSPECIFIED, TYPING_CONTENT_TYPE, Vec::new()),
            ),
            Self::Settings { settings } => MimiContent::new(
                salt,
                NestedPart::single(
                    disposition::UNSPECIFIED,
                    SETTINGS_CONTENT_TYPE,
                    encode_settings(settings)?,
                ),
            ),
            Self::Unsupported { .. } => return Err(CodecError::Invalid("unsupported body")),
        };
        let mut at = Vec::with_capacity(9);
        cbor::uint(&mut at, sent_at_ms);
        m.extensions.push(mimi::Extension {
            key: mimi::ExtensionKey::Int(SENT_AT_EXTENSION),
            value: at,
        });
        Ok(m)
    }

    /// What a MIMI message means to Sotto. Errors are refusals: the message breaks a rule every
    /// Sotto client enforces (invalid UTF-8, an over-long text or reaction, a reaction to nothing).
    fn from_mimi(m: &MimiContent) -> Result<Self, CodecError> {
        let reply_to = m.in_reply_to.map(MessageId::from);
        let replaces = m.replaces.map(MessageId::from);
        let d = m.body.disposition;
        Ok(match &m.body.part {
            Part::Single {
                content_type,
                content,
            } if is_text(content_type) && (d == disposition::RENDER || d == 0) => {
                let text = utf8(content)?;
                check_text(&text)?;
                match replaces {
                    Some(original) => Self::Edit {
                        original,
                        text,
                        reply_to,
                    },
                    None => Self::Text { text, reply_to },
                }
            }
            Part::Single {
                content_type,
                content,
            } if is_text(content_type) && d == disposition::REACTION => {
                let emoji = utf8(content)?;
                check_reaction(&emoji)?;
                if replaces.is_some() {
                    return Err(CodecError::Invalid("a reaction that replaces a message"));
                }
                Self::Reaction {
                    to: reply_to.ok_or(CodecError::Invalid("a reaction to no message"))?,
                    emoji,
                }
            }
            Part::Null if d == disposition::REACTION => Self::Unreact {
                to: reply_to.ok_or(CodecError::Invalid("an unreact of no message"))?,
                reaction: replaces.ok_or(CodecError::Invalid("an unreact of no reaction"))?,
            },
            Part::Null => Self::Unsend {
                original: replaces.ok_or(CodecError::Invalid("an empty message"))?,
            },
            Part::Single {
                content_type,
                content,
            } if content_type == mimi::STATUS_CONTENT_TYPE => Self::Receipts {
                report: mimi::decode_status(content)?
                    .into_iter()
                    .map(|(id, s)| (MessageId::from(id), s))
                    .collect(),
            },
            Part::Single {
                content_type,
                content,
            } if content_type == TYPING_CONTENT_TYPE && content.is_empty() => Self::Typing,
            Part::Single {
                content_type,
                content,
            } if content_type == SETTINGS_CONTENT_TYPE => Self::Settings {
                settings: decode_settings(content)?,
            },
            Part::Single { content_type, .. } => Self::Unsupported {
                what: content_type.chars().take(64).collect(),
            },
            Part::External(e) if e.enc_alg == crate::attachment::ENC_ALG => Self::File {
                file: Box::new(FileRef::from_external(e)?),
                caption: None,
                reply_to,
                preview: None,
            },
            Part::Multi {
                semantics: PartSemantics::ProcessAll,
                parts,
            } if file_parts(parts).is_some() => {
                let Some((caption, e, preview)) = file_parts(parts) else {
                    return Err(CodecError::Invalid("attachment"));
                };
                let caption = caption.map(utf8).transpose()?;
                if let Some(c) = &caption {
                    check_text(c)?;
                }
                let preview = preview
                    .map(|(content_type, data)| {
                        let p = Preview {
                            content_type: content_type.to_owned(),
                            data: data.to_vec(),
                        };
                        p.check().map(|()| p)
                    })
                    .transpose()?;
                Self::File {
                    file: Box::new(FileRef::from_external(e)?),
                    caption,
                    reply_to,
                    preview,
                }
            }
            Part::External(e) => Self::Unsupported {
                what: e.content_type.chars().take(64).collect(),
            },
            Part::Multi { .. } => Self::Unsupported {
                what: "multipart".into(),
            },
        })
    }
}

/// A setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingValue {
    /// On or off.
    Bool(bool),
    /// A number (a duration, a count).
    Uint(u64),
}

fn check_setting_name(name: &str) -> Result<(), CodecError> {
    if name.is_empty()
        || name.len() > MAX_SETTING_NAME
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(CodecError::Invalid("setting name"));
    }
    Ok(())
}

/// The CBOR text-string encoding of a setting name (its map key).
fn setting_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 2);
    cbor::text(&mut k, name);
    k
}

fn encode_settings(settings: &[(String, SettingValue)]) -> Result<Vec<u8>, CodecError> {
    if settings.is_empty() || settings.len() > MAX_SETTINGS {
        return Err(CodecError::Invalid("setting count"));
    }
    let mut pairs = Vec::with_capacity(settings.len());
    for (name, value) in settings {
        check_setting_name(name)?;
        pairs.push((setting_key(name), *value));
    }
    // Deterministic CBOR: keys in bytewise order of their encodings, each once.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(CodecError::Invalid("repeated setting"));
    }
    let mut out = Vec::new();
    cbor::map(&mut out, pairs.len());
    for (key, value) in pairs {
        out.extend_from_slice(&key);
        match value {
            SettingValue::Bool(b) => cbor::boolean(&mut out, b),
            SettingValue::Uint(n) => cbor::uint(&mut out, n),
        }
    }
    Ok(out)
}

fn decode_settings(bytes: &[u8]) -> Result<Vec<(String, SettingValue)>, CodecError> {
    const FALSE: u8 = 0xf4;
    const TRUE: u8 = 0xf5;
    let mut d = cbor::Dec::new(bytes);
    let n = d.map(MAX_SETTINGS, "setting count")?;
    let mut out = Vec::with_capacity(n);
    let mut last: Option<Vec<u8>> = None;
    for _ in 0..n {
        let name = d.text(MAX_SETTING_NAME, "setting name")?.to_owned();
        check_setting_name(&name)?;
        let key = setting_key(&name);
        if last.as_ref().is_some_and(|l| *l >= key) {
            return Err(CodecError::Invalid("settings out of order or repeated"));
        }
        last = Some(key);
        let value = match d.rest().first().copied() {
            Some(FALSE | TRUE) => Some(SettingValue::Bool(d.boolean("setting")?)),
            Some(b) if b >> 5 == 0 => Some(SettingValue::Uint(d.uint(u64::MAX, "setting")?)),
            _ => {
                d.value(4)?; // a kind of value this version does not know
                None
            }
        };
        if let Some(v) = value {
            out.push((name, v));
        }
    }
    if !d.rest().is_empty() {
        return Err(CodecError::Invalid("bytes after the settings"));
    }
    Ok(out)
}

/// A text followed by a Sotto attachment: a file with a caption.
/// The parts of a file message, in this order: an optional caption (text), the file (an
/// `ExternalPart` of ours), an optional preview (disposition `preview`). Anything else is some
/// other multipart.
type FileParts<'a> = (
    Option<&'a [u8]>,
    &'a mimi::ExternalPart,
    Option<(&'a str, &'a [u8])>,
);

fn file_parts(parts: &[NestedPart]) -> Option<FileParts<'_>> {
    let mut rest = parts;
    let mut caption = None;
    if let [first, tail @ ..] = rest {
        if let Part::Single {
            content_type,
            content,
        } = &first.part
        {
            if is_text(content_type) && first.disposition != disposition::PREVIEW {
                caption = Some(content.as_slice());
                rest = tail;
            }
        }
    }
    let [file, tail @ ..] = rest else {
        return None;
    };
    let Part::External(e) = &file.part else {
        return None;
    };
    if e.enc_alg != crate::attachment::ENC_ALG {
        return None;
    }
    let preview = match tail {
        [] => None,
        [p] if p.disposition == disposition::PREVIEW => match &p.part {
            Part::Single {
                content_type,
                content,
            } => Some((content_type.as_str(), content.as_slice())),
            _ => return None,
        },
        _ => return None,
    };
    if caption.is_none() && preview.is_none() {
        // A lone ExternalPart is not wrapped in a multipart.
        return None;
    }
    Some((caption, e.as_ref(), preview))
}

fn is_text(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    base.eq_ignore_ascii_case("text/plain") || base.eq_ignore_ascii_case("text/markdown")
}

fn utf8(b: &[u8]) -> Result<String, CodecError> {
    String::from_utf8(b.to_vec()).map_err(|_| CodecError::Invalid("UTF-8"))
}

fn check_text(text: &str) -> Result<(), CodecError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(CodecError::Invalid("text too long"));
    }
    Ok(())
}

/// A reaction is one emoji: short, and no spaces or control characters (which would let it pass
/// for a sentence or hide a second reaction).
fn check_reaction(emoji: &str) -> Result<(), CodecError> {
    if emoji.is_empty() || emoji.len() > MAX_REACTION_BYTES {
        return Err(CodecError::Invalid("reaction length"));
    }
    // Letters and digits only inside a keycap emoji (1️⃣ is '1', U+FE0F, U+20E3).
    let keycap = emoji.ends_with('\u{20E3}');
    if emoji
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || (c.is_ascii_alphanumeric() && !keycap))
    {
        return Err(CodecError::Invalid("reaction characters"));
    }
    Ok(())
}

fn mimi_ref(id: &Option<MessageId>) -> Result<Option<MimiId>, CodecError> {
    match id {
        None => Ok(None),
        Some(id) => id.mimi().map(Some).ok_or(CodecError::Invalid(
            "a MIMI message cannot refer to a v1 id",
        )),
    }
}

/// A decoded message.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageContent {
    /// The message id (computed, for MIMI; carried, for v1).
    pub id: MessageId,
    /// Sender's clock, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// What it says.
    pub body: Body,
    /// The encoding (MIMI CBOR, or v1), unpadded: re-sent as it is, so its id never changes.
    encoded: Vec<u8>,
}

// Redacted: the encoding is the plaintext.
impl std::fmt::Debug for MessageContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageContent")
            .field("id", &self.id)
            .field("sent_at_ms", &self.sent_at_ms)
            .field("body", &self.body)
            .field("encoded", &format_args!("{} bytes", self.encoded.len()))
            .finish()
    }
}

impl MessageContent {
    /// A new MIMI message from `sender` in the conversation whose MLS group id is `group_id`.
    /// `salt` must be fresh for every message ([`crate::mls::Conversation::salt`]).
    pub fn new(
        body: Body,
        sent_at_ms: u64,
        salt: [u8; 16],
        sender: &Username,
        group_id: &[u8],
    ) -> Result<Self, CodecError> {
        let m = body.to_mimi(salt, sent_at_ms)?;
        let encoded = m.to_bytes();
        let id = MimiId::compute(&sender_uri(sender), &room_uri(group_id), &encoded, &salt)?;
        Ok(Self {
            id: id.into(),
            sent_at_ms,
            body,
            encoded,
        })
    }

    /// A text message in content v1, Sotto's format before MIMI (which clients no longer send);
    /// kept to test that old messages still read.
    pub fn v1_text(id: [u8; 16], text: &str, sent_at_ms: u64, reply_to: Option<MessageId>) -> Self {
        let id = MessageId::v1(id);
        let mut encoded = vec![VERSION_1];
        encoded.extend_from_slice(id.as_bytes());
        encoded.extend_from_slice(&sent_at_ms.to_be_bytes());
        encoded.push(KIND_TEXT);
        let mut payload = Vec::new();
        put_bytes(&mut payload, text.as_bytes());
        match reply_to {
            Some(r) => {
                payload.push(1);
                // A v1 reply names a v1 id (16 bytes); a longer one is cut, as v1 could not hold it.
                payload.extend_from_slice(&r.as_bytes()[..16]);
            }
            None => payload.push(0),
        }
        put_bytes(&mut encoded, &payload);
        Self {
            id,
            sent_at_ms,
            body: Body::Text {
                text: text.to_owned(),
                reply_to,
            },
            encoded,
        }
    }

    /// The encoding without padding.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// A MIMI message's salt: with the body, the clock and the URIs it gives back the same bytes
    /// and id ([`MessageContent::new`]), which is how an outbox re-sends a message.
    pub fn salt(&self) -> Option<[u8; 16]> {
        // The encoding starts 0x87 (array of 7), 0x50 (16-byte string), then the salt.
        match self.encoded.get(..18) {
            Some([MIMI_FIRST_BYTE, 0x50, salt @ ..]) => salt.try_into().ok(),
            _ => None,
        }
    }

    /// The encoding, padded to the bucket size: the bytes to hand to MLS.
    pub fn to_padded_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(padded_len(self.encoded.len()));
        out.extend_from_slice(&self.encoded);
        out.resize(padded_len(self.encoded.len()), 0);
        out
    }

    /// Decodes padded plaintext from `sender` in the conversation with MLS group id `group_id`:
    /// the content, then nothing but zero bytes.
    pub fn from_padded_bytes(
        bytes: &[u8],
        sender: &Username,
        group_id: &[u8],
    ) -> Result<Self, CodecError> {
        match bytes.first() {
            Some(&VERSION_1) => Self::from_v1(bytes),
            Some(&MIMI_FIRST_BYTE) => {
                let mut d = Dec::new(bytes);
                let m = MimiContent::decode(&mut d)?;
                if d.rest().iter().any(|b| *b != 0) {
                    return Err(CodecError::Invalid("padding"));
                }
                let encoded = bytes[..d.position()].to_vec();
                let id =
                    MimiId::compute(&sender_uri(sender), &room_uri(group_id), &encoded, &m.salt)?;
                let sent_at_ms = match m.extension(SENT_AT_EXTENSION) {
                    Some(v) => Dec::new(v).uint(u64::MAX, "sent at")?,
                    None => 0,
                };
                Ok(Self {
                    id: id.into(),
                    sent_at_ms,
                    body: Body::from_mimi(&m)?,
                    encoded,
                })
            }
            Some(v) => Err(CodecError::UnsupportedVersion(*v)),
            None => Err(CodecError::Truncated),
        }
    }

    fn from_v1(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes);
        r.u8()?;
        let id = MessageId::v1(r.array()?);
        let sent_at_ms = r.u64()?;
        let kind = r.u8()?;
        let payload = r.bytes(MAX_PAYLOAD)?;
        let used = bytes.len() - r.rest().len();
        if r.rest().iter().any(|b| *b != 0) {
            return Err(CodecError::Invalid("padding"));
        }
        let body = match kind {
            KIND_TEXT => {
                let mut p = Reader::new(payload);
                let text = std::str::from_utf8(p.bytes(MAX_TEXT_BYTES)?)
                    .map_err(|_| CodecError::Invalid("UTF-8"))?
                    .to_owned();
                let reply_to = match p.u8()? {
                    0 => None,
                    1 => Some(MessageId::v1(p.array()?)),
                    _ => return Err(CodecError::Invalid("reply flag")),
                };
                p.finish()?;
                Body::Text { text, reply_to }
            }
            0 => return Err(CodecError::Invalid("kind")),
            kind => Body::Unsupported {
                what: format!("content v1 kind {kind}"),
            },
        };
        Ok(Self {
            id,
            sent_at_ms,
            body,
            encoded: bytes[..used].to_vec(),
        })
    }
}

/// The padded size for `len` bytes of content: powers of two from 64 up to 4 KiB, then multiples of
/// 4 KiB.
pub fn padded_len(len: usize) -> usize {
    if len <= 4096 {
        len.max(64).next_power_of_two()
    } else {
        len.div_ceil(4096) * 4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alice() -> Username {
        Username::new("alice").unwrap()
    }

    fn send(body: Body) -> MessageContent {
        MessageContent::new(body, 1_700_000_000_123, [7; 16], &alice(), &[9; 16]).unwrap()
    }

    fn receive(m: &MessageContent) -> Result<MessageContent, CodecError> {
        MessageContent::from_padded_bytes(&m.to_padded_bytes(), &alice(), &[9; 16])
    }

    #[test]
    fn every_body_round_trips_with_the_same_id() {
        let to = send(Body::Text {
            text: "hello".into(),
            reply_to: None,
        })
        .id;
        for body in [
            Body::Text {
                text: "hello".into(),
                reply_to: Some(to),
            },
            Body::Reaction {
                to,
                emoji: "👍".into(),
            },
            Body::Unreact { to, reaction: to },
            Body::Edit {
                original: to,
                text: "hullo".into(),
                reply_to: None,
            },
            Body::Unsend { original: to },
            Body::Receipts {
                report: vec![(to, mimi::status::READ)],
            },
            Body::Typing,
            Body::File {
                file: Box::new(file_ref()),
                caption: None,
                reply_to: None,
                preview: None,
            },
            Body::File {
                file: Box::new(file_ref()),
                caption: Some("the plan".into()),
                reply_to: Some(to),
                preview: None,
            },
            Body::File {
                file: Box::new(file_ref()),
                caption: None,
                reply_to: None,
                preview: Some(Preview {
                    content_type: "image/jpeg".into(),
                    data: vec![0xff, 0xd8, 0xff],
                }),
            },
            Body::File {
                file: Box::new(file_ref()),
                caption: Some("the cat".into()),
                reply_to: None,
                preview: Some(Preview {
                    content_type: "image/png".into(),
                    data: vec![0x89, b'P', b'N', b'G'],
                }),
            },
            Body::Settings {
                settings: vec![
                    ("default_timer".into(), SettingValue::Uint(3600)),
                    ("read_receipts".into(), SettingValue::Bool(false)),
                ],
            },
        ] {
            let m = send(body);
            let back = receive(&m).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.id.as_bytes().len(), 32);
            assert_eq!(back.id.as_bytes()[0], mimi::SHA256_ID);
        }
    }

    #[test]
    fn the_id_binds_sender_and_room() {
        let m = send(Body::Text {
            text: "hi".into(),
            reply_to: None,
        });
        let bytes = m.to_padded_bytes();
        let bob = Username::new("bob").unwrap();
        let as_bob = MessageContent::from_padded_bytes(&bytes, &bob, &[9; 16]).unwrap();
        let elsewhere = MessageContent::from_padded_bytes(&bytes, &alice(), &[8; 16]).unwrap();
        assert_ne!(as_bob.id, m.id);
        assert_ne!(elsewhere.id, m.id);
    }

    #[test]
    fn v1_still_decodes() {
        let r = MessageId::random_v1();
        let m = MessageContent::v1_text([4; 16], "old", 5, Some(r));
        let back = receive(&m).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id.to_hex().len(), 32);
        assert_eq!(MessageId::from_hex(&back.id.to_hex()), Some(back.id));
        // An unknown v1 kind reads as unsupported.
        let mut bytes = m.to_padded_bytes();
        bytes[25] = 42;
        let odd = MessageContent::from_padded_bytes(&bytes, &alice(), &[9; 16]).unwrap();
        assert!(matches!(odd.body, Body::Unsupported { .. }));
    }

    #[test]
    fn hostile_content_is_refused() {
        let to = send(Body::Typing).id;
        let long_emoji = Body::Reaction {
            to,
            emoji: "😀".repeat(2500),
        };
        assert!(MessageContent::new(long_emoji, 0, [0; 16], &alice(), &[9; 16]).is_err());
        // Built by hand, as a modified client would.
        let mut m = MimiContent::new(
            [1; 16],
            NestedPart::single(
                disposition::REACTION,
                TEXT_CONTENT_TYPE,
                "😀".repeat(2500).into(),
            ),
        );
        m.in_reply_to = to.mimi();
        let hand = |m: &MimiContent| {
            let mut b = m.to_bytes();
            b.resize(padded_len(b.len()), 0);
            MessageContent::from_padded_bytes(&b, &alice(), &[9; 16])
        };
        assert_eq!(hand(&m), Err(CodecError::Invalid("reaction length")));
        m.body = NestedPart::single(disposition::RENDER, TEXT_CONTENT_TYPE, vec![0xc3, 0x28]);
        assert_eq!(hand(&m), Err(CodecError::Invalid("UTF-8")));
        m.body = NestedPart::single(disposition::REACTION, TEXT_CONTENT_TYPE, "👍".into());
        m.in_reply_to = None;
        assert_eq!(
            hand(&m),
            Err(CodecError::Invalid("a reaction to no message"))
        );
        m.body = NestedPart::null(disposition::RENDER);
        assert_eq!(hand(&m), Err(CodecError::Invalid("an empty message")));
        // Non-zero bytes after the message.
        let mut b = send(Body::Typing).to_padded_bytes();
        *b.last_mut().unwrap() = 1;
        assert_eq!(
            MessageContent::from_padded_bytes(&b, &alice(), &[9; 16]),
            Err(CodecError::Invalid("padding"))
        );
    }

    fn file_ref() -> FileRef {
        FileRef {
            blob: "ab".repeat(32),
            key: FileKey::random(),
            size: 1234,
            hash: [7; 32],
            content_type: "image/png".into(),
            name: "cat.png".into(),
        }
    }

    #[test]
    fn attachments_are_checked_both_ways() {
        for bad in [
            FileRef {
                blob: "zz".repeat(32),
                ..file_ref()
            },
            FileRef {
                name: "../etc/passwd".into(),
                ..file_ref()
            },
            FileRef {
                name: "a\nb".into(),
                ..file_ref()
            },
            FileRef {
                content_type: "png".into(),
                ..file_ref()
            },
            FileRef {
                size: crate::attachment::MAX_FILE_BYTES + 1,
                ..file_ref()
            },
        ] {
            let body = Body::File {
                file: Box::new(bad),
                caption: None,
                reply_to: None,
                preview: None,
            };
            assert!(MessageContent::new(body, 0, [0; 16], &alice(), &[9; 16]).is_err());
        }
        for bad in [
            Preview {
                content_type: "image/svg+xml".into(),
                data: vec![1],
            },
            Preview {
                content_type: "image/png".into(),
                data: vec![0; MAX_PREVIEW_BYTES + 1],
            },
            Preview {
                content_type: "image/png".into(),
                data: Vec::new(),
            },
        ] {
            let body = Body::File {
                file: Box::new(file_ref()),
                caption: None,
                reply_to: None,
                preview: Some(bad),
            };
            assert!(MessageContent::new(body, 0, [0; 16], &alice(), &[9; 16]).is_err());
        }
        // Built by hand with a short key: refused by the receiver.
        let mut e = file_ref().to_external();
        e.key.truncate(16);
        let m = MimiContent::new(
            [1; 16],
            NestedPart {
                disposition: disposition::ATTACHMENT,
                language: String::new(),
                part: Part::External(Box::new(e)),
            },
        );
        let mut b = m.to_bytes();
        b.resize(padded_len(b.len()), 0);
        assert_eq!(
            MessageContent::from_padded_bytes(&b, &alice(), &[9; 16]),
            Err(CodecError::Invalid("attachment key"))
        );
        // Nothing of the reference shows in Debug.
        let shown = format!("{:?}", file_ref());
        assert!(!shown.contains("cat") && !shown.contains("abab"), "{shown}");
    }

    #[test]
    fn settings_are_strict_and_skip_unknown_kinds_of_value() {
        let enc = |pairs: &[(&str, SettingValue)]| {
            encode_settings(
                &pairs
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), *v))
                    .collect::<Vec<_>>(),
            )
        };
        // Written in deterministic order whatever the input order.
        let a = enc(&[
            ("zz", SettingValue::Bool(true)),
            ("a", SettingValue::Uint(1)),
        ])
        .unwrap();
        let b = enc(&[
            ("a", SettingValue::Uint(1)),
            ("zz", SettingValue::Bool(true)),
        ])
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(decode_settings(&a).unwrap().len(), 2);
        assert!(enc(&[]).is_err());
        assert!(enc(&[("Bad", SettingValue::Bool(true))]).is_err());
        assert!(enc(&[
            ("a", SettingValue::Bool(true)),
            ("a", SettingValue::Bool(false))
        ])
        .is_err());
        // Out of order, repeated, or trailing bytes: refused.
        let mut m = Vec::new();
        cbor::map(&mut m, 2);
        cbor::text(&mut m, "zz");
        cbor::boolean(&mut m, true);
        cbor::text(&mut m, "a");
        cbor::boolean(&mut m, true);
        assert!(decode_settings(&m).is_err());
        let mut t = a.clone();
        t.push(0);
        assert!(decode_settings(&t).is_err());
        // A text value (a newer kind) is skipped; the rest is taken.
        let mut m = Vec::new();
        cbor::map(&mut m, 2);
        cbor::text(&mut m, "a");
        cbor::text(&mut m, "dark");
        cbor::text(&mut m, "bb");
        cbor::boolean(&mut m, false);
        assert_eq!(
            decode_settings(&m).unwrap(),
            vec![("bb".to_owned(), SettingValue::Bool(false))]
        );
    }

    #[test]
    fn debug_output_has_no_text() {
        let m = send(Body::Text {
            text: "secret words".into(),
            reply_to: None,
        });
        let shown = format!("{m:?}");
        assert!(!shown.contains("secret"), "{shown}");
        // Not as bytes either ("secret" is 115, 101, 99, ...).
        assert!(!shown.contains("115, 101, 99"), "{shown}");
        assert!(shown.len() < 300, "{shown}");
        let e = format!(
            "{:?}",
            Body::Edit {
                original: m.id,
                text: "secret".into(),
                reply_to: None
            }
        );
        assert!(!e.contains("secret"), "{e}");
    }

    /// The exact `{:?}` of a message and of body kinds that carry text: pinned, so a change that
    /// would print plaintext (or its bytes) into a log line fails here first.
    #[test]
    fn debug_output_is_pinned() {
        let m = send(Body::Text {
            text: "secret words".into(),
            reply_to: None,
        });
        let id = m.id;
        let bodies = [
            Body::Text {
                text: "secret".into(),
                reply_to: Some(id),
            },
            Body::Edit {
                original: id,
                text: "secret".into(),
                reply_to: None,
            },
            Body::Reaction {
                to: id,
                emoji: "🤫".into(),
            },
            Body::Unsupported {
                what: "image/png".into(),
            },
        ];
        let shown: Vec<String> = std::iter::once(format!("{m:?}"))
            .chain(bodies.iter().map(|b| format!("{b:?}")))
            .collect();
        assert_eq!(shown, SNAPSHOT);
    }

    /// `mls::Incoming` derives its Debug and shows its content through `MessageContent`'s.
    const SNAPSHOT: [&str; 5] = [
        "MessageContent { id: MessageId(01890b2c15f7182bd9668281dd34856acd887e28a30d8a5bca5be3dc2a006146), sent_at_ms: 1700000000123, \
         body: Text(12 bytes, reply_to: None), encoded: 76 bytes }",
        "Text(6 bytes, reply_to: Some(MessageId(01890b2c15f7182bd9668281dd34856acd887e28a30d8a5bca5be3dc2a006146)))",
        "Edit(of: MessageId(01890b2c15f7182bd9668281dd34856acd887e28a30d8a5bca5be3dc2a006146), 6 bytes)",
        "Reaction(to: MessageId(01890b2c15f7182bd9668281dd34856acd887e28a30d8a5bca5be3dc2a006146))",
        "Unsupported(image/png)",
    ];

    #[test]
    fn lengths_fall_into_buckets() {
        let a = send(Body::Text {
            text: "a".into(),
            reply_to: None,
        });
        let b = send(Body::Text {
            text: "a".repeat(10),
            reply_to: None,
        });
        assert_eq!(a.to_padded_bytes().len(), b.to_padded_bytes().len());
        assert_eq!(padded_len(65), 128);
        assert_eq!(padded_len(4097), 8192);
    }

    /// What the server sees does not change size: a 100-byte text pads to the same bucket in MIMI
    /// content as it did in content v1 (the relay benchmark's message).
    #[test]
    fn a_100_byte_text_pads_as_it_did_in_v1() {
        let text = "x".repeat(100);
        let mimi = send(Body::Text {
            text: text.clone(),
            reply_to: None,
        });
        let v1 = MessageContent::v1_text([1; 16], &text, 1_700_000_000_123, None);
        assert!(mimi.encoded().len() > v1.encoded().len());
        assert_eq!(mimi.to_padded_bytes().len(), 256);
        assert_eq!(v1.to_padded_bytes().len(), 256);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = MessageContent::from_padded_bytes(&bytes, &alice(), &[1; 16]);
        }

        #[test]
        fn text_round_trips(text in ".{0,300}", at in any::<u64>(), salt in any::<[u8; 16]>()) {
            let m = MessageContent::new(Body::Text { text, reply_to: None }, at, salt, &alice(), &[2; 16]).unwrap();
            let bytes = m.to_padded_bytes();
            prop_assert_eq!(bytes.len(), padded_len(bytes.len()));
            prop_assert_eq!(MessageContent::from_padded_bytes(&bytes, &alice(), &[2; 16]).unwrap(), m);
        }
    }
}
