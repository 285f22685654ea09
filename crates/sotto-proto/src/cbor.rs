//! Deterministic CBOR (RFC 8949 §4.2.1): the subset MIMI content uses, written and read strictly.
//!
//! The writer always emits the shortest head for every length and integer, definite lengths only,
//! and maps in the order their caller gives (callers give them sorted). The reader accepts exactly
//! that and nothing else: a non-shortest head, an indefinite length, a reserved additional-info
//! value, a map whose keys are not in bytewise order of their encodings (or repeat), invalid UTF-8,
//! or nesting past the caller's depth bound is an error. A value that decodes therefore re-encodes
//! to the same bytes, which is what lets a message id (a hash of the bytes) be recomputed from the
//! decoded fields.
//!
//! Floating-point values and simple values other than `false`, `true` and `null` are refused: MIMI
//! strongly discourages them and no Sotto client sends them, and refusing them keeps the
//! determinism check exact (shortest-float rules need no code here).

use crate::codec::CodecError;

const UINT: u8 = 0;
const NINT: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const TAG: u8 = 6;
const SIMPLE: u8 = 7;

/// `null`'s encoding.
pub const NULL: u8 = 0xf6;
const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;

/// The largest integer magnitude MIMI allows as a map key (2^53 - 1: exact as a double).
pub const MAX_SAFE_INT: u64 = (1 << 53) - 1;

/// Writes a head: major type and argument, in the shortest form.
pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Writes an unsigned integer.
pub fn uint(out: &mut Vec<u8>, n: u64) {
    head(out, UINT, n);
}

/// Writes a signed integer.
pub fn int(out: &mut Vec<u8>, n: i64) {
    if n >= 0 {
        head(out, UINT, n as u64);
    } else {
        head(out, NINT, !(n as u64));
    }
}

/// Writes a byte string.
pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes a text string.
pub fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes an array head of `len` items.
pub fn array(out: &mut Vec<u8>, len: usize) {
    head(out, ARRAY, len as u64);
}

/// Writes a map head of `len` pairs.
pub fn map(out: &mut Vec<u8>, len: usize) {
    head(out, MAP, len as u64);
}

/// Writes `null`.
pub fn null(out: &mut Vec<u8>) {
    out.push(NULL);
}

/// Writes a boolean.
pub fn boolean(out: &mut Vec<u8>, b: bool) {
    out.push(if b { TRUE } else { FALSE });
}

/// Reads deterministic CBOR from a slice, front to back.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

// Redacted: the buffer may be message plaintext.
impl std::fmt::Debug for Dec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dec({} of {} bytes)", self.pos, self.buf.len())
    }
}

