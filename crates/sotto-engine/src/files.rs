//! Files in messages: what the engine keeps of them and how they are sent.
//!
//! The bytes never pass through the engine. A shell encrypts a file as it reads it
//! (`sotto_proto::attachment`), uploads the blob to the conversation's server (`/v1/blobs`, tus),
//! and hands the engine the [`FileRef`] (blob id, key, size, hash, type, name). The engine sends
//! it as a MIMI `ExternalPart` in the conversation, and names the blob in the send request so that
//! the server keeps it as long as the message and no longer. For a download the shell asks
//! [`Engine::attachment`] for the record (with the key), fetches and decrypts, and notes where it
//! saved the file with [`Engine::set_downloaded`].
//!
//! An unsend wipes the record (key included) on every device, and the sender's device also
//! removes the blob from the server.

use sotto_proto::{Body, FileRef, MessageId};

use crate::store::{AttachmentRecord, ContentKind, ConversationKind, ConversationStatus};
use crate::{Engine, Error, Message, SyncReport, Task};

/// A file for a message, as a shell hands it over after the upload.
pub struct OutgoingFile {
    /// Where the uploaded blob is and how to open it.
    pub file: FileRef,
    /// Text shown with it.
    pub caption: Option<String>,
    /// A small image shown before the download.
    pub preview: Option<sotto_proto::Preview>,
}

// The caption is message text: its size only.
impl std::fmt::Debug for OutgoingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingFile")
            .field("file", &self.file)
            .field("caption_len", &self.caption.as_ref().map(String::len))
            .field("preview", &self.preview)
            .finish()
    }
}

impl Engine {
    /// The id of the DM with `peer`, set up first if it does not exist yet (after a sync): the
    /// conversation an upload for `peer` names.
    pub fn dm_conversation(&self, peer: &str) -> Task<String> {
        let peer = peer.to_owned();
        self.task(move |f| async move {
            f.me()?;
            let mut report = f.sync().await?;
            f.ensure_dm(&peer, &mut report).await
        })
    }

    /// The id of a group this device follows, by id or exact name.
    pub fn group_conversation(&self, group: &str) -> Result<String, Error> {
        self.local().resolve_group(group)
    }

    /// Sends a file already uploaded to conversation `conversation` (after a sync). Returns the
    /// message as this device shows it.
    pub fn send_file(&self, conversation: &str, file: OutgoingFile) -> Task<(Message, SyncReport)> {
        let conversation = conversation.to_owned();
        self.task(move |f| async move {
            let me = f.me()?;
            if let Some(c) = &file.caption {
                crate::dm::check_text(c)?;
            }
            let group = f
                .read(|tx, _| Ok(tx.conversation(&conversation)?))?
                .filter(|c| c.status == ConversationStatus::Ok && c.kind != ConversationKind::Own)
                .ok_or_else(|| {
                    Error::Invalid(format!("no conversation {conversation} on this device"))
                })?
                .kind
                == ConversationKind::Group;
            let mut report = f.sync().await?;
            let body = Body::File {
                file: Box::new(file.file),
                caption: file.caption,
                reply_to: None::<MessageId>,
                preview: file.preview,
            };
            let content = f.compose(&conversation, body).await.map_err(|e| match e {
                Error::Mls(m) => Error::Invalid(m.to_string()),
                e => e,
            })?;
            let id = content.id.to_hex();
            f.post_message(&conversation, &content, &mut report).await?;
            let stored = f
                .read(|tx, _| Ok(tx.message(&conversation, &id)?))?
                .ok_or_else(|| Error::Storage("a sent file message was not stored".into()))?;
            Ok((
                crate::views::view_of(stored, group, me.username.as_str()),
                report,
            ))
        })
    }

    /// The file message `message_id` carries, with what opens it: (conversation, record). `None`
    /// when this device has no such message, or it carries no file (any more: unsent).
    pub fn attachment(
        &self,
        message_id: &str,
    ) -> Result<Option<(String, AttachmentRecord)>, Error> {
        let id = message_id.to_ascii_lowercase();
        self.local().read(|tx, _| {
            Ok(tx
                .message_by_id(&id)?
                .filter(|m| m.kind == ContentKind::File)
                .and_then(|m| Some((m.conversation, m.attachment?))))
        })
    }

    /// Notes that this device saved message `message_id`'s file, verified, at `path`.
    pub fn set_downloaded(&self, message_id: &str, path: &str) -> Result<(), Error> {
        let id = message_id.to_ascii_lowercase();
        self.local().with_tx(|tx, _| {
            let m = tx
                .message_by_id(&id)?
                .ok_or_else(|| Error::Invalid(format!("no message {id} on this device")))?;
            let Some(mut a) = m.attachment else {
                return Err(Error::Invalid(format!("message {id} carries no file")));
            };
            a.downloaded = Some(path.to_owned());
            tx.set_attachment(&m.conversation, &m.id, Some(&a))?;
            Ok(())
        })
    }
}

impl crate::Flow {
    /// Removes the blob of a file message this account unsent. The server also removes it at
    /// the log's retention, so a failure here is a warning, not an error.
    pub(crate) async fn remove_blob(&self, blob: &str, report: &mut SyncReport) {
        if !sotto_proto::attachment::is_blob_id(blob) {
            return;
        }
        match self
            .delete::<serde_json::Value>(&format!("/v1/blobs/{blob}"))
            .await
        {
            Ok(_) => {}
            Err(Error::Api {
                code: sotto_api::ErrorCode::NotFound,
                ..
            }) => {}
            Err(e) => report.warnings.push(format!(
                "the unsent file stays on the server until its retention ends: {e}"
            )),
        }
    }
}
