//! Pushed frames and read positions.
//!
//! Frames are hints: a wake-up makes the engine fetch, an inline entry is applied only if it is the
//! next one expected, so the log stays the only truth. The shell tells the server how far this
//! device has read ([`Engine::read_acks`], once a second) so the server can prune; the position
//! stays before any entry still waiting to be decrypted, so the server keeps it for the retry.
//! Waiting entries are retried by full syncs (the `ready`, `resync` and `devices` frames run one),
//! not by every wake-up.

use sotto_api::{ClientFrame, ServerFrame};

use crate::store::UndecryptableState;
use crate::{Engine, Error, Flow, SyncReport, Task};

impl Engine {
    /// What to do about a frame from the push channel.
    pub fn handle_frame(&self, frame: ServerFrame) -> Task<SyncReport> {
        self.task(move |f| async move {
            let mut report = SyncReport::default();
            match frame {
                ServerFrame::Ready | ServerFrame::Devices | ServerFrame::Resync => {
                    report = f.sync().await?;
                }
                ServerFrame::Inbox => {
                    f.process_inbox(&mut report).await?;
                }
                ServerFrame::Conversation { id, seq } => {
                    let r = f.sync_conversation(&id, Some(seq), &mut report).await;
                    f.note_read(&id);
                    r?;
                    f.send_delivery_receipts_in(&id, &mut report).await;
                }
                ServerFrame::Entry { id, entry } => {
                    let r = f.apply_pushed(&id, &entry, &mut report).await;
                    f.note_read(&id);
                    r?;
                    f.send_delivery_receipts_in(&id, &mut report).await;
                }
                ServerFrame::Ephemeral {
                    id,
                    seq,
                    sender_device,
                    message,
                } => {
                    f.apply_ephemeral(&id, seq, &sender_device, &message.0, &mut report)
                        .await?;
                }
                // Answers to sends over the socket; the engine posts none there.
                ServerFrame::Sent { .. } | ServerFrame::Refused { .. } => {}
            }
            Ok(report)
        })
    }

    /// The read positions to tell the server now, as frames for the push channel.
    pub fn read_acks(&self) -> Vec<ClientFrame> {
        std::mem::take(&mut *self.inner.unacked.borrow_mut())
            .into_iter()
            // Ids come from the server's own answers; one that is not well-formed names no
            // conversation the server would take a read position for.
            .filter_map(|(id, seq)| {
                let id = sotto_api::ConversationId::new(id).ok()?;
                Some(ClientFrame::Read { id, seq })
            })
            .collect()
    }
}

impl Flow {
    /// Remembers how far this device has read a conversation (never past a waiting entry).
    pub(crate) fn note_read(&self, id: &str) {
        let pos = self.read(|tx, _| {
            let Some(c) = tx.conversation(id)? else {
                return Ok(None);
            };
            let first_waiting = tx
                .undecryptable(id)?
                .into_iter()
                .filter(|u| u.state == UndecryptableState::Waiting)
                .map(|u| u.seq)
                .min();
            Ok(Some(match first_waiting {
                Some(w) => c.cursor.min(w - 1),
                None => c.cursor,
            }))
        });
        if let Ok(Some(seq)) = pos.map_err(|_: Error| ()) {
            if seq > 0 {
                self.e.unacked.borrow_mut().insert(id.to_owned(), seq);
            }
        }
    }
}