impl<'a> Dec<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// How many bytes have been read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    /// Reads a head: (major type, argument). Refuses indefinite lengths, reserved values and
    /// non-shortest arguments. For major type 7 the argument is the raw additional information.
    fn head(&mut self) -> Result<(u8, u64), CodecError> {
        let b = self.byte()?;
        let (major, ai) = (b >> 5, b & 0x1f);
        let n = match ai {
            0..=23 => u64::from(ai),
            24 => u64::from(self.byte()?),
            // A big-endian argument of 2, 4 or 8 bytes.
            25..=27 => self
                .take(1 << (ai - 24))?
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
            31 => return Err(CodecError::Invalid("CBOR indefinite length")),
            _ => return Err(CodecError::Invalid("CBOR reserved additional information")),
        };
        if major == SIMPLE {
            return match ai {
                20..=22 => Ok((SIMPLE, u64::from(ai))),
                25..=27 => Err(CodecError::Invalid("CBOR floating-point value")),
                _ => Err(CodecError::Invalid("CBOR simple value")),
            };
        }
        let shortest = match ai {
            24 => n >= 24,
            25 => n > u64::from(u8::MAX),
            26 => n > u64::from(u16::MAX),
            27 => n > u64::from(u32::MAX),
            _ => true,
        };
        if !shortest {
            return Err(CodecError::Invalid("CBOR non-shortest encoding"));
        }
        Ok((major, n))
    }

    fn expect(&mut self, want: u8, what: &'static str) -> Result<u64, CodecError> {
        let (major, n) = self.head()?;
        if major != want {
            return Err(CodecError::Invalid(what));
        }
        Ok(n)
    }

    /// Whether the next item is `null` (consumed if so).
    pub fn null(&mut self) -> bool {
        if self.buf.get(self.pos) == Some(&NULL) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Reads an unsigned integer no larger than `max`.
    pub fn uint(&mut self, max: u64, what: &'static str) -> Result<u64, CodecError> {
        let n = self.expect(UINT, what)?;
        if n > max {
            return Err(CodecError::Invalid(what));
        }
        Ok(n)
    }

    /// Reads a boolean.
    pub fn boolean(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.head()? {
            (SIMPLE, 20) => Ok(false),
            (SIMPLE, 21) => Ok(true),
            _ => Err(CodecError::Invalid(what)),
        }
    }

    fn len(n: u64, max: usize, what: &'static str) -> Result<usize, CodecError> {
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .ok_or(CodecError::Invalid(what))
    }

    /// Reads a byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let n = self.expect(BYTES, what)?;
        let n = Self::len(n, max, what)?;
        self.take(n)
    }

    /// Reads a text string of at most `max` bytes; it must be valid UTF-8.
    pub fn text(&mut self, max: usize, what: &'static str) -> Result<&'a str, CodecError> {
        let n = self.expect(TEXT, what)?;
        let n = Self::len(n, max, what)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::Invalid("UTF-8"))
    }

    /// Reads an array head of at most `max` items; returns its length.
    pub fn array(&mut self, max: usize, what: &'static str) -> Result<usize, CodecError> {
        let n = self.expect(ARRAY, what)?;
        Self::len(n, max, what)
    }

    /// Reads a map head of at most `max` pairs; returns its length.
    pub fn map(&mut self, max: usize, what: &'static str) -> Result<usize, CodecError> {
        let n = self.expect(MAP, what)?;
        Self::len(n, max, what)
    }

    /// Reads a map key (an integer within ±(2^53 - 1), or a text string of 1 to 255 bytes) and
    /// returns its encoding.
    pub fn extension_key(&mut self) -> Result<&'a [u8], CodecError> {
        let start = self.pos;
        match self.head()? {
            (UINT | NINT, n) if n <= MAX_SAFE_INT - u64::from(self.buf[start] >> 5 == NINT) => {}
            (TEXT, n) => {
                let n = Self::len(n, 255, "extension name")?;
                if n == 0 {
                    return Err(CodecError::Invalid("extension name"));
                }
                std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::Invalid("UTF-8"))?;
            }
            _ => return Err(CodecError::Invalid("extension name")),
        }
        Ok(&self.buf[start..self.pos])
    }

    /// Reads any one well-formed item, with arrays, maps and tags nested at most `depth` levels
    /// (the item itself counts as one), and returns its encoding. Map keys inside must be
    /// integers, text or byte strings, in bytewise order of their encodings, without repeats.
    pub fn value(&mut self, depth: usize) -> Result<&'a [u8], CodecError> {
        let start = self.pos;
        self.skip(depth)?;
        Ok(&self.buf[start..self.pos])
    }

    fn skip(&mut self, depth: usize) -> Result<(), CodecError> {
        let (major, n) = self.head()?;
        // A container uses up one level of `depth`; its items get what is left.
        let nested = |depth: usize| {
            depth
                .checked_sub(1)
                .ok_or(CodecError::Invalid("CBOR nested too deeply"))
        };
        match major {
            UINT | NINT | SIMPLE => {}
            BYTES => {
                let n = Self::len(n, self.buf.len(), "CBOR length")?;
                self.take(n)?;
            }
            TEXT => {
                let n = Self::len(n, self.buf.len(), "CBOR length")?;
                std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::Invalid("UTF-8"))?;
            }
            ARRAY => {
                let inner = nested(depth)?;
                for _ in 0..Self::len(n, self.buf.len(), "CBOR length")? {
                    self.skip(inner)?;
                }
            }
            MAP => {
                let inner = nested(depth)?;
                let mut last: Option<&[u8]> = None;
                for _ in 0..Self::len(n, self.buf.len(), "CBOR length")? {
                    let kstart = self.pos;
                    match self.head()? {
                        (UINT | NINT, _) => {}
                        (BYTES | TEXT, n) => {
                            let n = Self::len(n, self.buf.len(), "CBOR length")?;
                            let s = self.take(n)?;
                            if self.buf[kstart] >> 5 == TEXT && std::str::from_utf8(s).is_err() {
                                return Err(CodecError::Invalid("UTF-8"));
                            }
                        }
                        _ => return Err(CodecError::Invalid("CBOR map key type")),
                    }
                    let key = &self.buf[kstart..self.pos];
                    if last.is_some_and(|l| l >= key) {
                        return Err(CodecError::Invalid("CBOR map keys out of order"));
                    }
                    last = Some(key);
                    self.skip(inner)?;
                }
            }
            TAG => self.skip(nested(depth)?)?,
            _ => unreachable!("a major type is 3 bits"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_shortest() {
        for (n, len) in [
            (0u64, 1),
            (23, 1),
            (24, 2),
            (255, 2),
            (256, 3),
            (65536, 5),
            (1 << 32, 9),
        ] {
            let mut out = Vec::new();
            uint(&mut out, n);
            assert_eq!(out.len(), len, "{n}");
            let mut d = Dec::new(&out);
            assert_eq!(d.uint(u64::MAX, "n").unwrap(), n);
        }
        // 5 written with a one-byte argument is not shortest.
        assert_eq!(
            Dec::new(&[0x18, 5]).uint(u64::MAX, "n"),
            Err(CodecError::Invalid("CBOR non-shortest encoding"))
        );
        assert_eq!(
            Dec::new(&[0x5f, 0xff]).bytes(10, "b"),
            Err(CodecError::Invalid("CBOR indefinite length"))
        );
    }

    #[test]
    fn values_are_checked() {
        // {1: 2, 1: 3} repeats a key; {2: 0, 1: 0} is out of order.
        assert!(Dec::new(&[0xa2, 0x01, 0x02, 0x01, 0x03]).value(4).is_err());
        assert!(Dec::new(&[0xa2, 0x02, 0x00, 0x01, 0x00]).value(4).is_err());
        assert!(Dec::new(&[0xa2, 0x01, 0x00, 0x02, 0x00]).value(4).is_ok());
        // [[[[1]]]] is 4 levels deep; [[[[[1]]]]] is 5.
        assert!(Dec::new(&[0x81, 0x81, 0x81, 0x81, 0x01]).value(4).is_ok());
        assert!(Dec::new(&[0x81, 0x81, 0x81, 0x81, 0x81, 0x01])
            .value(4)
            .is_err());
        // A half-precision float.
        assert!(Dec::new(&[0xf9, 0x7e, 0x00]).value(4).is_err());
        // Invalid UTF-8 in a text string.
        assert!(Dec::new(&[0x62, 0xc3, 0x28]).value(4).is_err());
        // Truncated.
        assert!(Dec::new(&[0x5a, 0xff, 0xff, 0xff, 0xff]).value(4).is_err());
    }
}
