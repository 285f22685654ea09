//! Accounts, their devices, and device links.

use std::net::IpAddr;

use sotto_api::*;
use sotto_proto::{DeviceCertificate, IdentityPublicKey, Username};

use super::key_packages::validate_key_packages;
use super::{
    now_secs, parse_username, rfc3339, Body, Caller, DeliveryService, DsError, Limit,
    MAX_KEY_PACKAGES_PER_UPLOAD,
};
use crate::store::{DeviceRecord, KeyPackages, StoreError};

/// A new device's row and the bearer token that goes with it (shown once, stored as a hash).
fn device_record(cert: &DeviceCertificate, certificate: Vec<u8>) -> (String, DeviceRecord) {
    let (token, token_hash) = crate::auth::new_token(&cert.device_id);
    let record = DeviceRecord {
        device_id: DeviceId::from_bytes(&cert.device_id.0),
        certificate,
        token_hash,
        created_at: now_secs(),
    };
    (token, record)
}

/// The counts a new device's key packages must keep to (what the OpenAPI document states), checked
/// before anything is looked up.
fn check_device_shape(device: &NewDevice) -> Result<(), DsError> {
    if device.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(DsError::bad_request(format!(
            "at most {MAX_KEY_PACKAGES_PER_UPLOAD} key packages per upload"
        )));
    }
    if device.last_resort_key_packages.is_empty() {
        return Err(DsError::bad_request(
            "a device needs a last-resort key package",
        ));
    }
    if device.last_resort_key_packages.len() > 2 {
        return Err(DsError::bad_request(
            "at most one last-resort key package per ciphersuite",
        ));
    }
    Ok(())
}

/// Validates a device's certificate (for `username`, signed by `identity`) and its key packages.
fn validate_device(
    username: &Username,
    identity: &IdentityPublicKey,
    device: &NewDevice,
) -> Result<(DeviceCertificate, KeyPackages), DsError> {
    check_device_shape(device)?;
    let cert = DeviceCertificate::decode(&device.certificate.0)
        .map_err(|e| DsError::bad_request(format!("certificate: {e}")))?;
    if &cert.username != username || &cert.identity_key != identity {
        return Err(DsError::bad_request(
            "certificate is for another account or identity key",
        ));
    }
    cert.verify_self_signed()
        .map_err(|e| DsError::bad_request(format!("certificate: {e}")))?;
    let kps = validate_key_packages(
        &cert,
        &device.key_packages,
        &device.last_resort_key_packages,
    )?;
    Ok((cert, kps))
}

impl DeliveryService {
    /// Registers an account and its first device.
    pub async fn register(
        &self,
        ip: Option<IpAddr>,
        body: impl Body<RegisterRequest>,
    ) -> Result<RegisterResponse, DsError> {
        self.admit(Limit::Register, None, ip).await?;
        let req = body.await?;
        let username = parse_username(&req.username)?;
        let identity = IdentityPublicKey::from_bytes(&req.identity_key.0)
            .map_err(|e| DsError::bad_request(e.to_string()))?;
        let (cert, kps) = validate_device(&username, &identity, &req.device)?;
        let (token, device) = device_record(&cert, req.device.certificate.0);
        self.store
            .create_account(username.as_str(), &identity.to_bytes(), device, kps)
            .await?;
        tracing::info!(user = %username, device = %cert.device_id, "account registered");
        Ok(RegisterResponse {
            device_id: DeviceId::from_bytes(&cert.device_id.0),
            token,
        })
    }

    /// An account's public identity and devices.
    pub async fn account(&self, username: &sotto_api::Username) -> Result<AccountInfo, DsError> {
        let username = parse_username(username)?;
        let acc = self
            .store
            .account(username.as_str())
            .await?
            .ok_or_else(|| DsError::not_found(format!("no account named {username}")))?;
        Ok(AccountInfo {
            revoked_devices: acc.revoked,
            username: acc.username,
            identity_key: B64(acc.identity_key),
            devices: acc
                .devices
                .into_iter()
                .map(|d| DeviceInfo {
                    device_id: d.device_id,
                    certificate: B64(d.certificate),
                    created_at: rfc3339(d.created_at),
                })
                .collect(),
        })
    }

