//! The OpenAPI 3 document served at `GET /openapi.json`. Kept beside the router; a test checks that
//! every route is documented and nothing else is.

use serde_json::{json, Map, Value};

struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: bool,
    request: Option<&'static str>,
    response: Option<(&'static str, &'static str)>,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: bool,
    request: Option<&'static str>,
    response: Option<(&'static str, &'static str)>,
) -> Op {
    Op {
        method,
        path,
        summary,
        auth,
        request,
        response,
    }
}

const OPS: &[Op] = &[
    op(
        "post",
        "/v1/accounts",
        "Register an account and its first device",
        false,
        Some("RegisterRequest"),
        Some(("201", "RegisterResponse")),
    ),
    op(
        "get",
        "/v1/accounts/{username}",
        "An account's identity key and devices",
        true,
        None,
        Some(("200", "AccountInfo")),
    ),
    op(
        "post",
        "/v1/key-packages",
        "Upload key packages for the calling device",
        true,
        Some("UploadKeyPackages"),
        Some(("200", "KeyPackageCount")),
    ),
    op(
        "delete",
        "/v1/devices/{device_id}",
        "Revoke a device of the caller's account: its token stops working at once, it stops being a member device of every conversation (the account's other devices remove it from the MLS groups), and the account's last device cannot be revoked",
        true,
        None,
        None,
    ),
    op(
        "get",
        "/v1/key-packages/count",
        "Count the calling device's one-time key packages",
        true,
        None,
        Some(("200", "KeyPackageCount")),
    ),
    op(
        "post",
        "/v1/key-packages/claim",
        "Claim one key package per device of an account",
        true,
        Some("ClaimRequest"),
        Some(("200", "ClaimResponse")),
    ),
    op(
        "post",
        "/v1/dms",
        "Get or create the DM conversation with another account",
        true,
        Some("CreateDmRequest"),
        Some(("200", "ConversationInfo")),
    ),
    op(
        "post",
        "/v1/groups",
        "Create an empty group owned by the caller (its first commit adds the members)",
        true,
        Some("CreateGroupRequest"),
        Some(("201", "ConversationInfo")),
    ),
    op(
        "post",
        "/v1/conversations/{id}/leave",
        "Leave a group (an admin's device then removes the caller's devices from the MLS group)",
        true,
        None,
        None,
    ),
    op(
        "get",
        "/v1/conversations",
        "The calling account's conversations",
        true,
        None,
        Some(("200", "ConversationList")),
    ),
    op(
        "post",
        "/v1/conversations/{id}/commits",
        "Post a commit bundle (first commit for an epoch wins; 409 stale_epoch otherwise)",
        true,
        Some("CommitRequest"),
        Some(("200", "Accepted")),
    ),
    op(
        "post",
        "/v1/conversations/{id}/messages",
        "Post an MLS application message for the current epoch",
        true,
        Some("SendRequest"),
        Some(("200", "Accepted")),
    ),
    op(
        "post",
        "/v1/conversations/{id}/ephemeral",
        "Relay an MLS application message (a typing indicator, at most 1 KiB) to the conversation's connected devices as an ephemeral frame; never stored",
        true,
        Some("SendRequest"),
        None,
    ),
    op(
        "get",
        "/v1/conversations/{id}/log",
        "Log entries after a sequence number (query: after, limit, read)",
        true,
        None,
        Some(("200", "LogPage")),
    ),
    op(
        "get",
        "/v1/inbox",
        "The calling device's pending welcomes",
        true,
        None,
        Some(("200", "Inbox")),
    ),
    op(
        "post",
        "/v1/inbox/ack",
        "Delete processed inbox items",
        true,
        Some("InboxAck"),
        None,
    ),
    op(
        "post",
        "/v1/links",
        "Offer a device link (encrypted account bundle under a hash-derived id)",
        true,
        Some("CreateLinkRequest"),
        Some(("201", "LinkCreated")),
    ),
    op(
        "post",
        "/v1/links/fetch",
        "Fetch a pending link's encrypted bundle",
        false,
        Some("LinkFetchRequest"),
        Some(("200", "LinkBundle")),
    ),
    op(
        "post",
        "/v1/links/redeem",
        "Register a new device through a link (consumes it)",
        false,
        Some("LinkRedeemRequest"),
        Some(("201", "RegisterResponse")),
    ),
    op(
        "get",
        "/v1/ws",
        "WebSocket channel. Server frames {type: ready|conversation|entry|ephemeral|inbox|devices|resync|sent|refused}; client frames (at most 4 KiB) {type: read, id, seq} (read position) and {type: send, ref, id, message} (post a message as POST .../messages does, answered by sent or refused with the same ref; at most 64 unanswered)",
        true,
        None,
        None,
    ),
    op("get", "/openapi.json", "This document", false, None, None),
    op("get", "/health", "Liveness (the same as /healthz)", false, None, None),
    op("get", "/healthz", "Liveness: the process answers", false, None, None),
    op(
        "get",
        "/metrics",
        "Prometheus metrics (text format 0.0.4); 404 when the operator serves them on their own address (--metrics-listen). No label names an account, device, conversation or message",
        false,
        None,
        None,
    ),
    op(
        "get",
        "/readyz",
        "Readiness: 200 while this node serves and reaches its store and bus; 503 unavailable while it drains for shutdown or when either is unreachable",
        false,
        None,
        None,
    ),
    op(
        "post",
        "/v1/blobs",
        "Create a resumable upload (tus 1.0 creation) of an encrypted attachment for a conversation this device is a member of; answers 201 with Location. A file over the limit (x-max-file-bytes, and Tus-Max-Size from OPTIONS) is refused with 413 before any byte is sent",
        true,
        None,
        None,
    ),
    op(
        "options",
        "/v1/blobs",
        "tus discovery: Tus-Version, Tus-Extension (creation, termination) and Tus-Max-Size",
        false,
        None,
        None,
    ),
    op(
        "head",
        "/v1/blobs/{id}",
        "How much of an upload has arrived (Upload-Offset, Upload-Length): where to resume",
        true,
        None,
        None,
    ),
    op(
        "patch",
        "/v1/blobs/{id}",
        "Append to an upload at Upload-Offset (Content-Type application/offset+octet-stream); 409 if the offset is not the upload's; the last byte finishes the blob",
        true,
        None,
        None,
    ),
    op(
        "delete",
        "/v1/blobs/{id}",
        "Remove an upload or blob (its uploading device only)",
        true,
        None,
        None,
    ),
    op(
        "get",
        "/v1/blobs/{id}",
        "Download a finished blob, whole or one Range (206), as a member device of its conversation; 404 otherwise",
        true,
        None,
        None,
    ),
];

