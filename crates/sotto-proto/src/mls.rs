//! The MLS conversation wrapper over `openmls`.
//!
//! Every conversation is one MLS group whose leaves are devices; a DM is a group holding every device
//! of both accounts. Each leaf's basic credential is the device's [`DeviceCertificate`], and nothing
//! here accepts a leaf (in a key package, a commit or a welcome) until the caller has verified its
//! certificate against the identity key pinned for its account (see [`Trust`]).
//!
//! Handshake messages go out as MLS `PublicMessage` (the server can read epochs and route them);
//! application messages as `PrivateMessage`. The group carries its ratchet tree in the welcome.
//!
//! All functions are generic over the openmls provider, so the caller chooses where MLS state lives
//! (the SDK uses SQLite; tests and benchmarks may use memory).

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use thiserror::Error;

use crate::content::{Body, MessageContent};
use crate::group::{
    check_change, Change, GroupMetadata, Kind, Leaf, Settings, METADATA_EXTENSION_TYPE,
};
use crate::identity::{
    AccountIdentity, DeviceCertificate, DeviceId, IdentityError, IdentityPublicKey, Username,
};

/// The default ciphersuite: hybrid post-quantum ML-KEM-768 + X25519 KEM, AES-128-GCM, SHA-256,
/// Ed25519 signatures.
pub const DEFAULT_CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;

/// The classic suite, for groups above the post-quantum size limit.
pub const CLASSIC_CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs a member keeps secrets for, to read application messages that were sent just
/// before a commit it already applied.
const MAX_PAST_EPOCHS: usize = 8;

/// Largest serialized MLS message we accept.
pub const MAX_MLS_MESSAGE: usize = 8 << 20;

/// What went wrong in MLS processing. `Malformed`/`Rejected` are the peer's (or server's) fault;
/// `Internal` is ours.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MlsError {
    /// The bytes are not a well-formed MLS message or key package of the expected kind.
    #[error("malformed MLS input: {0}")]
    Malformed(String),
    /// Well-formed but refused by MLS validation (bad signature, wrong epoch, unknown group, ...).
    #[error("MLS message refused: {0}")]
    Rejected(String),
    /// A leaf's device certificate did not verify.
    #[error("device certificate refused for {who}: {source}")]
    Certificate {
        /// `username/device` as claimed by the leaf, or `unknown`.
        who: String,
        /// Why.
        source: IdentityError,
    },
    /// The commit breaks the group's rules (a non-admin changing membership, the last admin
    /// removed, ...).
    #[error("commit refused: {0}")]
    Policy(String),
    /// A leaf belongs to an account whose identity key the caller has not pinned yet.
    #[error("identity key of account {0} is not known yet")]
    UnknownAccount(Username),
    /// A bug or a storage failure on our side, with the error that caused it (openmls', the
    /// storage's, or ours) as its source.
    #[error("internal MLS error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// An openmls provider whose storage errors can be kept as an [`MlsError::Internal`]'s source
/// (every provider here has one: the SDK's store, openmls' in-memory storage).
pub trait Provider:
    OpenMlsProvider<
    StorageProvider: openmls_traits::storage::StorageProvider<
        { openmls_traits::storage::CURRENT_VERSION },
        Error: Send + Sync + 'static,
    >,
>
{
}

impl<P> Provider for P
where
    P: OpenMlsProvider,
    <P::StorageProvider as openmls_traits::storage::StorageProvider<
        { openmls_traits::storage::CURRENT_VERSION },
    >>::Error: Send + Sync + 'static,
{
}

fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> MlsError {
    MlsError::Internal(e.into())
}

/// The caller's store of pinned account identity keys.
pub trait Trust {
    /// The identity key pinned for `username`, if any.
    fn pinned_identity(&self, username: &Username) -> Option<IdentityPublicKey>;
}

/// Decodes the device certificate carried by a credential, without verifying it.
pub fn certificate_of(credential: &Credential) -> Result<DeviceCertificate, IdentityError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| IdentityError::Malformed(crate::CodecError::Invalid("credential type")))?;
    DeviceCertificate::decode(basic.identity())
}

/// Verifies a leaf: its credential must be a device certificate signed by the pinned identity key of
/// its account and binding the leaf's signature key.
pub fn verify_leaf(
    credential: &Credential,
    signature_key: &[u8],
    trust: &impl Trust,
) -> Result<DeviceCertificate, MlsError> {
    let cert = certificate_of(credential).map_err(|source| MlsError::Certificate {
        who: "unknown".into(),
        source,
    })?;
    let pinned = trust
        .pinned_identity(&cert.username)
        .ok_or_else(|| MlsError::UnknownAccount(cert.username.clone()))?;
    cert.verify(&pinned, signature_key)
        .map_err(|source| MlsError::Certificate {
            who: format!("{}/{}", cert.username, cert.device_id),
            source,
        })?;
    Ok(cert)
}

/// Leaf capabilities: every Sotto leaf can carry the last-resort key-package extension and
/// understands the group-metadata extension, for both of Sotto's ciphersuites.
fn capabilities() -> Capabilities {
    Capabilities::builder()
        .ciphersuites(SUPPORTED_CIPHERSUITES.to_vec())
        .extensions(vec![
            ExtensionType::LastResort,
            ExtensionType::Unknown(METADATA_EXTENSION_TYPE),
        ])
        .build()
}

/// The ciphersuites Sotto uses, the default first.
pub const SUPPORTED_CIPHERSUITES: [Ciphersuite; 2] = [DEFAULT_CIPHERSUITE, CLASSIC_CIPHERSUITE];

