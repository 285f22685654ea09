//! Device linking: one-time link codes and the encrypted account bundle.
//!
//! An existing device makes a [`LinkCode`] holding a fresh 256-bit secret. From the secret it derives
//! a lookup id (which the server sees) and a bundle key (which it never sees), encrypts the
//! [`AccountBundle`] (username and identity secret) under the key and uploads it under the id. The new
//! device, given the code out of band, derives the same id and key, fetches and decrypts the bundle,
//! certifies its own device with the identity key and registers.

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::codec::{put_bytes, CodecError, Reader};
use crate::identity::{hex, unhex, AccountIdentity, IdentityError, Username};

const CODE_PREFIX: &str = "sotto1-";
const BUNDLE_VERSION: u8 = 1;

/// Why a link code or bundle was refused. Never includes the code or the secret.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// Not a link code of this format.
    #[error("not a valid link code")]
    InvalidCode,
    /// The bundle does not decrypt under this code (wrong code or tampered bundle).
    #[error("link bundle does not decrypt with this code")]
    Decrypt,
    /// The bundle decrypted but its contents are malformed.
    #[error("malformed link bundle: {0}")]
    Malformed(String),
}

impl From<CodecError> for LinkError {
    fn from(e: CodecError) -> Self {
        Self::Malformed(e.to_string())
    }
}

impl From<IdentityError> for LinkError {
    fn from(e: IdentityError) -> Self {
        Self::Malformed(e.to_string())
    }
}

/// A one-time link code: a 256-bit secret, shown as `sotto1-` and 64 hex digits.
#[derive(Clone, ZeroizeOnDrop)]
pub struct LinkCode {
    secret: [u8; 32],
}

impl LinkCode {
    /// A fresh code.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self { secret }
    }

    /// The text a person copies to the new device. Treat it like a password.
    pub fn dangerous_to_text(&self) -> String {
        format!("{CODE_PREFIX}{}", hex(&self.secret))
    }

    /// The id the server stores the bundle under (hex of a hash of the secret; reveals nothing of it).
    pub fn link_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"sotto link id v1\0");
        h.update(self.secret);
        hex(&h.finalize())
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        let hk = Hkdf::<Sha256>::new(None, &self.secret);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        let _ = hk.expand(b"sotto link bundle key v1", key.as_mut());
        ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
    }

    /// Encrypts `bundle` under this code: `nonce || ciphertext`, bound to the link id.
    pub fn seal(&self, bundle: &AccountBundle) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let plaintext = Zeroizing::new(bundle.encode());
        let id = self.link_id();
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail for inputs this small.
        if let Ok(ct) = self.cipher().encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: id.as_bytes(),
            },
        ) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Decrypts a bundle sealed under this code.
    pub fn open(&self, sealed: &[u8]) -> Result<AccountBundle, LinkError> {
        if sealed.len() < 12 + 16 {
            return Err(LinkError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(12);
        let id = self.link_id();
        let plaintext = Zeroizing::new(
            self.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: id.as_bytes(),
                    },
                )
                .map_err(|_| LinkError::Decrypt)?,
        );
        AccountBundle::decode(&plaintext)
    }
}

impl FromStr for LinkCode {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hexpart = s
            .trim()
            .strip_prefix(CODE_PREFIX)
            .ok_or(LinkError::InvalidCode)?;
        let bytes = Zeroizing::new(unhex(hexpart).ok_or(LinkError::InvalidCode)?);
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| LinkError::InvalidCode)?;
        Ok(Self { secret })
    }
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkCode(***)")
    }
}

/// What a new device needs from its account: the username and the identity key.
pub struct AccountBundle {
    /// The account.
    pub username: Username,
    /// The account's identity key pair.
    pub identity: AccountIdentity,
}

impl fmt::Debug for AccountBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountBundle")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl AccountBundle {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![BUNDLE_VERSION];
        put_bytes(&mut out, self.username.as_str().as_bytes());
        out.extend_from_slice(self.identity.dangerous_secret_bytes().as_ref());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, LinkError> {
        let mut r = Reader::new(bytes);
        let v = r.u8()?;
        if v != BUNDLE_VERSION {
            return Err(CodecError::UnsupportedVersion(v).into());
        }
        let username = std::str::from_utf8(r.bytes(32)?)
            .map_err(|_| IdentityError::InvalidUsername)
            .and_then(Username::new)?;
        let identity = AccountIdentity::from_secret_bytes(r.take(32)?)?;
        r.finish()?;
        Ok(Self { username, identity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bundle() -> AccountBundle {
        AccountBundle {
            username: Username::new("alice").unwrap(),
            identity: AccountIdentity::generate(),
        }
    }

    #[test]
    fn seal_and_open_round_trip() {
        let code = LinkCode::generate();
        let b = bundle();
        let sealed = code.seal(&b);
        let parsed: LinkCode = code.dangerous_to_text().parse().unwrap();
        let back = parsed.open(&sealed).unwrap();
        assert_eq!(back.username, b.username);
        assert_eq!(back.identity.public(), b.identity.public());
        assert_eq!(parsed.link_id(), code.link_id());
    }

    #[test]
    fn wrong_code_or_tampering_is_refused() {
        let code = LinkCode::generate();
        let mut sealed = code.seal(&bundle());
        assert_eq!(
            LinkCode::generate().open(&sealed).unwrap_err(),
            LinkError::Decrypt
        );
        sealed[20] ^= 1;
        assert_eq!(code.open(&sealed).unwrap_err(), LinkError::Decrypt);
    }

    #[test]
    fn link_id_and_debug_do_not_reveal_the_secret() {
        let code = LinkCode::generate();
        let text = code.dangerous_to_text();
        let secret_hex = text.trim_start_matches(CODE_PREFIX);
        assert!(!code.link_id().contains(secret_hex));
        assert!(!format!("{code:?}").contains(secret_hex));
    }

    proptest! {
        #[test]
        fn arbitrary_codes_and_bundles_never_panic(s in ".{0,80}", b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = s.parse::<LinkCode>();
            let _ = LinkCode::generate().open(&b);
            let _ = AccountBundle::decode(&b);
        }
    }
}
