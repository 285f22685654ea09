//! A minimal binary codec in the style of rustls' `Codec`: big-endian integers, `u32`-length-prefixed
//! byte strings, and a reader that refuses to read past its end or to leave bytes behind.

use thiserror::Error;

/// Why bytes could not be decoded. Carries no content of the input.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ended before the value was complete.
    #[error("input truncated")]
    Truncated,
    /// Bytes were left over after the value.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A version byte we do not understand.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A length or field value outside what the format allows.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Reads values from a byte slice, front to back.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a `u32`-length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], CodecError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(CodecError::Invalid("length"));
        }
        self.take(len)
    }

    /// Whether every byte was read.
    pub fn rest_is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Appends a `u32`-length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every caller bounds its fields far below 4 GiB; saturating keeps this total.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_short_and_trailing_input() {
        let mut r = Reader::new(&[0, 0, 0, 5, 1, 2]);
        assert_eq!(r.bytes(10), Err(CodecError::Truncated));
        let mut r = Reader::new(&[0, 0, 0, 1, 9, 7]);
        assert_eq!(r.bytes(10), Ok(&[9u8][..]));
        assert_eq!(r.finish(), Err(CodecError::TrailingBytes(1)));
        let mut r = Reader::new(&[0, 0, 0, 11]);
        assert_eq!(r.bytes(10), Err(CodecError::Invalid("length")));
    }
}
