//! Messages, typing indicators, a conversation's log, and a device's inbox.

use std::net::IpAddr;

use sotto_api::*;

use super::{check_envelope, Body, Caller, DeliveryService, DsError, Limit, MAX_LOG_PAGE};
use crate::bus::Origin;

impl DeliveryService {
    /// Appends an application message sent in the current epoch. `origin` is the push connection
    /// it came over, if any: that one is answered `sent`, not woken with its own message.
    pub async fn send(
        &self,
        caller: &Caller,
        ip: Option<IpAddr>,
        id: &ConversationId,
        body: impl Body<SendRequest>,
        origin: Option<Origin>,
    ) -> Result<Accepted, DsError> {
        self.admit(Limit::Send, Some(&caller.device_id), ip).await?;
        let req = body.await?;
        let env = check_envelope(id, &req.message.0, false)?;
        if !req.attachments.is_empty() {
            // Before the append: a message never names a blob the server may remove as an orphan.
            self.blobs
                .bind(&req.attachments, id, &caller.username)
                .await?;
        }
        let appended = self
            .store
            .append_message(
                id,
                &caller.username,
                &caller.device_id,
                env.epoch,
                &req.message.0,
            )
            .await?
            .ok_or_else(|| DsError::not_found("no such conversation"))?;
        let accepted = appended.accepted;
        metrics::counter!("sotto_messages_accepted_total").increment(1);
        tracing::debug!(conversation = %id, seq = accepted.seq, bytes = req.message.0.len(), "message accepted");
        if let (Some(at), false) = (accepted.expires_at, req.attachments.is_empty()) {
            // After the append: should this fail, the files live until retention, never shorter
            // than their message.
            if let Err(e) = self.blobs.expire_at(&req.attachments, at).await {
                tracing::warn!(error = %e.message, "could not schedule attachments for expiry");
            }
        }
        // Small messages travel inside the wake-up: the receiving devices need no fetch.
        let frame = if req.message.0.len() <= MAX_INLINE_ENTRY {
            ServerFrame::Entry {
                id: id.clone(),
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
                id: id.clone(),
                seq: accepted.seq,
            }
        };
        self.bus.publish_except(appended.wake, frame, origin);
        Ok(accepted)
    }

    /// Relays an ephemeral application message (a typing indicator) to the conversation's other
    /// member devices that are connected. Nothing is stored, logged or queued: a device that is
    /// not connected never sees it.
    pub async fn ephemeral(
        &self,
        caller: &Caller,
        id: &ConversationId,
        body: impl Body<SendRequest>,
    ) -> Result<(), DsError> {
        self.admit(Limit::Ephemeral, Some(&caller.device_id), None)
            .await?;
        let req = body.await?;
        if req.message.0.len() > MAX_EPHEMERAL_BYTES {
            return Err(DsError::bad_request(format!(
                "an ephemeral message is at most {MAX_EPHEMERAL_BYTES} bytes"
            )));
        }
        check_envelope(id, &req.message.0, false)?;
        let c = self.member_conversation(caller, id).await?;
        let mut devices = self.store.wake_list(id).await?;
        devices.retain(|d| *d != caller.device_id);
        self.bus.publish(
            devices,
            ServerFrame::Ephemeral {
                id: id.clone(),
                seq: c.last_seq,
                sender_device: caller.device_id.clone(),
                message: req.message,
            },
        );
        Ok(())
    }

    /// A page of a conversation's log: at most `limit` entries (1 to [`MAX_LOG_PAGE`], the most by
    /// default) after `after`. `read` is how far the device has read, when that is before `after`
    /// (`after` otherwise): the server may prune what every member device has read.
    pub async fn log(
        &self,
        caller: &Caller,
        id: &ConversationId,
        after: u64,
        limit: Option<u32>,
        read: Option<u64>,
    ) -> Result<LogPage, DsError> {
        if after > MAX_COUNTER || read.is_some_and(|r| r > MAX_COUNTER) {
            return Err(DsError::bad_request(
                "after and read are sequence numbers: at most 2^63-1",
            ));
        }
        let limit = limit.unwrap_or(MAX_LOG_PAGE);
        if !(1..=MAX_LOG_PAGE).contains(&limit) {
            return Err(DsError::bad_request(format!(
                "limit is 1 to {MAX_LOG_PAGE} entries"
            )));
        }
        let read = read.map_or(after, |r| r.min(after));
        let (c, entries) = self
            .store
            .member_log(id, &caller.username, &caller.device_id, after, limit)
            .await?
            .ok_or_else(|| DsError::not_found("no such conversation"))?;
        self.cursors.note(id, &caller.device_id, read);
        let more = entries.last().map(|e| e.seq < c.last_seq).unwrap_or(false);
        Ok(LogPage { entries, more })
    }

    /// Notes a read position a push connection reported.
    pub fn note_read(&self, caller: &Caller, id: &str, seq: u64) {
        self.cursors.note(id, &caller.device_id, seq);
    }

    /// The caller's inbox.
    pub async fn inbox(&self, caller: &Caller) -> Result<Inbox, DsError> {
        Ok(Inbox {
            items: self.store.inbox(&caller.device_id).await?,
        })
    }

    /// Acknowledges inbox items.
    pub async fn ack_inbox(&self, caller: &Caller, req: InboxAck) -> Result<(), DsError> {
        if req.up_to > MAX_COUNTER {
            return Err(DsError::bad_request("up_to is an inbox id: at most 2^63-1"));
        }
        self.store.ack_inbox(&caller.device_id, req.up_to).await?;
        Ok(())
    }
}
