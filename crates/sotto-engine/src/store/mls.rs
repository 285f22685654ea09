//! openmls' `StorageProvider` over the store contract.
//!
//! openmls asks for typed values by typed keys; this module turns each into one opaque key and value
//! in the store's MLS space, inside the caller's transaction, so MLS state changes commit together
//! with whatever else the engine changed. Keys are `label NUL json(key) [NUL json(part)]...`
//! (serde_json output never holds a NUL byte, so the parts cannot run into each other) and values
//! are the entity's JSON. Lists (a group's own leaf nodes, its proposal queue) are one JSON array
//! each. The labels of group data are the `data_type` names of `openmls_sqlite_storage`, whose rows
//! the SQLite backend's migration copies under this scheme.

use openmls_rust_crypto::RustCrypto;
use openmls_traits::storage::{traits, StorageProvider, CURRENT_VERSION};
use openmls_traits::OpenMlsProvider;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use super::{StoreError, Tx};

/// Why the MLS state could not be read or written.
#[derive(Debug, Error)]
#[error("MLS state: {0}")]
pub struct MlsStorageError(String);

impl From<StoreError> for MlsStorageError {
    fn from(e: StoreError) -> Self {
        Self(e.to_string())
    }
}

/// The MLS state inside one transaction.
pub(crate) struct MlsStorage<'a> {
    tx: &'a dyn Tx,
}

/// The key for `label` and the JSON of each part.
pub fn storage_key(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = label.as_bytes().to_vec();
    for p in parts {
        k.push(0);
        k.extend_from_slice(p);
    }
    k
}

fn json<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, MlsStorageError> {
    serde_json::to_vec(v).map_err(|e| MlsStorageError(format!("encoding: {e}")))
}

type R<T> = Result<T, MlsStorageError>;

impl MlsStorage<'_> {
    fn key<K: Serialize>(label: &str, k: &K) -> R<Vec<u8>> {
        Ok(storage_key(label, &[&json(k)?]))
    }

    fn put<K: Serialize, V: Serialize + ?Sized>(&self, label: &str, k: &K, v: &V) -> R<()> {
        Ok(self.tx.mls_put(&Self::key(label, k)?, &json(v)?)?)
    }

    fn get<K: Serialize, V: DeserializeOwned>(&self, label: &str, k: &K) -> R<Option<V>> {
        self.get_raw(&Self::key(label, k)?)
    }

    fn get_raw<V: DeserializeOwned>(&self, key: &[u8]) -> R<Option<V>> {
        match self.tx.mls_get(key)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| MlsStorageError(format!("decoding: {e}"))),
            None => Ok(None),
        }
    }

    fn delete<K: Serialize>(&self, label: &str, k: &K) -> R<()> {
        Ok(self.tx.mls_delete(&Self::key(label, k)?)?)
    }

    fn list<K: Serialize, V: DeserializeOwned>(&self, label: &str, k: &K) -> R<Vec<V>> {
        Ok(self.get(label, k)?.unwrap_or_default())
    }

    fn epoch_key<G: Serialize, E: Serialize>(g: &G, epoch: &E, leaf: u32) -> R<Vec<u8>> {
        Ok(storage_key(
            EPOCH_KEY_PAIRS,
            &[&json(g)?, &json(epoch)?, leaf.to_string().as_bytes()],
        ))
    }

    fn proposal_key<G: Serialize, P: Serialize>(g: &G, p: &P) -> R<Vec<u8>> {
        Ok(storage_key(PROPOSAL, &[&json(g)?, &json(p)?]))
    }
}

/// Labels (the group data ones as `openmls_sqlite_storage` names its `data_type`s).
pub mod labels {
    /// The group's join configuration.
    pub const JOIN_CONFIG: &str = "join_group_config";
    /// The ratchet tree.
    pub const TREE: &str = "tree";
    /// The interim transcript hash.
    pub const INTERIM_TRANSCRIPT_HASH: &str = "interim_transcript_hash";
    /// The group context.
    pub const CONTEXT: &str = "context";
    /// The confirmation tag.
    pub const CONFIRMATION_TAG: &str = "confirmation_tag";
    /// The group state.
    pub const GROUP_STATE: &str = "group_state";
    /// The message secrets.
    pub const MESSAGE_SECRETS: &str = "message_secrets";
    /// The resumption PSK store.
    pub const RESUMPTION_PSK_STORE: &str = "resumption_psk_store";
    /// This device's leaf index.
    pub const OWN_LEAF_INDEX: &str = "own_leaf_index";
    /// The epoch secrets.
    pub const GROUP_EPOCH_SECRETS: &str = "group_epoch_secrets";
    /// This device's leaf nodes (a JSON array).
    pub const OWN_LEAF_NODES: &str = "own_leaf_nodes";
    /// A group's queued proposal references (a JSON array).
    pub const PROPOSAL_REFS: &str = "proposal_refs";
    /// One queued proposal (group, reference).
    pub const PROPOSAL: &str = "proposal";
    /// An HPKE key pair by public key.
    pub const ENCRYPTION_KEY: &str = "encryption_key";
    /// An epoch's HPKE key pairs (group, epoch, leaf index).
    pub const EPOCH_KEY_PAIRS: &str = "epoch_key_pairs";
    /// A key package by hash reference.
    pub const KEY_PACKAGE: &str = "key_package";
    /// A PSK by id.
    pub const PSK: &str = "psk";
    /// A signature key pair by public key.
    pub const SIGNATURE_KEY: &str = "signature_key";
}
use labels::*;

