//! The delivery service: the rules of DESIGN.md, independent of HTTP. Handlers parse requests and
//! authenticate; these functions validate what was sent, apply it through the [`Store`] and wake the
//! devices that need to know.

use openmls_rust_crypto::RustCrypto;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sotto_api::*;
use sotto_proto::group::Kind;
use sotto_proto::identity::hex;
use sotto_proto::mls::{
    check_welcome, Envelope, MlsError, ServerGroup, ValidKeyPackage, CLASSIC_CIPHERSUITE,
    DEFAULT_CIPHERSUITE,
};
use sotto_proto::{DeviceCertificate, DeviceId, IdentityPublicKey, Username};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::store::{DeviceRecord, KeyPackages, NewCommit, StoreError};
use crate::AppState;

/// The most one-time key packages one upload may carry.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 200;
/// The most entries one log page returns.
pub const MAX_LOG_PAGE: u32 = 500;

/// An authenticated device.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its account.
    pub username: String,
    /// The device id.
    pub device_id: String,
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Checks a bearer token `DEVICE_ID:SECRET`, comparing hashes in constant time (against a recently
/// verified hash when there is one, else the database's).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let (device_id, secret) = token.split_once(':').ok_or_else(ApiError::unauthorized)?;
    device_id
        .parse::<DeviceId>()
        .map_err(|_| ApiError::unauthorized())?;
    let presented = hash_secret(secret.as_bytes());
    if let Some((hash, username)) = state.hub.tokens.get(device_id) {
        if bool::from(presented.ct_eq(&hash)) {
            return Ok(Caller {
                username,
                device_id: device_id.to_owned(),
            });
        }
    }
    let auth = state
        .store
        .device_auth(device_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if !bool::from(presented.ct_eq(&auth.token_hash)) {
        return Err(ApiError::unauthorized());
    }
    // Only after the token checked out: nobody learns an account is locked by guessing.
    if auth.locked {
        return Err(locked());
    }
    // Locked accounts are never cached, so an unlock counts at once; a lock counts within the
    // cache's lifetime (AuthCache::TTL) on every node.
    state
        .hub
        .tokens
        .put(device_id, auth.token_hash, &auth.username);
    Ok(Caller {
        username: auth.username,
        device_id: device_id.to_owned(),
    })
}

fn locked() -> ApiError {
    ApiError::new(
        ErrorCode::AccountLocked,
        "this account is locked by the server's operator",
    )
}

/// Whether a device authenticated earlier (a push connection's) may still be served: not
/// revoked, account not locked. Reads the store, not the cache: push connections call it every
/// 30 s, so a lock reaches them within that.
pub async fn still_allowed(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    match state.store.device_auth(&caller.device_id).await? {
        None => Err(ApiError::unauthorized()),
        Some(a) if a.locked => Err(locked()),
        Some(_) => Ok(()),
    }
}

fn new_token(device_id: &DeviceId) -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret_hex = hex(&secret);
    let hash = hash_secret(secret_hex.as_bytes());
    (format!("{device_id}:{secret_hex}"), hash)
}

/// A new device's row and the bearer token that goes with it (shown once, stored as a hash).
fn device_record(cert: &DeviceCertificate, certificate: Vec<u8>) -> (String, DeviceRecord) {
    let (token, token_hash) = new_token(&cert.device_id);
    let record = DeviceRecord {
        device_id: cert.device_id.to_hex(),
        certificate,
        token_hash,
        created_at: now_secs(),
    };
    (token, record)
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex(&b)
}

