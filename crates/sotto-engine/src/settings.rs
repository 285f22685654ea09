//! Account settings, synced to the account's own devices.
//!
//! An account's devices share a group of their own (its metadata names the account:
//! [`GroupMetadata::own_devices`]), created by the first device that changes a setting. The
//! server and every member hold it to its rule: only that account's devices are ever in it. A
//! change is an application message there ([`Body::Settings`]), stored as a record of kind
//! `settings` like any other, so one that cannot go out now is sent by the next sync.
//!
//! What a device uses is folded from those records ([`recompute`]): for each setting, the last
//! value in log order, with this device's own unsent changes last. The device that adds a new
//! device to the group sends every setting again right after, since the new device cannot read
//! what was sent before it joined.
//!
//! A settings record from another account, or outside an own-devices group, is refused.

use std::collections::BTreeMap;

use sotto_proto::group::GroupMetadata;
use sotto_proto::{Body, SettingValue};

use crate::receipts::READ_RECEIPTS_SETTING;
use crate::store::{ContentKind, ConversationKind, ConversationStatus, MessageRecord, Tx};
use crate::{Engine, Error, Flow, SyncReport, Task};

/// The name of the read-receipts setting on the wire.
pub const READ_RECEIPTS: &str = "read_receipts";

/// The name of the default disappearing timer for new conversations on the wire (seconds
/// after sending, 0: none).
pub const DEFAULT_TIMER: &str = "default_timer";
/// Where this device keeps it (8 bytes, big-endian seconds).
pub(crate) const DEFAULT_TIMER_SETTING: &str = "default_timer";

/// The settings this version knows, as (wire name, this device's setting key).
const KNOWN: &[(&str, &str)] = &[
    (READ_RECEIPTS, READ_RECEIPTS_SETTING),
    (DEFAULT_TIMER, DEFAULT_TIMER_SETTING),
];

/// A stored settings record's text.
pub(crate) fn to_json(settings: &[(String, SettingValue)]) -> String {
    let list: Vec<(&str, serde_json::Value)> = settings
        .iter()
        .map(|(n, v)| {
            let v = match v {
                SettingValue::Bool(b) => serde_json::Value::Bool(*b),
                SettingValue::Uint(n) => serde_json::Value::from(*n),
            };
            (n.as_str(), v)
        })
        .collect();
    serde_json::to_string(&list).unwrap_or_default()
}

/// The settings of a stored record's text (the inverse of [`to_json`]).
pub(crate) fn from_json(text: &str) -> Option<Vec<(String, SettingValue)>> {
    let list: Vec<(String, serde_json::Value)> = serde_json::from_str(text).ok()?;
    list.into_iter()
        .map(|(n, v)| {
            let v = match v {
                serde_json::Value::Bool(b) => SettingValue::Bool(b),
                v => SettingValue::Uint(v.as_u64()?),
            };
            Some((n, v))
        })
        .collect()
}

/// A switch stored on this device: on unless stored `off`.
pub(crate) fn switch_on(tx: &dyn Tx, key: &str) -> Result<bool, Error> {
    Ok(tx.setting(key)?.as_deref() != Some(b"off"))
}

/// Stores a known setting's value on this device; others are passed over.
fn set_local(tx: &dyn Tx, name: &str, value: SettingValue) -> Result<(), Error> {
    let Some((_, key)) = KNOWN.iter().find(|(n, _)| *n == name) else {
        return Ok(());
    };
    match value {
        SettingValue::Bool(on) if *key != DEFAULT_TIMER_SETTING => {
            tx.set_setting(key, if on { b"on" } else { b"off" })?
        }
        SettingValue::Bool(_) => {} // a number is expected
        SettingValue::Uint(n) => tx.set_setting(key, &n.to_be_bytes())?,
    }
    Ok(())
}

/// Why an incoming settings record is refused, if it is.
pub(crate) fn check_incoming(tx: &dyn Tx, rec: &MessageRecord) -> Result<Option<String>, Error> {
    let own = tx
        .conversation(&rec.conversation)?
        .is_some_and(|c| c.kind == ConversationKind::Own);
    if !own {
        return Ok(Some(
            "account settings outside the account's own-devices group".into(),
        ));
    }
    if !rec.outgoing {
        return Ok(Some(format!(
            "account settings from another account ({})",
            rec.sender
        )));
    }
    Ok(None)
}

/// Sets this device's account settings from the settings records of its own-devices groups: for
/// each setting, the last value in log order (unsent ones last).
pub(crate) fn recompute(tx: &dyn Tx) -> Result<(), Error> {
    let mut latest: BTreeMap<String, SettingValue> = BTreeMap::new();
    let mut own: Vec<String> = tx
        .conversations()?
        .into_iter()
        .filter(|c| c.kind == ConversationKind::Own)
        .map(|c| c.id)
        .collect();
    own.sort();
    for id in own {
        // `messages` lists in log order, unsent ones last.
        for m in tx.messages(&id)? {
            if m.kind != ContentKind::Settings {
                continue;
            }
            for (name, value) in m.text.as_deref().and_then(from_json).unwrap_or_default() {
                latest.insert(name, value);
            }
        }
    }
    for (name, value) in latest {
        set_local(tx, &name, value)?;
    }
    Ok(())
}

