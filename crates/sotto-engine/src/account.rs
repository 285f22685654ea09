//! The account and this device: registration, linking a new device with a code, this device's
//! keys, and keeping enough key packages on the server.

use sotto_api::*;
use sotto_proto::mls::{DeviceKeys, CLASSIC_CIPHERSUITE, DEFAULT_CIPHERSUITE};
use sotto_proto::{AccountBundle, AccountIdentity, DeviceId, LinkCode, Username};

use crate::store::PinRecord;
use crate::{keys, Engine, Error, Flow, Me, Task};

/// How many one-time key packages a device keeps on the server, per ciphersuite.
pub const KEY_PACKAGE_TARGET: usize = 50;
/// Replenish below this many.
pub const KEY_PACKAGE_LOW: u64 = 10;

/// Where a new device registers, and what it remembers about the transport.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// The server's base URL (stored).
    pub server: String,
    /// A private CA's PEM certificates to remember for later runs.
    pub ca_pem: Option<Vec<u8>>,
}

impl Engine {
    /// Registers a new account with this as its first device.
    pub fn register(&self, username: &str, at: Registration) -> Task<()> {
        let username = username.to_owned();
        self.task(move |f| async move { f.register(&username, &at).await })
    }

    /// Registers this device under an existing account, using a link code from one of its devices.
    pub fn link(&self, code: &str, at: Registration) -> Task<()> {
        let code = code.to_owned();
        self.task(move |f| async move { f.link(&code, &at).await })
    }

    /// Creates a one-time link code for adding a new device to this account. The code is a secret:
    /// show it to the user, never log it.
    pub fn create_link_code(&self) -> Task<String> {
        self.task(|f| async move { f.create_link_code().await })
    }
}

impl Flow {
    /// Makes this device's keys and key packages; returns the registration body.
    async fn new_device(
        &self,
        identity: &AccountIdentity,
        username: &Username,
    ) -> Result<(DeviceKeys, NewDevice), Error> {
        let now = self.io.now_secs().await;
        self.with_tx(|_, p| {
            let keys = DeviceKeys::generate(identity, username, DeviceId::random(), now);
            let mut one_time = Vec::new();
            let mut last_resort = Vec::new();
            for (suite, n) in [
                (DEFAULT_CIPHERSUITE, KEY_PACKAGE_TARGET),
                (CLASSIC_CIPHERSUITE, KEY_PACKAGE_TARGET),
            ] {
                let (one, lr) = keys.key_packages(p, suite, n, true)?;
                let lr = lr.ok_or_else(|| Error::Protocol("no last-resort key package".into()))?;
                one_time.extend(one.into_iter().map(B64));
                last_resort.push(B64(lr));
            }
            let device = NewDevice {
                certificate: B64(keys.certificate().to_bytes()),
                key_packages: one_time,
                last_resort_key_packages: last_resort,
            };
            Ok((keys, device))
        })
    }

    async fn save_registration(
        &self,
        at: &Registration,
        identity: &AccountIdentity,
        keys: DeviceKeys,
        token: &str,
    ) -> Result<(), Error> {
        let cert = keys.certificate().clone();
        let now = self.io.now_secs().await;
        self.with_tx(|tx, _| {
            tx.set_setting(keys::SIGNING_SEED, keys.dangerous_signing_seed().as_ref())?;
            tx.set_setting(keys::SERVER, at.server.as_bytes())?;
            tx.set_setting(keys::USERNAME, cert.username.as_str().as_bytes())?;
            tx.set_setting(keys::CERTIFICATE, &cert.to_bytes())?;
            tx.set_setting(keys::TOKEN, token.as_bytes())?;
            if let Some(ca) = &at.ca_pem {
                tx.set_setting(keys::CA_CERT, ca)?;
            }
            tx.set_setting(
                keys::IDENTITY_SECRET,
                identity.dangerous_secret_bytes().as_ref(),
            )?;
            tx.set_pin(&PinRecord {
                username: cert.username.to_string(),
                identity_key: identity.public().to_bytes().to_vec(),
                pinned_at: now,
            })?;
            Ok(())
        })?;
        self.set_me(Me {
            username: cert.username.clone(),
            device_id: cert.device_id,
            cert,
            token: Some(zeroize::Zeroizing::new(token.to_owned())),
        });
        Ok(())
    }