fn parse_username(s: &str) -> Result<Username, ApiError> {
    Username::new(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The counts a new device's key packages must keep to (what the OpenAPI document states), checked
/// before anything is looked up.
fn check_device_shape(device: &NewDevice) -> Result<(), ApiError> {
    if device.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_KEY_PACKAGES_PER_UPLOAD} key packages per upload"
        )));
    }
    if device.last_resort_key_packages.is_empty() {
        return Err(ApiError::bad_request(
            "a device needs a last-resort key package",
        ));
    }
    if device.last_resort_key_packages.len() > 2 {
        return Err(ApiError::bad_request(
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
) -> Result<(DeviceCertificate, KeyPackages), ApiError> {
    check_device_shape(device)?;
    let cert = DeviceCertificate::decode(&device.certificate.0)
        .map_err(|e| ApiError::bad_request(format!("certificate: {e}")))?;
    if &cert.username != username || &cert.identity_key != identity {
        return Err(ApiError::bad_request(
            "certificate is for another account or identity key",
        ));
    }
    cert.verify_self_signed()
        .map_err(|e| ApiError::bad_request(format!("certificate: {e}")))?;
    let kps = validate_key_packages(
        &cert,
        &device.key_packages,
        &device.last_resort_key_packages,
    )?;
    Ok((cert, kps))
}

fn validate_key_packages(
    cert: &DeviceCertificate,
    one_time: &[B64],
    last_resort: &[B64],
) -> Result<KeyPackages, ApiError> {
    let crypto = RustCrypto::default();
    let check = |b: &B64, want_last_resort: bool| -> Result<(u16, Vec<u8>), ApiError> {
        let kp = ValidKeyPackage::parse(&crypto, &b.0)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if kp.certificate() != cert {
            return Err(ApiError::bad_request(
                "key package belongs to another device",
            ));
        }
        if kp.is_last_resort() != want_last_resort {
            return Err(ApiError::bad_request(if want_last_resort {
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
        return Err(ApiError::bad_request(
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

/// Registers an account and its first device.
pub async fn register(
    state: &AppState,
    req: RegisterRequest,
) -> Result<RegisterResponse, ApiError> {
    let username = parse_username(&req.username)?;
    let identity = IdentityPublicKey::from_bytes(&req.identity_key.0)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (cert, kps) = validate_device(&username, &identity, &req.device)?;
    let (token, device) = device_record(&cert, req.device.certificate.0);
    state
        .store
        .create_account(username.as_str(), &identity.to_bytes(), device, kps)
        .await?;
    tracing::info!(user = %username, device = %cert.device_id, "account registered");
    Ok(RegisterResponse {
        device_id: cert.device_id.to_hex(),
        token,
    })
}

/// An account's public identity and devices.
pub async fn account(state: &AppState, username: &str) -> Result<AccountInfo, ApiError> {
    let username = parse_username(username)?;
    let acc = state
        .store
        .account(username.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no account named {username}")))?;
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

async fn caller_cert(state: &AppState, caller: &Caller) -> Result<DeviceCertificate, ApiError> {
    let acc = state
        .store
        .account(&caller.username)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let dev = acc
        .devices
        .into_iter()
        .find(|d| d.device_id == caller.device_id)
        .ok_or_else(ApiError::unauthorized)?;
    DeviceCertificate::decode(&dev.certificate)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "stored certificate unreadable"))
}

/// Uploads key packages for the calling device.
pub async fn upload_key_packages(
    state: &AppState,
    caller: &Caller,
    req: UploadKeyPackages,
) -> Result<KeyPackageCount, ApiError> {
    if req.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_KEY_PACKAGES_PER_UPLOAD} key packages per upload"
        )));
    }
    let cert = caller_cert(state, caller).await?;
    if req.last_resort_key_packages.len() > 2 {
        return Err(ApiError::bad_request(
            "at most one last-resort key package per ciphersuite",
        ));
    }
    let kps = validate_key_packages(&cert, &req.key_packages, &req.last_resort_key_packages)?;
    state.store.add_key_packages(&caller.device_id, kps).await?;
    key_package_count(state, caller).await
}

/// Counts the calling device's one-time key packages.
pub async fn key_package_count(
    state: &AppState,
    caller: &Caller,
) -> Result<KeyPackageCount, ApiError> {
    Ok(KeyPackageCount {
        count: state
            .store
            .key_package_count(&caller.device_id, u16::from(DEFAULT_CIPHERSUITE))
            .await?,
        classic_count: state
            .store
            .key_package_count(&caller.device_id, u16::from(CLASSIC_CIPHERSUITE))
            .await?,
    })
}

/// Revokes one of the caller's account's devices (possibly the caller itself): at once its token
/// stops working on every node, its push connections close, its key packages and pending welcomes
/// go, and it stops being a member device of every conversation. The account's other devices then
/// remove it from the MLS groups on their next sync.
pub async fn revoke_device(
    state: &AppState,
    caller: &Caller,
    device_id: &str,
) -> Result<(), ApiError> {
    if !is_hex_id(device_id, 32) {
        return Err(ApiError::not_found("device not found"));
    }
    state
        .store
        .revoke_device(&caller.username, device_id, &caller.device_id)
        .await?;
    state.hub.revoke(device_id);
    state.bus.revoke(device_id.to_owned());
    tracing::info!(device = %device_id, "device revoked");
    // The account's other devices remove it from their conversations' MLS groups on sync: wake
    // them so that happens now.
    match state
        .store
        .devices_of(std::slice::from_ref(&caller.username))
        .await
    {
        Ok(devices) => state.bus.publish(devices, ServerFrame::Devices),
        Err(e) => tracing::warn!(error = %e, "could not look up devices to wake"),
    }
    Ok(())
}

/// For account-wide changes (claims, new conversations, leaving): the calling device must still be
/// registered now, not just when its token was last verified (a node trusts a verified token for
/// up to `AuthCache::TTL`, and a revocation may reach it late).
async fn ensure_current(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    match state.store.device_auth(&caller.device_id).await? {
        Some(d) if d.username == caller.username => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}
/// Claims one key package per device of an account.
pub async fn claim(
    state: &AppState,
    caller: &Caller,
    req: ClaimRequest,
) -> Result<ClaimResponse, ApiError> {
    let username = parse_username(&req.username)?;
    if req.devices.iter().any(|d| !is_hex_id(d, 32)) {
        return Err(ApiError::bad_request("invalid device id"));
    }
    let suite = match req.ciphersuite {
        None => u16::from(DEFAULT_CIPHERSUITE),
        Some(s) if sotto_proto::mls::suite_from_u16(s).is_some() => s,
        Some(_) => return Err(ApiError::bad_request("unsupported ciphersuite")),
    };
    ensure_current(state, caller).await?;
    if state.store.account(username.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("no account named {username}")));
    }
    let claimed = state
        .store
        .claim_key_packages(username.as_str(), &req.devices, &caller.device_id, suite)
        .await?;
    tracing::info!(user = %username, count = claimed.len(), "key packages claimed");
    Ok(ClaimResponse {
        key_packages: claimed
            .into_iter()
            .map(|(device_id, kp)| ClaimedKeyPackage {
                device_id,
                key_package: B64(kp),
            })
            .collect(),
    })
}

fn info(c: crate::store::ConversationRecord) -> ConversationInfo {
    ConversationInfo {
        id: c.id,
        kind: c.kind,
        epoch: c.epoch,
        last_seq: c.last_seq,
        members: c.members,
        departed: c.departed,
    }
}

/// Creates an empty group owned by the caller; its first commit (by the caller) adds the members.
pub async fn create_group(state: &AppState, caller: &Caller) -> Result<ConversationInfo, ApiError> {
    ensure_current(state, caller).await?;
    let c = state
        .store
        .create_group(&caller.username, &random_id())
        .await?;
    tracing::info!(conversation = %c.id, "group created");
    Ok(info(c))
}

/// Gets or creates the DM with `peer` (exactly one per pair of accounts).
pub async fn create_dm(
    state: &AppState,
    caller: &Caller,
    req: CreateDmRequest,
) -> Result<ConversationInfo, ApiError> {
    ensure_current(state, caller).await?;
    let peer = parse_username(&req.peer)?;
    if peer.as_str() == caller.username {
        // Well-formed, so not a 400: it conflicts with what a DM is.
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "cannot start a DM with yourself",
        ));
    }
    if state.store.account(peer.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("no account named {peer}")));
    }
    let c = state
        .store
        .get_or_create_dm(&caller.username, peer.as_str(), &random_id())
        .await?;
    Ok(info(c))
}

