//! The WebSocket channel: after authentication the server sends `ready`, then wake-up frames for
//! the device (small messages inline); the client may acknowledge what it has read and post
//! messages ([`ClientFrame`]). Generic over `Sink`/`Stream` so tests can drive it with channels.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use sotto_api::{
    ClientFrame, ClientFrameError, ErrorBody, SendRequest, ServerFrame, MAX_WS_SENDS_IN_FLIGHT,
};

use crate::bus::Origin;
use crate::ds::{Caller, DsError};
use crate::AppState;

/// The largest frame a client may send.
pub const MAX_CLIENT_FRAME: usize = 4096;
const PING_EVERY: Duration = Duration::from_secs(30);
const IDLE_LIMIT: Duration = Duration::from_secs(90);
/// How long one frame may take to go out: a client that stops reading (its TCP window full) is
/// disconnected instead of holding a task and buffers forever. Its queue meanwhile stays bounded
/// (`bus::CONNECTION_QUEUE`; dropped wake-ups become one `resync`).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one authenticated connection until it closes, goes idle or the server shuts down.
pub async fn serve(socket: WebSocket, state: AppState, caller: Caller, ip: Option<IpAddr>) {
    let (tx, rx) = socket.split();
    let open = metrics::gauge!("sotto_ws_connections");
    open.increment(1.0);
    run(tx, rx, state, caller, ip).await;
    open.decrement(1.0);
}

async fn send_frame<S>(tx: &mut S, frame: &ServerFrame) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    send_within(tx, text_of(frame)).await
}

/// Queued frames go out together: one flush (one socket write, most often) for all of them.
const MAX_FRAMES_PER_FLUSH: usize = 32;

async fn send_all<S>(tx: &mut S, msgs: Vec<Message>) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    let all = async {
        for m in msgs {
            tx.feed(m).await?;
        }
        tx.flush().await
    };
    matches!(tokio::time::timeout(SEND_TIMEOUT, all).await, Ok(Ok(())))
}

fn text_of(frame: &ServerFrame) -> Message {
    Message::Text(frame.to_json().into())
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

async fn close_policy<S>(tx: &mut S, reason: &'static str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let close = axum::extract::ws::CloseFrame {
        code: 1008,
        reason: reason.into(),
    };
    let _ = send_within(tx, Message::Close(Some(close))).await;
}

type Answer = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// A message posted over the socket: the same limits and rules as `POST .../messages`. The frame
/// names no attachments, so a message with a file goes over HTTP (the SDK sends every message
/// there): a blob no message named is removed as an orphan after a day.
async fn post(
    state: AppState,
    caller: Caller,
    ip: Option<IpAddr>,
    origin: Origin,
    reference: u64,
    id: sotto_api::ConversationId,
    message: sotto_api::B64,
) -> ServerFrame {
    let body = std::future::ready(Ok(SendRequest {
        message,
        attachments: Vec::new(),
    }));
    match state.ds.send(&caller, ip, &id, body, Some(origin)).await {
        Ok(accepted) => ServerFrame::Sent {
            reference,
            accepted,
        },
        Err(e) => refused(reference, e),
    }
}

/// The one place a [`DsError`] becomes a frame: `refused`, with the status HTTP would answer.
fn refused(reference: u64, e: DsError) -> ServerFrame {
    ServerFrame::Refused {
        reference,
        status: crate::error::http_status(e.code).as_u16(),
        retry_after: e.retry_after,
        error: ErrorBody {
            code: e.code,
            message: e.message,
            current_epoch: e.current_epoch,
        },
    }
}

