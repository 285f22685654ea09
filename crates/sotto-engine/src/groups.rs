//! Groups: creation, membership, admins, names, leaving and key updates. Every change is one
//! commit planned from the group's current state ([`crate::commits`]), which the server and every
//! member check against the group's rules (`sotto_proto::group::check_change`).

use sotto_api::*;
use sotto_proto::group::GroupMetadata;
use sotto_proto::mls::{Conversation, CLASSIC_CIPHERSUITE, DEFAULT_CIPHERSUITE};
use sotto_proto::Username;

use crate::commits::{removal_plan, Plan};
use crate::dm::check_text;
use crate::store::mls::Provider;
use crate::store::{ConversationKind, ConversationStatus};
use crate::{
    group_id_bytes, set_status, upsert_conversation, Engine, Error, Flow, GroupLine, Message,
    SyncReport, Task,
};

fn invalid_name() -> Error {
    Error::Invalid(format!(
        "invalid group name: 1 to {} bytes, no control characters",
        sotto_proto::group::MAX_NAME_BYTES
    ))
}

/// A group's line, from its local MLS state (`None` if this device holds none, or it is a DM).
pub(crate) fn group_line(provider: &Provider<'_>, id: String) -> Result<Option<GroupLine>, Error> {
    let Some(g) = Conversation::load(provider, &group_id_bytes(&id)?)? else {
        return Ok(None);
    };
    let Some(meta) = g.metadata() else {
        return Ok(None);
    };
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for m in g.members() {
        let u = m.cert.username.to_string();
        let d = m.cert.device_id.to_hex();
        match members.iter_mut().find(|(x, _)| *x == u) {
            Some((_, devs)) => devs.push(d),
            None => members.push((u, vec![d])),
        }
    }
    members.sort();
    Ok(Some(GroupLine {
        id,
        name: meta.name.clone(),
        admins: meta.admins.iter().map(|a| a.to_string()).collect(),
        members,
        post_quantum: g.ciphersuite() == DEFAULT_CIPHERSUITE,
        epoch: g.epoch(),
    }))
}

impl Engine {
    /// The groups this device is in, as it knows them (sync first to be current).
    pub fn groups(&self) -> Result<Vec<GroupLine>, Error> {
        self.local().groups()
    }

    /// One group, by id or unique name.
    pub fn group_info(&self, group: &str) -> Result<GroupLine, Error> {
        let f = self.local();
        let id = f.resolve_group(group)?;
        f.read(|_, p| group_line(p, id))?
            .ok_or_else(|| Error::Invalid(format!("no group {group}")))
    }

    /// Creates a group named `name` with the given accounts (all their devices) and this account's
    /// devices; this account is its admin. Returns the group id. The ciphersuite is the hybrid
    /// post-quantum one up to `pq_limit` devices, the classic one above.
    pub fn create_group(
        &self,
        name: &str,
        members: &[String],
        pq_limit: usize,
    ) -> Task<(String, SyncReport)> {
        let (name, members) = (name.to_owned(), members.to_vec());
        self.task(move |f| async move { f.create_group(&name, &members, pq_limit).await })
    }

    /// Adds accounts (all their devices) to a group. Needs an admin; the server and every member
    /// refuse it otherwise.
    pub fn group_add(&self, group: &str, users: &[String]) -> Task<SyncReport> {
        let (group, users) = (group.to_owned(), users.to_vec());
        self.task(move |f| async move {
            let mut report = f.sync().await?;
            let id = f.resolve_group(&group)?;
            let mut wanted = Vec::new();
            for u in &users {
                let user = Username::new(u).map_err(|e| Error::Invalid(e.to_string()))?;
                f.ensure_pinned(&[user.to_string()]).await?;
                wanted.push(user);
            }
            f.change_group(&id, &mut report, |g| {
                let present: Vec<Username> =
                    g.members().into_iter().map(|m| m.cert.username).collect();
                let add: Vec<String> = wanted
                    .iter()
                    .filter(|u| !present.contains(u))
                    .map(|u| u.to_string())
                    .collect();
                Ok((!add.is_empty()).then(|| Plan {
                    add_users: add,
                    ..Plan::default()
                }))
            })
            .await?;
            Ok(report)
        })
    }

