//! Group metadata and the membership policy every member and the server enforce.
//!
//! A group's metadata (name, admins, settings) lives in a private-use MLS group-context extension,
//! so every member agrees on it at every epoch and it changes only through a commit. The encoding is
//! a version byte followed by tagged fields (`u8` tag, `u32`-length-prefixed value); fields with
//! tags this version does not know are kept and written back unchanged, so a setting added later is
//! not lost when an older client renames the group.
//!
//! A DM carries the same extension once one of its two members changes a setting, in its DM form:
//! only the settings (the disappearing timer, vanish mode), no name and no admins.
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
const TAG_VANISH: u8 = 5;
const TAG_DM: u8 = 6;
const MAX_FIELD: usize = 1 << 20;

/// The shortest disappearing-message timer.
pub const MIN_TIMER_SECS: u32 = 30;
/// The longest disappearing-message timer (4 weeks).
pub const MAX_TIMER_SECS: u32 = 28 * 24 * 3600;
/// In vanish mode, how long a message lives at most where nobody can see whether it was read: on
/// the server, and on the sender's devices when no read receipt comes back.
pub const VANISH_BOUND_SECS: u32 = 7 * 24 * 3600;

/// When a disappearing message's clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerMode {
    /// When it is sent (WhatsApp): the same moment on every device.
    AfterSend,
    /// When a device shows it (Signal); the sender's own copies count from sending.
    AfterRead,
}

/// A conversation's disappearing-message timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timer {
    secs: u32,
    mode: TimerMode,
}

impl Timer {
    /// A timer of `secs` seconds ([`MIN_TIMER_SECS`] to [`MAX_TIMER_SECS`]).
    pub fn new(secs: u32, mode: TimerMode) -> Result<Self, CodecError> {
        if !(MIN_TIMER_SECS..=MAX_TIMER_SECS).contains(&secs) {
            return Err(CodecError::Invalid("timer out of range"));
        }
        Ok(Self { secs, mode })
    }

    /// Its length in seconds.
    pub fn secs(&self) -> u32 {
        self.secs
    }

    /// When its clock starts.
    pub fn mode(&self) -> TimerMode {
        self.mode
    }
}

/// What a conversation's members agree on about keeping messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Settings {
    /// The disappearing-message timer, if any.
    pub timer: Option<Timer>,
    /// Vanish mode (DMs only): a message goes once it was read and the reader left the
    /// conversation.
    pub vanish: bool,
}

