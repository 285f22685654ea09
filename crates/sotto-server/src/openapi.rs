//! The OpenAPI 3.1 document served at `GET /openapi.json`, generated: the schemas come from
//! `sotto-api`'s wire types (feature `openapi`) and the operations from the handlers' attributes.
//! What is common to many operations (the bearer scheme, the errors every authenticated or
//! rate-limited route can answer) is added here once. A test checks that every route is
//! documented and nothing else is; `tests/schemathesis.rs` checks the document against a running
//! server.

use serde_json::{json, Value};
use sotto_api::ErrorBody;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, RefOr};
use utoipa::{Modify, OpenApi};

use crate::http;

/// Routes whose requests take a token from a rate-limit bucket (each operation checks its own, in `ds`): they can
/// answer 429 with `Retry-After`.
const LIMITED: &[(&str, &str)] = &[
    ("post", "/v1/accounts"),
    ("post", "/v1/key-packages/claim"),
    ("post", "/v1/conversations/{id}/commits"),
    ("post", "/v1/conversations/{id}/messages"),
    ("post", "/v1/conversations/{id}/ephemeral"),
    ("post", "/v1/links/fetch"),
    ("post", "/v1/links/redeem"),
    ("get", "/v1/ws"),
];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sottod",
        description = "Sotto delivery service: stores and forwards MLS ciphertext only. Every \
                       error is `ErrorBody` with a stable `code`. Push frames over `/v1/ws` are \
                       `ServerFrame` (server to client) and `ClientFrame` (client to server)."
    ),
    paths(
        http::register,
        http::account,
        http::upload_kps,
        http::revoke_device,
        http::kp_count,
        http::claim,
        http::create_dm,
        http::create_group,
        http::conversations,
        http::leave,
        http::commit,
        http::send,
        http::ephemeral,
        http::log,
        http::inbox,
        http::ack_inbox,
        http::create_link,
        http::fetch_link,
        http::redeem_link,
        http::ws,
        http::openapi,
        http::health,
        http::health_alias,
        http::ready,
        http::metrics_text,
        crate::blobs::create,
        crate::blobs::options,
        crate::blobs::download,
        crate::blobs::status,
        crate::blobs::append,
        crate::blobs::terminate,
    ),
    // Bodies bring their schemas; parameters' and frames' are named here.
    components(schemas(
        sotto_api::ServerFrame,
        sotto_api::ClientFrame,
        ErrorBody,
        sotto_api::schema::Username,
        sotto_api::schema::DeviceId,
        sotto_api::schema::ConversationId,
        sotto_api::schema::BlobId,
        TusVersion,
        UploadMetadata,
        ByteRange,
    )),
    modifiers(&Common)
)]
struct ApiDoc;

/// What many operations share.
struct Common;

/// A response carrying an [`ErrorBody`].
fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "ErrorBody",
        )))),
    )
}

/// Documents `status` on `op`, unless its own attribute already does.
fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| error_response(description).into());
}

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "device",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`DEVICE_ID:SECRET`, from registration or a link"))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [
                ("get", item.get.as_mut()),
                ("post", item.post.as_mut()),
                ("put", item.put.as_mut()),
                ("delete", item.delete.as_mut()),
                ("head", item.head.as_mut()),
                ("patch", item.patch.as_mut()),
                ("options", item.options.as_mut()),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let takes_input = op.request_body.is_some()
                    || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if takes_input {
                    add(
                        op,
                        "400",
                        "`bad_request`: a malformed body, parameter or header",
                    );
                }
                if op.request_body.is_some() {
                    add(
                        op,
                        "413",
                        "`payload_too_large`: the body is over the server's limit",
                    );
                }
                if op.security.is_some() {
                    add(
                        op,
                        "401",
                        "`unauthorized`: a missing, wrong or revoked device token",
                    );
                    add(
                        op,
                        "403",
                        "`account_locked`: the server's operator locked this account; \
                         `forbidden`: not allowed",
                    );
                }
                if LIMITED.contains(&(method, path.as_str())) {
                    let limited =
                        error_response("`rate_limited`: try again after `Retry-After` seconds")
                            .header(
                                "Retry-After",
                                utoipa::openapi::header::Header::new(
                                    ObjectBuilder::new().schema_type(Type::Integer),
                                ),
                            );
                    op.responses
                        .responses
                        .insert("429".to_owned(), limited.into());
                }
                if path.starts_with("/v1/") {
                    add(
                        op,
                        "500",
                        "`internal`: a server-side failure; nothing was changed",
                    );
                    if matches!(method, "post" | "patch") {
                        add(
                            op,
                            "507",
                            "`storage_full`: the server's storage is full; nothing was changed",
                        );
                    }
                }
            }
        }
    }
}

sotto_api::schema_type!(
    /// `Tus-Resumable`.
    TusVersion,
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([crate::blobs::TUS_VERSION]))
);

sotto_api::schema_type!(
    /// `Upload-Metadata`: the conversation, base64 of its id.
    UploadMetadata,
    ObjectBuilder::new()
        .schema_type(Type::String)
        // Base64 of 32 bytes: 43 characters, the last with its low bits clear, and one `=`.
        .pattern(Some("^conversation [A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"))
        .description(Some("`conversation ` and the base64 of the conversation's id"))
);

sotto_api::schema_type!(
    /// `Range`: one range of bytes.
    ByteRange,
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^bytes=([0-9]{1,19}-[0-9]{0,19}|-[0-9]{1,19})$"))
);

/// The document, with the default file size limit.
pub fn document() -> Value {
    document_with(crate::blobs::DEFAULT_MAX_FILE_BYTES)
}

