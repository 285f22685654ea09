//! Key packages: uploads, counts and claims.

use std::net::IpAddr;

use openmls_rust_crypto::RustCrypto;
use sotto_api::*;
use sotto_proto::mls::{ValidKeyPackage, CLASSIC_CIPHERSUITE, DEFAULT_CIPHERSUITE};
use sotto_proto::DeviceCertificate;

use super::{
    parse_username, Body, Caller, DeliveryService, DsError, Limit, MAX_KEY_PACKAGES_PER_UPLOAD,
};
use crate::store::{KeyPackages, StoreError};

/// Checks that every key package verifies, is `cert`'s device's, and is marked last-resort exactly
/// when it is in `last_resort` (at most one of those per ciphersuite).
pub(super) fn validate_key_packages(
    cert: &DeviceCertificate,
    one_time: &[B64],
    last_resort: &[B64],
) -> Result<KeyPackages, DsError> {
    let crypto = RustCrypto::default();
    let check = |b: &B64, want_last_resort: bool| -> Result<(u16, Vec<u8>), DsError> {
        let kp = ValidKeyPackage::parse(&crypto, &b.0)
            .map_err(|e| DsError::bad_request(e.to_string()))?;
        if kp.certificate() != cert {
            return Err(DsError::bad_request(
                "key package belongs to another device",
            ));
        }
        if kp.is_last_resort() != want_last_resort {
            return Err(DsError::bad_request(if want_last_resort {
                "a last-resort key package is not marked last-resort"
            } else {
                "a one-time key package is marked last-resort"
            }));
        }
        Ok((u16::from(kp.ciphersuite()), b.0.clone()))
    };
    let last_resort: Vec<(u16, Vec<u8>)> = last_resort
        .iter()
        .map(|b| check(b, true))
        .collect::<Result<_, _>>()?;
    let mut suites: Vec<u16> = last_resort.iter().map(|(s, _)| *s).collect();
    suites.sort_unstable();
    suites.dedup();
    if suites.len() != last_resort.len() {
        return Err(DsError::bad_request(
            "at most one last-resort key package per ciphersuite",
        ));
    }
    Ok(KeyPackages {
        one_time: one_time
            .iter()
            .map(|b| check(b, false))
            .collect::<Result<_, _>>()?,
        last_resort,
    })
}

impl DeliveryService {
    /// Uploads key packages for the calling device.
    pub async fn upload_key_packages(
        &self,
        caller: &Caller,
        req: UploadKeyPackages,
    ) -> Result<KeyPackageCount, DsError> {
        if req.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
            return Err(DsError::bad_request(format!(
                "at most {MAX_KEY_PACKAGES_PER_UPLOAD} key packages per upload"
            )));
        }
        let cert = self.caller_cert(caller).await?;
        if req.last_resort_key_packages.len() > 2 {
            return Err(DsError::bad_request(
                "at most one last-resort key package per ciphersuite",
            ));
        }
        let kps = validate_key_packages(&cert, &req.key_packages, &req.last_resort_key_packages)?;
        self.store.add_key_packages(&caller.device_id, kps).await?;
        self.key_package_count(caller).await
    }

    /// Counts the calling device's one-time key packages.
    pub async fn key_package_count(&self, caller: &Caller) -> Result<KeyPackageCount, DsError> {
        Ok(KeyPackageCount {
            count: self
                .store
                .key_package_count(&caller.device_id, u16::from(DEFAULT_CIPHERSUITE))
                .await?,
            classic_count: self
                .store
                .key_package_count(&caller.device_id, u16::from(CLASSIC_CIPHERSUITE))
                .await?,
        })
    }

    /// Claims one key package per device of an account.
    pub async fn claim(
        &self,
        caller: &Caller,
        ip: Option<IpAddr>,
        body: impl Body<ClaimRequest>,
    ) -> Result<ClaimResponse, DsError> {
        self.admit(Limit::Claim, Some(&caller.device_id), ip)
            .await?;
        let req = body.await?;
        let username = parse_username(&req.username)?;
        let suite = match req.ciphersuite {
            None => u16::from(DEFAULT_CIPHERSUITE),
            Some(s) if sotto_proto::mls::suite_from_u16(s).is_some() => s,
            Some(_) => return Err(DsError::bad_request("unsupported ciphersuite")),
        };
        self.ensure_current(caller).await?;
        let only: Vec<String> = req.devices.into_iter().map(String::from).collect();
        if self.store.account(username.as_str()).await?.is_none() {
            return Err(DsError::not_found(format!("no account named {username}")));
        }
        let claimed = self
            .store
            .claim_key_packages(username.as_str(), &only, &caller.device_id, suite)
            .await?;
        tracing::info!(user = %username, count = claimed.len(), "key packages claimed");
        Ok(ClaimResponse {
            key_packages: claimed
                .into_iter()
                .map(|(device_id, kp)| {
                    Ok(ClaimedKeyPackage {
                        device_id: crate::store::stored(device_id)?,
                        key_package: B64(kp),
                    })
                })
                .collect::<Result<_, StoreError>>()?,
        })
    }
}
