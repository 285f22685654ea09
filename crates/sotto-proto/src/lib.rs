//! `sotto-proto`: the sans-IO core of Sotto.
//!
//! Everything that must be right for end-to-end encryption lives here and does no I/O: it takes bytes
//! (and the current time) in and gives bytes and events out. The server, the SDK and the benchmarks all
//! build on it.
//!
//! ```text
//! identity   account identity keys (Ed25519), device ids, usernames, device certificates
//! content    the padded plaintext of a message (what MLS encrypts) and what it means
//! mimi       the IETF MIMI content format and message status reports
//! cbor       the deterministic CBOR both are written in
//! link       one-time device-link codes and the encrypted account bundle they unlock
//! group      group metadata (name, admins) and the membership policy
//! mls        the MLS conversation wrapper over openmls (hybrid post-quantum ciphersuite)
//! codec      the small binary codec every wire type above uses
//! ```
//!
//! Untrusted input (anything that came off the network or disk) is parsed with `read`/`decode`
//! functions into validated types; none of them panic on any input.
#![deny(missing_docs)]

pub mod attachment;
pub mod cbor;
pub mod codec;
pub mod content;
pub mod group;
pub mod identity;
pub mod link;
pub mod mimi;
pub mod mls;

pub use codec::CodecError;
pub use content::{Body, FileRef, MessageContent, MessageId, Preview, SettingValue};
pub use identity::{
    AccountIdentity, DeviceCertificate, DeviceId, IdentityError, IdentityPublicKey, Username,
};
pub use link::{AccountBundle, LinkCode, LinkError};
