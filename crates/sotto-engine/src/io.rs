//! The engine's boundary: what it asks of its shell and what it is given back.
//!
//! Every client operation is a [`Task`]. The shell calls [`Task::step`]; the task runs until it
//! needs something from outside (an HTTP exchange, a pause, the time) and hands that out as an
//! [`Op`]; the shell does it and steps the task again with the [`Answer`]. The engine never opens a
//! socket, reads a clock or sleeps: a test can step a task by hand with any answers it likes, and the
//! same task runs under tokio natively and under a JavaScript event loop in WebAssembly.
//!
//! Tasks are written as ordinary `async` code against `Io`, whose only "IO" is parking the
//! request in a slot shared with the task and waiting for the shell to fill in the answer; the
//! compiler turns each flow into the state machine the shell steps. `Io`'s futures never register
//! a waker: only [`Task::step`] makes progress.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sotto_api::{ErrorBody, ErrorCode};

use crate::Error;

/// An HTTP method the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST with a JSON body.
    Post,
    /// DELETE.
    Delete,
}

/// One HTTP exchange with `sottod`, for the shell to perform.
#[derive(Clone)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The path and query, starting with `/` (the shell knows the server's base URL).
    pub path: String,
    /// The JSON body, for POST.
    pub body: Option<Vec<u8>>,
    /// The device's bearer token, when it has one: the shell sends it as `Authorization: Bearer`.
    pub bearer: Option<String>,
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the token nor the body (link bundles, key material in transit) is printed.
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body_len", &self.body.as_ref().map(Vec::len))
            .field("bearer", &self.bearer.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What the server answered: the status and the body's bytes.
#[derive(Clone)]
pub struct HttpReply {
    /// HTTP status.
    pub status: u16,
    /// The body (JSON, or empty).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for HttpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body may hold a new device's token or a link bundle: its size only.
        f.debug_struct("HttpReply")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// What a task needs from its shell.
#[derive(Debug)]
pub enum Op {
    /// Perform this exchange; answer [`Answer::Http`].
    Http(HttpRequest),
    /// Wait this many milliseconds (a back-off between commit races); answer [`Answer::Slept`].
    Sleep(u64),
    /// Tell the current wall-clock time; answer [`Answer::Now`].
    Now,
}

/// The shell's answer to an [`Op`].
#[derive(Debug)]
pub enum Answer {
    /// The server's reply, or why there was none ([`Error::Unreachable`], a TLS failure as
    /// [`Error::Protocol`], [`Error::NoServer`]).
    Http(Result<HttpReply, Error>),
    /// The wait is over.
    Slept,
    /// Milliseconds since the Unix epoch.
    Now(u64),
}

/// What stepping a task gave.
#[derive(Debug)]
pub enum Step<T> {
    /// The task needs this done, then [`Task::step`] with its answer.
    Op(Op),
    /// The task finished.
    Done(Result<T, Error>),
}

#[derive(Default)]
enum Slot {
    #[default]
    Idle,
    Out(Op),
    Waiting,
    In(Answer),
}

/// A task's handle to its shell (one per task, so tasks never see each other's answers).
#[derive(Clone, Default)]
pub(crate) struct Io {
    slot: Rc<RefCell<Slot>>,
}

/// The future of one [`Op`]: parks it, then waits for its answer.
struct Call {
    slot: Rc<RefCell<Slot>>,
    op: Option<Op>,
}

impl Future for Call {
    type Output = Answer;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Answer> {
        let mut slot = self.slot.borrow_mut();
        match std::mem::take(&mut *slot) {
            Slot::In(answer) => Poll::Ready(answer),
            Slot::Idle => {
                drop(slot);
                let op = self.op.take();
                let mut slot = self.slot.borrow_mut();
                *slot = match op {
                    Some(op) => Slot::Out(op),
                    None => Slot::Waiting,
                };
                Poll::Pending
            }
            other => {
                *slot = other;
                Poll::Pending
            }
        }
    }
}

impl Io {
    async fn call(&self, op: Op) -> Answer {
        Call {
            slot: self.slot.clone(),
            op: Some(op),
        }
        .await
    }

    /// The current time, in milliseconds since the Unix epoch, from the shell.
    pub(crate) async fn now_ms(&self) -> u64 {
        match self.call(Op::Now).await {
            Answer::Now(ms) => ms,
            _ => 0,
        }
    }

    /// The current time in whole seconds.
    pub(crate) async fn now_secs(&self) -> u64 {
        self.now_ms().await / 1000
    }

    /// Asks the shell to wait.
    pub(crate) async fn sleep_ms(&self, ms: u64) {
        let _ = self.call(Op::Sleep(ms)).await;
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        bearer: Option<String>,
    ) -> Result<HttpReply, Error> {
        let req = HttpRequest {
            method,
            path: path.to_owned(),
            body,
            bearer,
        };
        match self.call(Op::Http(req)).await {
            Answer::Http(r) => r,
            _ => Err(Error::Protocol(
                "the shell answered an HTTP request with something else".into(),
            )),
        }
    }

    pub(crate) async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        bearer: Option<String>,
    ) -> Result<T, Error> {
        let reply = self.exchange(method, path, body, bearer).await?;
        decode_reply(reply)
    }
}

/// Turns a reply into the expected body or the server's error.
pub(crate) fn decode_reply<T: DeserializeOwned>(reply: HttpReply) -> Result<T, Error> {
    if (200..300).contains(&reply.status) {
        let body: &[u8] = if reply.status == 204 || reply.body.is_empty() {
            b"null"
        } else {
            &reply.body
        };
        serde_json::from_slice(body)
            .map_err(|e| Error::Protocol(format!("unexpected answer from server: {e}")))
    } else {
        match serde_json::from_slice::<ErrorBody>(&reply.body) {
            Ok(body) => Err(Error::Api {
                status: reply.status,
                code: body.code,
                message: body.message,
                current_epoch: body.current_epoch,
            }),
            Err(_) => Err(Error::Api {
                status: reply.status,
                code: ErrorCode::Internal,
                message: format!("server answered {}", reply.status),
                current_epoch: None,
            }),
        }
    }
}

pub(crate) fn json_body<B: Serialize + ?Sized>(body: &B) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(body).map_err(|e| Error::Storage(format!("encoding a request: {e}")))
}