    fn not_registered_yet(&self) -> Result<(), Error> {
        match self.me() {
            Ok(me) => Err(Error::AlreadyRegistered(me.username.to_string())),
            Err(_) => Ok(()),
        }
    }

    async fn register(&self, username: &str, at: &Registration) -> Result<(), Error> {
        self.not_registered_yet()?;
        let username = Username::new(username).map_err(|e| Error::Invalid(e.to_string()))?;
        let identity = AccountIdentity::generate();
        let (keys, device) = self.new_device(&identity, &username).await?;
        let req = RegisterRequest {
            username: sotto_api::Username::new(username.as_str())?,
            identity_key: B64(identity.public().to_bytes().to_vec()),
            device,
        };
        let resp: RegisterResponse = self.post("/v1/accounts", &req).await?;
        self.save_registration(at, &identity, keys, &resp.token)
            .await
    }

    async fn create_link_code(&self) -> Result<String, Error> {
        let me = self.me()?;
        let secret = self.read(|tx, _| {
            tx.setting(keys::IDENTITY_SECRET)?
                .ok_or(Error::NotRegistered)
        })?;
        let secret = zeroize::Zeroizing::new(secret);
        let identity = AccountIdentity::from_secret_bytes(&secret).map_err(crate::storage_err)?;
        let code = LinkCode::generate();
        let bundle = AccountBundle {
            username: me.username.clone(),
            identity,
        };
        let req = CreateLinkRequest {
            link_id: sotto_api::LinkId::new(code.link_id())?,
            bundle: B64(code.seal(&bundle)),
        };
        let _: LinkCreated = self.post("/v1/links", &req).await?;
        Ok(code.dangerous_to_text())
    }

    async fn link(&self, code: &str, at: &Registration) -> Result<(), Error> {
        self.not_registered_yet()?;
        let code: LinkCode = code
            .parse()
            .map_err(|e: sotto_proto::LinkError| Error::Invalid(e.to_string()))?;
        let fetched: LinkBundle = self
            .post(
                "/v1/links/fetch",
                &LinkFetchRequest {
                    link_id: sotto_api::LinkId::new(code.link_id())?,
                },
            )
            .await?;
        let bundle = code
            .open(&fetched.bundle.0)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if bundle.username.as_str() != fetched.username {
            return Err(Error::Protocol("link bundle names another account".into()));
        }
        let (keys, device) = self.new_device(&bundle.identity, &bundle.username).await?;
        let resp: RegisterResponse = self
            .post(
                "/v1/links/redeem",
                &LinkRedeemRequest {
                    link_id: sotto_api::LinkId::new(code.link_id())?,
                    device,
                },
            )
            .await?;
        self.save_registration(at, &bundle.identity, keys, &resp.token)
            .await
    }

    /// Uploads fresh one-time key packages for each suite running low.
    pub(crate) async fn replenish_key_packages(&self) -> Result<(), Error> {
        let count: KeyPackageCount = self.get("/v1/key-packages/count").await?;
        let mut suites = Vec::new();
        if count.count < KEY_PACKAGE_LOW {
            suites.push(DEFAULT_CIPHERSUITE);
        }
        if count.classic_count < KEY_PACKAGE_LOW {
            suites.push(CLASSIC_CIPHERSUITE);
        }
        if suites.is_empty() {
            return Ok(());
        }
        let kps = self.with_tx(|tx, p| {
            let keys = self.keys(tx)?;
            let mut out = Vec::new();
            for s in &suites {
                out.extend(keys.key_packages(p, *s, KEY_PACKAGE_TARGET, false)?.0);
            }
            Ok(out)
        })?;
        let _: KeyPackageCount = self
            .post(
                "/v1/key-packages",
                &UploadKeyPackages {
                    key_packages: kps.into_iter().map(B64).collect(),
                    last_resort_key_packages: Vec::new(),
                },
            )
            .await?;
        Ok(())
    }
}