impl Settings {
    /// How long the server keeps a message of this conversation at most: the timer from sending
    /// (it cannot see reads), or in vanish mode [`VANISH_BOUND_SECS`]; `None`: until retention.
    pub fn server_bound_secs(&self) -> Option<u32> {
        let vanish = self.vanish.then_some(VANISH_BOUND_SECS);
        match (self.timer.map(|t| t.secs), vanish) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What all members of a group agree on besides membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// Display name (empty in a DM's form).
    pub name: String,
    /// Accounts allowed to change membership and metadata; sorted, no duplicates, never empty in a
    /// group, empty in a DM's form (either member changes a DM's settings).
    pub admins: Vec<Username>,
    /// The disappearing timer and vanish mode.
    pub settings: Settings,
    /// The DM form: settings only.
    dm: bool,
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
            settings: Settings::default(),
            dm: false,
            own_devices_of: None,
            unknown: Vec::new(),
        })
    }

    /// A DM's metadata: only its settings.
    pub fn dm(settings: Settings) -> Self {
        Self {
            name: String::new(),
            admins: Vec::new(),
            settings,
            dm: true,
            own_devices_of: None,
            unknown: Vec::new(),
        }
    }

    /// Whether this is a DM's form.
    pub fn is_dm(&self) -> bool {
        self.dm
    }

    /// The same metadata with other settings (vanish mode is refused outside a DM, and any
    /// setting in an own-devices group).
    pub fn with_settings(&self, settings: Settings) -> Result<Self, CodecError> {
        let out = Self {
            settings,
            ..self.clone()
        };
        out.check_settings()?;
        Ok(out)
    }

    fn check_settings(&self) -> Result<(), CodecError> {
        if self.settings.vanish && !self.dm {
            return Err(CodecError::Invalid("vanish mode is for DMs"));
        }
        if self.own_devices_of.is_some() && self.settings != Settings::default() {
            return Err(CodecError::Invalid("an own-devices group has no timer"));
        }
        Ok(())
    }

    /// Metadata for the group of `account`'s own devices.
    pub fn own_devices(account: Username) -> Self {
        Self {
            name: "own devices".to_owned(),
            admins: vec![account.clone()],
            settings: Settings::default(),
            dm: false,
            own_devices_of: Some(account),
            unknown: Vec::new(),
        }
    }

    /// The same metadata renamed (not a DM's).
    pub fn renamed(&self, name: &str) -> Result<Self, CodecError> {
        check_name(name)?;
        if self.dm {
            return Err(CodecError::Invalid("a DM has no name"));
        }
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
        if self.dm {
            field(TAG_DM, &[]);
        } else {
            field(TAG_NAME, self.name.as_bytes());
            let mut admins = Vec::new();
            for a in &self.admins {
                put_bytes(&mut admins, a.as_str().as_bytes());
            }
            field(TAG_ADMINS, &admins);
        }
        if let Some(t) = self.settings.timer {
            let mut v = t.secs.to_be_bytes().to_vec();
            v.push(match t.mode {
                TimerMode::AfterSend => 0,
                TimerMode::AfterRead => 1,
            });
            field(TAG_DISAPPEAR, &v);
        }
        if self.settings.vanish {
            field(TAG_VANISH, &[]);
        }
        if let Some(a) = &self.own_devices_of {
            field(TAG_OWN_DEVICES, a.as_str().as_bytes());
        }
        for (tag, value) in &self.unknown {
            field(*tag, value);
        }
        out
    }

    /// Parses and validates metadata: a known version, each field at most once, and either a
    /// group's (a valid name, at least one admin, admins sorted without duplicates) or a DM's (no
    /// name, no admins); a timer in range, vanish mode only in a DM, no setting in an own-devices
    /// group.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes);
        let v = r.u8()?;
        if v != VERSION {
            return Err(CodecError::UnsupportedVersion(v));
        }
        let (mut name, mut admins, mut timer, mut own) = (None, None, None, None);
        let (mut vanish, mut dm) = (false, false);
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
                    let [a, b, c, d, mode]: [u8; 5] =
                        value.try_into().map_err(|_| CodecError::Invalid("timer"))?;
                    let mode = match mode {
                        0 => TimerMode::AfterSend,
                        1 => TimerMode::AfterRead,
                        _ => return Err(CodecError::Invalid("timer mode")),
                    };
                    timer = Some(Timer::new(u32::from_be_bytes([a, b, c, d]), mode)?);
                }
                TAG_VANISH | TAG_DM => {
                    if !value.is_empty() {
                        return Err(CodecError::Invalid("flag with a value"));
                    }
                    if tag == TAG_VANISH {
                        vanish = true;
                    } else {
                        dm = true;
                    }
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
        let settings = Settings { timer, vanish };
        let out = if dm {
            if name.is_some() || admins.is_some() || own.is_some() {
                return Err(CodecError::Invalid("a DM's metadata holds only settings"));
            }
            Self {
                unknown,
                ..Self::dm(settings)
            }
        } else {
            let name = name.ok_or(CodecError::Invalid("missing group name"))?;
            let admins = admins.ok_or(CodecError::Invalid("missing admins"))?;
            if admins.is_empty() {
                return Err(CodecError::Invalid("a group needs an admin"));
            }
            Self {
                name,
                admins,
                settings,
                dm: false,
                own_devices_of: own,
                unknown,
            }
        };
        out.check_settings()?;
        Ok(out)
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
/// own account's devices) or metadata (its settings included), and the group always keeps an
/// admin who is a member; in a DM only the two accounts' devices are ever added, and either
/// account changes the settings, which are all its metadata holds. Returns the metadata in force
/// after the commit.
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
            if metadata_before.is_some_and(|m| !m.is_dm()) {
                return Err("a DM carries a group's metadata".into());
            }
            let after = match &change.new_metadata {
                None => metadata_before.cloned(),
                Some(Ok(m)) if m.is_dm() => Some(m.clone()),
                Some(Ok(_)) => return Err("a DM's metadata holds only its settings".into()),
                Some(Err(e)) => return Err(format!("new DM settings are malformed: {e}")),
            };
            if let Some(a) = change.added.iter().find(|a| !pair.contains(a)) {
                return Err(format!("a DM cannot add {a}"));
            }
            for r in &change.removed {
                if account_of(*r) != Some(change.sender) {
                    return Err("in a DM a device can only remove its own account's devices".into());
                }
            }
            Ok(after)
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
            if before.is_dm() {
                return Err("a group carries a DM's metadata".into());
            }
            if let Some(Ok(m)) = &change.new_metadata {
                if m.is_dm() {
                    return Err("a group's metadata cannot become a DM's".into());
                }
                if m.own_devices_of != before.own_devices_of {
                    return Err("a group cannot become or stop being an own-devices group".into());
                }
            }
            let admin = before.is_admin(change.sender);
            if !admin {
                if change.new_metadata.is_some() {
                    return Err(format!(
                        "{} is not an admin: only admins change the group's name, admins or timer",
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
    fn settings_round_trip_and_are_checked() {
        let t = |secs, mode| Timer::new(secs, mode);
        assert!(t(29, TimerMode::AfterSend).is_err());
        assert!(t(MAX_TIMER_SECS + 1, TimerMode::AfterSend).is_err());
        let hour = Settings {
            timer: Some(t(3600, TimerMode::AfterRead).unwrap()),
            vanish: false,
        };
        let g = GroupMetadata::new("g", u("alice"))
            .unwrap()
            .with_settings(hour)
            .unwrap();
        assert_eq!(GroupMetadata::decode(&g.encode()).unwrap(), g);
        assert_eq!(hour.server_bound_secs(), Some(3600));
        let vanish = Settings {
            timer: None,
            vanish: true,
        };
        assert_eq!(vanish.server_bound_secs(), Some(VANISH_BOUND_SECS));
        assert_eq!(Settings::default().server_bound_secs(), None);
        let dm = GroupMetadata::dm(vanish);
        let back = GroupMetadata::decode(&dm.encode()).unwrap();
        assert!(back.is_dm());
        assert_eq!(back, dm);
        assert!(dm.renamed("x").is_err());
        // Refused on decoding: vanish in a group, a timer out of range or in an own-devices
        // group, a DM form with a name.
        let mut bytes = GroupMetadata::new("g", u("alice")).unwrap().encode();
        bytes.push(TAG_VANISH);
        put_bytes(&mut bytes, &[]);
        assert!(GroupMetadata::decode(&bytes).is_err());
        let mut bytes = GroupMetadata::dm(Settings::default()).encode();
        bytes.push(TAG_DISAPPEAR);
        put_bytes(&mut bytes, &[0, 0, 0, 5, 0]);
        assert!(GroupMetadata::decode(&bytes).is_err());
        let mut bytes = GroupMetadata::dm(Settings::default()).encode();
        bytes.push(TAG_NAME);
        put_bytes(&mut bytes, b"x");
        assert!(GroupMetadata::decode(&bytes).is_err());
        assert!(GroupMetadata::own_devices(u("alice"))
            .with_settings(hour)
            .is_err());
    }

    #[test]
    fn either_dm_member_changes_its_settings_and_nothing_else() {
        let leaves = vec![
            Leaf {
                index: 0,
                account: u("alice"),
            },
            Leaf {
                index: 1,
                account: u("bob"),
            },
        ];
        let dm = Kind::Dm([u("alice"), u("bob")]);
        let vanish = GroupMetadata::dm(Settings {
            timer: None,
            vanish: true,
        });
        for who in ["alice", "bob"] {
            let sender = u(who);
            let c = Change {
                sender: &sender,
                added: vec![],
                removed: vec![],
                new_metadata: Some(Ok(vanish.clone())),
                foreign_proposals: false,
            };
            assert_eq!(
                check_change(&dm, &leaves, None, &c),
                Ok(Some(vanish.clone()))
            );
            // Without a change, the settings stay.
            let keep = Change {
                new_metadata: None,
                ..c.clone()
            };
            assert_eq!(
                check_change(&dm, &leaves, Some(&vanish), &keep),
                Ok(Some(vanish.clone()))
            );
            // A group's metadata in a DM: refused.
            let group = Change {
                new_metadata: Some(Ok(GroupMetadata::new("g", sender.clone()).unwrap())),
                ..c.clone()
            };
            assert!(check_change(&dm, &leaves, None, &group).is_err());
            let bad = Change {
                new_metadata: Some(Err(CodecError::Invalid("x"))),
                ..c
            };
            assert!(check_change(&dm, &leaves, None, &bad).is_err());
        }
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
