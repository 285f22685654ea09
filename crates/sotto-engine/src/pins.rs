//! Trust on first use: fetching an account pins its identity key the first time and refuses a
//! changed key ever after; key packages are claimed and kept only if their device certificate
//! verifies against the pinned key, so a device slipped in by the server never joins.

use sotto_api::*;
use sotto_proto::mls::{MlsError, Trust, TrustedKeyPackage, ValidKeyPackage};
use sotto_proto::{IdentityPublicKey, Username};

use crate::store::PinRecord;
use crate::{Error, Flow, Pins, SyncReport};

impl Flow {
    /// Fetches an account, pins its identity key on first contact, and refuses a changed key.
    pub(crate) async fn fetch_account(
        &self,
        username: &str,
    ) -> Result<(AccountInfo, IdentityPublicKey), Error> {
        let acc: AccountInfo = match self.get(&format!("/v1/accounts/{username}")).await {
            Err(Error::Api {
                code: ErrorCode::NotFound,
                ..
            }) => return Err(Error::UnknownUser(username.to_owned())),
            other => other?,
        };
        let key = IdentityPublicKey::from_bytes(&acc.identity_key.0)
            .map_err(|_| Error::Protocol("server sent a malformed identity key".into()))?;
        if acc.username != username {
            return Err(Error::Protocol(
                "server answered for another account".into(),
            ));
        }
        let now = self.io.now_secs().await;
        // Read the pin itself, not through `Trust`: a pin that cannot be read or parsed must refuse
        // the account, never be replaced by whatever key the server sends now.
        self.with_tx(|tx, _| match tx.pin(username)? {
            Some(p) => {
                let pinned = IdentityPublicKey::from_bytes(&p.identity_key).map_err(|_| {
                    Error::Storage(format!("the identity key pinned for {username} is corrupt"))
                })?;
                if pinned != key {
                    return Err(Error::IdentityChanged(username.to_owned()));
                }
                Ok(())
            }
            None => Ok(tx.set_pin(&PinRecord {
                username: username.to_owned(),
                identity_key: key.to_bytes().to_vec(),
                pinned_at: now,
            })?),
        })?;
        Ok((acc, key))
    }

    /// Pins the keys of accounts that still exist (an account that is gone stays unpinned, and
    /// whatever needs it is refused).
    pub(crate) async fn pin_if_known(&self, usernames: &[String]) -> Result<(), Error> {
        for u in usernames {
            match self.fetch_account(u).await {
                Ok(_) | Err(Error::UnknownUser(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Pins every account not pinned yet.
    pub(crate) async fn ensure_pinned(&self, usernames: &[impl AsRef<str>]) -> Result<(), Error> {
        for u in usernames {
            let user = Username::new(u.as_ref()).map_err(|e| Error::Protocol(e.to_string()))?;
            let pinned = self.read(|tx, _| Ok(Pins(tx).pinned_identity(&user).is_some()))?;
            if !pinned {
                self.fetch_account(u.as_ref()).await?;
            }
        }
        Ok(())
    }

    /// Claims key packages for `username`'s devices (`only` these, if not empty) and keeps those whose
    /// device certificate verifies against the pinned identity key; the others are reported and left
    /// out.
    pub(crate) async fn claim(
        &self,
        username: &str,
        only: &[String],
        suite: u16,
        report: &mut SyncReport,
    ) -> Result<Vec<TrustedKeyPackage>, Error> {
        self.ensure_pinned(&[username.to_owned()]).await?;
        let resp: ClaimResponse = self
            .post(
                "/v1/key-packages/claim",
                &ClaimRequest {
                    username: sotto_api::Username::new(username)?,
                    devices: only
                        .iter()
                        .map(|d| sotto_api::DeviceId::new(d.as_str()))
                        .collect::<Result<_, _>>()?,
                    ciphersuite: Some(suite),
                },
            )
            .await?;
        self.read(|tx, _| {
            let mut out = Vec::new();
            for c in resp.key_packages {
                let checked =
                    ValidKeyPackage::parse(&self.e.crypto, &c.key_package.0).and_then(|kp| {
                        if kp.certificate().username.as_str() != username
                            || kp.certificate().device_id.to_hex() != c.device_id
                            || u16::from(kp.ciphersuite()) != suite
                        {
                            return Err(MlsError::Rejected(
                                "key package is for another device".into(),
                            ));
                        }
                        kp.verify(&Pins(tx))
                    });
                match checked {
                    Ok(kp) => out.push(kp),
                    Err(e) => report
                        .warnings
                        .push(format!("refused device {} of {username}: {e}", c.device_id)),
                }
            }
            Ok(out)
        })
    }
}
