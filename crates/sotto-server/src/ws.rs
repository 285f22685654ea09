//! The WebSocket push channel: after authentication the server sends `ready`, then wake-up frames for
//! the device. Generic over `Sink`/`Stream` so tests can drive it with channels.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use sotto_api::ServerFrame;

use crate::AppState;

/// The largest frame a client may send (clients send nothing but control frames today).
pub const MAX_CLIENT_FRAME: usize = 4096;
const PING_EVERY: Duration = Duration::from_secs(30);
const IDLE_LIMIT: Duration = Duration::from_secs(90);
/// How long one frame may take to go out: a client that stops reading (its TCP window full) is
/// disconnected instead of holding a task and buffers forever. Its queue meanwhile stays bounded
/// (`bus::CONNECTION_QUEUE`, wake-ups coalesced).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one authenticated connection until it closes, goes idle or the server shuts down.
pub async fn serve(socket: WebSocket, state: AppState, device: String) {
    let (tx, rx) = socket.split();
    run(tx, rx, state, device).await;
}

async fn send_frame<S>(tx: &mut S, frame: &ServerFrame) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    match serde_json::to_string(frame) {
        Ok(text) => send_within(tx, Message::Text(text.into())).await,
        Err(_) => false,
    }
}

async fn send_within<S>(tx: &mut S, msg: Message) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, tx.send(msg)).await,
        Ok(Ok(()))
    )
}

/// The connection loop, over any sink and stream of WebSocket messages.
pub async fn run<Tx, Rx>(mut tx: Tx, mut rx: Rx, state: AppState, device: String)
where
    Tx: futures_util::Sink<Message> + Unpin,
    Rx: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let mut sub = state.hub.subscribe(&device);
    let mut shutdown = state.shutdown.clone();
    if !send_frame(&mut tx, &ServerFrame::Ready).await {
        return;
    }
    tracing::debug!(%device, "push connection open");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_seen = tokio::time::Instant::now();
    loop {
        tokio::select! {
            frame = sub.rx.recv() => {
                let Some(frame) = frame else { break };
                if !send_frame(&mut tx, &frame).await { break; }
            }
            msg = rx.next() => {
                match msg {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        last_seen = tokio::time::Instant::now()
                    }
                    // Clients send no data frames on this channel: close with 1008 (policy).
                    Some(Ok(_)) => {
                        let close = axum::extract::ws::CloseFrame {
                            code: 1008,
                            reason: "clients send no data frames".into(),
                        };
                        let _ = send_within(&mut tx, Message::Close(Some(close))).await;
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > IDLE_LIMIT { break; }
                if !send_within(&mut tx, Message::Ping(Vec::new().into())).await { break; }
            }
            _ = shutdown.changed() => {
                let _ = tx.send(Message::Close(None)).await;
                break;
            }
        }
    }
    tracing::debug!(%device, "push connection closed");
}