/// Whether `suite` is one Sotto uses.
pub fn is_supported_suite(suite: Ciphersuite) -> bool {
    SUPPORTED_CIPHERSUITES.contains(&suite)
}

/// A ciphersuite from its IANA number, if Sotto uses it.
pub fn suite_from_u16(v: u16) -> Option<Ciphersuite> {
    Ciphersuite::try_from(v)
        .ok()
        .filter(|s| is_supported_suite(*s))
}

/// The group-context extensions of a Sotto group: members must understand the metadata extension,
/// and groups (not DMs) carry their metadata.
fn group_extensions(
    metadata: Option<&GroupMetadata>,
) -> Result<Extensions<GroupContext>, MlsError> {
    let mut v = vec![Extension::RequiredCapabilities(
        RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(METADATA_EXTENSION_TYPE)],
            &[],
            &[CredentialType::Basic],
        ),
    )];
    if let Some(m) = metadata {
        v.push(Extension::Unknown(
            METADATA_EXTENSION_TYPE,
            UnknownExtension(m.encode()),
        ));
    }
    Extensions::from_vec(v).map_err(internal)
}

/// The metadata carried by a set of group-context extensions (`None`: no metadata, a DM).
fn metadata_of(ext: &Extensions<GroupContext>) -> Option<Result<GroupMetadata, crate::CodecError>> {
    ext.unknown(METADATA_EXTENSION_TYPE)
        .map(|u| GroupMetadata::decode(&u.0))
}

/// The settings a set of group-context extensions carries (the defaults if none).
fn settings_of(ext: &Extensions<GroupContext>) -> Settings {
    metadata_of(ext)
        .and_then(Result::ok)
        .map(|m| m.settings)
        .unwrap_or_default()
}

fn leaves_of(members: impl Iterator<Item = Member>) -> Vec<Leaf> {
    members
        .filter_map(|m| {
            certificate_of(&m.credential).ok().map(|c| Leaf {
                index: m.index.u32(),
                account: c.username,
            })
        })
        .collect()
}

/// A device keeps its identity: a leaf a commit updates (the committer's own, through the update
/// path, or another's, through an Update proposal) must carry exactly the credential (device
/// certificate) it had. Otherwise a member could turn its leaf into another device, or another
/// account, with any certificate it can make.
fn check_leaf_identity(
    before: &[(u32, Credential)],
    sender_leaf: Option<u32>,
    staged: &StagedCommit,
) -> Result<(), MlsError> {
    let old = |i: Option<u32>| {
        i.and_then(|i| before.iter().find(|(l, _)| *l == i))
            .map(|(_, c)| c)
    };
    let refuse = || MlsError::Policy("a device cannot change its certificate in an update".into());
    if let Some(leaf) = staged.update_path_leaf_node() {
        if old(sender_leaf) != Some(leaf.credential()) {
            return Err(refuse());
        }
    }
    for upd in staged.update_proposals() {
        let from = member_index(upd.sender());
        if old(from) != Some(upd.update_proposal().leaf_node().credential()) {
            return Err(refuse());
        }
    }
    Ok(())
}

/// Runs the group policy on a staged commit from `sender_leaf`.
fn check_staged(
    kind: &Kind,
    leaves_before: &[Leaf],
    extensions_before: &Extensions<GroupContext>,
    sender_leaf: Option<u32>,
    staged: &StagedCommit,
) -> Result<Option<GroupMetadata>, MlsError> {
    let sender = sender_leaf
        .and_then(|i| leaves_before.iter().find(|l| l.index == i))
        .map(|l| &l.account)
        .ok_or_else(|| MlsError::Policy("the committer is not a member".into()))?;
    let metadata_before = match metadata_of(extensions_before) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => return Err(MlsError::Policy(format!("group metadata unreadable: {e}"))),
    };
    let mut change = Change {
        sender,
        added: Vec::new(),
        removed: Vec::new(),
        new_metadata: None,
        foreign_proposals: false,
    };
    for q in staged.queued_proposals() {
        match q.proposal() {
            Proposal::Add(add) => {
                let cert = certificate_of(add.key_package().leaf_node().credential()).map_err(
                    |source| MlsError::Certificate {
                        who: "unknown".into(),
                        source,
                    },
                )?;
                change.added.push(cert.username);
            }
            Proposal::Remove(r) => change.removed.push(r.removed().u32()),
            Proposal::Update(_) => {}
            Proposal::GroupContextExtensions(gce) => {
                change.new_metadata = Some(match metadata_of(gce.extensions()) {
                    Some(m) => m,
                    None => Err(crate::CodecError::Invalid("group metadata missing")),
                });
                if metadata_before.is_none() && !matches!(kind, Kind::Dm(_)) {
                    change.foreign_proposals = true;
                }
            }
            _ => change.foreign_proposals = true,
        }
    }
    check_change(kind, leaves_before, metadata_before.as_ref(), &change).map_err(MlsError::Policy)
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

/// Serialized key packages: the one-time ones and, if asked for, a last-resort one.
pub type SerializedKeyPackages = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// Signs with an Ed25519 key expanded once. (`openmls_basic_credential::SignatureKeyPair` rebuilds
/// the dalek key, a base-point multiplication, on every signature.)
struct CachedSigner(ed25519_dalek::SigningKey);

