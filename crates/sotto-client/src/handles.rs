//! The facade: a [`Client`] hands out cheap handles per area instead of carrying every method
//! itself (matrix-sdk's `client.encryption()`, `room.send_queue()`). Each handle borrows the client
//! and steps the engine's tasks through it.

use crate::{
    Action, Client, ClientError, DeviceLine, GroupLine, HistoryItem, HistoryMessage, Message,
    SyncReport,
};

/// This device's account: registering, linking, link codes.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a>(pub(crate) &'a Client);

impl Account<'_> {
    /// Registers a new account with this as its first device.
    pub async fn register(self, username: &str) -> Result<(), ClientError> {
        let at = self.0.registration()?;
        self.0.run(self.0.engine.register(username, at)).await
    }

    /// Registers this device under an existing account, using a link code from one of its devices.
    pub async fn link(self, code: &str) -> Result<(), ClientError> {
        let at = self.0.registration()?;
        self.0.run(self.0.engine.link(code, at)).await
    }

    /// Creates a one-time link code for adding a new device to this account (a secret: show it,
    /// never log it).
    pub async fn create_link_code(self) -> Result<String, ClientError> {
        self.0.run(self.0.engine.create_link_code()).await
    }
}

/// The account's devices.
#[derive(Debug, Clone, Copy)]
pub struct Devices<'a>(pub(crate) &'a Client);

impl Devices<'_> {
    /// This account's devices, each checked against the pinned identity key.
    pub async fn list(self) -> Result<Vec<DeviceLine>, ClientError> {
        self.0.run(self.0.engine.devices()).await
    }

    /// Revokes a device of this account (another one, or this one); see
    /// [`sotto_engine::Engine::revoke_device`].
    pub async fn revoke(self, device_id: &str) -> Result<SyncReport, ClientError> {
        self.0.run(self.0.engine.revoke_device(device_id)).await
    }
}

/// The DM with one account (created on the first send).
#[derive(Debug, Clone, Copy)]
pub struct Dm<'a> {
    pub(crate) client: &'a Client,
    pub(crate) peer: &'a str,
}

impl Dm<'_> {
    /// Sends a text (after a sync). Returns the sent message.
    pub async fn send(self, text: &str) -> Result<(Message, SyncReport), ClientError> {
        self.client
            .run(self.client.engine.send_dm(self.peer, text))
            .await
    }

    /// Every message, oldest first, as it stands now (edited, unsent, reacted to).
    pub fn history(self) -> Result<Vec<HistoryMessage>, ClientError> {
        self.client.purge_expired(false)?;
        self.client.engine.history(self.peer)
    }

    /// Sets the disappearing timer for both accounts (`None`: off; creates the DM if needed).
    pub async fn set_timer(
        self,
        timer: Option<(u32, sotto_engine::expiry::TimerMode)>,
    ) -> Result<SyncReport, ClientError> {
        self.client
            .run(self.client.engine.set_timer(
                sotto_engine::expiry::Target::Dm(self.peer.to_owned()),
                timer,
            ))
            .await
    }

    /// Turns vanish mode on or off for both accounts.
    pub async fn set_vanish(self, on: bool) -> Result<SyncReport, ClientError> {
        self.client
            .run(self.client.engine.set_vanish(self.peer, on))
            .await
    }

    /// Acts on one of its messages: replies, reacts, edits, unsends (see [`Client::act`]).
    pub async fn act(self, message_id: &str, action: Action) -> Result<String, ClientError> {
        act_in(
            self.client,
            self.client.engine.dm_id(self.peer)?,
            message_id,
            action,
        )
        .await
    }

    /// Sends one typing indicator (ephemeral: only devices connected now see it).
    pub async fn typing(self) -> Result<(), ClientError> {
        self.client
            .run(self.client.engine.typing_dm(self.peer))
            .await
    }

    /// Marks everything received here as read and sends the read receipts (if read receipts are
    /// on). Returns how many messages it marked.
    pub async fn mark_read(self) -> Result<(usize, SyncReport), ClientError> {
        self.client
            .run(self.client.engine.mark_read_dm(self.peer))
            .await
    }

    /// The history with entries that did not decrypt in their places.
    pub fn history_items(self) -> Result<Vec<HistoryItem>, ClientError> {
        self.client.purge_expired(false)?;
        self.client.engine.dm_history_items(self.peer)
    }
}

/// One group, by id or by its name where only one group has it.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    pub(crate) client: &'a Client,
    pub(crate) group: &'a str,
}