    /// Removes accounts (all their devices) from a group; an admin removed is dropped from the
    /// admins in the same commit.
    pub fn group_remove(&self, group: &str, users: &[String]) -> Task<SyncReport> {
        let (group, users) = (group.to_owned(), users.to_vec());
        self.task(move |f| async move {
            let mut report = f.sync().await?;
            let id = f.resolve_group(&group)?;
            let me = f.me()?;
            let mut gone = Vec::new();
            for u in &users {
                let user = Username::new(u).map_err(|e| Error::Invalid(e.to_string()))?;
                if user == me.username {
                    return Err(Error::Invalid(
                        "to remove yourself, use `sotto group leave`".into(),
                    ));
                }
                gone.push(user);
            }
            let gid = group_id_bytes(&id)?;
            let missing: Vec<String> = f.read(|_, p| {
                let g = Conversation::load(p, &gid)?
                    .ok_or_else(|| Error::Invalid(format!("you are not a member of group {id}")))?;
                let present: Vec<Username> =
                    g.members().into_iter().map(|m| m.cert.username).collect();
                Ok(gone
                    .iter()
                    .filter(|u| !present.contains(u))
                    .map(|u| u.to_string())
                    .collect())
            })?;
            if !missing.is_empty() {
                return Err(Error::Invalid(format!(
                    "not a member of the group: {}",
                    missing.join(", ")
                )));
            }
            f.change_group(&id, &mut report, |g| Ok(removal_plan(g, &gone)))
                .await?;
            Ok(report)
        })
    }

    /// Leaves a group: this account stops being a member at once (on every device); an admin's
    /// device removes its devices from the MLS group on its next sync.
    pub fn group_leave(&self, group: &str) -> Task<()> {
        let group = group.to_owned();
        self.task(move |f| async move {
            f.sync().await?;
            let id = f.resolve_group(&group)?;
            let _: () = f
                .post(
                    &format!("/v1/conversations/{id}/leave"),
                    &serde_json::json!({}),
                )
                .await?;
            let gid = group_id_bytes(&id)?;
            f.with_tx(|tx, p| {
                if let Some(g) = Conversation::load(p, &gid)? {
                    g.delete(p)?;
                }
                set_status(tx, &id, ConversationStatus::Left, "you left this group")
            })
        })
    }

    /// Renames a group (admins only).
    pub fn group_rename(&self, group: &str, name: &str) -> Task<SyncReport> {
        let (group, name) = (group.to_owned(), name.to_owned());
        self.task(move |f| async move {
            let mut report = f.sync().await?;
            let id = f.resolve_group(&group)?;
            f.change_group(&id, &mut report, |g| {
                let m = g
                    .metadata()
                    .ok_or_else(|| Error::Invalid("not a group".into()))?;
                let renamed = m.renamed(&name).map_err(|_| invalid_name())?;
                Ok((renamed != m).then(|| Plan {
                    metadata: Some(renamed),
                    ..Plan::default()
                }))
            })
            .await?;
            Ok(report)
        })
    }

    /// Makes a member an admin (admins only).
    pub fn group_make_admin(&self, group: &str, user: &str) -> Task<SyncReport> {
        let (group, user) = (group.to_owned(), user.to_owned());
        self.task(move |f| async move {
            let mut report = f.sync().await?;
            let id = f.resolve_group(&group)?;
            let user = Username::new(&user).map_err(|e| Error::Invalid(e.to_string()))?;
            f.change_group(&id, &mut report, |g| {
                let m = g
                    .metadata()
                    .ok_or_else(|| Error::Invalid("not a group".into()))?;
                if !g.members().iter().any(|d| d.cert.username == user) {
                    return Err(Error::Invalid(format!(
                        "{user} is not a member of the group"
                    )));
                }
                Ok((!m.is_admin(&user)).then(|| Plan {
                    metadata: Some(m.with_admin(&user, true)),
                    ..Plan::default()
                }))
            })
            .await?;
            Ok(report)
        })
    }

    /// Refreshes this device's keys in a group (a self-update commit): whatever an attacker may
    /// have learned of its earlier keys stops opening later messages.
    pub fn group_update_keys(&self, group: &str) -> Task<SyncReport> {
        let group = group.to_owned();
        self.task(move |f| async move {
            let mut report = SyncReport::default();
            let id = f.resolve_group(&group)?;
            f.change_group(&id, &mut report, |_| {
                Ok(Some(Plan {
                    self_update: true,
                    ..Plan::default()
                }))
            })
            .await?;
            Ok(report)
        })
    }