impl openmls_traits::signatures::Signer for CachedSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, openmls_traits::signatures::SignerError> {
        use ed25519_dalek::Signer as _;
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A device's MLS signing key (Ed25519, the suite's signature scheme) and its certificate.
pub struct DeviceKeys {
    signer: CachedSigner,
    cert: DeviceCertificate,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl DeviceKeys {
    /// Makes a new device: a fresh MLS signature key, certified by the account identity. The caller
    /// stores [`DeviceKeys::dangerous_signing_seed`] and the certificate to load it again.
    pub fn generate(
        identity: &AccountIdentity,
        username: &Username,
        device_id: DeviceId,
        now_secs: u64,
    ) -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let cert = identity.certify_device(
            username,
            device_id,
            key.verifying_key().as_bytes(),
            now_secs,
        );
        Self {
            signer: CachedSigner(key),
            cert,
        }
    }

    /// Rebuilds a device's keys from its stored signing seed and certificate; refuses a seed that
    /// does not match the certificate.
    pub fn from_seed(seed: &[u8], cert: DeviceCertificate) -> Result<Self, MlsError> {
        let key = ed25519_dalek::SigningKey::try_from(seed)
            .map_err(|_| internal("device signing seed is not 32 bytes"))?;
        if key.verifying_key().as_bytes().as_slice() != cert.mls_signature_key.as_slice() {
            return Err(internal(
                "device signing seed does not match its certificate",
            ));
        }
        Ok(Self {
            signer: CachedSigner(key),
            cert,
        })
    }

    /// The 32-byte signing seed, for the device's local store only.
    pub fn dangerous_signing_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signer.0.to_bytes())
    }

    /// This device's certificate.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.cert
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.cert.to_bytes()).into(),
            signature_key: self.cert.mls_signature_key.clone().into(),
        }
    }

    /// Makes `n` one-time key packages (plus a last-resort one if asked), serialized for upload.
    pub fn key_packages<P: Provider>(
        &self,
        provider: &P,
        suite: Ciphersuite,
        n: usize,
        last_resort: bool,
    ) -> Result<SerializedKeyPackages, MlsError> {
        let build = |lr: bool| -> Result<Vec<u8>, MlsError> {
            let mut b = KeyPackage::builder().leaf_node_capabilities(capabilities());
            if lr {
                b = b.mark_as_last_resort();
            }
            let bundle = b
                .build(suite, provider, &self.signer, self.credential())
                .map_err(internal)?;
            bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(internal)
        };
        let one_time = (0..n).map(|_| build(false)).collect::<Result<_, _>>()?;
        let lr = if last_resort {
            Some(build(true)?)
        } else {
            None
        };
        Ok((one_time, lr))
    }
}

/// A key package that parsed, passed MLS validation and whose device certificate is well-formed and
/// self-signed (not yet checked against a pinned key).
#[derive(Debug, Clone)]
pub struct ValidKeyPackage {
    key_package: KeyPackage,
    cert: DeviceCertificate,
}

impl ValidKeyPackage {
    /// Parses and validates a serialized key package (signature, lifetime, ciphersuite, certificate
    /// shape). Used by the server on upload and by clients before adding a device.
    pub fn parse(
        crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
        bytes: &[u8],
    ) -> Result<Self, MlsError> {
        if bytes.len() > MAX_MLS_MESSAGE {
            return Err(MlsError::Malformed("key package too large".into()));
        }
        let kp_in = KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| MlsError::Malformed(format!("key package: {e}")))?;
        let key_package = kp_in
            .validate(crypto, ProtocolVersion::Mls10)
            .map_err(|e| MlsError::Rejected(format!("key package: {e}")))?;
        if !is_supported_suite(key_package.ciphersuite()) {
            return Err(MlsError::Rejected(
                "key package has an unsupported ciphersuite".into(),
            ));
        }
        let cert = leaf_certificate(key_package.leaf_node())?;
        cert.verify_self_signed()
            .map_err(|source| MlsError::Certificate {
                who: format!("{}/{}", cert.username, cert.device_id),
                source,
            })?;
        Ok(Self { key_package, cert })
    }

    /// The certificate the key package carries.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.cert
    }

    /// Its ciphersuite.
    pub fn ciphersuite(&self) -> Ciphersuite {
        self.key_package.ciphersuite()
    }

    /// Whether this is a last-resort key package.
    pub fn is_last_resort(&self) -> bool {
        self.key_package.last_resort()
    }

    /// Checks the certificate against the pinned identity key of its account.
    pub fn verify(self, trust: &impl Trust) -> Result<TrustedKeyPackage, MlsError> {
        let leaf = self.key_package.leaf_node();
        verify_leaf(leaf.credential(), leaf.signature_key().as_slice(), trust)?;
        Ok(TrustedKeyPackage(self))
    }
}

/// A key package whose certificate verified against a pinned identity key: safe to add.
#[derive(Debug, Clone)]
pub struct TrustedKeyPackage(ValidKeyPackage);

impl TrustedKeyPackage {
    /// The device it belongs to.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.0.cert
    }
}

/// The messages a commit produces, to be posted to the server as one bundle.
#[derive(Debug, Clone)]
pub struct CommitBundle {
    /// The epoch the commit was made in (the server's commit rule checks it).
    pub epoch: u64,
    /// The commit (an MLS PublicMessage).
    pub commit: Vec<u8>,
    /// The welcome for added devices, if any.
    pub welcome: Option<Vec<u8>>,
    /// The devices the welcome is for.
    pub welcome_devices: Vec<DeviceId>,
    /// For a group's first commit: the signed group info of epoch 0, from which the server starts
    /// tracking the group.
    pub initial_group_info: Option<Vec<u8>>,
}

/// What one commit changes; see [`Conversation::commit`].
#[derive(Debug, Default)]
pub struct Changes<'a> {
    /// Devices to add.
    pub add: &'a [TrustedKeyPackage],
    /// Leaves to remove.
    pub remove: Vec<u32>,
    /// New group metadata.
    pub metadata: Option<&'a GroupMetadata>,
    /// Whether to refresh our own leaf's keys (post-compromise security).
    pub self_update: bool,
}

