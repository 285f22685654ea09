//! Authentication, in one place: device tokens (minted once, stored as a SHA-256 hash), the cache
//! of recently verified tokens, and the checks that a device may still be served. Transports only
//! find the token (HTTP's `Authorization` header, or the WebSocket subprotocol) and call
//! [`DeliveryService::authenticate`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use sotto_api::Username;
use sotto_proto::identity::hex;
use sotto_proto::DeviceId;
use subtle::ConstantTimeEq;

use crate::ds::{Caller, DeliveryService, DsError};

/// Recently verified device tokens (device id → token hash and account), so that a busy device does
/// not cost a database read per request. Entries live [`AuthCache::TTL`]. A revoked device is
/// forgotten at once on every node (the bus carries revocations) and kept out for a TTL, so a
/// verification that raced the revocation cannot put it back.
#[derive(Debug, Default)]
pub struct AuthCache(Mutex<HashMap<String, CachedToken>>);

#[derive(Debug)]
enum CachedToken {
    /// Token hash, account, verified at.
    Verified([u8; 32], Username, Instant),
    /// Revoked at.
    Revoked(Instant),
}

impl AuthCache {
    /// How long a verified token is trusted without asking the database again.
    pub const TTL: Duration = Duration::from_secs(30);
    const MAX: usize = 200_000;

    /// The cached (token hash, username) of a device, if fresh.
    pub fn get(&self, device_id: &str) -> Option<([u8; 32], Username)> {
        let m = self.0.lock().ok()?;
        match m.get(device_id)? {
            CachedToken::Verified(h, u, at) if at.elapsed() < Self::TTL => Some((*h, u.clone())),
            _ => None,
        }
    }

    /// Remembers a device's verified token hash (unless it was revoked within the TTL).
    pub fn put(&self, device_id: &str, hash: [u8; 32], username: &Username) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(CachedToken::Revoked(at)) = m.get(device_id) {
                if at.elapsed() < Self::TTL {
                    return;
                }
            }
            if m.len() >= Self::MAX {
                m.retain(|_, t| matches!(t, CachedToken::Revoked(at) if at.elapsed() < Self::TTL));
            }
            m.insert(
                device_id.to_owned(),
                CachedToken::Verified(hash, username.clone(), Instant::now()),
            );
        }
    }

    /// Forgets a revoked device's token.
    pub fn revoke(&self, device_id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(device_id.to_owned(), CachedToken::Revoked(Instant::now()));
        }
    }
}

fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// A new bearer token `DEVICE_ID:SECRET` for a device, and the hash the store keeps of it. The
/// token is shown once, to the device.
pub(crate) fn new_token(device_id: &DeviceId) -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret_hex = hex(&secret);
    let hash = hash_secret(secret_hex.as_bytes());
    (format!("{device_id}:{secret_hex}"), hash)
}

impl DeliveryService {
    /// Checks a bearer token `DEVICE_ID:SECRET`, comparing hashes in constant time (against a
    /// recently verified hash when there is one, else the database's).
    pub async fn authenticate(&self, token: &str) -> Result<Caller, DsError> {
        let (device_id, secret) = token.split_once(':').ok_or_else(DsError::unauthorized)?;
        let device: sotto_api::DeviceId = device_id.parse().map_err(|_| DsError::unauthorized())?;
        let presented = hash_secret(secret.as_bytes());
        if let Some((hash, username)) = self.hub.tokens.get(device_id) {
            if bool::from(presented.ct_eq(&hash)) {
                return Ok(Caller {
                    username,
                    device_id: device,
                });
            }
        }
        let auth = self
            .store
            .device_auth(device_id)
            .await?
            .ok_or_else(DsError::unauthorized)?;
        if !bool::from(presented.ct_eq(&auth.token_hash)) {
            return Err(DsError::unauthorized());
        }
        // Only after the token checked out: nobody learns an account is locked by guessing.
        if auth.locked {
            return Err(DsError::locked());
        }
        // Locked accounts are never cached, so an unlock counts at once; a lock counts within the
        // cache's lifetime (AuthCache::TTL) on every node.
        self.hub
            .tokens
            .put(device_id, auth.token_hash, &auth.username);
        Ok(Caller {
            username: auth.username,
            device_id: device,
        })
    }

    /// Whether a device authenticated earlier (a push connection's) may still be served: not
    /// revoked, account not locked. Reads the store, not the cache: push connections call it every
    /// 30 s, so a lock reaches them within that.
    pub async fn still_allowed(&self, caller: &Caller) -> Result<(), DsError> {
        match self.store.device_auth(&caller.device_id).await? {
            None => Err(DsError::unauthorized()),
            Some(a) if a.locked => Err(DsError::locked()),
            Some(_) => Ok(()),
        }
    }

    /// For account-wide changes (claims, new conversations, leaving): the calling device must
    /// still be registered now, not just when its token was last verified (a node trusts a
    /// verified token for up to [`AuthCache::TTL`], and a revocation may reach it late).
    pub(crate) async fn ensure_current(&self, caller: &Caller) -> Result<(), DsError> {
        match self.store.device_auth(&caller.device_id).await? {
            Some(d) if d.username == caller.username => Ok(()),
            _ => Err(DsError::unauthorized()),
        }
    }
}
