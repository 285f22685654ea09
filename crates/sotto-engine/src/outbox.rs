//! Sending a message: it is stored (as unacknowledged: the outbox) before it is posted, so one whose
//! outcome is unknown is posted again by the next sync with the same message id, and receivers keep
//! exactly one copy.

use sotto_api::*;
use sotto_proto::identity::unhex;
use sotto_proto::mls::Conversation;
use sotto_proto::{Body, MessageContent, MessageId, Username};

use crate::store::{ContentKind, ConversationStatus, MessageRecord};
use crate::{group_id_bytes, rfc3339_ms, Error, Flow, Message, SyncReport, MAX_ATTEMPTS};

impl Flow {
    /// Composes a message for conversation `id` (a fresh salt from its current epoch: the id is
    /// fixed from here on).
    pub(crate) async fn compose(&self, id: &str, body: Body) -> Result<MessageContent, Error> {
        let me = self.me()?;
        let gid = group_id_bytes(id)?;
        let now = self.io.now_ms().await;
        self.read(|_, p| {
            let g = Conversation::load(p, &gid)?
                .ok_or_else(|| Error::Protocol(format!("not a member of conversation {id}")))?;
            Ok(g.compose(p, &me.username, body, now)?)
        })
    }

    /// Sends a text to conversation `id` (a group's id, or `None` for a DM) and returns the message
    /// as this device shows it.
    pub(crate) async fn send_text(
        &self,
        id: &str,
        group: bool,
        text: String,
        reply_to: Option<MessageId>,
        report: &mut SyncReport,
    ) -> Result<Message, Error> {
        let me = self.me()?;
        let content = self
            .compose(
                id,
                Body::Text {
                    text: text.clone(),
                    reply_to,
                },
            )
            .await?;
        self.post_message(id, &content, report).await?;
        let msg_id = content.id.to_hex();
        let expires_at = self
            .read(|tx, _| Ok(tx.message(id, &msg_id)?.and_then(|m| m.expires_at)))?
            .map(|s| rfc3339_ms(s.saturating_mul(1000)));
        Ok(Message {
            kind: "message",
            id: content.id.to_hex(),
            conversation: id.to_owned(),
            group: group.then(|| id.to_owned()),
            sender: me.username.to_string(),
            sender_device: me.device_id.to_hex(),
            mentions_me: crate::rich::mentions(&text, me.username.as_str()),
            text,
            attachments: Vec::new(),
            reply_to: reply_to.map(|r| r.to_hex()),
            sent_at: rfc3339_ms(content.sent_at_ms),
            outgoing: true,
            content: "message",
            expires_at,
        })
    }

    /// Encrypts `content` for the conversation's current epoch and posts it; on a stale epoch
    /// catches up and re-encrypts.
    ///
    /// Errors: before the message was stored, as they are; after, a definite refusal (4xx) drops the
    /// pending copy and is returned as it is, anything else (transport, 5xx, 429, 507, lost races)
    /// is [`Error::Queued`]: kept, and sent by the next sync.
    pub(crate) async fn post_message(
        &self,
        id: &str,
        content: &MessageContent,
        report: &mut SyncReport,
    ) -> Result<Accepted, Error> {
        let mut stored = false;
        match self
            .try_post_message(id, content, report, &mut stored)
            .await
        {
            Ok(a) => Ok(a),
            Err(e) if !stored => Err(e),
            Err(e) if e.is_refusal() => {
                self.with_tx(|tx, _| Ok(tx.delete_unsent_message(id, &content.id.to_hex())?))?;
                Err(e)
            }
            Err(e) => Err(Error::Queued {
                id: content.id.to_hex(),
                reason: Box::new(e),
            }),
        }
    }