/// A member of a conversation: one device.
#[derive(Debug, Clone)]
pub struct MemberDevice {
    /// Its leaf index.
    pub leaf_index: u32,
    /// Its (verified on entry) certificate.
    pub cert: DeviceCertificate,
}

/// Something an incoming handshake or application message produced.
#[derive(Debug)]
pub enum Incoming {
    /// An application message from another device.
    Message {
        /// The sender's certificate (verified when the sender's leaf entered the group).
        sender: DeviceCertificate,
        /// The decoded content.
        content: MessageContent,
    },
    /// A commit from another device, staged: check it with [`Conversation::merge_verified`].
    Commit(PendingCommit),
    /// Our own commit, echoed back by the server, matching our pending commit.
    OwnCommit,
    /// Our own application message echoed back; nothing to do.
    OwnMessage,
}

/// A staged commit waiting for its new leaves to be verified.
#[derive(Debug)]
pub struct PendingCommit {
    staged: Box<StagedCommit>,
    sender_leaf: Option<u32>,
    /// Who sent the commit.
    pub sender: Option<DeviceCertificate>,
}

impl PendingCommit {
    fn new_leaves(&self) -> Vec<(Credential, Vec<u8>)> {
        let owned = |leaf: &LeafNode| {
            (
                leaf.credential().clone(),
                leaf.signature_key().as_slice().to_vec(),
            )
        };
        let mut out = Vec::new();
        for add in self.staged.add_proposals() {
            out.push(owned(add.add_proposal().key_package().leaf_node()));
        }
        for upd in self.staged.update_proposals() {
            out.push(owned(upd.update_proposal().leaf_node()));
        }
        if let Some(leaf) = self.staged.update_path_leaf_node() {
            out.push(owned(leaf));
        }
        out
    }

    /// Accounts whose identity keys must be pinned before the commit can be verified.
    pub fn accounts(&self) -> Vec<Username> {
        let mut v: Vec<Username> = self
            .new_leaves()
            .into_iter()
            .filter_map(|(c, _)| certificate_of(&c).ok().map(|c| c.username))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether this commit removes us from the group.
    pub fn removes_us(&self) -> bool {
        self.staged.self_removed()
    }
}

/// A welcome that decrypted for one of our key packages, waiting for its members to be verified.
pub struct PendingJoin {
    staged: StagedWelcome,
}

impl std::fmt::Debug for PendingJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingJoin").finish_non_exhaustive()
    }
}

impl PendingJoin {
    /// Decrypts a serialized welcome with our stored key packages. Welcomes do not carry the
    /// ratchet tree (it would make each welcome's HPKE context, hashed once per new member, as large
    /// as the tree): the joiner gets it from the server, and openmls checks it against the tree hash
    /// in the welcome's signed group info, so a wrong tree is refused.
    pub fn stage<P: Provider>(
        provider: &P,
        welcome: &[u8],
        ratchet_tree: Option<&[u8]>,
    ) -> Result<Self, MlsError> {
        if welcome.len() > MAX_MLS_MESSAGE {
            return Err(MlsError::Malformed("welcome too large".into()));
        }
        let msg = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| MlsError::Malformed(format!("welcome: {e}")))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(MlsError::Malformed("not a welcome".into()));
        };
        let tree = ratchet_tree
            .map(|t| {
                if t.len() > MAX_MLS_MESSAGE {
                    return Err(MlsError::Malformed("ratchet tree too large".into()));
                }
                RatchetTreeIn::tls_deserialize_exact(t)
                    .map_err(|e| MlsError::Malformed(format!("ratchet tree: {e}")))
            })
            .transpose()?;
        let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, tree)
            .map_err(|e| MlsError::Rejected(format!("welcome: {e}")))?;
        Ok(Self { staged })
    }

    /// The epoch the welcome opens.
    pub fn epoch(&self) -> u64 {
        self.staged.group_context().epoch().as_u64()
    }

    /// The group id (the conversation id) the welcome is for.
    pub fn group_id(&self) -> &[u8] {
        self.staged.group_context().group_id().as_slice()
    }

    /// Accounts whose identity keys must be pinned before the join can be verified.
    pub fn accounts(&self) -> Vec<Username> {
        let mut v: Vec<Username> = self
            .staged
            .members()
            .filter_map(|m| certificate_of(&m.credential).ok().map(|c| c.username))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Verifies every member's certificate, then joins.
    pub fn accept<P: Provider>(
        self,
        provider: &P,
        trust: &impl Trust,
    ) -> Result<Conversation, MlsError> {
        for m in self.staged.members() {
            verify_leaf(&m.credential, &m.signature_key, trust)?;
        }
        let ctx = self.staged.group_context();
        if !is_supported_suite(ctx.ciphersuite()) {
            return Err(MlsError::Rejected(
                "welcome uses an unsupported ciphersuite".into(),
            ));
        }
        if let Some(Err(e)) = metadata_of(ctx.extensions()) {
            return Err(MlsError::Policy(format!("group metadata unreadable: {e}")));
        }
        let group = self
            .staged
            .into_group(provider)
            .map_err(|e| MlsError::Rejected(format!("welcome: {e}")))?;
        Ok(Conversation { group })
    }
}

/// One conversation's MLS group, as seen by this device.
#[derive(Debug)]
pub struct Conversation {
    group: MlsGroup,
}

