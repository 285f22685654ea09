//! The engine's boundary, stepped by hand: a task hands out exactly the requests the client
//! must make and finishes on the answers it is given, with no server, socket or clock. (The
//! end-to-end suites in sotto-client and sotto-cli drive the same tasks against a real sottod.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sotto_engine::account::Registration;
use sotto_engine::{Answer, Engine, Error, HttpReply, MemoryStore, Method, Op, Step, Task};

fn expect_op<T: std::fmt::Debug>(step: Step<T>) -> Op {
    match step {
        Step::Op(op) => op,
        Step::Done(r) => panic!("expected a request, the task finished: {r:?}"),
    }
}

fn json(status: u16, v: serde_json::Value) -> Answer {
    Answer::Http(Ok(HttpReply {
        status,
        body: serde_json::to_vec(&v).unwrap(),
    }))
}

/// Answers time requests until the task asks for something else.
fn step_past_clock<T: std::fmt::Debug + 'static>(
    task: &mut Task<T>,
    mut answer: Option<Answer>,
) -> Step<T> {
    loop {
        match task.step(answer.take()) {
            Step::Op(Op::Now) => answer = Some(Answer::Now(1_764_000_000_000)),
            other => return other,
        }
    }
}

#[test]
fn an_unregistered_device_refuses_to_sync_without_asking_anything() {
    let engine = Engine::new(Box::new(MemoryStore::new())).unwrap();
    match engine.sync().step(None) {
        Step::Done(Err(Error::NotRegistered)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn registration_is_one_request_and_later_requests_carry_the_token() {
    let engine = Engine::new(Box::new(MemoryStore::new())).unwrap();
    let mut task = engine.register(
        "alice",
        Registration {
            server: "https://sotto.example".into(),
            ca_pem: None,
        },
    );
    let Op::Http(req) = expect_op(step_past_clock(&mut task, None)) else {
        panic!("expected an HTTP request");
    };
    assert_eq!(req.method, Method::Post);
    assert_eq!(req.path, "/v1/accounts");
    assert!(req.bearer.is_none(), "registration has no token yet");
    let body: serde_json::Value = serde_json::from_slice(req.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["username"], "alice");
    assert_eq!(
        body["device"]["key_packages"].as_array().unwrap().len(),
        100
    );
    let done = step_past_clock(
        &mut task,
        Some(json(
            201,
            serde_json::json!({"device_id": "00".repeat(16), "token": "dev:secret"}),
        )),
    );
    assert!(matches!(done, Step::Done(Ok(()))), "{done:?}");
    assert_eq!(engine.username().as_deref(), Some("alice"));
    assert_eq!(
        engine.server().unwrap().as_deref(),
        Some("https://sotto.example")
    );

    // A sync starts with the inbox, as this device.
    let mut sync = engine.sync();
    let Op::Http(req) = expect_op(step_past_clock(&mut sync, None)) else {
        panic!("expected an HTTP request");
    };
    assert_eq!((req.method, req.path.as_str()), (Method::Get, "/v1/inbox"));
    assert_eq!(req.bearer.as_deref(), Some("dev:secret"));
    assert!(
        !format!("{req:?}").contains("secret"),
        "the token is never printed"
    );
    // The server's refusal is the task's error, as the server said it.
    let done = step_past_clock(
        &mut sync,
        Some(json(
            503,
            serde_json::json!({"code": "internal", "message": "try later"}),
        )),
    );
    match done {
        Step::Done(Err(Error::Api {
            status: 503,
            message,
            ..
        })) => assert_eq!(message, "try later"),
        other => panic!("{other:?}"),
    }
    // A finished task says so instead of panicking.
    assert!(matches!(sync.step(None), Step::Done(Err(_))));
}

#[test]
fn a_second_registration_is_refused_locally() {
    let engine = Engine::new(Box::new(MemoryStore::new())).unwrap();
    let at = Registration {
        server: "https://sotto.example".into(),
        ca_pem: None,
    };
    let mut task = engine.register("alice", at.clone());
    step_past_clock(&mut task, None);
    step_past_clock(
        &mut task,
        Some(json(
            201,
            serde_json::json!({"device_id": "00".repeat(16), "token": "t"}),
        )),
    );
    match engine.register("alice", at).step(None) {
        Step::Done(Err(Error::AlreadyRegistered(u))) => assert_eq!(u, "alice"),
        other => panic!("{other:?}"),
    }
}
