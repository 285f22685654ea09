//! `sotto-wasm`: the engine for JavaScript hosts.
//!
//! A [`Device`] is one engine over the in-memory store. JavaScript starts an operation
//! (`startRegister`, `startSendDm`, `startSync`), then calls `step` with the answer to the previous
//! request until it says `done`: each step returns one JSON object, `{"op":"http", "method",
//! "path", "body", "bearer"}`, `{"op":"sleep","ms"}`, `{"op":"now"}` or `{"op":"done", "ok" |
//! "error"}`; the host answers with `{"status", "body"}` (or `{"error"}` if the request failed),
//! `{"slept":true}` or `{"now": ms}`. The host performs the fetches; the engine never sees a socket,
//! and its keys never leave this module's memory. This is the boundary the web client's worker
//! uses; `scripts/wasm-check` runs a DM between two devices through it under Node against a real
//! sottod.
#![cfg(target_arch = "wasm32")]
#![deny(missing_docs)]

use serde_json::{json, Value};
use sotto_engine::account::Registration;
use sotto_engine::{Answer, Engine, Error, HttpReply, MemoryStore, Method, Op, Step, Task};
use wasm_bindgen::prelude::*;

/// One device: an engine over an in-memory store, and the operation in progress.
#[wasm_bindgen]
pub struct Device {
    engine: Engine,
    task: Option<Task<Value>>,
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn parse_answer(text: &str) -> Result<Option<Answer>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("host answer is not JSON: {e}")))?;
    if let Some(ms) = v.get("now").and_then(Value::as_u64) {
        return Ok(Some(Answer::Now(ms)));
    }
    if v.get("slept").is_some() {
        return Ok(Some(Answer::Slept));
    }
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Ok(Some(Answer::Http(Err(Error::Unreachable {
            server: e.to_owned(),
        }))));
    }
    let status = v
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or_else(|| Error::Invalid("host answer has no status".into()))?;
    let body = v
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or("")
        .as_bytes()
        .to_vec();
    Ok(Some(Answer::Http(Ok(HttpReply { status, body }))))
}

fn op_json(op: Op) -> Value {
    match op {
        Op::Http(r) => json!({
            "op": "http",
            "method": match r.method { Method::Get => "GET", Method::Post => "POST", Method::Delete => "DELETE" },
            "path": r.path,
            "body": r.body.map(|b| String::from_utf8_lossy(&b).into_owned()),
            "bearer": r.bearer,
        }),
        Op::Sleep(ms) => json!({"op": "sleep", "ms": ms}),
        Op::Now => json!({"op": "now"}),
    }
}

#[wasm_bindgen]
impl Device {
    /// A new, unregistered device in memory.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<Device, JsError> {
        Ok(Device {
            engine: Engine::new(Box::new(MemoryStore::new())).map_err(js_err)?,
            task: None,
        })
    }

    fn start<T: serde::Serialize + 'static>(&mut self, task: Task<T>) {
        self.task = Some(task.map(|v| serde_json::to_value(v).unwrap_or(Value::Null)));
    }

    /// Starts registering `username` at `server`.
    #[wasm_bindgen(js_name = startRegister)]
    pub fn start_register(&mut self, username: &str, server: &str) {
        let at = Registration {
            server: server.to_owned(),
            ca_pem: None,
        };
        self.start(self.engine.register(username, at));
    }

    /// Starts sending a DM (after a sync); the result is the sent message.
    #[wasm_bindgen(js_name = startSendDm)]
    pub fn start_send_dm(&mut self, peer: &str, text: &str) {
        self.start(self.engine.send_dm(peer, text).map(|(m, _)| m));
    }

    /// Starts a sync; the result is its warnings.
    #[wasm_bindgen(js_name = startSync)]
    pub fn start_sync(&mut self) {
        self.start(self.engine.sync().map(|r| r.warnings));
    }

    /// Steps the operation in progress with the answer to its last request (`""` the first time).
    pub fn step(&mut self, answer: &str) -> Result<String, JsError> {
        let task = self
            .task
            .as_mut()
            .ok_or_else(|| js_err("no operation in progress"))?;
        let step = match parse_answer(answer) {
            Ok(a) => task.step(a),
            Err(e) => Step::Done(Err(e)),
        };
        let out = match step {
            Step::Op(op) => op_json(op),
            Step::Done(r) => {
                self.task = None;
                match r {
                    Ok(v) => json!({"op": "done", "ok": v}),
                    Err(e) => json!({"op": "done", "error": e.to_string()}),
                }
            }
        };
        Ok(out.to_string())
    }

    /// Messages received and not shown yet, as a JSON array; marks them shown.
    #[wasm_bindgen(js_name = takeUnshown)]
    pub fn take_unshown(&self) -> Result<String, JsError> {
        let msgs = self.engine.take_unshown().map_err(js_err)?;
        serde_json::to_string(&msgs).map_err(js_err)
    }

    /// The registered username, if any.
    pub fn username(&self) -> Option<String> {
        self.engine.username()
    }
}
