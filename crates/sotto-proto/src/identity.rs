//! Accounts, devices and device certificates.
//!
//! An account has one Ed25519 identity key. Each device has its own MLS signature key, and the
//! account's identity key signs a [`DeviceCertificate`] binding (username, device id, that MLS key,
//! creation time). The certificate travels as the device's MLS basic credential, so every member of a
//! conversation can check every leaf against the identity key it pinned for that account: the server
//! cannot add a device to someone's account or a conversation without the members noticing.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use thiserror::Error;

use crate::codec::{put_bytes, CodecError, Reader};

/// Why an identity, device id, username or certificate was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes do not decode.
    #[error("malformed: {0}")]
    Malformed(#[from] CodecError),
    /// A username outside the allowed alphabet or length.
    #[error("invalid username: use 3-32 characters a-z, 0-9, '_', '-' or '.'")]
    InvalidUsername,
    /// A device id that is not 32 hex digits.
    #[error("invalid device id")]
    InvalidDeviceId,
    /// Not a valid Ed25519 public key.
    #[error("invalid identity key")]
    InvalidKey,
    /// The certificate's signature does not verify under the account's identity key.
    #[error("device certificate signature does not verify")]
    BadSignature,
    /// The certificate names another identity key than the one pinned for the account.
    #[error("device certificate is signed by an identity key other than the pinned one")]
    IdentityMismatch,
    /// The certificate binds another MLS signature key than the one the leaf uses.
    #[error("device certificate does not match the device's MLS signature key")]
    SignatureKeyMismatch,
}

/// A validated username: 3 to 32 characters of `a-z 0-9 _ - .`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    /// Validates a username.
    pub fn new(s: &str) -> Result<Self, IdentityError> {
        let ok_len = (3..=32).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
        if ok_len && ok_chars {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::InvalidUsername)
        }
    }

    /// The username as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Username {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({})", self.0)
    }
}

/// A random 128-bit device id, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 16]);

impl DeviceId {
    /// A fresh random device id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(b)
    }

    /// The id as hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = unhex(s).ok_or(IdentityError::InvalidDeviceId)?;
        let arr: [u8; 16] = v.try_into().map_err(|_| IdentityError::InvalidDeviceId)?;
        Ok(Self(arr))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.to_hex())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses lowercase or uppercase hex; `None` on anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

/// An account's public identity key (Ed25519).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityPublicKey(VerifyingKey);

impl IdentityPublicKey {
    /// Parses a 32-byte Ed25519 public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::InvalidKey)?;
        VerifyingKey::from_bytes(&arr)
            .map(Self)
            .map_err(|_| IdentityError::InvalidKey)
    }

    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// A short fingerprint for people to compare (hex of the first 8 bytes of the key).
    pub fn fingerprint(&self) -> String {
        hex(&self.0.to_bytes()[..8])
    }
}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey({})", self.fingerprint())
    }
}

/// An account's identity key pair. The secret half never leaves the account's devices except inside
/// an encrypted link bundle.
pub struct AccountIdentity {
    key: SigningKey,
}

impl AccountIdentity {
    /// A fresh identity key from the OS random number generator.
    pub fn generate() -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(seed.as_mut());
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Rebuilds an identity from its 32-byte secret seed.
    pub fn from_secret_bytes(seed: &[u8]) -> Result<Self, IdentityError> {
        let arr: zeroize::Zeroizing<[u8; 32]> =
            zeroize::Zeroizing::new(seed.try_into().map_err(|_| IdentityError::InvalidKey)?);
        Ok(Self {
            key: SigningKey::from_bytes(&arr),
        })
    }

    /// The 32-byte secret seed. Only for the encrypted link bundle and the device's local store.
    pub fn dangerous_secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.key.to_bytes())
    }

    /// The public identity key.
    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.key.verifying_key())
    }

    /// Signs a certificate for a device of `username` whose MLS signature public key is
    /// `mls_signature_key`.
    pub fn certify_device(
        &self,
        username: &Username,
        device_id: DeviceId,
        mls_signature_key: &[u8],
        created_at: u64,
    ) -> DeviceCertificate {
        let mut cert = DeviceCertificate {
            username: username.clone(),
            device_id,
            identity_key: self.public(),
            mls_signature_key: mls_signature_key.to_vec(),
            created_at,
            signature: [0u8; 64],
        };
        let sig = self.key.sign(&cert.signed_bytes());
        cert.signature = sig.to_bytes();
        cert
    }
}

impl fmt::Debug for AccountIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountIdentity")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

const CERT_VERSION: u8 = 1;
const CERT_CONTEXT: &[u8] = b"sotto device certificate v1\0";
/// Ed25519 public keys are 32 bytes; leave room for other schemes later.
const MAX_SIG_KEY: usize = 2048;

/// A device certificate: the account's identity key vouches that `mls_signature_key` belongs to
/// device `device_id` of `username`.
///
/// A decoded certificate is only *well-formed*; call [`DeviceCertificate::verify`] with the identity
/// key pinned for the account before trusting it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// The account the device belongs to.
    pub username: Username,
    /// The device.
    pub device_id: DeviceId,
    /// The identity key that signed this certificate.
    pub identity_key: IdentityPublicKey,
    /// The device's MLS signature public key.
    pub mls_signature_key: Vec<u8>,
    /// Seconds since the Unix epoch when the certificate was made.
    pub created_at: u64,
    signature: [u8; 64],
}