/// The connection loop, over any sink and stream of WebSocket messages.
pub async fn run<Tx, Rx>(
    mut tx: Tx,
    mut rx: Rx,
    state: AppState,
    caller: Caller,
    ip: Option<IpAddr>,
) where
    Tx: futures_util::Sink<Message> + Unpin,
    Rx: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let mut sub = state.ds.hub.subscribe(&caller.device_id);
    let mut shutdown = state.shutdown.clone();
    if !send_frame(&mut tx, &ServerFrame::Ready).await {
        return;
    }
    tracing::debug!(device = %caller.device_id, "push connection open");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_seen = tokio::time::Instant::now();
    // Sends in flight; while full, the socket is not read (the client's TCP window fills).
    // Allocated on the first send: most connections only listen.
    let mut sends: Option<FuturesUnordered<Answer>> = None;
    let in_flight = |s: &Option<FuturesUnordered<Answer>>| s.as_ref().map_or(0, |s| s.len());
    loop {
        tokio::select! {
            frame = sub.rx.recv() => {
                let Some(text) = frame else { break };
                let mut out = vec![Message::Text(text)];
                while out.len() < MAX_FRAMES_PER_FLUSH {
                    match sub.rx.try_recv() {
                        Ok(text) => out.push(Message::Text(text)),
                        Err(_) => break,
                    }
                }
                if sub.take_dropped() {
                    out.push(text_of(&ServerFrame::Resync));
                }
                if !send_all(&mut tx, out).await { break; }
            }
            Some(answer) = async { sends.as_mut()?.next().await }, if in_flight(&sends) > 0 => {
                let mut out = vec![text_of(&answer)];
                let Some(pending) = sends.as_mut() else { continue };
                while out.len() < MAX_FRAMES_PER_FLUSH {
                    match futures_util::FutureExt::now_or_never(pending.next()) {
                        Some(Some(answer)) => out.push(text_of(&answer)),
                        _ => break,
                    }
                }
                if !send_all(&mut tx, out).await { break; }
            }
            msg = rx.next(), if in_flight(&sends) < MAX_WS_SENDS_IN_FLIGHT => {
                match msg {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        last_seen = tokio::time::Instant::now()
                    }
                    Some(Ok(Message::Text(text))) => {
                        last_seen = tokio::time::Instant::now();
                        match ClientFrame::parse(&text) {
                            Ok(ClientFrame::Read { id, seq }) => {
                                state.ds.note_read(&caller, &id, seq);
                            }
                            Ok(ClientFrame::Send { reference, id, message }) => {
                                sends.get_or_insert_with(FuturesUnordered::new).push(Box::pin(post(
                                    state.clone(),
                                    caller.clone(),
                                    ip,
                                    sub.origin(),
                                    reference,
                                    id,
                                    message,
                                )));
                            }
                            // A send for a malformed conversation id is answered, as over HTTP.
                            Err(ClientFrameError::BadId { reference, error }) => {
                                let answer = refused(reference, DsError::bad_request(error.to_string()));
                                sends
                                    .get_or_insert_with(FuturesUnordered::new)
                                    .push(Box::pin(std::future::ready(answer)));
                            }
                            Err(ClientFrameError::Malformed(_)) => {
                                close_policy(&mut tx, "not a client frame").await;
                                break;
                            }
                        }
                    }
                    Some(Ok(_)) => {
                        close_policy(&mut tx, "binary frames are not accepted").await;
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > IDLE_LIMIT { break; }
                // A device revoked or an account locked since it connected goes now. (The
                // interval's immediate first tick was taken above: this runs PING_EVERY after
                // the authentication at the earliest.)
                if let Err(e) = state.ds.still_allowed(&caller).await {
                    use sotto_api::ErrorCode::{AccountLocked, Unauthorized};
                    if matches!(e.code, AccountLocked | Unauthorized) {
                        close_policy(&mut tx, "not allowed any more").await;
                        break;
                    }
                }
                if !send_within(&mut tx, Message::Ping(Vec::new().into())).await { break; }
            }
            _ = shutdown.changed() => {
                // Answer the sends already taken: their messages may be durable by now.
                if let Some(pending) = sends.as_mut() {
                    while let Some(answer) = pending.next().await {
                        if !send_frame(&mut tx, &answer).await { break; }
                    }
                }
                // 1001: the client reconnects, through the load balancer, to another node.
                let _ = tx
                    .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: axum::extract::ws::close_code::AWAY,
                        reason: "server shutting down".into(),
                    })))
                    .await;
                break;
            }
        }
    }
    // Sends still in flight finish on their own: a closed connection must not cancel one between
    // "durable" and "woken". Their answers have nowhere to go.
    if let Some(mut pending) = sends.filter(|s| !s.is_empty()) {
        tokio::spawn(async move { while pending.next().await.is_some() {} });
    }
    tracing::debug!(device = %caller.device_id, "push connection closed");
}
