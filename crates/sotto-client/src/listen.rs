//! The push channel: a WebSocket to sottod whose frames go to the engine, with read positions sent
//! back once a second and reconnection with back-off.

use futures_util::{SinkExt, StreamExt};
use sotto_api::{ErrorBody, ErrorCode, ServerFrame};
use tokio_tungstenite::tungstenite;

use crate::{Client, ClientError, Message, SyncEvent, Update};

/// How often `listen` tells the server how far it has read (the server prunes what every device
/// has read; a late acknowledgement only delays that).
const READ_ACK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`Client::listen`] reports.
#[derive(Debug, Clone)]
pub enum ListenEvent {
    /// Connected to the push channel.
    Connected,
    /// New messages.
    Messages(Vec<Message>),
    /// A warning.
    Warning(String),
    /// Messages that had not decrypted were recovered or given up.
    Events(Vec<SyncEvent>),
    /// Reactions, edits, unsends and typing indicators.
    Updates(Vec<Update>),
    /// Lost the connection; retrying.
    Disconnected(String),
}

impl Client {
    /// Stays connected to the push channel and syncs whenever the server says there is something
    /// new, reporting through `on_event`. Reconnects with backoff; returns only on a fatal error.
    pub async fn listen(&self, mut on_event: impl FnMut(ListenEvent)) -> Result<(), ClientError> {
        let token = self
            .engine
            .dangerous_bearer_token()
            .ok_or(ClientError::NotRegistered)?;
        let transport = self.transport()?.clone();
        let mut backoff = std::time::Duration::from_millis(200);
        // Expired messages go within a second of their time while listening.
        let mut expiry_timer = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let mut request = match tungstenite::client::IntoClientRequest::into_client_request(
                transport.ws_url(),
            ) {
                Ok(r) => r,
                Err(e) => return Err(ClientError::Invalid(format!("bad server URL: {e}"))),
            };
            let header = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::Invalid("token is not a valid header".into()))?;
            request.headers_mut().insert("authorization", header);
            match tokio_tungstenite::connect_async_tls_with_config(
                request,
                None,
                true,
                transport.ws_connector(),
            )
            .await
            {
                Ok((mut ws, _)) => {
                    backoff = std::time::Duration::from_millis(200);
                    on_event(ListenEvent::Connected);
                    let mut ack_timer = tokio::time::interval(READ_ACK_EVERY);
                    loop {
                        let msg = tokio::select! {
                            msg = ws.next() => msg,
                            _ = expiry_timer.tick() => {
                                match self.purge_expired(false) {
                                    Ok(gone) => {
                                        let shown: Vec<Update> = gone.iter().filter(|e| e.shown).map(Update::expired).collect();
                                        if !shown.is_empty() {
                                            on_event(ListenEvent::Updates(shown));
                                        }
                                    }
                                    Err(e) => on_event(ListenEvent::Warning(e.to_string())),
                                }
                                continue;
                            }
                            _ = ack_timer.tick() => {
                                for frame in self.engine.read_acks() {
                                    let Ok(text) = serde_json::to_string(&frame) else { continue };
                                    if ws.send(tungstenite::Message::Text(text.into())).await.is_err() {
                                        break;
                                    }
                                }
                                continue;
                            }
                        };
                        let Some(msg) = msg else { break };
                        let text = match msg {
                            Ok(tungstenite::Message::Text(t)) => t,
                            Ok(tungstenite::Message::Close(_)) | Err(_) => break,
                            Ok(_) => continue,
                        };
                        let frame: ServerFrame = match serde_json::from_str(&text) {
                            Ok(f) => f,
                            // A frame is only a hint: the log is read again on the next wake-up
                            // that decodes and on every reconnect. Still, one this client cannot
                            // read (malformed, or a type newer than it) is said, without
                            // repeating the server's bytes.
                            Err(_) => {
                                on_event(ListenEvent::Warning(
                                    "ignored a push frame this client could not read".into(),
                                ));
                                continue;
                            }
                        };
                        match self.run(self.engine.handle_frame(frame)).await {
                            Ok(report) => {
                                for w in report.warnings {
                                    on_event(ListenEvent::Warning(w));
                                }
                                if !report.events.is_empty() {
                                    on_event(ListenEvent::Events(report.events));
                                }
                                if !report.updates.is_empty() {
                                    on_event(ListenEvent::Updates(report.updates));
                                }
                            }
                            Err(e @ ClientError::NotRegistered) => return Err(e),
                            Err(e) => on_event(ListenEvent::Warning(e.to_string())),
                        }
                        let msgs = self.take_unshown()?;
                        let updates = self.take_updates()?;
                        if !msgs.is_empty() {
                            on_event(ListenEvent::Messages(msgs));
                        }
                        if !updates.is_empty() {
                            on_event(ListenEvent::Updates(updates));
                        }
                    }
                    on_event(ListenEvent::Disconnected("connection closed".into()));
                }
                Err(e) => {
                    let why = match e {
                        // Refused for good (a revoked device, a locked account): the server's
                        // own error when its body came with the refusal.
                        tungstenite::Error::Http(resp)
                            if matches!(resp.status().as_u16(), 401 | 403) =>
                        {
                            let status = resp.status().as_u16();
                            let body = resp
                                .body()
                                .as_deref()
                                .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
                            return Err(match body {
                                Some(b) => ClientError::Api {
                                    status,
                                    code: b.code,
                                    message: b.message,
                                    current_epoch: b.current_epoch,
                                },
                                None if status == 403 => ClientError::Api {
                                    status,
                                    code: ErrorCode::AccountLocked,
                                    message: "this account is locked by the server's operator"
                                        .into(),
                                    current_epoch: None,
                                },
                                None => ClientError::Api {
                                    status,
                                    code: ErrorCode::Unauthorized,
                                    message: "device token refused".into(),
                                    current_epoch: None,
                                },
                            });
                        }
                        _ => format!("server unreachable at {}", transport.base),
                    };
                    on_event(ListenEvent::Disconnected(why));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
        }
    }
}
