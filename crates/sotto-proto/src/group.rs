//! Group metadata and the membership policy every member and the server enforce.
//!
//! A group's metadata (name, admins, settings) lives in a private-use MLS group-context extension,
//! so every member agrees on it at every epoch and it changes only through a commit. The encoding is
//! a version byte followed by tagged fields (`u8` tag, `u32`-length-prefixed value); fields with
//! tags this version does not know are kept and written back unchanged, so a setting added later is
//! not lost when an older client renames the group.
//!
//! The policy ([`check_change`]) is a pure function of the group before a commit and what the
//! commit does; the server runs it on `PublicGroup` state, members on their own `MlsGroup`.

use crate::codec::{put_bytes, CodecError, Reader};
use crate::identity::Username;

/// The MLS extension type of Sotto's group metadata (private-use range 0xF000..=0xFFFF).
pub const METADATA_EXTENSION_TYPE: u16 = 0xF5A0;

/// Longest group name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 128;
/// Most admins a group may list.
pub const MAX_ADMINS: usize = 10_000;

const VERSION: u8 = 1;
const TAG_NAME: u8 = 1;
const TAG_ADMINS: u8 = 2;
const TAG_DISAPPEAR: u8 = 3;
const TAG_OWN_DEVICES: u8 = 4;
const MAX_FIELD: usize = 1 << 20;

/// What all members of a group agree on besides membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// Display name.
    pub name: String,
    /// Accounts allowed to change membership and metadata; sorted, no duplicates, never empty.
    pub admins: Vec<Username>,
    /// Disappearing-message timer in seconds (0 = off). Carried, not yet acted on.
    pub disappear_after_secs: u32,
    /// Set for the group of one account's own devices, which carries its account settings: only
    /// that account's devices are ever members, and the field never changes.
    pub own_devices_of: Option<Username>,
    /// Fields from a newer version, kept verbatim.
    unknown: Vec<(u8, Vec<u8>)>,
}

/// Why a group name is refused.
fn check_name(name: &str) -> Result<(), CodecError> {
    if name.trim().is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(CodecError::Invalid("group name"));
    }
    Ok(())
}

impl GroupMetadata {
    /// New metadata with one admin (the creator).
    pub fn new(name: &str, creator: Username) -> Result<Self, CodecError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            admins: vec![creator],
            disappear_after_secs: 0,
            own_devices_of: None,
            unknown: Vec::new(),
        })
    }

    /// Metadata for the group of `account`'s own devices.
    pub fn own_devices(account: Username) -> Self {
        Self {
            name: "own devices".to_owned(),
            admins: vec![account.clone()],
            disappear_after_secs: 0,
            own_devices_of: Some(account),
            unknown: Vec::new(),
        }
    }

    /// The same metadata renamed.
    pub fn renamed(&self, name: &str) -> Result<Self, CodecError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            ..self.clone()
        })
    }

    /// The same metadata with `user` added to (or `false`: removed from) the admins.
    pub fn with_admin(&self, user: &Username, admin: bool) -> Self {
        let mut out = self.clone();
        out.admins.retain(|a| a != user);
        if admin {
            out.admins.push(user.clone());
            out.admins.sort();
        }
        out
    }

    /// Whether `user` is listed as an admin.
    pub fn is_admin(&self, user: &Username) -> bool {
        self.admins.binary_search(user).is_ok()
    }

    /// Serializes the metadata.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        let mut field = |tag: u8, value: &[u8]| {
            out.push(tag);
            put_bytes(&mut out, value);
        };
        field(TAG_NAME, self.name.as_bytes());
        let mut admins = Vec::new();
        for a in &self.admins {
            put_bytes(&mut admins, a.as_str().as_bytes());
        }
        field(TAG_ADMINS, &admins);
        if self.disappear_after_secs != 0 {
            field(TAG_DISAPPEAR, &self.disappear_after_secs.to_be_bytes());
        }
        if let Some(a) = &self.own_devices_of {
            field(TAG_OWN_DEVICES, a.as_str().as_bytes());
        }
        for (tag, value) in &self.unknown {
            field(*tag, value);
        }
        out
    }

    /// Parses and validates metadata: a known version, a valid name, at least one admin, admins
    /// sorted without duplicates, each field at most once.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes);
        let v = r.u8()?;
        if v != VERSION {
            return Err(CodecError::UnsupportedVersion(v));
        }
        let (mut name, mut admins, mut disappear, mut own) = (None, None, None, None);
        let mut unknown: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut seen = Vec::new();
        while !r.rest_is_empty() {
            let tag = r.u8()?;
            let value = r.bytes(MAX_FIELD)?;
            if seen.contains(&tag) {
                return Err(CodecError::Invalid("repeated metadata field"));
            }
            seen.push(tag);
            match tag {
                TAG_NAME => {
                    let s = std::str::from_utf8(value)
                        .map_err(|_| CodecError::Invalid("group name"))?;
                    check_name(s)?;
                    name = Some(s.to_owned());
                }
                TAG_ADMINS => {
                    let mut ar = Reader::new(value);
                    let mut list = Vec::new();
                    while !ar.rest_is_empty() {
                        let u = std::str::from_utf8(ar.bytes(64)?)
                            .map_err(|_| CodecError::Invalid("admin"))?;
                        list.push(Username::new(u).map_err(|_| CodecError::Invalid("admin"))?);
                        if list.len() > MAX_ADMINS {
                            return Err(CodecError::Invalid("too many admins"));
                        }
                    }
                    if list.windows(2).any(|w| w[0] >= w[1]) {
                        return Err(CodecError::Invalid("admins not sorted or repeated"));
                    }
                    admins = Some(list);
                }
                TAG_DISAPPEAR => {
                    let b: [u8; 4] = value.try_into().map_err(|_| CodecError::Invalid("timer"))?;
                    disappear = Some(u32::from_be_bytes(b));
                }
                TAG_OWN_DEVICES => {
                    let u = std::str::from_utf8(value)
                        .map_err(|_| CodecError::Invalid("own-devices account"))?;
                    own = Some(
                        Username::new(u).map_err(|_| CodecError::Invalid("own-devices account"))?,
                    );
                }
                other => unknown.push((other, value.to_vec())),
            }
        }
        let name = name.ok_or(CodecError::Invalid("missing group name"))?;
        let admins = admins.ok_or(CodecError::Invalid("missing admins"))?;
        if admins.is_empty() {
            return Err(CodecError::Invalid("a group needs an admin"));
        }
        Ok(Self {
            name,
            admins,
            disappear_after_secs: disappear.unwrap_or(0),
            own_devices_of: own,
            unknown,
        })
    }
}