/// The caller's conversations.
pub async fn conversations(
    state: &AppState,
    caller: &Caller,
) -> Result<ConversationList, ApiError> {
    Ok(ConversationList {
        conversations: state
            .store
            .conversations_of(&caller.username)
            .await?
            .into_iter()
            .map(info)
            .collect(),
    })
}

/// Loads a conversation the caller is a member of. A non-member gets the same 404 as a missing
/// conversation, so ids cannot be probed.
async fn member_conversation(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<crate::store::ConversationRecord, ApiError> {
    let c = state.store.conversation(id).await?;
    match c {
        Some(c) if c.members.iter().any(|m| m == &caller.username) => Ok(c),
        _ => Err(ApiError::not_found("no such conversation")),
    }
}

fn check_envelope(conv_id: &str, bytes: &[u8], want_commit: bool) -> Result<Envelope, ApiError> {
    let env = Envelope::parse(bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if env.is_commit != want_commit {
        return Err(ApiError::bad_request(if want_commit {
            "expected an MLS commit"
        } else {
            "expected an MLS application message"
        }));
    }
    if hex(&env.group_id) != conv_id {
        return Err(ApiError::bad_request(
            "MLS group id does not match the conversation",
        ));
    }
    Ok(env)
}

async fn wake_members(state: &AppState, id: &str, seq: u64) {
    match state.store.wake_list(id).await {
        Ok(devices) => state.bus.publish(
            devices,
            ServerFrame::Conversation {
                id: id.to_owned(),
                seq,
            },
        ),
        // The entry is durable; devices will find it on their next fetch.
        Err(e) => tracing::warn!(error = %e, "could not look up devices to wake"),
    }
}

fn mls_refusal(e: MlsError) -> ApiError {
    match e {
        MlsError::Policy(m) => ApiError::new(ErrorCode::Forbidden, format!("commit refused: {m}")),
        MlsError::Internal(_) => ApiError::new(ErrorCode::Internal, "could not process the commit"),
        other => ApiError::bad_request(other.to_string()),
    }
}

/// The policy kind of a conversation.
fn kind_of(c: &crate::store::ConversationRecord) -> Result<Kind, ApiError> {
    if c.kind == "group" {
        return Ok(Kind::Group);
    }
    match c.members.as_slice() {
        [a, b] => Ok(Kind::Dm([parse_username(a)?, parse_username(b)?])),
        _ => Err(ApiError::new(ErrorCode::Internal, "DM without two members")),
    }
}

/// Applies a commit bundle. The server checks the commit against the group's public MLS state
/// (signature, framing, tree changes, the admin rules), derives who was added and who the members
/// are from it, and appends it only if it is the first commit for the current epoch.
pub async fn commit(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: CommitRequest,
) -> Result<Accepted, ApiError> {
    let c = member_conversation(state, caller, id).await?;
    let env = check_envelope(&c.id, &req.commit.0, true)?;
    if env.epoch != req.epoch {
        return Err(ApiError::bad_request("epoch does not match the commit"));
    }
    if req.epoch != c.epoch {
        return Err(StoreError::StaleEpoch { current: c.epoch }.into());
    }
    let crypto = RustCrypto::default();
    let gid = sotto_proto::identity::unhex(&c.id)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "conversation id unreadable"))?;
    let caller_cert = caller_cert(state, caller).await?;
    let mut group = match state.store.group_state(&c.id).await? {
        Some((epoch, _)) if epoch != req.epoch => {
            return Err(StoreError::StaleEpoch { current: epoch }.into())
        }
        Some((_, snapshot)) => ServerGroup::load(&snapshot, &gid).map_err(|e| {
            tracing::error!(conversation = %c.id, error = %e, "stored group state unreadable");
            ApiError::new(ErrorCode::Internal, "group state unreadable")
        })?,
        None => {
            let gi = req.initial_group_info.as_ref().ok_or_else(|| {
                ApiError::bad_request("the first commit of a conversation needs initial_group_info")
            })?;
            let g =
                ServerGroup::start(&crypto, &gi.0, &gid, c.kind == "group").map_err(mls_refusal)?;
            if g.members().first() != Some(&caller_cert) {
                return Err(ApiError::bad_request(
                    "the initial group must hold exactly the calling device",
                ));
            }
            g
        }
    };
    let kind = kind_of(&c)?;
    let effect = group
        .process_commit(&crypto, &req.commit.0, &kind)
        .map_err(mls_refusal)?;
    if effect.sender != caller_cert {
        return Err(ApiError::bad_request(
            "the commit was made by another device than the caller",
        ));
    }
    // Every added device must be registered, with exactly the certificate the server holds (which
    // the account's identity key signed).
    let mut accounts: std::collections::HashMap<String, crate::store::AccountRecord> =
        std::collections::HashMap::new();
    for cert in &effect.added {
        let user = cert.username.as_str().to_owned();
        if !accounts.contains_key(&user) {
            let acc = state.store.account(&user).await?.ok_or_else(|| {
                ApiError::bad_request(format!("commit adds a device of unknown account {user}"))
            })?;
            accounts.insert(user.clone(), acc);
        }
        let registered = accounts[&user]
            .devices
            .iter()
            .any(|d| d.device_id == cert.device_id.to_hex() && d.certificate == cert.to_bytes());
        if !registered {
            return Err(ApiError::bad_request(format!(
                "commit adds device {} of {user}, which is not registered with that certificate",
                cert.device_id
            )));
        }
    }
    let welcomed: Vec<String> = effect.added.iter().map(|c| c.device_id.to_hex()).collect();
    let welcome = match (&req.welcome, welcomed.is_empty()) {
        (None, true) => None,
        (Some(w), false) => {
            check_welcome(&w.0).map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some((w.0.clone(), welcomed.clone()))
        }
        (None, false) => {
            return Err(ApiError::bad_request(
                "a commit that adds devices needs a welcome",
            ))
        }
        (Some(_), true) => return Err(ApiError::bad_request("a welcome without added devices")),
    };
    let snapshot = group
        .snapshot()
        .map_err(|_| ApiError::new(ErrorCode::Internal, "could not save group state"))?;
    let ratchet_tree = match &welcome {
        Some(_) => Some(
            group
                .ratchet_tree()
                .map_err(|_| ApiError::new(ErrorCode::Internal, "could not export the tree"))?,
        ),
        None => None,
    };
    let members = effect
        .members
        .iter()
        .map(|m| (m.device_id.to_hex(), m.username.as_str().to_owned()))
        .collect();
    let accepted = state
        .store
        .append_commit(
            &c.id,
            NewCommit {
                epoch: req.epoch,
                sender_device: caller.device_id.clone(),
                commit: req.commit.0,
                welcome,
                ratchet_tree,
                state: snapshot,
                members,
                expiry_secs: group.settings().server_bound_secs(),
            },
        )
        .await?;
    metrics::counter!("sotto_commits_accepted_total").increment(1);
    tracing::info!(conversation = %c.id, seq = accepted.seq, epoch = accepted.epoch, added = welcomed.len(), removed = effect.removed.len(), "commit accepted");
    if !welcomed.is_empty() {
        state.bus.publish(welcomed, ServerFrame::Inbox);
    }
    // Devices just removed learn it on their next sync; everyone still in is woken.
    let removed: Vec<String> = effect
        .removed
        .iter()
        .map(|c| c.device_id.to_hex())
        .collect();
    if !removed.is_empty() {
        state.bus.publish(removed, ServerFrame::Devices);
    }
    wake_members(state, &c.id, accepted.seq).await;
    Ok(accepted)
}

