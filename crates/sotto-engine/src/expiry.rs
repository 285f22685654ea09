//! Disappearing messages and vanish mode on a device.
//!
//! A conversation's settings live in its MLS group context (see `sotto_proto::group::Settings`),
//! so every member applies the same ones at the same epoch. The server accepts a message only in
//! the current epoch and a device applies the log in order, so the settings in this device's group
//! state when it stores a message are those the message was sent under; a timer change racing a
//! message cannot make two devices disagree about it.
//!
//! Each stored record gets its time here ([`stamp`]): after-send counts from the server's
//! acceptance time (the same instant on every device and on the server); after-read starts the
//! clock when this device shows the message ([`start_clocks`]), and the sender's own copies
//! count from sending. Vanish mode marks messages to go once read and the user leaves the
//! conversation: a receiving device's copy once it showed it or the reader's read receipt came
//! (from another of the reader's devices), the sender's copies once that receipt came; every
//! copy after [`VANISH_BOUND_SECS`] at the latest. [`purge`] deletes what is due, with everything of it: its
//! text, the reactions, edits and unsends on it, its receipts and its file record; the shell
//! deletes the downloaded file, which the same transaction lists as still to delete
//! ([`crate::Engine::files_to_delete`]) until the shell says it is gone.

use serde::Serialize;
use sotto_proto::group::VANISH_BOUND_SECS;
pub use sotto_proto::group::{Settings, TimerMode};

use crate::store::{ContentKind, MessageRecord, Tx};
use crate::Error;

/// A message this device deleted because its time was up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expired {
    /// The message id.
    pub id: String,
    /// Its conversation.
    pub conversation: String,
    /// Whether the user had been shown it (a shell tells the user it went).
    pub shown: bool,
    /// A file this device had saved for it, which the shell deletes too.
    #[serde(skip)]
    pub file: Option<String>,
}

/// Sets when `rec` goes under `settings`, `accepted_at` being the server's acceptance time.
/// Records of a timer change never expire; nor does anything outside a timed conversation.
pub(crate) fn stamp(rec: &mut MessageRecord, settings: &Settings, accepted_at: u64) {
    rec.expires_at = None;
    rec.after_shown = None;
    if matches!(rec.kind, ContentKind::Timer | ContentKind::Settings) {
        return;
    }
    let shown_by_reader = !rec.outgoing && rec.kind.is_message();
    if let Some(t) = settings.timer {
        match t.mode() {
            TimerMode::AfterRead if shown_by_reader => rec.after_shown = Some(t.secs()),
            _ => rec.expires_at = Some(accepted_at.saturating_add(u64::from(t.secs()))),
        }
    }
    if settings.vanish {
        let bound = accepted_at.saturating_add(u64::from(VANISH_BOUND_SECS));
        rec.expires_at = Some(rec.expires_at.map_or(bound, |at| at.min(bound)));
        if rec.kind.is_message() {
            rec.after_shown = Some(0);
        }
    }
}

/// How a conversation's settings read in its history: `timer set to 1 h`, `timer off`, with
/// vanish mode.
pub fn describe(settings: &Settings) -> String {
    let timer = match settings.timer {
        None => "timer off".to_owned(),
        Some(t) => format!(
            "timer set to {}{}",
            format_duration(t.secs()),
            match t.mode() {
                TimerMode::AfterSend => "",
                TimerMode::AfterRead => " after reading",
            }
        ),
    };
    if settings.vanish {
        format!("vanish mode on, {timer}")
    } else {
        timer
    }
}