/// One client operation in progress. Step it until it is [`Step::Done`].
pub struct Task<T> {
    fut: Pin<Box<dyn Future<Output = Result<T, Error>>>>,
    slot: Rc<RefCell<Slot>>,
    done: bool,
}

impl<T> std::fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: 'static> Task<T> {
    pub(crate) fn new(io: Io, fut: impl Future<Output = Result<T, Error>> + 'static) -> Self {
        Self {
            fut: Box::pin(fut),
            slot: io.slot,
            done: false,
        }
    }

    /// A task whose result goes through `f`.
    pub fn map<U: 'static>(self, f: impl FnOnce(T) -> U + 'static) -> Task<U> {
        let fut = self.fut;
        Task {
            fut: Box::pin(async move { fut.await.map(f) }),
            slot: self.slot,
            done: self.done,
        }
    }

    /// Runs the task until it needs something or finishes. The first call takes `None`; every
    /// later one the answer to the [`Op`] the previous call handed out. Stepping a finished task
    /// reports an error instead of panicking.
    pub fn step(&mut self, answer: Option<Answer>) -> Step<T> {
        if self.done {
            return Step::Done(Err(Error::Protocol("stepped a finished task".into())));
        }
        if let Some(a) = answer {
            let mut slot = self.slot.borrow_mut();
            if matches!(*slot, Slot::Waiting) {
                *slot = Slot::In(a);
            }
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => {
                self.done = true;
                Step::Done(r)
            }
            Poll::Pending => {
                let mut slot = self.slot.borrow_mut();
                match std::mem::take(&mut *slot) {
                    Slot::Out(op) => {
                        *slot = Slot::Waiting;
                        Step::Op(op)
                    }
                    other => {
                        // Pending without a request: only an answer of the wrong kind, or none,
                        // gets here. Finish with an error rather than spin.
                        *slot = other;
                        self.done = true;
                        Step::Done(Err(Error::Protocol(
                            "task waited without asking for anything (stepped without an answer?)"
                                .into(),
                        )))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_api::{ConversationList, LogPage};

    fn ok(body: &str) -> HttpReply {
        HttpReply {
            status: 200,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_servers_malformed_id_is_refused_before_anything_reads_it() {
        let conv = "0123456789abcdef0123456789abcdef";
        let list = |id: &str, member: &str| {
            ok(&format!(
                r#"{{"conversations":[{{"id":"{id}","kind":"dm","epoch":1,"last_seq":1,"members":["{member}"]}}]}}"#
            ))
        };
        let good: ConversationList = decode_reply(list(conv, "alice")).unwrap();
        assert_eq!(good.conversations[0].id, conv);
        let page = r#"{"entries":[{"seq":1,"epoch":1,"kind":"message","sender_device":"zz","data":""}],"more":false}"#;
        for (err, what) in [
            (
                decode_reply::<ConversationList>(list("../../x", "alice")).unwrap_err(),
                "invalid conversation id",
            ),
            (
                decode_reply::<ConversationList>(list(conv, "ALICE")).unwrap_err(),
                "invalid username",
            ),
            (
                decode_reply::<ConversationList>(ok(&format!(
                    r#"{{"conversations":[{{"id":"{conv}","kind":"ALICE","epoch":1,"last_seq":1,"members":[]}}]}}"#
                )))
                .unwrap_err(),
                "invalid conversation kind",
            ),
            (
                decode_reply::<LogPage>(ok(page)).unwrap_err(),
                "invalid device id",
            ),
        ] {
            let text = err.to_string();
            assert!(matches!(err, Error::Protocol(_)), "{text}");
            assert!(text.contains(what), "{text}");
            // The message names the kind of id, never the server's bytes.
            assert!(
                !text.contains("../../x") && !text.contains("ALICE"),
                "{text}"
            );
        }
    }
}