/// The document, announcing `max_file_bytes` as the largest attachment.
pub fn document_with(max_file_bytes: u64) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let max_upload = sotto_proto::attachment::blob_len(max_file_bytes);
    let create = &mut doc["paths"]["/v1/blobs"]["post"];
    create["x-max-file-bytes"] = json!(max_file_bytes);
    create["x-max-upload-bytes"] = json!(max_upload);
    if let Some(params) = create["parameters"].as_array_mut() {
        for p in params {
            if p["name"] == "Upload-Length" {
                p["schema"]["maximum"] = json!(max_upload);
            }
        }
    }
    let suites = sotto_proto::mls::SUPPORTED_CIPHERSUITES.map(u16::from);
    doc["components"]["schemas"]["Ciphersuite"]["enum"] = json!(suites);
    doc
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
                if method != "parameters" {
                    documented.push((method.clone(), path.clone()));
                }
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
        for (method, path) in LIMITED {
            assert!(
                doc["paths"][path][method]["responses"]["429"].is_object(),
                "{method} {path}"
            );
        }
    }

    /// Each frame as serde writes it has the shape of its `oneOf` member in the document: the
    /// member whose `type` names it, with every required property and none it does not list.
    #[test]
    fn websocket_frames_match_their_schemas() {
        use sotto_api::*;
        let doc = document();
        let check = |schema: &str, frame: Value| {
            let members = doc["components"]["schemas"][schema]["oneOf"]
                .as_array()
                .unwrap_or_else(|| panic!("{schema} has no oneOf"));
            let ty = frame["type"].as_str().unwrap();
            let member = members
                .iter()
                .find(|m| m["properties"]["type"]["enum"][0] == ty)
                .unwrap_or_else(|| panic!("{schema}: no member for {ty}"));
            let props = member["properties"].as_object().unwrap();
            for key in frame.as_object().unwrap().keys() {
                assert!(props.contains_key(key), "{schema}.{ty}: {key} undocumented");
            }
            for req in member["required"].as_array().unwrap() {
                assert!(
                    frame.get(req.as_str().unwrap()).is_some(),
                    "{schema}.{ty}: {req} missing"
                );
            }
        };
        let accepted = Accepted {
            seq: 1,
            epoch: 2,
            accepted_at: 3,
            expires_at: Some(4),
        };
        let id = ConversationId::new("0".repeat(32)).unwrap();
        let device = DeviceId::new("1".repeat(32)).unwrap();
        let server = [
            ServerFrame::Ready,
            ServerFrame::Conversation {
                id: id.clone(),
                seq: 1,
            },
            ServerFrame::Inbox,
            ServerFrame::Devices,
            ServerFrame::Resync,
            ServerFrame::Entry {
                id: id.clone(),
                entry: LogEntry {
                    seq: 1,
                    epoch: 1,
                    kind: EntryKind::Message,
                    sender_device: device.clone(),
                    data: B64(vec![1]),
                    accepted_at: 1,
                    expires_at: None,
                },
            },
            ServerFrame::Ephemeral {
                id: id.clone(),
                seq: 1,
                sender_device: device.clone(),
                message: B64(vec![1]),
            },
            ServerFrame::Sent {
                reference: 1,
                accepted,
            },
            ServerFrame::Refused {
                reference: 1,
                status: 429,
                error: ErrorBody {
                    code: ErrorCode::RateLimited,
                    message: "slow".into(),
                    current_epoch: None,
                },
                retry_after: Some(1),
            },
        ];
        for f in server {
            check("ServerFrame", serde_json::to_value(&f).unwrap());
        }
        for f in [
            ClientFrame::Read {
                id: id.clone(),
                seq: 1,
            },
            ClientFrame::Send {
                reference: 1,
                id: id.clone(),
                message: B64(vec![1]),
            },
        ] {
            check("ClientFrame", serde_json::to_value(&f).unwrap());
        }
    }

    #[test]
    fn patterns_are_the_rules_the_server_checks() {
        let doc = document();
        let s = &doc["components"]["schemas"];
        assert_eq!(s["Username"]["pattern"], sotto_api::USERNAME_PATTERN);
        assert_eq!(s["DeviceId"]["pattern"], sotto_api::HEX32_PATTERN);
        assert_eq!(s["LinkId"]["pattern"], sotto_api::HEX64_PATTERN);
        assert_eq!(s["Ciphersuite"]["enum"].as_array().unwrap().len(), 2);
        // The bounds written as literals in the attributes are the server's constants.
        assert_eq!(
            s["NewDevice"]["properties"]["key_packages"]["maxItems"],
            crate::ds::MAX_KEY_PACKAGES_PER_UPLOAD
        );
        let limit = doc["paths"]["/v1/conversations/{id}/log"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["maximum"], crate::ds::MAX_LOG_PAGE);
        let username = regex::Regex::new(sotto_api::USERNAME_PATTERN).unwrap();
        // The username rule and its pattern agree on every case that matters.
        for name in [
            "abc",
            "a_b.c-d",
            "ab",
            "Abc",
            "a b",
            &"a".repeat(32),
            &"a".repeat(33),
            "é12",
        ] {
            assert_eq!(
                username.is_match(name),
                sotto_proto::Username::new(name).is_ok(),
                "{name}"
            );
        }
        let hex32 = regex::Regex::new(sotto_api::HEX32_PATTERN).unwrap();
        for id in [
            "0123456789abcdef0123456789abcdef",
            "0123456789ABCDEF0123456789abcdef",
            "0123",
        ] {
            assert_eq!(hex32.is_match(id), sotto_api::is_hex_id(id, 32), "{id}");
        }
    }
}