    async fn try_post_message(
        &self,
        id: &str,
        content: &MessageContent,
        report: &mut SyncReport,
        stored: &mut bool,
    ) -> Result<Accepted, Error> {
        let me = self.me()?;
        let gid = group_id_bytes(id)?;
        let msg_id = content.id.to_hex();
        let (kind, text, reply_to, target) = crate::rich::fields(&content.body);
        let attachments: Vec<String> = match &content.body {
            sotto_proto::Body::File { file, .. } => vec![file.blob.clone()],
            _ => Vec::new(),
        };
        for attempt in 0..MAX_ATTEMPTS {
            let bytes = self.with_tx(|tx, p| {
                let keys = self.keys(tx)?;
                let mut g = Conversation::load(p, &gid)?
                    .ok_or_else(|| Error::Protocol(format!("not a member of conversation {id}")))?;
                let bytes = g.encrypt(p, &keys, content)?;
                let record = MessageRecord {
                    conversation: id.to_owned(),
                    id: msg_id.clone(),
                    seq: None,
                    sender: me.username.to_string(),
                    sender_device: me.device_id.to_hex(),
                    sent_at_ms: content.sent_at_ms,
                    kind,
                    text: text.clone(),
                    reply_to: reply_to.clone(),
                    target: target.clone(),
                    salt: content.salt().map(|s| s.to_vec()),
                    outgoing: true,
                    shown: true,
                    local_order: 0,
                    accepted_at: 0,
                    attachment: crate::rich::attachment_of(&content.body),
                    expires_at: None,
                    after_shown: None,
                };
                // The sender's own device applies what it sends as a receiver would, in the same
                // transaction (an unsend's text is gone from here even while it is queued).
                if tx.insert_message(&record)? {
                    crate::rich::apply_effects(tx, &record)?;
                }
                crate::ephemeral::reset_typing(tx, id)?;
                Ok(bytes)
            })?;
            *stored = true;
            let res: Result<Accepted, Error> = self
                .post(
                    &format!("/v1/conversations/{id}/messages"),
                    &SendRequest {
                        message: B64(bytes),
                        attachments: attachments
                            .iter()
                            .map(|a| sotto_api::BlobId::new(a.as_str()))
                            .collect::<Result<_, _>>()?,
                    },
                )
                .await;
            match res {
                Ok(acc) => {
                    self.with_tx(|tx, p| {
                        tx.set_message_seq(id, &msg_id, acc.seq, acc.accepted_at)?;
                        // Accepted in the epoch it was encrypted in: that epoch's settings.
                        if let (Some(g), Some(mut rec)) =
                            (Conversation::load(p, &gid)?, tx.message(id, &msg_id)?)
                        {
                            let settings =
                                crate::expiry::settings_at(tx, id, acc.epoch, g.settings())?;
                            crate::expiry::stamp(&mut rec, &settings, acc.accepted_at);
                            tx.set_expiry(id, &msg_id, rec.expires_at, rec.after_shown)?;
                        }
                        Ok(())
                    })?;
                    return Ok(acc);
                }
                Err(e) if e.is_stale_epoch() => {
                    self.backoff_after_lost_race(attempt).await;
                    self.sync_conversation(id, None, report).await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::TooManyAttempts(MAX_ATTEMPTS))
    }

    /// Posts again this device's messages whose acknowledgement never arrived.
    pub(crate) async fn resend_pending(&self, report: &mut SyncReport) -> Result<(), Error> {
        let me = self.me()?;
        let mut drop_unsendable: Vec<(String, String)> = Vec::new();
        let pending: Vec<(String, MessageContent)> = self.read(|tx, _| {
            let mut out = Vec::new();
            for m in tx.unsent_messages(&me.device_id.to_hex())? {
                let followed = tx
                    .conversation(&m.conversation)?
                    .is_some_and(|c| c.status == ConversationStatus::Ok);
                if !followed {
                    continue;
                }
                match content_of(&m, &me.username) {
                    Some(content) => out.push((m.conversation, content)),
                    None => {
                        report.warnings.push(format!(
                            "message {} to conversation {} cannot be sent again (what is stored of it does not encode to it) and is dropped",
                            m.id, m.conversation
                        ));
                        drop_unsendable.push((m.conversation, m.id));
                    }
                }
            }
            Ok(out)
        })?;
        if !drop_unsendable.is_empty() {
            self.with_tx(|tx, _| {
                for (conv, id) in &drop_unsendable {
                    tx.delete_unsent_message(conv, id)?;
                }
                Ok(())
            })?;
        }
        for (conv, content) in pending {
            match self.post_message(&conv, &content, report).await {
                Ok(_) => {}
                Err(Error::Queued { reason, .. }) => report.warnings.push(format!(
                    "message {} to conversation {conv} not sent yet: {reason}",
                    content.id.to_hex()
                )),
                Err(e) if e.is_refusal() => report.warnings.push(format!(
                    "message {} to conversation {conv} was refused by the server and dropped: {e}",
                    content.id.to_hex()
                )),
                Err(e) => report.warnings.push(format!(
                    "message {} to conversation {conv} not sent yet: {e}",
                    content.id.to_hex()
                )),
            }
        }
        Ok(())
    }
}

/// The content of a stored outgoing message, to post again: composed again from its fields and
/// salt (the same bytes, so the same id), or for one stored by a version before MIMI content (no
/// salt), the content v1 text it was.
fn content_of(m: &MessageRecord, me: &Username) -> Option<MessageContent> {
    let gid = unhex(&m.conversation)?;
    if let Some(salt) = &m.salt {
        let salt: [u8; 16] = salt.as_slice().try_into().ok()?;
        let content =
            MessageContent::new(crate::rich::body_of(m)?, m.sent_at_ms, salt, me, &gid).ok()?;
        return (content.id.to_hex() == m.id).then_some(content);
    }
    let id = MessageId::from_hex(&m.id)?;
    let reply_to = match &m.reply_to {
        Some(r) => Some(MessageId::from_hex(r)?),
        None => None,
    };
    (id.mimi().is_none() && m.kind == ContentKind::Text)
        .then(|| {
            let raw: [u8; 16] = id.as_bytes().try_into().ok()?;
            Some(MessageContent::v1_text(
                raw,
                m.text.as_deref()?,
                m.sent_at_ms,
                reply_to,
            ))
        })
        .flatten()
}