    /// Sends a message to a group (after a sync).
    pub fn send_group(&self, group: &str, text: &str) -> Task<(Message, SyncReport)> {
        let (group, text) = (group.to_owned(), text.to_owned());
        self.task(move |f| async move {
            f.me()?;
            check_text(&text)?;
            let mut report = f.sync().await?;
            let id = f.resolve_group(&group)?;
            let message = f.send_text(&id, true, text, None, &mut report).await?;
            Ok((message, report))
        })
    }
}

impl Flow {
    fn groups(&self) -> Result<Vec<GroupLine>, Error> {
        self.read(|tx, p| {
            let mut out = Vec::new();
            for c in tx.conversations()? {
                if c.kind == ConversationKind::Group && c.status == ConversationStatus::Ok {
                    out.extend(group_line(p, c.id)?);
                }
            }
            Ok(out)
        })
    }

    /// Finds a group by id (or by its exact name, if exactly one group has it).
    pub(crate) fn resolve_group(&self, group: &str) -> Result<String, Error> {
        let by_id = self.read(|tx, _| {
            Ok(tx.conversation(group)?.is_some_and(|c| {
                c.kind == ConversationKind::Group && c.status == ConversationStatus::Ok
            }))
        })?;
        if by_id {
            return Ok(group.to_owned());
        }
        let groups = self.groups()?;
        let named: Vec<&GroupLine> = groups.iter().filter(|g| g.name == group).collect();
        match named.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(Error::Invalid(format!(
                "no group {group} on this device (run `sotto sync`?)"
            ))),
            _ => Err(Error::Invalid(format!(
                "several groups are named {group}: use the group id"
            ))),
        }
    }

    async fn create_group(
        &self,
        name: &str,
        members: &[String],
        pq_limit: usize,
    ) -> Result<(String, SyncReport), Error> {
        let me = self.me()?;
        let meta = GroupMetadata::new(name, me.username.clone())
            .map_err(|_| invalid_name())?
            .with_settings(sotto_proto::group::Settings {
                timer: self.default_timer()?,
                vanish: false,
            })
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.create_group_with(meta, members, pq_limit, ConversationKind::Group)
            .await
    }

    /// Creates a group with metadata `meta`, the given accounts' devices and this account's
    /// devices, and records it locally as `kind`.
    pub(crate) async fn create_group_with(
        &self,
        meta: GroupMetadata,
        members: &[String],
        pq_limit: usize,
        kind: ConversationKind,
    ) -> Result<(String, SyncReport), Error> {
        let me = self.me()?;
        let mut users: Vec<String> = Vec::new();
        for m in members {
            let u = Username::new(m).map_err(|e| Error::Invalid(e.to_string()))?;
            if u != me.username && !users.contains(&m.to_string()) {
                users.push(u.to_string());
            }
        }
        let mut report = self.sync().await?;
        let mut devices = 0usize;
        for u in users
            .iter()
            .chain(std::iter::once(&me.username.to_string()))
        {
            let (acc, _) = self.fetch_account(u).await?;
            devices += acc.devices.len();
        }
        let suite = if devices <= pq_limit {
            DEFAULT_CIPHERSUITE
        } else {
            CLASSIC_CIPHERSUITE
        };
        let info: ConversationInfo = self
            .post("/v1/groups", &CreateGroupRequest::default())
            .await?;
        let gid = group_id_bytes(&info.id)?;
        let mut kps = Vec::new();
        for u in &users {
            let got = self.claim(u, &[], u16::from(suite), &mut report).await?;
            if got.is_empty() {
                return Err(Error::Protocol(format!(
                    "none of {u}'s devices could be verified"
                )));
            }
            kps.extend(got);
        }
        kps.extend(
            self.claim(me.username.as_str(), &[], u16::from(suite), &mut report)
                .await?,
        );
        let bundle = self.with_tx(|tx, p| {
            let keys = self.keys(tx)?;
            let mut g = Conversation::create(p, &keys, &gid, suite, Some(&meta))?;
            upsert_conversation(tx, &info.id, kind, None)?;
            Ok(g.add_devices(p, &keys, &kps)?)
        })?;
        match self.post_commit(&info.id, bundle).await {
            Ok(_) => Ok((info.id.into_string(), report)),
            Err(e) => {
                self.with_tx(|tx, p| {
                    if let Some(g) = Conversation::load(p, &gid)? {
                        g.delete(p)?;
                    }
                    set_status(
                        tx,
                        &info.id,
                        ConversationStatus::Removed,
                        "the group could not be set up",
                    )
                })?;
                Err(e)
            }
        }
    }
}