    /// Revokes one of the caller's account's devices (possibly the caller itself): at once its
    /// token stops working on every node, its push connections close, its key packages and
    /// pending welcomes go, and it stops being a member device of every conversation. The
    /// account's other devices then remove it from the MLS groups on their next sync.
    pub async fn revoke_device(
        &self,
        caller: &Caller,
        device_id: &DeviceId,
    ) -> Result<(), DsError> {
        self.store
            .revoke_device(&caller.username, device_id, &caller.device_id)
            .await?;
        self.hub.revoke(device_id);
        self.bus.revoke(device_id.to_string());
        tracing::info!(device = %device_id, "device revoked");
        // The account's other devices remove it from their conversations' MLS groups on sync:
        // wake them so that happens now.
        self.wake_devices_of(&[caller.username.to_string()]).await;
        Ok(())
    }

    /// Offers a device link.
    pub async fn create_link(
        &self,
        caller: &Caller,
        req: CreateLinkRequest,
    ) -> Result<LinkCreated, DsError> {
        if req.bundle.0.is_empty() || req.bundle.0.len() > MAX_LINK_BUNDLE {
            return Err(DsError::bad_request("bundle size out of range"));
        }
        let expires_at = now_secs() + self.config.link_ttl_secs;
        self.store
            .create_link(
                &req.link_id,
                &caller.username,
                &caller.device_id,
                &req.bundle.0,
                expires_at,
            )
            .await?;
        tracing::info!(user = %caller.username, "device link offered");
        Ok(LinkCreated {
            expires_at: rfc3339(expires_at),
        })
    }

    /// Fetches a pending link's encrypted bundle.
    pub async fn fetch_link(
        &self,
        ip: Option<IpAddr>,
        body: impl Body<LinkFetchRequest>,
    ) -> Result<LinkBundle, DsError> {
        self.admit(Limit::Register, None, ip).await?;
        let req = body.await?;
        self.pending_link(&req.link_id).await
    }

    async fn pending_link(&self, link_id: &LinkId) -> Result<LinkBundle, DsError> {
        let (username, bundle) = self
            .store
            .fetch_link(link_id, now_secs())
            .await?
            .ok_or(StoreError::LinkExpired)?;
        Ok(LinkBundle {
            username: crate::store::stored(username)?,
            bundle: B64(bundle),
        })
    }

    /// Redeems a link: registers the new device under the link's account.
    pub async fn redeem_link(
        &self,
        ip: Option<IpAddr>,
        body: impl Body<LinkRedeemRequest>,
    ) -> Result<RegisterResponse, DsError> {
        self.admit(Limit::Register, None, ip).await?;
        let req = body.await?;
        check_device_shape(&req.device)?;
        let LinkBundle { username, .. } = self.pending_link(&req.link_id).await?;
        let acc = self
            .store
            .account(&username)
            .await?
            .ok_or_else(|| DsError::not_found("account not found"))?;
        let username = parse_username(&acc.username)?;
        let identity = IdentityPublicKey::from_bytes(&acc.identity_key)
            .map_err(|_| DsError::internal("stored identity key unreadable"))?;
        let (cert, kps) = validate_device(&username, &identity, &req.device)?;
        let (token, device) = device_record(&cert, req.device.certificate.0);
        self.store
            .redeem_link(&req.link_id, now_secs(), device, kps)
            .await?;
        tracing::info!(user = %username, device = %cert.device_id, "device linked");
        self.wake_devices_of(&[username.as_str().to_owned()]).await;
        Ok(RegisterResponse {
            device_id: DeviceId::from_bytes(&cert.device_id.0),
            token,
        })
    }
}