impl Engine {
    /// Turns read receipts on or off for the account: on this device at once, and on its other
    /// devices through the account's own-devices group (created on first use).
    pub fn set_read_receipts(&self, on: bool) -> Task<SyncReport> {
        self.task(move |f| async move {
            f.change_settings(vec![(READ_RECEIPTS.to_owned(), SettingValue::Bool(on))])
                .await
        })
    }
}

/// The account's default timer as stored on this device (seconds, 0: none).
pub(crate) fn stored_default_timer(tx: &dyn Tx) -> Result<u32, Error> {
    Ok(tx
        .setting(DEFAULT_TIMER_SETTING)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0))
}

impl Engine {
    /// Sets the account's default disappearing timer for new conversations (`None`: none), on
    /// this device at once and on its other devices through the own-devices group.
    pub fn set_default_timer(&self, secs: Option<u32>) -> Task<SyncReport> {
        self.task(move |f| async move {
            if let Some(s) = secs {
                sotto_proto::group::Timer::new(s, sotto_proto::group::TimerMode::AfterSend)
                    .map_err(|_| crate::expiry::out_of_range())?;
            }
            let n = u64::from(secs.unwrap_or(0));
            f.change_settings(vec![(DEFAULT_TIMER.to_owned(), SettingValue::Uint(n))])
                .await
        })
    }

    /// The account's default timer for new conversations, as this device knows it.
    pub fn default_timer(&self) -> Result<Option<u32>, Error> {
        Ok(self.local().default_timer()?.map(|t| t.secs()))
    }
}

impl Flow {
    /// The account's default timer for new conversations (after sending), if set.
    pub(crate) fn default_timer(&self) -> Result<Option<sotto_proto::group::Timer>, Error> {
        let secs = self.read(|tx, _| stored_default_timer(tx))?;
        Ok(sotto_proto::group::Timer::new(secs, sotto_proto::group::TimerMode::AfterSend).ok())
    }

    /// The own-devices groups this device is in.
    pub(crate) fn own_groups(&self) -> Result<Vec<String>, Error> {
        self.read(|tx, _| {
            let mut v: Vec<String> = tx
                .conversations()?
                .into_iter()
                .filter(|c| c.kind == ConversationKind::Own && c.status == ConversationStatus::Ok)
                .map(|c| c.id)
                .collect();
            v.sort();
            Ok(v)
        })
    }

    /// Whether conversation `id` is an own-devices group.
    pub(crate) fn is_own_group(&self, id: &str) -> Result<bool, Error> {
        self.read(|tx, _| {
            Ok(tx
                .conversation(id)?
                .is_some_and(|c| c.kind == ConversationKind::Own))
        })
    }

    /// Sends setting changes to every own-devices group of this account (two devices may each
    /// have created one before they knew of each other), creating one if there is none.
    async fn change_settings(
        &self,
        settings: Vec<(String, SettingValue)>,
    ) -> Result<SyncReport, Error> {
        let mut report = self.sync().await?;
        let mut groups = self.own_groups()?;
        if groups.is_empty() {
            let me = self.me()?;
            let meta = GroupMetadata::own_devices(me.username.clone());
            let (id, r) = self
                .create_group_with(meta, &[], usize::MAX, ConversationKind::Own)
                .await?;
            report.extend(r);
            groups.push(id);
        }
        for id in groups {
            self.send_settings(&id, settings.clone(), &mut report)
                .await?;
        }
        Ok(report)
    }

    /// Sends every known setting's value on this device to own-devices group `id` (for a device
    /// just added, which cannot read what was sent before). Catches up on the group first, so as
    /// not to send back a value another device has just changed.
    pub(crate) async fn send_all_settings(
        &self,
        id: &str,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        self.sync_conversation(id, None, report).await?;
        let settings = self.read(|tx, _| {
            KNOWN
                .iter()
                .map(|(name, key)| {
                    let value = if *key == DEFAULT_TIMER_SETTING {
                        SettingValue::Uint(u64::from(stored_default_timer(tx)?))
                    } else {
                        SettingValue::Bool(switch_on(tx, key)?)
                    };
                    Ok(((*name).to_owned(), value))
                })
                .collect::<Result<Vec<_>, Error>>()
        })?;
        self.send_settings(id, settings, report).await
    }

    async fn send_settings(
        &self,
        id: &str,
        settings: Vec<(String, SettingValue)>,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let content = self.compose(id, Body::Settings { settings }).await?;
        match self.post_message(id, &content, report).await {
            Ok(_) | Err(Error::Queued { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