/// What kind of conversation a group is, for the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A DM between exactly these two accounts.
    Dm([Username; 2]),
    /// A group governed by its metadata's admins.
    Group,
}

/// One leaf as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Leaf index.
    pub index: u32,
    /// Account.
    pub account: Username,
}

/// A commit's effect, as the policy sees it.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// The committer's account.
    pub sender: &'a Username,
    /// Accounts of the leaves added.
    pub added: Vec<Username>,
    /// Leaf indexes removed.
    pub removed: Vec<u32>,
    /// The new metadata, if the commit changes it (`Err` if it does not decode).
    pub new_metadata: Option<Result<GroupMetadata, CodecError>>,
    /// Whether the commit carries proposals Sotto never uses (PSK, re-init, external init, ...).
    pub foreign_proposals: bool,
}

/// Checks a commit against the rules: in a group only admins change membership (other than their
/// own account's devices) or metadata, and the group always keeps an admin who is a member; in a DM
/// only the two accounts' devices are ever added and nothing else changes. Returns the metadata in
/// force after the commit.
pub fn check_change(
    kind: &Kind,
    leaves_before: &[Leaf],
    metadata_before: Option<&GroupMetadata>,
    change: &Change<'_>,
) -> Result<Option<GroupMetadata>, String> {
    if change.foreign_proposals {
        return Err("the commit carries a kind of proposal Sotto does not use".into());
    }
    let account_of = |i: u32| {
        leaves_before
            .iter()
            .find(|l| l.index == i)
            .map(|l| &l.account)
    };
    match kind {
        Kind::Dm(pair) => {
            if change.new_metadata.is_some() || metadata_before.is_some() {
                return Err("a DM has no group metadata".into());
            }
            if let Some(a) = change.added.iter().find(|a| !pair.contains(a)) {
                return Err(format!("a DM cannot add {a}"));
            }
            for r in &change.removed {
                if account_of(*r) != Some(change.sender) {
                    return Err("in a DM a device can only remove its own account's devices".into());
                }
            }
            Ok(None)
        }
        Kind::Group => {
            let before = metadata_before.ok_or("the group has no metadata")?;
            if let Some(own) = &before.own_devices_of {
                if change.sender != own {
                    return Err(format!(
                        "only {own}'s devices change {own}'s own-devices group"
                    ));
                }
                if let Some(a) = change.added.iter().find(|a| *a != own) {
                    return Err(format!("{own}'s own-devices group cannot add {a}"));
                }
            }
            if let Some(Ok(m)) = &change.new_metadata {
                if m.own_devices_of != before.own_devices_of {
                    return Err("a group cannot become or stop being an own-devices group".into());
                }
            }
            let admin = before.is_admin(change.sender);
            if !admin {
                if change.new_metadata.is_some() {
                    return Err(format!(
                        "{} is not an admin: only admins change the group's name or admins",
                        change.sender
                    ));
                }
                if change.added.iter().any(|a| a != change.sender) {
                    return Err(format!(
                        "{} is not an admin: only admins add members",
                        change.sender
                    ));
                }
                if change
                    .removed
                    .iter()
                    .any(|r| account_of(*r) != Some(change.sender))
                {
                    return Err(format!(
                        "{} is not an admin: only admins remove members",
                        change.sender
                    ));
                }
            }
            let after = match &change.new_metadata {
                None => before.clone(),
                Some(Ok(m)) => m.clone(),
                Some(Err(e)) => return Err(format!("new group metadata is malformed: {e}")),
            };
            let mut accounts_after: Vec<&Username> = leaves_before
                .iter()
                .filter(|l| !change.removed.contains(&l.index))
                .map(|l| &l.account)
                .chain(change.added.iter())
                .collect();
            accounts_after.sort();
            accounts_after.dedup();
            if let Some(a) = after
                .admins
                .iter()
                .find(|a| accounts_after.binary_search(a).is_err())
            {
                return Err(format!("{a} would be an admin without being a member"));
            }
            if after.admins.is_empty() {
                return Err("the group would have no admin left".into());
            }
            Ok(Some(after))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Username {
        Username::new(s).unwrap()
    }

    #[test]
    fn metadata_round_trips_and_keeps_unknown_fields() {
        let m = GroupMetadata::new("Team", u("alice"))
            .unwrap()
            .with_admin(&u("bob"), true);
        let mut bytes = m.encode();
        bytes.push(77);
        put_bytes(&mut bytes, b"future");
        let back = GroupMetadata::decode(&bytes).unwrap();
        assert_eq!(back.admins, vec![u("alice"), u("bob")]);
        assert!(back
            .renamed("Team 2")
            .unwrap()
            .encode()
            .ends_with(b"future"));
        assert!(GroupMetadata::decode(&[1]).is_err());
        assert!(GroupMetadata::new("", u("alice")).is_err());
        assert!(GroupMetadata::new(&"x".repeat(200), u("alice")).is_err());
    }

    #[test]
    fn policy_refuses_non_admins_and_admin_loss() {
        let m = GroupMetadata::new("g", u("alice")).unwrap();
        let leaves = vec![
            Leaf {
                index: 0,
                account: u("alice"),
            },
            Leaf {
                index: 1,
                account: u("bob"),
            },
            Leaf {
                index: 2,
                account: u("bob"),
            },
        ];
        let bob = u("bob");
        let alice = u("alice");
        let base = |sender| Change {
            sender,
            added: vec![],
            removed: vec![],
            new_metadata: None,
            foreign_proposals: false,
        };
        // bob adds carol: refused; bob adds his own device: fine
        let mut c = base(&bob);
        c.added = vec![u("carol")];
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_err());
        c.added = vec![u("bob")];
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_ok());
        // bob removes alice: refused; bob removes his other device: fine
        let mut c = base(&bob);
        c.removed = vec![0];
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_err());
        c.removed = vec![2];
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_ok());
        // bob renames: refused
        let mut c = base(&bob);
        c.new_metadata = Some(Ok(m.renamed("x").unwrap()));
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_err());
        // alice removes herself as last admin (by metadata): refused
        let mut c = base(&alice);
        let mut none = m.clone();
        none.admins.clear();
        c.new_metadata = Some(Ok(none));
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_err());
        // alice makes carol (not a member) admin: refused; makes bob admin: fine
        c.new_metadata = Some(Ok(m.with_admin(&u("carol"), true)));
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_err());
        c.new_metadata = Some(Ok(m.with_admin(&bob, true)));
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_ok());
        // alice (admin) removes bob entirely: fine; removing alice's own last leaf keeps no admin
        let mut c = base(&alice);
        c.removed = vec![1, 2];
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_ok());
        // an own-devices group: only its account commits, adds only its devices, stays one
        let own = GroupMetadata::own_devices(alice.clone());
        assert_eq!(GroupMetadata::decode(&own.encode()).unwrap(), own);
        let mine = vec![Leaf {
            index: 0,
            account: alice.clone(),
        }];
        let mut c = base(&alice);
        c.added = vec![alice.clone()];
        assert!(check_change(&Kind::Group, &mine, Some(&own), &c).is_ok());
        c.added = vec![bob.clone()];
        assert!(check_change(&Kind::Group, &mine, Some(&own), &c).is_err());
        let mut c = base(&bob);
        c.removed = vec![0];
        assert!(check_change(&Kind::Group, &mine, Some(&own), &c).is_err());
        let mut c = base(&alice);
        c.new_metadata = Some(Ok(GroupMetadata::new("x", alice.clone()).unwrap()));
        assert!(check_change(&Kind::Group, &mine, Some(&own), &c).is_err());
        let mut c = base(&alice);
        c.new_metadata = Some(Ok(GroupMetadata::own_devices(alice.clone())));
        assert!(check_change(&Kind::Group, &leaves, Some(&m), &c).is_err());
        // DM rules
        let dm = Kind::Dm([u("alice"), u("bob")]);
        let mut c = base(&alice);
        c.added = vec![u("bob")];
        assert!(check_change(&dm, &leaves, None, &c).is_ok());
        c.added = vec![u("carol")];
        assert!(check_change(&dm, &leaves, None, &c).is_err());
        let mut c = base(&alice);
        c.removed = vec![1];
        assert!(check_change(&dm, &leaves, None, &c).is_err());
    }
}