/// A duration as people say it: `30 s`, `5 min`, `1 h`, `1 d 12 h`, `4 w`.
pub fn format_duration(secs: u32) -> String {
    const UNITS: [(u32, &str); 5] = [
        (7 * 86_400, "w"),
        (86_400, "d"),
        (3600, "h"),
        (60, "min"),
        (1, "s"),
    ];
    let mut left = secs;
    let mut parts = Vec::new();
    for (size, name) in UNITS {
        if left >= size {
            parts.push(format!("{} {name}", left / size));
            left %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    if parts.is_empty() {
        "0 s".into()
    } else {
        parts.join(" ")
    }
}

/// The timers a client offers first (any duration from 30 s to 4 weeks is valid), as
/// [`parse_duration`] reads them: the common choices of the messengers people know.
pub const TIMER_PRESETS: &[&str] = &["30s", "5m", "1h", "8h", "1d", "1w", "4w"];

/// Reads `30`, `30s`, `5m`, `1h`, `2d`, `1w` (seconds, minutes, hours, days, weeks).
pub fn parse_duration(s: &str) -> Option<u32> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u32 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// How many settings changes a conversation remembers by epoch: enough for every epoch whose
/// messages can still be decrypted.
const EPOCHS_KEPT: usize = 8;

fn epochs_key(conversation: &str) -> String {
    format!("expiry_epochs/{conversation}")
}

/// Settings as this device keeps them by epoch: (timer seconds, after read), vanish.
type Stored = (Option<(u32, bool)>, bool);

fn to_stored(s: &Settings) -> Stored {
    (
        s.timer
            .map(|t| (t.secs(), t.mode() == TimerMode::AfterRead)),
        s.vanish,
    )
}

fn from_stored((timer, vanish): Stored) -> Settings {
    Settings {
        timer: timer.and_then(|(secs, read)| {
            let mode = if read {
                TimerMode::AfterRead
            } else {
                TimerMode::AfterSend
            };
            sotto_proto::group::Timer::new(secs, mode).ok()
        }),
        vanish,
    }
}

/// The settings a message of `epoch` was sent under. The server accepts messages only in the
/// current epoch, but a device may decrypt one after it applied the next commit (its own, merged
/// on acceptance): then the settings before that commit's change apply, not `current`.
pub(crate) fn settings_at(
    tx: &dyn Tx,
    conversation: &str,
    epoch: u64,
    current: Settings,
) -> Result<Settings, Error> {
    let Some(bytes) = tx.setting(&epochs_key(conversation))? else {
        return Ok(current);
    };
    let changes: Vec<(u64, Stored, Stored)> = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut at = changes.first().map(|c| from_stored(c.1)).unwrap_or(current);
    for (from, _, after) in &changes {
        if *from <= epoch {
            at = from_stored(*after);
        }
    }
    Ok(if changes.is_empty() { current } else { at })
}

/// Records a change of a conversation's settings in force from `epoch`: in its history, as a
/// message from `who` at the commit's place in the log, and by epoch for [`settings_at`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn note_change(
    tx: &dyn Tx,
    conversation: &str,
    epoch: u64,
    before: &Settings,
    after: &Settings,
    who: &str,
    seq: Option<u64>,
    accepted_at: u64,
) -> Result<(), Error> {
    if before == after {
        return Ok(());
    }
    let key = epochs_key(conversation);
    let mut changes: Vec<(u64, Stored, Stored)> = tx
        .setting(&key)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    changes.push((epoch, to_stored(before), to_stored(after)));
    if changes.len() > EPOCHS_KEPT {
        changes.drain(..changes.len() - EPOCHS_KEPT);
    }
    tx.set_setting(
        &key,
        &serde_json::to_vec(&changes).map_err(|e| Error::Storage(e.to_string()))?,
    )?;
    let id: [u8; 32] = rand::random();
    let rec = MessageRecord {
        conversation: conversation.to_owned(),
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        seq,
        sender: who.to_owned(),
        sender_device: String::new(),
        sent_at_ms: accepted_at.saturating_mul(1000),
        kind: ContentKind::Timer,
        text: Some(format!("{} by {who}", describe(after))),
        reply_to: None,
        target: None,
        salt: None,
        outgoing: false,
        shown: false,
        local_order: 0,
        accepted_at,
        attachment: None,
        expires_at: None,
        after_shown: None,
    };
    tx.insert_message(&rec)?;
    Ok(())
}

/// Starts the clocks of after-read messages that have been shown: they expire `after_shown`
/// seconds from `now`.
pub(crate) fn start_clocks(tx: &dyn Tx, now: u64) -> Result<(), Error> {
    for m in tx.after_shown_messages()? {
        match m.after_shown {
            Some(secs) if secs > 0 && m.shown => {
                let at = now.saturating_add(u64::from(secs));
                let at = m.expires_at.map_or(at, |e| e.min(at));
                tx.set_expiry(&m.conversation, &m.id, Some(at), None)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Deletes every record whose time is up at `now`, and, when the user is `leaving` the
/// conversations (the end of the command or the view that showed them), the vanish-mode messages
/// that went through: shown here, or for the sender's own, read by the peer.
pub(crate) fn purge(tx: &dyn Tx, now: u64, leaving: bool) -> Result<Vec<Expired>, Error> {
    start_clocks(tx, now)?;
    let mut due = tx.expired_messages(now)?;
    if leaving {
        for m in tx.after_shown_messages()? {
            if m.after_shown != Some(0) {
                continue;
            }
            // Vanish mode is for DMs: the account that did not send it is the reader. Its read
            // receipt, from whichever of its devices, lets every copy go; a receiving device
            // that showed it lets its own go.
            let read = tx
                .receipts(&m.conversation, &m.id)?
                .iter()
                .any(|(u, s)| *u != m.sender && *s >= sotto_proto::mimi::status::READ);
            let through = read || (!m.outgoing && m.shown);
            if through {
                due.push(m);
            }
        }
    }
    let mut out = Vec::new();
    for m in due {
        if tx.message(&m.conversation, &m.id)?.is_none() {
            continue; // went with the message it acted on
        }
        wipe(tx, &m)?;
        if m.kind.is_message() {
            out.push(Expired {
                id: m.id.clone(),
                conversation: m.conversation.clone(),
                shown: m.shown,
                file: m.attachment.as_ref().and_then(|a| a.downloaded.clone()),
            });
        }
    }
    // The saved files are the shell's to delete, after this commits. Their paths are written
    // down in the same transaction, so a shell killed before it deleted them finds them at its
    // next purge (the record that named them is gone by then).
    let files: Vec<String> = out.iter().filter_map(|e| e.file.clone()).collect();
    if !files.is_empty() {
        let mut pending = pending_files(tx)?;
        pending.extend(files);
        set_pending_files(tx, &pending)?;
    }
    Ok(out)
}

/// The setting that lists saved files of deleted messages not yet deleted by the shell.
const PENDING_FILES: &str = "expiry.pending_files";

fn pending_files(tx: &dyn Tx) -> Result<Vec<String>, Error> {
    match tx.setting(PENDING_FILES)? {
        None => Ok(Vec::new()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Storage(format!("pending file deletions: {e}"))),
    }
}

fn set_pending_files(tx: &dyn Tx, files: &[String]) -> Result<(), Error> {
    if files.is_empty() {
        tx.delete_setting(PENDING_FILES)?;
        return Ok(());
    }
    let bytes = serde_json::to_vec(files)
        .map_err(|e| Error::Storage(format!("pending file deletions: {e}")))?;
    tx.set_setting(PENDING_FILES, &bytes)?;
    Ok(())
}

/// Deletes a record with the actions on it and its receipts.
fn wipe(tx: &dyn Tx, m: &MessageRecord) -> Result<(), Error> {
    for a in tx.messages_targeting(&m.conversation, &m.id)? {
        tx.delete_receipts(&a.conversation, &a.id)?;
        tx.delete_message(&a.conversation, &a.id)?;
    }
    tx.delete_receipts(&m.conversation, &m.id)?;
    tx.set_attachment(&m.conversation, &m.id, None)?;
    tx.set_message_text(&m.conversation, &m.id, None)?;
    tx.delete_message(&m.conversation, &m.id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_parse() {
        assert_eq!(format_duration(30), "30 s");
        assert_eq!(format_duration(3600), "1 h");
        assert_eq!(format_duration(90_000), "1 d 1 h");
        assert_eq!(format_duration(28 * 86_400), "4 w");
        assert_eq!(parse_duration("1h"), Some(3600));
        assert_eq!(parse_duration("30s"), Some(30));
        assert_eq!(parse_duration("2d"), Some(172_800));
        assert_eq!(parse_duration("45"), Some(45));
        assert_eq!(parse_duration("1y"), None);
        // Every preset is a valid timer, and they go up.
        let presets: Vec<u32> = TIMER_PRESETS
            .iter()
            .map(|p| parse_duration(p).unwrap())
            .collect();
        assert!(presets.windows(2).all(|w| w[0] < w[1]));
        for p in presets {
            sotto_proto::group::Timer::new(p, TimerMode::AfterSend).unwrap();
        }
        assert_eq!(format_duration(parse_duration("4w").unwrap()), "4 w");
        assert_eq!(parse_duration("h"), None);
    }
}

pub(crate) fn out_of_range() -> Error {
    Error::Invalid(format!(
        "a timer is {} to {}",
        format_duration(sotto_proto::group::MIN_TIMER_SECS),
        format_duration(sotto_proto::group::MAX_TIMER_SECS)
    ))
}

/// Which conversation a settings change is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The DM with this account (created if there is none yet).
    Dm(String),
    /// A group, by id or unique name.
    Group(String),
}

impl crate::Engine {
    /// Sets (`Some`) or turns off a conversation's disappearing timer, for every member: a
    /// commit. In a DM either account may; in a group only admins.
    pub fn set_timer(
        &self,
        target: Target,
        timer: Option<(u32, TimerMode)>,
    ) -> crate::Task<crate::SyncReport> {
        self.task(move |f| async move {
            let timer = timer
                .map(|(secs, mode)| sotto_proto::group::Timer::new(secs, mode))
                .transpose()
                .map_err(|_| out_of_range())?;
            f.change_conversation_settings(target, move |s| Settings { timer, ..s })
                .await
        })
    }

    /// Turns vanish mode on or off in the DM with `peer`.
    pub fn set_vanish(&self, peer: &str, on: bool) -> crate::Task<crate::SyncReport> {
        let peer = peer.to_owned();
        self.task(move |f| async move {
            f.change_conversation_settings(Target::Dm(peer), move |s| Settings { vanish: on, ..s })
                .await
        })
    }

    /// The settings in force in a conversation, as this device's group state has them.
    pub fn conversation_settings(&self, conversation: &str) -> Result<Settings, Error> {
        let gid = crate::group_id_bytes(conversation)?;
        self.local().read(|_, p| {
            Ok(sotto_proto::mls::Conversation::load(p, &gid)?
                .map(|g| g.settings())
                .unwrap_or_default())
        })
    }

    /// Deletes what has expired at `now` (Unix seconds) and starts the clocks of after-read
    /// messages shown since; with `leaving`, also the vanish-mode messages that went through.
    /// Returns the messages that went (the shell deletes their saved files). Run it before
    /// showing anything, whenever a message's time may be up, and when the user leaves a
    /// conversation.
    pub fn purge_expired(&self, now: u64, leaving: bool) -> Result<Vec<Expired>, Error> {
        self.local().with_tx(|tx, _| purge(tx, now, leaving))
    }

    /// The saved files of deleted messages that the shell has not yet reported deleted (with
    /// [`crate::Engine::files_deleted`]): those of the last purge, and of any purge whose shell
    /// stopped before it deleted them. A shell deletes each (a missing one counts as deleted).
    pub fn files_to_delete(&self) -> Result<Vec<String>, Error> {
        self.local().read(|tx, _| pending_files(tx))
    }

    /// The shell deleted these files (from [`crate::Engine::files_to_delete`]).
    pub fn files_deleted(&self, files: &[String]) -> Result<(), Error> {
        self.local().with_tx(|tx, _| {
            let left: Vec<String> = pending_files(tx)?
                .into_iter()
                .filter(|f| !files.contains(f))
                .collect();
            set_pending_files(tx, &left)
        })
    }

    /// When the next record of this device expires (Unix seconds), for a shell that wakes up
    /// to purge it.
    pub fn next_expiry(&self) -> Result<Option<u64>, Error> {
        self.local().read(|tx, _| {
            Ok(tx
                .expired_messages(u64::MAX)?
                .first()
                .and_then(|m| m.expires_at))
        })
    }

    /// Marks the messages of `conversation` shown, because a person has it on screen, and
    /// starts the clocks of its after-read messages at `now` (Unix seconds). For a shell that
    /// shows conversations rather than a stream (the web client), so that an after-read timer
    /// starts when the message can be read, not when it arrived.
    pub fn show_conversation(&self, conversation: &str, now: u64) -> Result<(), Error> {
        self.local().with_tx(|tx, _| {
            for m in tx.unshown_messages()? {
                if m.conversation == conversation && m.kind.is_message() {
                    tx.mark_shown(&m.conversation, &m.id)?;
                }
            }
            start_clocks(tx, now)
        })
    }

    /// [`crate::Engine::take_unshown`], starting the clocks of the after-read messages among
    /// them at `now`, so that what is returned shows when each goes.
    pub fn take_unshown_at(&self, now: u64) -> Result<Vec<crate::Message>, Error> {
        let mut msgs = self.take_unshown()?;
        self.local().with_tx(|tx, _| {
            start_clocks(tx, now)?;
            for m in &mut msgs {
                if let Some(rec) = tx.message(&m.conversation, &m.id)? {
                    m.expires_at = rec
                        .expires_at
                        .map(|s| crate::rfc3339_ms(s.saturating_mul(1000)));
                }
            }
            Ok(())
        })?;
        Ok(msgs)
    }
}

impl crate::Flow {
    async fn change_conversation_settings(
        &self,
        target: Target,
        change: impl Fn(Settings) -> Settings,
    ) -> Result<crate::SyncReport, Error> {
        let mut report = self.sync().await?;
        let (id, group) = match &target {
            Target::Dm(peer) => (self.ensure_dm(peer, &mut report).await?, false),
            Target::Group(g) => (self.resolve_group(g)?, true),
        };
        let me = self.me()?;
        self.change_group(&id, &mut report, |g| {
            let before = g.settings();
            let after = change(before);
            if after == before {
                return Ok(None);
            }
            let metadata = match (group, g.metadata()) {
                (true, Some(m)) => {
                    if !m.is_admin(&me.username) {
                        return Err(Error::Invalid(
                            "only the group's admins change its timer".into(),
                        ));
                    }
                    m.with_settings(after)
                }
                (false, None) => Ok(sotto_proto::group::GroupMetadata::dm(after)),
                _ => return Err(Error::Invalid("not a conversation of that kind".into())),
            }
            .map_err(|e| Error::Invalid(e.to_string()))?;
            Ok(Some(crate::commits::Plan {
                metadata: Some(metadata),
                ..crate::commits::Plan::default()
            }))
        })
        .await?;
        Ok(report)
    }

    /// Sets the account's default timer on a DM this device has just created.
    pub(crate) async fn apply_default_timer(
        &self,
        id: &str,
        report: &mut crate::SyncReport,
    ) -> Result<(), Error> {
        let Some(timer) = self.default_timer()? else {
            return Ok(());
        };
        self.change_group(id, report, |g| {
            if g.settings().timer.is_some() || g.metadata().is_some() {
                return Ok(None);
            }
            Ok(Some(crate::commits::Plan {
                metadata: Some(sotto_proto::group::GroupMetadata::dm(Settings {
                    timer: Some(timer),
                    ..g.settings()
                })),
                ..crate::commits::Plan::default()
            }))
        })
        .await
        .map(|_| ())
    }
}
