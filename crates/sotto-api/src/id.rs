//! Validated ids: a username, device, conversation, link or blob id is parsed once, where it
//! enters (a request body, a path, a frame), and refused there if malformed, so that no malformed
//! id reaches a query. Each has exactly one spelling (lowercase hex for the hex ids).
//!
//! They read as `&str` (`Deref`, `AsRef<str>`, `Display`) wherever a string is wanted, and
//! serialize as plain JSON strings.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An id that is not well-formed: which kind it was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidId(&'static str);

impl InvalidId {
    pub(crate) fn kind(what: &'static str) -> Self {
        Self(what)
    }
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}", self.0)
    }
}

impl std::error::Error for InvalidId {}

/// Whether `s` is a username: 3 to 32 of `a-z`, `0-9`, `_`, `.`, `-` ([`crate::USERNAME_PATTERN`]).
pub fn is_username(s: &str) -> bool {
    (3..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses `s`, refusing it unless it is well-formed.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                let valid: fn(&str) -> bool = $valid;
                if valid(&s) {
                    Ok(Self(s))
                } else {
                    Err(InvalidId($what))
                }
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidId;
            fn try_from(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A username ([`is_username`]).
    Username,
    "username",
    is_username
);

id_type!(
    /// A device id: 32 lowercase hex digits.
    DeviceId,
    "device id",
    |s| crate::is_hex_id(s, 32)
);

impl DeviceId {
    /// The id of the device whose certificate holds these 16 bytes, in lowercase hex.
    pub fn from_bytes(bytes: &[u8; 16]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(32);
        for b in bytes {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Self(s)
    }
}

id_type!(
    /// A conversation id, also its MLS group id: 32 lowercase hex digits.
    ConversationId,
    "conversation id",
    |s| crate::is_hex_id(s, 32)
);

id_type!(
    /// A device link's id, derived from the link secret by hashing: 64 lowercase hex digits.
    LinkId,
    "link id",
    |s| crate::is_hex_id(s, 64)
);

id_type!(
    /// An attachment blob's id: 64 lowercase hex digits.
    BlobId,
    "blob id",
    |s| crate::is_hex_id(s, 64)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_has_one_spelling() {
        assert!(Username::new("alice.b-1_").is_ok());
        for bad in ["al", "Alice", "a b c", "élise", &"a".repeat(33)] {
            assert_eq!(
                Username::new(bad).unwrap_err().to_string(),
                "invalid username"
            );
        }
        let hex32 = "0123456789abcdef0123456789abcdef";
        assert!(DeviceId::new(hex32).is_ok());
        let bytes: [u8; 16] = std::array::from_fn(|i| (i as u8) * 0x11);
        assert_eq!(
            DeviceId::from_bytes(&bytes),
            DeviceId::new("00112233445566778899aabbccddeeff").unwrap()
        );
        assert!(ConversationId::new(hex32.to_uppercase()).is_err());
        assert!(ConversationId::new(&hex32[1..]).is_err());
        assert!(LinkId::new(hex32).is_err());
        assert!(BlobId::new(hex32.repeat(2)).is_ok());
    }

    #[test]
    fn ids_travel_as_plain_strings_and_are_refused_when_malformed() {
        let id: ConversationId =
            serde_json::from_str("\"0123456789abcdef0123456789abcdef\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"0123456789abcdef0123456789abcdef\""
        );
        let err = serde_json::from_str::<ConversationId>("\"../../etc\"").unwrap_err();
        assert!(err.to_string().contains("invalid conversation id"), "{err}");
        assert_eq!(&*id, "0123456789abcdef0123456789abcdef");
    }
}