impl Conversation {
    /// Creates a new group with only this device in it, using `group_id` (the conversation id), the
    /// given ciphersuite, and for a group (not a DM) its metadata.
    pub fn create<P: Provider>(
        provider: &P,
        keys: &DeviceKeys,
        group_id: &[u8],
        suite: Ciphersuite,
        metadata: Option<&GroupMetadata>,
    ) -> Result<Self, MlsError> {
        if !is_supported_suite(suite) {
            return Err(internal("unsupported ciphersuite"));
        }
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .capabilities(capabilities())
            .with_group_context_extensions(group_extensions(metadata)?)
            .build();
        let group = MlsGroup::new_with_group_id(
            provider,
            &keys.signer,
            &config,
            GroupId::from_slice(group_id),
            keys.credential(),
        )
        .map_err(internal)?;
        Ok(Self { group })
    }

    /// The group's metadata (`None` for a DM).
    pub fn metadata(&self) -> Option<GroupMetadata> {
        metadata_of(self.group.extensions())
            .and_then(Result::ok)
            .filter(|m| !m.is_dm())
    }

    /// The settings in force (a DM's or a group's; the defaults if none were set).
    pub fn settings(&self) -> Settings {
        settings_of(self.group.extensions())
    }

    /// The current ratchet tree, serialized (what a device joining at this epoch needs besides its
    /// welcome).
    pub fn ratchet_tree(&self) -> Result<Vec<u8>, MlsError> {
        self.group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(internal)
    }

    /// The kind of conversation for the policy: a group if it carries metadata, else a DM between
    /// `me` and `peer`.
    pub fn kind(&self, me: &Username, peer: Option<&Username>) -> Result<Kind, MlsError> {
        let group = matches!(metadata_of(self.group.extensions()), Some(m) if m.as_ref().map_or(true, |m| !m.is_dm()));
        match (group, peer) {
            (true, _) => Ok(Kind::Group),
            (false, Some(p)) => {
                let mut pair = [me.clone(), p.clone()];
                pair.sort();
                Ok(Kind::Dm(pair))
            }
            (false, None) => Err(MlsError::Policy("a DM without a known peer".into())),
        }
    }

    /// Loads a group from storage.
    pub fn load<P: Provider>(provider: &P, group_id: &[u8]) -> Result<Option<Self>, MlsError> {
        MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map(|g| g.map(|group| Self { group }))
            .map_err(internal)
    }