/// The caller leaves a group. It stops being a member at once; an admin's device removes its
/// devices from the MLS group on its next sync. The last admin cannot leave while others remain.
pub async fn leave(state: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    ensure_current(state, caller).await?;
    let c = member_conversation(state, caller, id).await?;
    if c.kind != "group" {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "only groups can be left",
        ));
    }
    let admins: Vec<String> = match state.store.group_state(&c.id).await? {
        Some((_, snapshot)) => {
            let gid = sotto_proto::identity::unhex(&c.id)
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "conversation id unreadable"))?;
            let group = ServerGroup::load(&snapshot, &gid)
                .map_err(|_| ApiError::new(ErrorCode::Internal, "group state unreadable"))?;
            group
                .metadata()
                .map(|m| m.admins.iter().map(|a| a.as_str().to_owned()).collect())
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    state.store.leave(&c.id, &caller.username, &admins).await?;
    tracing::info!(conversation = %c.id, "member left");
    wake_members(state, &c.id, c.last_seq).await;
    Ok(())
}

/// Relays an ephemeral application message (a typing indicator) to the conversation's other
/// member devices that are connected. Nothing is stored, logged or queued: a device that is not
/// connected never sees it.
pub async fn ephemeral(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: SendRequest,
) -> Result<(), ApiError> {
    if req.message.0.len() > MAX_EPHEMERAL_BYTES {
        return Err(ApiError::bad_request(format!(
            "an ephemeral message is at most {MAX_EPHEMERAL_BYTES} bytes"
        )));
    }
    check_envelope(id, &req.message.0, false)?;
    let c = member_conversation(state, caller, id).await?;
    let mut devices = state.store.wake_list(id).await?;
    devices.retain(|d| *d != caller.device_id);
    state.bus.publish(
        devices,
        ServerFrame::Ephemeral {
            id: id.to_owned(),
            seq: c.last_seq,
            sender_device: caller.device_id.clone(),
            message: req.message,
        },
    );
    Ok(())
}