impl fmt::Debug for DeviceCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCertificate")
            .field("username", &self.username)
            .field("device_id", &self.device_id)
            .field("identity_key", &self.identity_key)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl DeviceCertificate {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = CERT_CONTEXT.to_vec();
        self.encode_fields(&mut out);
        out
    }

    fn encode_fields(&self, out: &mut Vec<u8>) {
        out.push(CERT_VERSION);
        put_bytes(out, self.username.as_str().as_bytes());
        out.extend_from_slice(&self.device_id.0);
        out.extend_from_slice(&self.identity_key.to_bytes());
        put_bytes(out, &self.mls_signature_key);
        out.extend_from_slice(&self.created_at.to_be_bytes());
    }

    /// Appends the certificate's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_fields(out);
        out.extend_from_slice(&self.signature);
    }

    /// The certificate's encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.encode(&mut out);
        out
    }

    /// Decodes a certificate; does not check its signature.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, IdentityError> {
        let version = r.u8()?;
        if version != CERT_VERSION {
            return Err(CodecError::UnsupportedVersion(version).into());
        }
        let username = std::str::from_utf8(r.bytes(32)?)
            .map_err(|_| IdentityError::InvalidUsername)
            .and_then(Username::new)?;
        let device_id = DeviceId(r.array()?);
        let identity_key = IdentityPublicKey::from_bytes(r.take(32)?)?;
        let mls_signature_key = r.bytes(MAX_SIG_KEY)?.to_vec();
        let created_at = r.u64()?;
        let signature = r.array()?;
        Ok(Self {
            username,
            device_id,
            identity_key,
            mls_signature_key,
            created_at,
            signature,
        })
    }

    /// Decodes a certificate from exactly `bytes`; does not check its signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, IdentityError> {
        let mut r = Reader::new(bytes);
        let cert = Self::read(&mut r)?;
        r.finish()?;
        Ok(cert)
    }

    /// Checks that the certificate is signed by its own identity key. The server uses this to refuse
    /// garbage; a client must use [`DeviceCertificate::verify`] with the key it pinned.
    pub fn verify_self_signed(&self) -> Result<(), IdentityError> {
        let sig = Signature::from_bytes(&self.signature);
        self.identity_key
            .0
            .verify(&self.signed_bytes(), &sig)
            .map_err(|_| IdentityError::BadSignature)
    }

    /// Checks the certificate against the identity key pinned for its account and the MLS signature
    /// key of the leaf (or key package) that carries it.
    pub fn verify(
        &self,
        pinned: &IdentityPublicKey,
        leaf_signature_key: &[u8],
    ) -> Result<(), IdentityError> {
        if &self.identity_key != pinned {
            return Err(IdentityError::IdentityMismatch);
        }
        if self.mls_signature_key != leaf_signature_key {
            return Err(IdentityError::SignatureKeyMismatch);
        }
        self.verify_self_signed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> (AccountIdentity, DeviceCertificate) {
        let id = AccountIdentity::generate();
        let user = Username::new("alice").unwrap();
        let c = id.certify_device(&user, DeviceId::random(), &[7u8; 32], 1_700_000_000);
        (id, c)
    }

    #[test]
    fn certificate_round_trips_and_verifies() {
        let (id, c) = cert();
        let back = DeviceCertificate::decode(&c.to_bytes()).unwrap();
        assert_eq!(back, c);
        back.verify(&id.public(), &[7u8; 32]).unwrap();
    }

    #[test]
    fn certificate_refuses_other_identity_other_key_and_tampering() {
        let (_, c) = cert();
        let other = AccountIdentity::generate();
        assert_eq!(
            c.verify(&other.public(), &[7u8; 32]),
            Err(IdentityError::IdentityMismatch)
        );
        assert_eq!(
            c.verify(&c.identity_key, &[8u8; 32]),
            Err(IdentityError::SignatureKeyMismatch)
        );
        let mut bytes = c.to_bytes();
        let n = bytes.len();
        bytes[n - 70] ^= 1; // inside created_at
        let tampered = DeviceCertificate::decode(&bytes).unwrap();
        assert_eq!(
            tampered.verify(&c.identity_key, &[7u8; 32]),
            Err(IdentityError::BadSignature)
        );
    }

    #[test]
    fn usernames_are_validated() {
        assert!(Username::new("bob").is_ok());
        assert!(Username::new("a.b-c_9").is_ok());
        for bad in ["", "ab", "Bob", "bob!", "bob smith", &"x".repeat(33)] {
            assert!(Username::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_ids_parse_as_hex() {
        let d = DeviceId::random();
        assert_eq!(d.to_hex().parse::<DeviceId>().unwrap(), d);
        assert!("zz".parse::<DeviceId>().is_err());
        assert!("00".parse::<DeviceId>().is_err());
    }

    #[test]
    fn identity_debug_does_not_print_the_secret() {
        let id = AccountIdentity::generate();
        let secret = hex(id.dangerous_secret_bytes().as_ref());
        assert!(!format!("{id:?}").contains(&secret));
    }
}
