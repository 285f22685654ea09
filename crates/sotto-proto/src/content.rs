//! The plaintext of a message: what MLS encrypts.
//!
//! ```text
//! content = version:u8(=1) id:[16] sent_at_ms:u64 kind:u8 payload:bytes  padding:zeros
//! text    = text:bytes reply:u8(0|1) [reply_to:[16]]
//! ```
//! The encoding is padded with zeros to a fixed bucket size before encryption so that ciphertext
//! lengths leak little about the text. Unknown `kind`s decode to [`Body::Unsupported`] so that newer
//! clients can add content kinds (reactions, edits, receipts, attachments, ...) without breaking
//! older ones.

use rand::RngCore;

use crate::codec::{put_bytes, CodecError, Reader};

const VERSION: u8 = 1;
const KIND_TEXT: u8 = 1;
/// The longest text a message may carry, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
const MAX_PAYLOAD: usize = MAX_TEXT_BYTES + 64;

/// A random 128-bit message id, chosen by the sender; receivers de-duplicate by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(b)
    }

    /// The id as 32 hex digits.
    pub fn to_hex(&self) -> String {
        crate::identity::hex(&self.0)
    }
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// A text message, optionally replying to an earlier one.
    Text {
        /// The text.
        text: String,
        /// The message this one replies to.
        reply_to: Option<MessageId>,
    },
    /// A kind this version does not understand (sent by a newer client).
    Unsupported {
        /// The kind number.
        kind: u8,
    },
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContent {
    /// Sender-chosen random id.
    pub id: MessageId,
    /// Sender's clock, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// What it says.
    pub body: Body,
}

impl MessageContent {
    /// A new text message with a fresh id.
    pub fn text(text: impl Into<String>, sent_at_ms: u64, reply_to: Option<MessageId>) -> Self {
        Self {
            id: MessageId::random(),
            sent_at_ms,
            body: Body::Text {
                text: text.into(),
                reply_to,
            },
        }
    }

    /// Encodes without padding. Fails for an over-long text or an unsupported body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.push(VERSION);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.sent_at_ms.to_be_bytes());
        match &self.body {
            Body::Text { text, reply_to } => {
                if text.len() > MAX_TEXT_BYTES {
                    return Err(CodecError::Invalid("text too long"));
                }
                out.push(KIND_TEXT);
                let mut payload = Vec::with_capacity(text.len() + 21);
                put_bytes(&mut payload, text.as_bytes());
                match reply_to {
                    Some(id) => {
                        payload.push(1);
                        payload.extend_from_slice(&id.0);
                    }
                    None => payload.push(0),
                }
                put_bytes(out, &payload);
            }
            Body::Unsupported { .. } => return Err(CodecError::Invalid("unsupported body")),
        }
        Ok(())
    }

    /// Encodes and pads to the bucket size: the bytes to hand to MLS.
    pub fn to_padded_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        self.encode(&mut out)?;
        out.resize(padded_len(out.len()), 0);
        Ok(out)
    }

    /// Decodes padded plaintext: the content, then nothing but zero bytes.
    pub fn from_padded_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(CodecError::UnsupportedVersion(version));
        }
        let id = MessageId(r.array()?);
        let sent_at_ms = r.u64()?;
        let kind = r.u8()?;
        let payload = r.bytes(MAX_PAYLOAD)?;
        if r.rest().iter().any(|b| *b != 0) {
            return Err(CodecError::Invalid("padding"));
        }
        let body = match kind {
            KIND_TEXT => {
                let mut p = Reader::new(payload);
                let text = std::str::from_utf8(p.bytes(MAX_TEXT_BYTES)?)
                    .map_err(|_| CodecError::Invalid("utf-8"))?
                    .to_owned();
                let reply_to = match p.u8()? {
                    0 => None,
                    1 => Some(MessageId(p.array()?)),
                    _ => return Err(CodecError::Invalid("reply flag")),
                };
                p.finish()?;
                Body::Text { text, reply_to }
            }
            0 => return Err(CodecError::Invalid("kind")),
            kind => Body::Unsupported { kind },
        };
        Ok(Self {
            id,
            sent_at_ms,
            body,
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

    #[test]
    fn text_round_trips_through_padding() {
        let m = MessageContent::text("hello", 1_700_000_000_123, Some(MessageId::random()));
        let bytes = m.to_padded_bytes().unwrap();
        assert_eq!(bytes.len(), 64);
        assert_eq!(MessageContent::from_padded_bytes(&bytes).unwrap(), m);
    }

    #[test]
    fn lengths_fall_into_buckets() {
        let a = MessageContent::text("a", 0, None)
            .to_padded_bytes()
            .unwrap();
        let b = MessageContent::text("a".repeat(20), 0, None)
            .to_padded_bytes()
            .unwrap();
        assert_eq!(a.len(), b.len());
        assert_eq!(padded_len(65), 128);
        assert_eq!(padded_len(4097), 8192);
    }

    #[test]
    fn refuses_nonzero_padding_bad_version_and_long_text() {
        let mut bytes = MessageContent::text("x", 0, None)
            .to_padded_bytes()
            .unwrap();
        *bytes.last_mut().unwrap() = 1;
        assert_eq!(
            MessageContent::from_padded_bytes(&bytes),
            Err(CodecError::Invalid("padding"))
        );
        bytes[0] = 9;
        assert_eq!(
            MessageContent::from_padded_bytes(&bytes),
            Err(CodecError::UnsupportedVersion(9))
        );
        let long = MessageContent::text("x".repeat(MAX_TEXT_BYTES + 1), 0, None);
        assert!(long.to_padded_bytes().is_err());
    }

    #[test]
    fn unknown_kinds_decode_as_unsupported() {
        let mut bytes = MessageContent::text("x", 0, None)
            .to_padded_bytes()
            .unwrap();
        bytes[25] = 42;
        let m = MessageContent::from_padded_bytes(&bytes).unwrap();
        assert_eq!(m.body, Body::Unsupported { kind: 42 });
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = MessageContent::from_padded_bytes(&bytes);
        }

        #[test]
        fn text_round_trips(text in ".{0,300}", at in any::<u64>(), reply in any::<Option<[u8;16]>>()) {
            let m = MessageContent { id: MessageId::random(), sent_at_ms: at,
                body: Body::Text { text, reply_to: reply.map(MessageId) } };
            let bytes = m.to_padded_bytes().unwrap();
            prop_assert_eq!(bytes.len(), padded_len(bytes.len()));
            prop_assert_eq!(MessageContent::from_padded_bytes(&bytes).unwrap(), m);
        }
    }
}