    /// Deletes this group's state from storage.
    pub fn delete<P: Provider>(mut self, provider: &P) -> Result<(), MlsError> {
        self.group.delete(provider.storage()).map_err(internal)
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// Whether we are still a member.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// The group's ciphersuite.
    pub fn ciphersuite(&self) -> Ciphersuite {
        self.group.ciphersuite()
    }

    /// Every member device. Certificates were verified when each leaf entered the group; a leaf
    /// whose credential does not even decode (impossible for groups built through this module) is
    /// left out.
    pub fn members(&self) -> Vec<MemberDevice> {
        self.group
            .members()
            .filter_map(|m| {
                certificate_of(&m.credential).ok().map(|cert| MemberDevice {
                    leaf_index: m.index.u32(),
                    cert,
                })
            })
            .collect()
    }

    /// Whether a commit of ours is waiting for the server's answer.
    pub fn has_pending_commit(&self) -> bool {
        self.group.pending_commit().is_some()
    }

    /// Makes one commit with the given changes. The commit stays pending until
    /// [`Conversation::merge_pending`] (server accepted) or [`Conversation::clear_pending`] (server
    /// refused). The first commit of a group also carries the signed epoch-0 group info.
    pub fn commit<P: Provider>(
        &mut self,
        provider: &P,
        keys: &DeviceKeys,
        changes: Changes<'_>,
    ) -> Result<CommitBundle, MlsError> {
        let epoch = self.epoch();
        let initial_group_info = if epoch == 0 {
            Some(
                self.group
                    .export_group_info(provider.crypto(), &keys.signer, true)
                    .map_err(internal)?
                    .tls_serialize_detached()
                    .map_err(internal)?,
            )
        } else {
            None
        };
        let kps: Vec<KeyPackage> = changes
            .add
            .iter()
            .map(|k| k.0.key_package.clone())
            .collect();
        let mut builder = self
            .group
            .commit_builder()
            .consume_proposal_store(false)
            .force_self_update(changes.self_update)
            .propose_adds(kps)
            .propose_removals(changes.remove.iter().map(|i| LeafNodeIndex::new(*i)));
        if let Some(m) = changes.metadata {
            builder = builder
                .propose_group_context_extensions(group_extensions(Some(m))?)
                .map_err(internal)?;
        }
        let bundle = builder
            .load_psks(provider.storage())
            .map_err(internal)?
            .create_group_info(false)
            .build(provider.rand(), provider.crypto(), &keys.signer, |_| true)
            .map_err(internal)?
            .stage_commit(provider)
            .map_err(internal)?;
        let (commit, welcome, _) = bundle.into_messages();
        Ok(CommitBundle {
            epoch,
            commit: commit.tls_serialize_detached().map_err(internal)?,
            welcome: welcome
                .map(|w| w.tls_serialize_detached())
                .transpose()
                .map_err(internal)?,
            welcome_devices: changes
                .add
                .iter()
                .map(|k| k.certificate().device_id)
                .collect(),
            initial_group_info,
        })
    }

    /// Adds devices (whose key packages were verified against pinned keys) in one commit.
    pub fn add_devices<P: Provider>(
        &mut self,
        provider: &P,
        keys: &DeviceKeys,
        key_packages: &[TrustedKeyPackage],
    ) -> Result<CommitBundle, MlsError> {
        self.commit(
            provider,
            keys,
            Changes {
                add: key_packages,
                ..Changes::default()
            },
        )
    }

    /// Removes devices by leaf index in one commit.
    pub fn remove_leaves<P: Provider>(
        &mut self,
        provider: &P,
        keys: &DeviceKeys,
        leaves: &[u32],
    ) -> Result<CommitBundle, MlsError> {
        self.commit(
            provider,
            keys,
            Changes {
                remove: leaves.to_vec(),
                ..Changes::default()
            },
        )
    }

    /// Applies our pending commit (the server accepted it).
    pub fn merge_pending<P: Provider>(&mut self, provider: &P) -> Result<(), MlsError> {
        self.group.merge_pending_commit(provider).map_err(internal)
    }

    /// Drops our pending commit (the server refused it).
    pub fn clear_pending<P: Provider>(&mut self, provider: &P) -> Result<(), MlsError> {
        self.group
            .clear_pending_commit(provider.storage())
            .map_err(internal)
    }

    /// A fresh per-message salt for MIMI content, as the draft suggests: the first 16 bytes of
    /// HMAC-SHA256 keyed with the MLS exporter secret `salt_base_secret` over a local random
    /// nonce, so the salt is unpredictable even if the local random source is weak.
    pub fn salt<P: Provider>(&self, provider: &P) -> Result<[u8; 16], MlsError> {
        use hmac::{Hmac, Mac};
        use rand::RngCore;
        let base = zeroize::Zeroizing::new(
            self.group
                .export_secret(provider.crypto(), "salt_base_secret", &[], 32)
                .map_err(internal)?,
        );
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&base).map_err(internal)?;
        mac.update(&nonce);
        let out = mac.finalize().into_bytes();
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&out[..16]);
        Ok(salt)
    }

    /// A new message from `sender` in this conversation, with a fresh salt: its id is fixed from
    /// here on (send [`MessageContent::encoded`] again, never a recomposed copy).
    pub fn compose<P: Provider>(
        &self,
        provider: &P,
        sender: &Username,
        body: Body,
        sent_at_ms: u64,
    ) -> Result<MessageContent, MlsError> {
        let salt = self.salt(provider)?;
        MessageContent::new(
            body,
            sent_at_ms,
            salt,
            sender,
            self.group.group_id().as_slice(),
        )
        .map_err(|e| MlsError::Malformed(format!("content: {e}")))
    }

    /// A text message from the device `keys` belong to: [`Conversation::compose`] for a text.
    pub fn compose_text<P: Provider>(
        &self,
        provider: &P,
        keys: &DeviceKeys,
        text: &str,
        sent_at_ms: u64,
    ) -> Result<MessageContent, MlsError> {
        let body = Body::Text {
            text: text.to_owned(),
            reply_to: None,
        };
        self.compose(provider, &keys.cert.username, body, sent_at_ms)
    }

    /// Encrypts a message for the current epoch.
    pub fn encrypt<P: Provider>(
        &mut self,
        provider: &P,
        keys: &DeviceKeys,
        content: &MessageContent,
    ) -> Result<Vec<u8>, MlsError> {
        let plaintext = zeroize::Zeroizing::new(content.to_padded_bytes());
        let msg = self
            .group
            .create_message(provider, &keys.signer, &plaintext)
            .map_err(|e| MlsError::Rejected(format!("{e:?}")))?;
        msg.tls_serialize_detached().map_err(internal)
    }

    /// Processes a message from the conversation's log. Commits are only staged; call
    /// [`Conversation::merge_verified`] to apply them.
    pub fn process<P: Provider>(
        &mut self,
        provider: &P,
        bytes: &[u8],
    ) -> Result<Incoming, MlsError> {
        let protocol = protocol_message(bytes)?;
        let processed = self
            .group
            .process_message(provider, protocol)
            .map_err(|e| MlsError::Rejected(format!("{e}")))?;
        let sender = certificate_of(processed.credential()).ok();
        let sender_leaf = member_index(processed.sender());
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let sender = sender.ok_or_else(|| {
                    MlsError::Rejected("sender credential is not a device certificate".into())
                })?;
                let plaintext = zeroize::Zeroizing::new(app.into_bytes());
                let content = MessageContent::from_padded_bytes(
                    &plaintext,
                    &sender.username,
                    self.group.group_id().as_slice(),
                )
                .map_err(|e| MlsError::Malformed(format!("content: {e}")))?;
                Ok(Incoming::Message { sender, content })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                Ok(Incoming::Commit(PendingCommit {
                    staged,
                    sender_leaf,
                    sender,
                }))
            }
            ProcessedMessageContent::OwnPendingCommit => Ok(Incoming::OwnCommit),
            ProcessedMessageContent::OwnPrivateMessage => Ok(Incoming::OwnMessage),
            _ => Err(MlsError::Rejected(
                "standalone proposals are not used in Sotto conversations".into(),
            )),
        }
    }

    /// Checks a staged commit against the group's rules (see [`crate::group::check_change`]),
    /// verifies every leaf it adds or changes against pinned identity keys, then merges it. On any
    /// failure nothing is merged.
    pub fn merge_verified<P: Provider>(
        &mut self,
        provider: &P,
        pending: PendingCommit,
        trust: &impl Trust,
        kind: &Kind,
    ) -> Result<(), MlsError> {
        check_staged(
            kind,
            &leaves_of(self.group.members()),
            self.group.extensions(),
            pending.sender_leaf,
            &pending.staged,
        )?;
        let before: Vec<(u32, Credential)> = self
            .group
            .members()
            .map(|m| (m.index.u32(), m.credential))
            .collect();
        check_leaf_identity(&before, pending.sender_leaf, &pending.staged)?;
        for (cred, key) in pending.new_leaves() {
            verify_leaf(&cred, &key, trust)?;
        }
        self.group
            .merge_staged_commit(provider, *pending.staged)
            .map_err(internal)
    }
}