fn obj(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "required": required, "properties": props})
}

fn schemas() -> Value {
    let b64 = json!({"type": "string", "format": "byte"});
    let s = json!({"type": "string"});
    let u = json!({"type": "integer", "format": "int64", "minimum": 0});
    let new_device = obj(
        &["certificate", "key_packages", "last_resort_key_packages"],
        json!({"certificate": b64, "key_packages": {"type": "array", "items": b64}, "last_resort_key_packages": {"type": "array", "items": b64}}),
    );
    json!({
        "Error": obj(&["code", "message"], json!({"code": {"type": "string", "enum": ["bad_request","unauthorized","forbidden","not_found","username_taken","stale_epoch","conflict","payload_too_large","link_expired","no_key_package","rate_limited","method_not_allowed","storage_full","internal"]}, "message": s, "current_epoch": u})),
        "NewDevice": new_device,
        "RegisterRequest": obj(&["username", "identity_key", "device"], json!({"username": s, "identity_key": b64, "device": {"$ref": "#/components/schemas/NewDevice"}})),
        "RegisterResponse": obj(&["device_id", "token"], json!({"device_id": s, "token": s})),
        "AccountInfo": obj(&["username", "identity_key", "devices"], json!({"username": s, "identity_key": b64, "devices": {"type": "array", "items": obj(&["device_id", "certificate", "created_at"], json!({"device_id": s, "certificate": b64, "created_at": s}))}, "revoked_devices": {"type": "array", "items": s}})),
        "UploadKeyPackages": obj(&["key_packages"], json!({"key_packages": {"type": "array", "items": b64}, "last_resort_key_packages": {"type": "array", "items": b64}})),
        "KeyPackageCount": obj(&["count"], json!({"count": u, "classic_count": u})),
        "ClaimRequest": obj(&["username"], json!({"username": s, "devices": {"type": "array", "items": s}, "ciphersuite": u})),
        "ClaimResponse": obj(&["key_packages"], json!({"key_packages": {"type": "array", "items": obj(&["device_id", "key_package"], json!({"device_id": s, "key_package": b64}))}})),
        "CreateDmRequest": obj(&["peer"], json!({"peer": s})),
        "CreateGroupRequest": obj(&[], json!({})),
        "ConversationInfo": obj(&["id", "kind", "epoch", "last_seq", "members"], json!({"id": s, "kind": s, "epoch": u, "last_seq": u, "members": {"type": "array", "items": s}, "departed": {"type": "array", "items": s}})),
        "ConversationList": obj(&["conversations"], json!({"conversations": {"type": "array", "items": {"$ref": "#/components/schemas/ConversationInfo"}}})),
        "CommitRequest": obj(&["epoch", "commit"], json!({"epoch": u, "commit": b64, "welcome": b64, "initial_group_info": b64})),
        "SendRequest": obj(&["message"], json!({"message": b64, "attachments": {"type": "array", "maxItems": 32, "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}})),
        "Accepted": obj(&["seq", "epoch", "accepted_at"], json!({"seq": u, "epoch": u, "accepted_at": u, "expires_at": u})),
        "LogPage": obj(&["entries", "more"], json!({"more": {"type": "boolean"}, "entries": {"type": "array", "items": obj(&["seq", "epoch", "kind", "sender_device", "data", "accepted_at"], json!({"seq": u, "epoch": u, "kind": {"type": "string", "enum": ["commit", "message"]}, "sender_device": s, "data": b64, "accepted_at": u, "expires_at": u}))}})),
        "Inbox": obj(&["items"], json!({"items": {"type": "array", "items": obj(&["id", "conversation", "seq", "welcome"], json!({"id": u, "conversation": s, "seq": u, "welcome": b64}))}})),
        "InboxAck": obj(&["up_to"], json!({"up_to": u})),
        "CreateLinkRequest": obj(&["link_id", "bundle"], json!({"link_id": s, "bundle": b64})),
        "LinkCreated": obj(&["expires_at"], json!({"expires_at": s})),
        "LinkFetchRequest": obj(&["link_id"], json!({"link_id": s})),
        "LinkBundle": obj(&["username", "bundle"], json!({"username": s, "bundle": b64})),
        "LinkRedeemRequest": obj(&["link_id", "device"], json!({"link_id": s, "device": {"$ref": "#/components/schemas/NewDevice"}})),
    })
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The document, with the default file size limit.
pub fn document() -> Value {
    document_with(crate::blobs::DEFAULT_MAX_FILE_BYTES)
}

/// The headers a blob operation takes.
fn blob_headers(method: &str) -> Vec<Value> {
    let h = |name: &str, required: bool, schema: Value| json!({"name": name, "in": "header", "required": required, "schema": schema});
    let tus = h(
        "Tus-Resumable",
        true,
        json!({"type": "string", "enum": ["1.0.0"]}),
    );
    let n = json!({"type": "integer", "minimum": 0});
    match method {
        "post" => vec![
            tus,
            h("Upload-Length", true, n),
            h(
                "Upload-Metadata",
                true,
                json!({"type": "string", "description": "conversation BASE64(id)"}),
            ),
        ],
        "patch" => vec![tus, h("Upload-Offset", true, n)],
        "get" => vec![h(
            "Range",
            false,
            json!({"type": "string", "pattern": "^bytes=[0-9]*-[0-9]*$"}),
        )],
        _ => vec![],
    }
}

/// The document, announcing `max_file_bytes` as the largest attachment.
pub fn document_with(max_file_bytes: u64) -> Value {
    let mut paths = Map::new();
    let err = json!({"description": "error", "content": {"application/json": {"schema": reference("Error")}}});
    for o in OPS {
        let mut operation = Map::new();
        operation.insert("summary".into(), json!(o.summary));
        let params: Vec<Value> = o
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .chain(if o.path.ends_with("/log") {
                vec![
                    json!({"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}}),
                    json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}),
                    json!({"name": "read", "in": "query", "description": "how far this device has read, when before `after` (default `after`)", "schema": {"type": "integer", "minimum": 0}}),
                ]
            } else if o.path.starts_with("/v1/blobs") {
                blob_headers(o.method)
            } else {
                vec![]
            })
            .collect();
        if o.path == "/v1/blobs" && o.method == "post" {
            operation.insert("x-max-file-bytes".into(), json!(max_file_bytes));
            operation.insert(
                "x-max-upload-bytes".into(),
                json!(sotto_proto::attachment::blob_len(max_file_bytes)),
            );
        }
        if !params.is_empty() {
            operation.insert("parameters".into(), Value::Array(params));
        }
        if o.auth {
            operation.insert("security".into(), json!([{"device": []}]));
        }
        if let Some(req) = o.request {
            operation.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": reference(req)}}}),
            );
        }
        let mut responses = Map::new();
        match o.response {
            Some((code, schema)) => {
                responses.insert(code.into(), json!({"description": "ok", "content": {"application/json": {"schema": reference(schema)}}}));
            }
            None => {
                responses.insert("default".into(), json!({"description": "ok"}));
            }
        }
        responses.insert("4XX".into(), err.clone());
        responses.insert("5XX".into(), err.clone());
        operation.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(o.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(o.method.into(), Value::Object(operation));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "sottod", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Sotto delivery service: stores and forwards MLS ciphertext only."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"device": {"type": "http", "scheme": "bearer", "description": "DEVICE_ID:SECRET"}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        let mut routes: Vec<(String, String)> = crate::http::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
        // Every referenced schema exists.
        let text = doc.to_string();
        for name in text.split("#/components/schemas/").skip(1) {
            let name = name.split('"').next().unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
        }
    }
}