impl Group<'_> {
    /// Sends a text (after a sync).
    pub async fn send(self, text: &str) -> Result<(Message, SyncReport), ClientError> {
        self.client
            .run(self.client.engine.send_group(self.group, text))
            .await
    }

    /// Adds accounts, all their devices (admins only).
    pub async fn add(self, users: &[String]) -> Result<SyncReport, ClientError> {
        self.client
            .run(self.client.engine.group_add(self.group, users))
            .await
    }

    /// Removes accounts, all their devices (admins only).
    pub async fn remove(self, users: &[String]) -> Result<SyncReport, ClientError> {
        self.client
            .run(self.client.engine.group_remove(self.group, users))
            .await
    }

    /// Leaves the group.
    pub async fn leave(self) -> Result<(), ClientError> {
        self.client
            .run(self.client.engine.group_leave(self.group))
            .await
    }

    /// Renames the group (admins only).
    pub async fn rename(self, name: &str) -> Result<SyncReport, ClientError> {
        self.client
            .run(self.client.engine.group_rename(self.group, name))
            .await
    }

    /// Makes a member an admin (admins only).
    pub async fn make_admin(self, user: &str) -> Result<SyncReport, ClientError> {
        self.client
            .run(self.client.engine.group_make_admin(self.group, user))
            .await
    }

    /// Refreshes this device's keys in the group (a self-update commit).
    pub async fn update_keys(self) -> Result<SyncReport, ClientError> {
        self.client
            .run(self.client.engine.group_update_keys(self.group))
            .await
    }

    /// The group as this device knows it.
    pub fn info(self) -> Result<GroupLine, ClientError> {
        self.client.engine.group_info(self.group)
    }

    /// Every message, oldest first, as it stands now (edited, unsent, reacted to).
    pub fn history(self) -> Result<Vec<HistoryMessage>, ClientError> {
        self.client.purge_expired(false)?;
        self.client.engine.group_history(self.group)
    }

    /// Sets the group's disappearing timer (`None`: off; admins only).
    pub async fn set_timer(
        self,
        timer: Option<(u32, sotto_engine::expiry::TimerMode)>,
    ) -> Result<SyncReport, ClientError> {
        self.client
            .run(self.client.engine.set_timer(
                sotto_engine::expiry::Target::Group(self.group.to_owned()),
                timer,
            ))
            .await
    }

    /// Acts on one of its messages: replies, reacts, edits, unsends (see [`Client::act`]).
    pub async fn act(self, message_id: &str, action: Action) -> Result<String, ClientError> {
        let id = self.info()?.id;
        act_in(self.client, Some(id), message_id, action).await
    }

    /// Sends one typing indicator (ephemeral: only devices connected now see it).
    pub async fn typing(self) -> Result<(), ClientError> {
        self.client
            .run(self.client.engine.typing_group(self.group))
            .await
    }

    /// Marks everything received here as read and sends the read receipts (if read receipts are
    /// on). Returns how many messages it marked.
    pub async fn mark_read(self) -> Result<(usize, SyncReport), ClientError> {
        self.client
            .run(self.client.engine.mark_read_group(self.group))
            .await
    }

    /// The history with entries that did not decrypt in their places.
    pub fn history_items(self) -> Result<Vec<HistoryItem>, ClientError> {
        let id = self.info()?.id;
        self.client.purge_expired(false)?;
        self.client.engine.history_items(&id)
    }
}

/// This device's groups.
#[derive(Debug, Clone, Copy)]
pub struct Groups<'a>(pub(crate) &'a Client);

impl Groups<'_> {
    /// Creates a group named `name` with these accounts (all their devices) and this account's;
    /// this account is its admin. Returns the group id. The hybrid post-quantum ciphersuite up to
    /// `pq_limit` devices, the classic one above.
    pub async fn create(
        &self,
        name: &str,
        members: &[String],
        pq_limit: usize,
    ) -> Result<(String, SyncReport), ClientError> {
        self.0
            .run(self.0.engine.create_group(name, members, pq_limit))
            .await
    }

    /// The groups this device is in, as it knows them (sync first to be current).
    pub fn list(self) -> Result<Vec<GroupLine>, ClientError> {
        self.0.engine.groups()
    }
}

/// [`Client::act`], for a message that must be in conversation `conversation`.
async fn act_in(
    client: &Client,
    conversation: Option<String>,
    message_id: &str,
    action: Action,
) -> Result<String, ClientError> {
    let held = client.engine.conversation_of(message_id)?;
    if conversation.is_none() || held != conversation {
        return Err(ClientError::Invalid(format!(
            "message {message_id} is not in this conversation"
        )));
    }
    Ok(client.act(message_id, action).await?.0)
}