/// What the server can learn from an MLS message without any key: its kind, group and epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The group (conversation) id.
    pub group_id: Vec<u8>,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// Whether it is a commit (otherwise an application message).
    pub is_commit: bool,
}

impl Envelope {
    /// Parses the outer framing of a serialized MLS message. Accepts commits framed as PublicMessage
    /// and application messages framed as PrivateMessage; refuses everything else.
    pub fn parse(bytes: &[u8]) -> Result<Self, MlsError> {
        if bytes.len() > MAX_MLS_MESSAGE {
            return Err(MlsError::Malformed("message too large".into()));
        }
        let msg = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| MlsError::Malformed(format!("{e}")))?;
        let wire = msg.wire_format();
        let protocol = msg
            .try_into_protocol_message()
            .map_err(|e| MlsError::Malformed(format!("{e}")))?;
        let is_commit = match (wire, protocol.content_type()) {
            (WireFormat::PublicMessage, ContentType::Commit) => true,
            (WireFormat::PrivateMessage, ContentType::Application) => false,
            _ => {
                return Err(MlsError::Malformed(
                    "expected a public commit or a private application message".into(),
                ))
            }
        };
        Ok(Self {
            group_id: protocol.group_id().as_slice().to_vec(),
            epoch: protocol.epoch().as_u64(),
            is_commit,
        })
    }
}

/// Parses a serialized MLS welcome's outer framing (the server checks it is one).
pub fn check_welcome(bytes: &[u8]) -> Result<(), MlsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsError::Malformed(format!("welcome: {e}")))?;
    match msg.extract() {
        MlsMessageBodyIn::Welcome(_) => Ok(()),
        _ => Err(MlsError::Malformed("not a welcome".into())),
    }
}

/// Parses a serialized MLS message into a protocol message (commit, proposal or application).
fn protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, MlsError> {
    if bytes.len() > MAX_MLS_MESSAGE {
        return Err(MlsError::Malformed("message too large".into()));
    }
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsError::Malformed(format!("{e}")))?
        .try_into_protocol_message()
        .map_err(|e| MlsError::Malformed(format!("{e}")))
}

/// The leaf index of a member sender.
fn member_index(sender: &Sender) -> Option<u32> {
    match sender {
        Sender::Member(i) => Some(i.u32()),
        _ => None,
    }
}

/// A leaf's device certificate, which must certify the leaf's own signature key.
fn leaf_certificate(leaf: &LeafNode) -> Result<DeviceCertificate, MlsError> {
    let cert = certificate_of(leaf.credential()).map_err(|source| MlsError::Certificate {
        who: "unknown".into(),
        source,
    })?;
    if cert.mls_signature_key != leaf.signature_key().as_slice() {
        return Err(MlsError::Certificate {
            who: format!("{}/{}", cert.username, cert.device_id),
            source: IdentityError::SignatureKeyMismatch,
        });
    }
    Ok(cert)
}

/// What an accepted commit did, as the server derives it from the group's public state.
#[derive(Debug, Clone)]
pub struct CommitEffect {
    /// The committing device.
    pub sender: DeviceCertificate,
    /// Devices added (their welcome must go to exactly these).
    pub added: Vec<DeviceCertificate>,
    /// Devices removed.
    pub removed: Vec<DeviceCertificate>,
    /// Every member device after the commit.
    pub members: Vec<DeviceCertificate>,
}

/// The delivery service's view of a group: openmls' `PublicGroup`, built from the creator's signed
/// epoch-0 group info and advanced by every accepted commit. It holds no secret; it lets the server
/// check each commit (signature, framing, tree changes, the group policy) and derive who the members
/// are, instead of believing what a client claims.
pub struct ServerGroup {
    group: PublicGroup,
    storage: openmls_memory_storage::MemoryStorage,
}