/// Appends an application message sent in the current epoch.
pub async fn send(
    state: &AppState,
    caller: &Caller,
    id: &str,
    req: SendRequest,
    origin: Option<crate::bus::Origin>,
) -> Result<Accepted, ApiError> {
    let env = check_envelope(id, &req.message.0, false)?;
    if !req.attachments.is_empty() {
        // Before the append: a message never names a blob the server may remove as an orphan.
        state
            .blobs
            .bind(&req.attachments, id, &caller.username)
            .await?;
    }
    let appended = state
        .store
        .append_message(
            id,
            &caller.username,
            &caller.device_id,
            env.epoch,
            &req.message.0,
        )
        .await?
        .ok_or_else(|| ApiError::not_found("no such conversation"))?;
    let accepted = appended.accepted;
    metrics::counter!("sotto_messages_accepted_total").increment(1);
    tracing::debug!(conversation = %id, seq = accepted.seq, bytes = req.message.0.len(), "message accepted");
    if let (Some(at), false) = (accepted.expires_at, req.attachments.is_empty()) {
        // After the append: should this fail, the files live until retention, never shorter than
        // their message.
        if let Err(e) = state.blobs.expire_at(&req.attachments, at).await {
            tracing::warn!(error = %e.message, "could not schedule attachments for expiry");
        }
    }
    // Small messages travel inside the wake-up: the receiving devices need no fetch.
    let frame = if req.message.0.len() <= MAX_INLINE_ENTRY {
        ServerFrame::Entry {
            id: id.to_owned(),
            entry: LogEntry {
                seq: accepted.seq,
                epoch: accepted.epoch,
                kind: EntryKind::Message,
                sender_device: caller.device_id.clone(),
                data: req.message,
                accepted_at: accepted.accepted_at,
                expires_at: accepted.expires_at,
            },
        }
    } else {
        ServerFrame::Conversation {
            id: id.to_owned(),
            seq: accepted.seq,
        }
    };
    // The connection it came over (if any) is answered `sent`, not woken with its own message.
    state.bus.publish_except(appended.wake, frame, origin);
    Ok(accepted)
}