const V: u16 = CURRENT_VERSION;

impl StorageProvider<V> for MlsStorage<'_> {
    type Error = MlsStorageError;

    fn write_mls_join_config<G: traits::GroupId<V>, C: traits::MlsGroupJoinConfig<V>>(
        &self,
        group_id: &G,
        config: &C,
    ) -> R<()> {
        self.put(JOIN_CONFIG, group_id, config)
    }

    fn append_own_leaf_node<G: traits::GroupId<V>, L: traits::LeafNode<V>>(
        &self,
        group_id: &G,
        leaf_node: &L,
    ) -> R<()> {
        let mut list: Vec<serde_json::Value> = self.list(OWN_LEAF_NODES, group_id)?;
        list.push(serde_json::to_value(leaf_node).map_err(|e| MlsStorageError(e.to_string()))?);
        self.put(OWN_LEAF_NODES, group_id, &list)
    }

    fn queue_proposal<
        G: traits::GroupId<V>,
        P: traits::ProposalRef<V>,
        Q: traits::QueuedProposal<V>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &P,
        proposal: &Q,
    ) -> R<()> {
        let mut refs: Vec<serde_json::Value> = self.list(PROPOSAL_REFS, group_id)?;
        let r = serde_json::to_value(proposal_ref).map_err(|e| MlsStorageError(e.to_string()))?;
        if !refs.contains(&r) {
            refs.push(r);
        }
        self.put(PROPOSAL_REFS, group_id, &refs)?;
        Ok(self.tx.mls_put(
            &Self::proposal_key(group_id, proposal_ref)?,
            &json(proposal)?,
        )?)
    }

    fn write_tree<G: traits::GroupId<V>, T: traits::TreeSync<V>>(&self, g: &G, t: &T) -> R<()> {
        self.put(TREE, g, t)
    }

    fn write_interim_transcript_hash<G: traits::GroupId<V>, H: traits::InterimTranscriptHash<V>>(
        &self,
        g: &G,
        h: &H,
    ) -> R<()> {
        self.put(INTERIM_TRANSCRIPT_HASH, g, h)
    }

    fn write_context<G: traits::GroupId<V>, C: traits::GroupContext<V>>(
        &self,
        g: &G,
        c: &C,
    ) -> R<()> {
        self.put(CONTEXT, g, c)
    }

    fn write_confirmation_tag<G: traits::GroupId<V>, C: traits::ConfirmationTag<V>>(
        &self,
        g: &G,
        c: &C,
    ) -> R<()> {
        self.put(CONFIRMATION_TAG, g, c)
    }

    fn write_group_state<S: traits::GroupState<V>, G: traits::GroupId<V>>(
        &self,
        g: &G,
        s: &S,
    ) -> R<()> {
        self.put(GROUP_STATE, g, s)
    }

    fn write_message_secrets<G: traits::GroupId<V>, M: traits::MessageSecrets<V>>(
        &self,
        g: &G,
        m: &M,
    ) -> R<()> {
        self.put(MESSAGE_SECRETS, g, m)
    }

    fn write_resumption_psk_store<G: traits::GroupId<V>, S: traits::ResumptionPskStore<V>>(
        &self,
        g: &G,
        s: &S,
    ) -> R<()> {
        self.put(RESUMPTION_PSK_STORE, g, s)
    }

    fn write_own_leaf_index<G: traits::GroupId<V>, L: traits::LeafNodeIndex<V>>(
        &self,
        g: &G,
        l: &L,
    ) -> R<()> {
        self.put(OWN_LEAF_INDEX, g, l)
    }

    fn write_group_epoch_secrets<G: traits::GroupId<V>, S: traits::GroupEpochSecrets<V>>(
        &self,
        g: &G,
        s: &S,
    ) -> R<()> {
        self.put(GROUP_EPOCH_SECRETS, g, s)
    }

    fn write_signature_key_pair<
        P: traits::SignaturePublicKey<V>,
        K: traits::SignatureKeyPair<V>,
    >(
        &self,
        public_key: &P,
        key_pair: &K,
    ) -> R<()> {
        self.put(SIGNATURE_KEY, public_key, key_pair)
    }

    fn write_encryption_key_pair<K: traits::EncryptionKey<V>, P: traits::HpkeKeyPair<V>>(
        &self,
        public_key: &K,
        key_pair: &P,
    ) -> R<()> {
        self.put(ENCRYPTION_KEY, public_key, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        G: traits::GroupId<V>,
        E: traits::EpochKey<V>,
        P: traits::HpkeKeyPair<V>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
        key_pairs: &[P],
    ) -> R<()> {
        Ok(self.tx.mls_put(
            &Self::epoch_key(group_id, epoch, leaf_index)?,
            &json(key_pairs)?,
        )?)
    }

    fn write_key_package<H: traits::HashReference<V>, K: traits::KeyPackage<V>>(
        &self,
        hash_ref: &H,
        key_package: &K,
    ) -> R<()> {
        self.put(KEY_PACKAGE, hash_ref, key_package)
    }

    fn write_psk<I: traits::PskId<V>, B: traits::PskBundle<V>>(
        &self,
        psk_id: &I,
        psk: &B,
    ) -> R<()> {
        self.put(PSK, psk_id, psk)
    }

    fn mls_group_join_config<G: traits::GroupId<V>, C: traits::MlsGroupJoinConfig<V>>(
        &self,
        g: &G,
    ) -> R<Option<C>> {
        self.get(JOIN_CONFIG, g)
    }

    fn own_leaf_nodes<G: traits::GroupId<V>, L: traits::LeafNode<V>>(&self, g: &G) -> R<Vec<L>> {
        self.list(OWN_LEAF_NODES, g)
    }

    fn queued_proposal_refs<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(
        &self,
        g: &G,
    ) -> R<Vec<P>> {
        self.list(PROPOSAL_REFS, g)
    }

    fn queued_proposals<
        G: traits::GroupId<V>,
        P: traits::ProposalRef<V>,
        Q: traits::QueuedProposal<V>,
    >(
        &self,
        g: &G,
    ) -> R<Vec<(P, Q)>> {
        let refs: Vec<P> = self.list(PROPOSAL_REFS, g)?;
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let q: Option<Q> = self.get_raw(&Self::proposal_key(g, &r)?)?;
            if let Some(q) = q {
                out.push((r, q));
            }
        }
        Ok(out)
    }

    fn tree<G: traits::GroupId<V>, T: traits::TreeSync<V>>(&self, g: &G) -> R<Option<T>> {
        self.get(TREE, g)
    }

    fn group_context<G: traits::GroupId<V>, C: traits::GroupContext<V>>(
        &self,
        g: &G,
    ) -> R<Option<C>> {
        self.get(CONTEXT, g)
    }

    fn interim_transcript_hash<G: traits::GroupId<V>, H: traits::InterimTranscriptHash<V>>(
        &self,
        g: &G,
    ) -> R<Option<H>> {
        self.get(INTERIM_TRANSCRIPT_HASH, g)
    }

    fn confirmation_tag<G: traits::GroupId<V>, C: traits::ConfirmationTag<V>>(
        &self,
        g: &G,
    ) -> R<Option<C>> {
        self.get(CONFIRMATION_TAG, g)
    }

    fn group_state<S: traits::GroupState<V>, G: traits::GroupId<V>>(&self, g: &G) -> R<Option<S>> {
        self.get(GROUP_STATE, g)
    }

    fn message_secrets<G: traits::GroupId<V>, M: traits::MessageSecrets<V>>(
        &self,
        g: &G,
    ) -> R<Option<M>> {
        self.get(MESSAGE_SECRETS, g)
    }

    fn resumption_psk_store<G: traits::GroupId<V>, S: traits::ResumptionPskStore<V>>(
        &self,
        g: &G,
    ) -> R<Option<S>> {
        self.get(RESUMPTION_PSK_STORE, g)
    }

    fn own_leaf_index<G: traits::GroupId<V>, L: traits::LeafNodeIndex<V>>(
        &self,
        g: &G,
    ) -> R<Option<L>> {
        self.get(OWN_LEAF_INDEX, g)
    }

    fn group_epoch_secrets<G: traits::GroupId<V>, S: traits::GroupEpochSecrets<V>>(
        &self,
        g: &G,
    ) -> R<Option<S>> {
        self.get(GROUP_EPOCH_SECRETS, g)
    }

    fn signature_key_pair<P: traits::SignaturePublicKey<V>, K: traits::SignatureKeyPair<V>>(
        &self,
        public_key: &P,
    ) -> R<Option<K>> {
        self.get(SIGNATURE_KEY, public_key)
    }

    fn encryption_key_pair<P: traits::HpkeKeyPair<V>, K: traits::EncryptionKey<V>>(
        &self,
        public_key: &K,
    ) -> R<Option<P>> {
        self.get(ENCRYPTION_KEY, public_key)
    }

    fn encryption_epoch_key_pairs<
        G: traits::GroupId<V>,
        E: traits::EpochKey<V>,
        P: traits::HpkeKeyPair<V>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> R<Vec<P>> {
        Ok(self
            .get_raw(&Self::epoch_key(group_id, epoch, leaf_index)?)?
            .unwrap_or_default())
    }

    fn key_package<H: traits::HashReference<V>, K: traits::KeyPackage<V>>(
        &self,
        hash_ref: &H,
    ) -> R<Option<K>> {
        self.get(KEY_PACKAGE, hash_ref)
    }

    fn psk<B: traits::PskBundle<V>, I: traits::PskId<V>>(&self, psk_id: &I) -> R<Option<B>> {
        self.get(PSK, psk_id)
    }

    fn remove_proposal<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(
        &self,
        group_id: &G,
        proposal_ref: &P,
    ) -> R<()> {
        let mut refs: Vec<serde_json::Value> = self.list(PROPOSAL_REFS, group_id)?;
        let r = serde_json::to_value(proposal_ref).map_err(|e| MlsStorageError(e.to_string()))?;
        refs.retain(|x| *x != r);
        self.put(PROPOSAL_REFS, group_id, &refs)?;
        Ok(self
            .tx
            .mls_delete(&Self::proposal_key(group_id, proposal_ref)?)?)
    }

    fn delete_own_leaf_nodes<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(OWN_LEAF_NODES, g)
    }

    fn delete_group_config<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(JOIN_CONFIG, g)
    }

    fn delete_tree<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(TREE, g)
    }

    fn delete_confirmation_tag<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(CONFIRMATION_TAG, g)
    }

    fn delete_group_state<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(GROUP_STATE, g)
    }

    fn delete_context<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(CONTEXT, g)
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(INTERIM_TRANSCRIPT_HASH, g)
    }

    fn delete_message_secrets<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(MESSAGE_SECRETS, g)
    }

    fn delete_all_resumption_psk_secrets<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(RESUMPTION_PSK_STORE, g)
    }

    fn delete_own_leaf_index<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(OWN_LEAF_INDEX, g)
    }

    fn delete_group_epoch_secrets<G: traits::GroupId<V>>(&self, g: &G) -> R<()> {
        self.delete(GROUP_EPOCH_SECRETS, g)
    }

    fn clear_proposal_queue<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(
        &self,
        g: &G,
    ) -> R<()> {
        let refs: Vec<serde_json::Value> = self.list(PROPOSAL_REFS, g)?;
        for r in &refs {
            self.tx.mls_delete(&Self::proposal_key(g, r)?)?;
        }
        self.delete(PROPOSAL_REFS, g)
    }

    fn delete_signature_key_pair<P: traits::SignaturePublicKey<V>>(&self, public_key: &P) -> R<()> {
        self.delete(SIGNATURE_KEY, public_key)
    }

    fn delete_encryption_key_pair<K: traits::EncryptionKey<V>>(&self, public_key: &K) -> R<()> {
        self.delete(ENCRYPTION_KEY, public_key)
    }

    fn delete_encryption_epoch_key_pairs<G: traits::GroupId<V>, E: traits::EpochKey<V>>(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> R<()> {
        Ok(self
            .tx
            .mls_delete(&Self::epoch_key(group_id, epoch, leaf_index)?)?)
    }

    fn delete_key_package<H: traits::HashReference<V>>(&self, hash_ref: &H) -> R<()> {
        self.delete(KEY_PACKAGE, hash_ref)
    }

    fn delete_psk<I: traits::PskId<V>>(&self, psk_id: &I) -> R<()> {
        self.delete(PSK, psk_id)
    }
}

/// An openmls provider whose storage is one transaction of the device's store.
pub(crate) struct Provider<'a> {
    crypto: &'a RustCrypto,
    storage: MlsStorage<'a>,
}

impl<'a> Provider<'a> {
    pub(crate) fn new(crypto: &'a RustCrypto, tx: &'a dyn Tx) -> Self {
        Self {
            crypto,
            storage: MlsStorage { tx },
        }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MlsStorage<'a>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}