impl std::fmt::Debug for ServerGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerGroup")
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl ServerGroup {
    /// Starts tracking a group from its creator's signed epoch-0 group info (with ratchet tree).
    /// Checks: epoch 0, the given group id, a Sotto ciphersuite, exactly one member, and for a group
    /// metadata naming that member's account as the only admin (`want_metadata`).
    pub fn start(
        crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
        group_info: &[u8],
        group_id: &[u8],
        want_metadata: bool,
    ) -> Result<Self, MlsError> {
        if group_info.len() > MAX_MLS_MESSAGE {
            return Err(MlsError::Malformed("group info too large".into()));
        }
        let msg = MlsMessageIn::tls_deserialize_exact(group_info)
            .map_err(|e| MlsError::Malformed(format!("group info: {e}")))?;
        let MlsMessageBodyIn::GroupInfo(vgi) = msg.extract() else {
            return Err(MlsError::Malformed("not a group info".into()));
        };
        if vgi.epoch().as_u64() != 0 || vgi.group_id().as_slice() != group_id {
            return Err(MlsError::Rejected(
                "initial group info must be of epoch 0 of this conversation".into(),
            ));
        }
        if !is_supported_suite(vgi.ciphersuite()) {
            return Err(MlsError::Rejected("unsupported ciphersuite".into()));
        }
        let tree = vgi
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| MlsError::Malformed("group info without ratchet tree".into()))?
            .ratchet_tree()
            .clone();
        let storage = openmls_memory_storage::MemoryStorage::default();
        let (group, _) =
            PublicGroup::from_external(crypto, &storage, tree, vgi, ProposalStore::new())
                .map_err(|e| MlsError::Rejected(format!("group info: {e}")))?;
        let out = Self { group, storage };
        let members = out.members();
        let [creator] = members.as_slice() else {
            return Err(MlsError::Rejected(
                "a new group must hold only its creator's device".into(),
            ));
        };
        match (
            metadata_of(out.group.group_context().extensions()),
            want_metadata,
        ) {
            (None, false) => {}
            (Some(Ok(m)), true) if m.admins == [creator.username.clone()] => {}
            (Some(Ok(_)), true) => {
                return Err(MlsError::Policy(
                    "a new group's only admin must be its creator".into(),
                ))
            }
            (Some(Err(e)), _) => {
                return Err(MlsError::Policy(format!("group metadata unreadable: {e}")))
            }
            (None, true) => return Err(MlsError::Policy("a group needs metadata".into())),
            (Some(_), false) => return Err(MlsError::Policy("a DM has no group metadata".into())),
        }
        Ok(out)
    }

    /// Restores a group from [`ServerGroup::snapshot`] bytes.
    pub fn load(snapshot: &[u8], group_id: &[u8]) -> Result<Self, MlsError> {
        let mut r = crate::codec::Reader::new(snapshot);
        let n = r.u32().map_err(internal)?;
        let mut values = std::collections::HashMap::new();
        for _ in 0..n {
            let k = r.bytes(usize::MAX).map_err(internal)?.to_vec();
            let v = r.bytes(usize::MAX).map_err(internal)?.to_vec();
            values.insert(k, v);
        }
        r.finish().map_err(internal)?;
        let storage = openmls_memory_storage::MemoryStorage {
            values: std::sync::RwLock::new(values),
        };
        let group = PublicGroup::load(&storage, &GroupId::from_slice(group_id))
            .map_err(internal)?
            .ok_or_else(|| internal("group state missing from snapshot"))?;
        Ok(Self { group, storage })
    }

    /// The group's public state as bytes, to store.
    pub fn snapshot(&self) -> Result<Vec<u8>, MlsError> {
        let values = self
            .storage
            .values
            .read()
            .map_err(|_| internal("storage lock poisoned"))?;
        let mut entries: Vec<_> = values.iter().collect();
        entries.sort();
        let mut out = Vec::new();
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for (k, v) in entries {
            crate::codec::put_bytes(&mut out, k);
            crate::codec::put_bytes(&mut out, v);
        }
        Ok(out)
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The ciphersuite.
    pub fn ciphersuite(&self) -> Ciphersuite {
        self.group.ciphersuite()
    }

    /// The metadata in force (`None` for a DM).
    pub fn metadata(&self) -> Option<GroupMetadata> {
        metadata_of(self.group.group_context().extensions())
            .and_then(Result::ok)
            .filter(|m| !m.is_dm())
    }

    /// The settings in force (a DM's or a group's; the defaults if none were set).
    pub fn settings(&self) -> Settings {
        settings_of(self.group.group_context().extensions())
    }

    /// The current ratchet tree, serialized: handed to the devices a commit adds, with their welcome.
    pub fn ratchet_tree(&self) -> Result<Vec<u8>, MlsError> {
        self.group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(internal)
    }

    /// Every member device's certificate.
    pub fn members(&self) -> Vec<DeviceCertificate> {
        self.group
            .members()
            .filter_map(|m| certificate_of(&m.credential).ok())
            .collect()
    }

    /// Validates a commit for the current epoch (framing, signature, tree changes, the policy for
    /// `kind`) and applies it. On error nothing changed.
    pub fn process_commit(
        &mut self,
        crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
        bytes: &[u8],
        kind: &Kind,
    ) -> Result<CommitEffect, MlsError> {
        let protocol = protocol_message(bytes)?;
        let processed = self
            .group
            .process_message(crypto, protocol)
            .map_err(|e| MlsError::Rejected(format!("{e}")))?;
        let sender_leaf = member_index(processed.sender());
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(MlsError::Malformed("expected a commit".into()));
        };
        let leaves_before: Vec<(u32, Credential)> = self
            .group
            .members()
            .map(|m| (m.index.u32(), m.credential))
            .collect();
        check_staged(
            kind,
            &leaves_of(self.group.members()),
            self.group.group_context().extensions(),
            sender_leaf,
            &staged,
        )?;
        check_leaf_identity(&leaves_before, sender_leaf, &staged)?;
        let mut added = Vec::new();
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            added.push(leaf_certificate(leaf)?);
        }
        let removed_idx: Vec<u32> = staged
            .remove_proposals()
            .map(|r| r.remove_proposal().removed().u32())
            .collect();
        let removed = leaves_before
            .iter()
            .filter(|(i, _)| removed_idx.contains(i))
            .filter_map(|(_, c)| certificate_of(c).ok())
            .collect();
        if let Some(leaf) = staged.update_path_leaf_node() {
            leaf_certificate(leaf)?;
        }
        self.group
            .merge_commit(&self.storage, *staged)
            .map_err(internal)?;
        let sender = sender_leaf
            .and_then(|i| leaves_before.iter().find(|(l, _)| *l == i))
            .and_then(|(_, c)| certificate_of(c).ok())
            .ok_or_else(|| MlsError::Policy("the committer is not a member".into()))?;
        Ok(CommitEffect {
            sender,
            added,
            removed,
            members: self.members(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_keeps_its_source() {
        let e = internal(std::io::Error::other("disk gone"));
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(e.to_string(), "internal MLS error: disk gone");
    }
}