/// A page of a conversation's log: at most `limit` entries (1 to [`MAX_LOG_PAGE`], the most by
/// default) after `after`. `read` is how far the device has read, when that is before `after`
/// (`after` otherwise): the server may prune what every member device has read.
pub async fn log(
    state: &AppState,
    caller: &Caller,
    id: &str,
    after: u64,
    limit: Option<u32>,
    read: Option<u64>,
) -> Result<LogPage, ApiError> {
    if after > MAX_COUNTER || read.is_some_and(|r| r > MAX_COUNTER) {
        return Err(ApiError::bad_request(
            "after and read are sequence numbers: at most 2^63-1",
        ));
    }
    let limit = limit.unwrap_or(MAX_LOG_PAGE);
    if !(1..=MAX_LOG_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit is 1 to {MAX_LOG_PAGE} entries"
        )));
    }
    let read = read.map_or(after, |r| r.min(after));
    let (c, entries) = state
        .store
        .member_log(id, &caller.username, &caller.device_id, after, limit)
        .await?
        .ok_or_else(|| ApiError::not_found("no such conversation"))?;
    state.cursors.note(id, &caller.device_id, read);
    let more = entries.last().map(|e| e.seq < c.last_seq).unwrap_or(false);
    Ok(LogPage { entries, more })
}

/// The caller's inbox.
pub async fn inbox(state: &AppState, caller: &Caller) -> Result<Inbox, ApiError> {
    Ok(Inbox {
        items: state.store.inbox(&caller.device_id).await?,
    })
}

/// Acknowledges inbox items.
pub async fn ack_inbox(state: &AppState, caller: &Caller, req: InboxAck) -> Result<(), ApiError> {
    if req.up_to > MAX_COUNTER {
        return Err(ApiError::bad_request(
            "up_to is an inbox id: at most 2^63-1",
        ));
    }
    state.store.ack_inbox(&caller.device_id, req.up_to).await?;
    Ok(())
}

fn check_link_id(link_id: &str) -> Result<(), ApiError> {
    if is_hex_id(link_id, 64) {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid link id"))
    }
}

/// Offers a device link.
pub async fn create_link(
    state: &AppState,
    caller: &Caller,
    req: CreateLinkRequest,
) -> Result<LinkCreated, ApiError> {
    check_link_id(&req.link_id)?;
    if req.bundle.0.is_empty() || req.bundle.0.len() > MAX_LINK_BUNDLE {
        return Err(ApiError::bad_request("bundle size out of range"));
    }
    let expires_at = now_secs() + state.config.link_ttl_secs;
    state
        .store
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
pub async fn fetch_link(state: &AppState, req: LinkFetchRequest) -> Result<LinkBundle, ApiError> {
    check_link_id(&req.link_id)?;
    let (username, bundle) = state
        .store
        .fetch_link(&req.link_id, now_secs())
        .await?
        .ok_or_else(|| {
            ApiError::new(ErrorCode::LinkExpired, "link code expired or already used")
        })?;
    Ok(LinkBundle {
        username,
        bundle: B64(bundle),
    })
}

/// Redeems a link: registers the new device under the link's account.
pub async fn redeem_link(
    state: &AppState,
    req: LinkRedeemRequest,
) -> Result<RegisterResponse, ApiError> {
    check_device_shape(&req.device)?;
    let LinkBundle { username, .. } = fetch_link(
        state,
        LinkFetchRequest {
            link_id: req.link_id.clone(),
        },
    )
    .await?;
    let acc = state
        .store
        .account(&username)
        .await?
        .ok_or_else(|| ApiError::not_found("account not found"))?;
    let username = parse_username(&acc.username)?;
    let identity = IdentityPublicKey::from_bytes(&acc.identity_key)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "stored identity key unreadable"))?;
    let (cert, kps) = validate_device(&username, &identity, &req.device)?;
    let (token, device) = device_record(&cert, req.device.certificate.0);
    state
        .store
        .redeem_link(&req.link_id, now_secs(), device, kps)
        .await?;
    tracing::info!(user = %username, device = %cert.device_id, "device linked");
    if let Ok(devices) = state
        .store
        .devices_of(&[username.as_str().to_owned()])
        .await
    {
        state.bus.publish(devices, ServerFrame::Devices);
    }
    Ok(RegisterResponse {
        device_id: cert.device_id.to_hex(),
        token,
    })
}
