//! HTTP handlers: thin wrappers that authenticate, decode and call the
//! [`DeliveryService`](crate::ds::DeliveryService). A limited operation gets its JSON body as a
//! future ([`json_body`]) that the service reads only after the rate limit admits the request.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sotto_api::*;

use crate::ds::{Body, Caller, DsError};
use crate::AppState;

/// The authenticated calling device.
#[derive(Debug)]
pub struct Auth(pub Caller);

impl FromRequestParts<AppState> for Auth {
    type Rejection = DsError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, DsError> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(Auth(c.clone()));
        }
        let header_token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.strip_prefix("Bearer "));
        let token = match header_token {
            Some(t) => t.to_owned(),
            // Only the push channel takes the token as a subprotocol.
            None if parts.uri.path() == "/v1/ws" => {
                ws_protocol_token(&parts.headers).ok_or_else(DsError::unauthorized)?
            }
            None => return Err(DsError::unauthorized()),
        };
        let caller = state.ds.authenticate(&token).await?;
        parts.extensions.insert(caller.clone());
        Ok(Auth(caller))
    }
}

/// The subprotocol a browser's push connection asks for, and which the server selects: a browser
/// cannot set `Authorization` on a WebSocket, so it offers its token as a second subprotocol.
pub const WS_PROTOCOL: &str = "sotto.v1";
/// The prefix of that second subprotocol: `sotto.bearer.DEVICE.SECRET` for the token
/// `DEVICE:SECRET` (a subprotocol is an HTTP token, which cannot hold `:`). The server never
/// selects it, so it is not echoed back.
pub const WS_BEARER_PREFIX: &str = "sotto.bearer.";

/// The token offered as a subprotocol on a WebSocket upgrade, if any.
fn ws_protocol_token(headers: &axum::http::HeaderMap) -> Option<String> {
    if !headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    {
        return None;
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WS_BEARER_PREFIX))
        .and_then(|t| t.split_once('.'))
        .map(|(device, secret)| format!("{device}:{secret}"))
}

/// The peer's IP address, when the server runs behind a real listener (`None` in in-process tests
/// that call the router directly).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<crate::Peer>>()
                .map(|c| c.0 .0.ip()),
        ))
    }
}

fn rejection(status: StatusCode, text: String) -> DsError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        DsError::new(ErrorCode::PayloadTooLarge, "request body too large")
    } else {
        let mut text = text;
        let mut n = text.len().min(200);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        text.truncate(n);
        DsError::bad_request(text)
    }
}

/// A JSON body whose rejection is an [`DsError`].
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = DsError;

    async fn from_request(req: Request, state: &S) -> Result<Self, DsError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(|r: JsonRejection| rejection(r.status(), r.body_text()))
    }
}

/// A request's JSON body, read when the returned future is awaited: the delivery service awaits
/// it once the request is admitted by its rate limit.
fn json_body<T: DeserializeOwned + Send>(req: Request) -> impl Body<T> {
    async move {
        ApiJson::<T>::from_request(req, &())
            .await
            .map(|ApiJson(v)| v)
    }
}

/// A path parameter whose rejection is an [`DsError`].
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = DsError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, DsError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r: PathRejection| rejection(r.status(), r.body_text()))
    }
}

/// A query string whose rejection is an [`DsError`].
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = DsError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, DsError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r: QueryRejection| rejection(r.status(), r.body_text()))
    }
}

type ApiResult<T> = Result<Json<T>, DsError>;

/// Register an account and its first device.
///
/// The certificate must be signed by the identity key and name the username, and the key packages
/// must be the certificate's device's.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered; the token is shown once", body = RegisterResponse),
        (status = 400, description = "Malformed, or a certificate or key package that does not verify", body = ErrorBody),
        (status = 409, description = "`username_taken`", body = ErrorBody)))]
async fn register(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
) -> Result<(StatusCode, Json<RegisterResponse>), DsError> {
    let registered = s.ds.register(ip, json_body(req)).await?;
    Ok((StatusCode::CREATED, Json(registered)))
}

/// An account's identity key, devices and revoked devices.
#[utoipa::path(get, path = "/v1/accounts/{username}", tag = "accounts", security(("device" = [])),
    params(("username" = schema::Username, Path, description = "The account")),
    responses(
        (status = 200, description = "The account", body = AccountInfo),
        (status = 404, description = "No such account", body = ErrorBody)))]
async fn account(
    State(s): State<AppState>,
    Auth(_): Auth,
    ApiPath(name): ApiPath<Username>,
) -> ApiResult<AccountInfo> {
    Ok(Json(s.ds.account(&name).await?))
}

/// Upload key packages for the calling device.
#[utoipa::path(post, path = "/v1/key-packages", tag = "key packages", security(("device" = [])), request_body = UploadKeyPackages,
    responses(
        (status = 200, description = "How many the device now has", body = KeyPackageCount),
        (status = 400, description = "Malformed, or a key package that does not verify or is not this device's", body = ErrorBody)))]
async fn upload_kps(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiJson(req): ApiJson<UploadKeyPackages>,
) -> ApiResult<KeyPackageCount> {
    Ok(Json(s.ds.upload_key_packages(&c, req).await?))
}

/// Revoke a device of the caller's account.
///
/// Its token stops working at once, and it stops being a member device of every conversation (the
/// account's other devices remove it from the MLS groups). The account's last device cannot be
/// revoked.
#[utoipa::path(delete, path = "/v1/devices/{device_id}", tag = "accounts", security(("device" = [])),
    params(("device_id" = schema::DeviceId, Path, description = "A device of the caller's account")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such device of this account", body = ErrorBody),
        (status = 409, description = "The account's last device", body = ErrorBody)))]
async fn revoke_device(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(device_id): ApiPath<DeviceId>,
) -> Result<StatusCode, DsError> {
    s.ds.revoke_device(&c, &device_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Count the calling device's one-time key packages.
#[utoipa::path(get, path = "/v1/key-packages/count", tag = "key packages", security(("device" = [])),
    responses((status = 200, description = "The counts", body = KeyPackageCount)))]
async fn kp_count(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<KeyPackageCount> {
    Ok(Json(s.ds.key_package_count(&c).await?))
}

/// Claim one key package per device of an account.
#[utoipa::path(post, path = "/v1/key-packages/claim", tag = "key packages", security(("device" = [])), request_body = ClaimRequest,
    responses(
        (status = 200, description = "One key package per device that had one", body = ClaimResponse),
        (status = 404, description = "No such account", body = ErrorBody)))]
async fn claim(
    State(s): State<AppState>,
    Auth(c): Auth,
    ClientIp(ip): ClientIp,
    req: Request,
) -> ApiResult<ClaimResponse> {
    Ok(Json(s.ds.claim(&c, ip, json_body(req)).await?))
}

/// Get or create the DM conversation with another account.
#[utoipa::path(post, path = "/v1/dms", tag = "conversations", security(("device" = [])), request_body = CreateDmRequest,
    responses(
        (status = 200, description = "The DM", body = ConversationInfo),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "A DM with oneself", body = ErrorBody)))]
async fn create_dm(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiJson(req): ApiJson<CreateDmRequest>,
) -> ApiResult<ConversationInfo> {
    Ok(Json(s.ds.create_dm(&c, req).await?))
}

/// Create an empty group owned by the caller (its first commit adds the members).
#[utoipa::path(post, path = "/v1/groups", tag = "conversations", security(("device" = [])), request_body = CreateGroupRequest,
    responses((status = 201, description = "The group", body = ConversationInfo)))]
async fn create_group(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiJson(_req): ApiJson<CreateGroupRequest>,
) -> Result<(StatusCode, Json<ConversationInfo>), DsError> {
    Ok((StatusCode::CREATED, Json(s.ds.create_group(&c).await?)))
}

/// Leave a group (an admin's device then removes the caller's devices from the MLS group).
#[utoipa::path(post, path = "/v1/conversations/{id}/leave", tag = "conversations", security(("device" = [])),
    params(("id" = schema::ConversationId, Path, description = "The group")),
    responses(
        (status = 204, description = "Left"),
        (status = 404, description = "No such conversation of the caller's", body = ErrorBody),
        (status = 409, description = "A DM, or the group's last admin while others remain", body = ErrorBody)))]
async fn leave(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<StatusCode, DsError> {
    s.ds.leave(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The calling account's conversations.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", security(("device" = [])),
    responses((status = 200, description = "Its conversations", body = ConversationList)))]
async fn conversations(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<ConversationList> {
    Ok(Json(s.ds.conversations(&c).await?))
}

/// Post a commit bundle (the first commit for an epoch wins).
#[utoipa::path(post, path = "/v1/conversations/{id}/commits", tag = "conversations", security(("device" = [])),
    params(("id" = schema::ConversationId, Path, description = "The conversation")),
    request_body = CommitRequest,
    responses(
        (status = 200, description = "Accepted", body = Accepted),
        (status = 400, description = "Malformed, or MLS content that does not verify", body = ErrorBody),
        (status = 404, description = "No such conversation of the caller's", body = ErrorBody),
        (status = 409, description = "`stale_epoch` (with `current_epoch`), or a conflicting change", body = ErrorBody)))]
async fn commit(
    State(s): State<AppState>,
    Auth(c): Auth,
    ClientIp(ip): ClientIp,
    ApiPath(id): ApiPath<ConversationId>,
    req: Request,
) -> ApiResult<Accepted> {
    Ok(Json(s.ds.commit(&c, ip, &id, json_body(req)).await?))
}

/// Post an MLS application message for the current epoch.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "conversations", security(("device" = [])),
    params(("id" = schema::ConversationId, Path, description = "The conversation")),
    request_body = SendRequest,
    responses(
        (status = 200, description = "Accepted: durable at `seq`", body = Accepted),
        (status = 400, description = "Malformed, or not an MLS private message of this group", body = ErrorBody),
        (status = 404, description = "No such conversation of the caller's, or an attachment that is not the sender's", body = ErrorBody),
        (status = 409, description = "`stale_epoch` (with `current_epoch`)", body = ErrorBody)))]
async fn send(
    State(s): State<AppState>,
    Auth(c): Auth,
    ClientIp(ip): ClientIp,
    ApiPath(id): ApiPath<ConversationId>,
    req: Request,
) -> ApiResult<Accepted> {
    Ok(Json(s.ds.send(&c, ip, &id, json_body(req), None).await?))
}

/// Relay a typing indicator.
///
/// An MLS application message of at most 1 KiB, relayed to the conversation's connected devices as
/// an `ephemeral` frame and never stored.
#[utoipa::path(post, path = "/v1/conversations/{id}/ephemeral", tag = "conversations", security(("device" = [])),
    params(("id" = schema::ConversationId, Path, description = "The conversation")),
    request_body = SendRequest,
    responses(
        (status = 204, description = "Relayed"),
        (status = 400, description = "Malformed, over 1 KiB, or not an MLS private message of this group", body = ErrorBody),
        (status = 404, description = "No such conversation of the caller's", body = ErrorBody),
        (status = 409, description = "`stale_epoch`", body = ErrorBody)))]
async fn ephemeral(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(id): ApiPath<ConversationId>,
    req: Request,
) -> Result<StatusCode, DsError> {
    s.ds.ephemeral(&c, &id, json_body(req)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which entries a log page holds.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LogQuery {
    /// Entries after this sequence number (0: from the start).
    #[serde(default)]
    #[param(maximum = 9223372036854775807_i64)]
    after: u64,
    /// At most this many entries (default and most: 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// How far the device has read, when that is before `after` (it is fetching on past an entry it
    /// still needs kept, to retry it; default `after`).
    #[param(maximum = 9223372036854775807_i64)]
    read: Option<u64>,
}

/// Log entries after a sequence number.
#[utoipa::path(get, path = "/v1/conversations/{id}/log", tag = "conversations", security(("device" = [])),
    params(("id" = schema::ConversationId, Path, description = "The conversation"), LogQuery),
    responses(
        (status = 200, description = "A page of entries", body = LogPage),
        (status = 404, description = "No such conversation of the caller's", body = ErrorBody)))]
async fn log(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiPath(id): ApiPath<ConversationId>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<LogPage> {
    Ok(Json(s.ds.log(&c, &id, q.after, q.limit, q.read).await?))
}

/// The calling device's pending welcomes.
#[utoipa::path(get, path = "/v1/inbox", tag = "inbox", security(("device" = [])),
    responses((status = 200, description = "The items", body = Inbox)))]
async fn inbox(State(s): State<AppState>, Auth(c): Auth) -> ApiResult<Inbox> {
    Ok(Json(s.ds.inbox(&c).await?))
}

/// Delete processed inbox items.
#[utoipa::path(post, path = "/v1/inbox/ack", tag = "inbox", security(("device" = [])), request_body = InboxAck,
    responses((status = 204, description = "Deleted")))]
async fn ack_inbox(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiJson(req): ApiJson<InboxAck>,
) -> Result<StatusCode, DsError> {
    s.ds.ack_inbox(&c, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Offer a device link: an encrypted account bundle under a hash-derived id.
#[utoipa::path(post, path = "/v1/links", tag = "links", security(("device" = [])), request_body = CreateLinkRequest,
    responses(
        (status = 201, description = "Offered", body = LinkCreated),
        (status = 409, description = "A link with this id exists", body = ErrorBody)))]
async fn create_link(
    State(s): State<AppState>,
    Auth(c): Auth,
    ApiJson(req): ApiJson<CreateLinkRequest>,
) -> Result<(StatusCode, Json<LinkCreated>), DsError> {
    Ok((StatusCode::CREATED, Json(s.ds.create_link(&c, req).await?)))
}

/// Fetch a pending link's encrypted bundle.
#[utoipa::path(post, path = "/v1/links/fetch", tag = "links", request_body = LinkFetchRequest,
    responses(
        (status = 200, description = "The bundle", body = LinkBundle),
        (status = 410, description = "`link_expired`: no such link, expired or used", body = ErrorBody)))]
async fn fetch_link(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
) -> ApiResult<LinkBundle> {
    Ok(Json(s.ds.fetch_link(ip, json_body(req)).await?))
}

/// Register a new device through a link (consumes it).
#[utoipa::path(post, path = "/v1/links/redeem", tag = "links", request_body = LinkRedeemRequest,
    responses(
        (status = 201, description = "Registered; the token is shown once", body = RegisterResponse),
        (status = 400, description = "Malformed, or a certificate or key package that does not verify", body = ErrorBody),
        (status = 410, description = "`link_expired`: no such link, expired or used", body = ErrorBody)))]
async fn redeem_link(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
) -> Result<(StatusCode, Json<RegisterResponse>), DsError> {
    let registered = s.ds.redeem_link(ip, json_body(req)).await?;
    Ok((StatusCode::CREATED, Json(registered)))
}

/// The push channel (WebSocket).
///
/// Server frames are `ServerFrame`; client frames (at most 4 KiB) are `ClientFrame`: a read
/// position, or a message to post as `POST .../messages` does, answered by `sent` or `refused` with
/// the same `ref` (at most 64 unanswered).
#[utoipa::path(get, path = "/v1/ws", tag = "push", security(("device" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade", body = ErrorBody),
        (status = 503, description = "`unavailable`: this node is draining", body = ErrorBody)))]
async fn ws(
    State(s): State<AppState>,
    Auth(c): Auth,
    ClientIp(ip): ClientIp,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if s.draining() {
        // A push connection opened now would be closed at once: send the client elsewhere.
        return draining().into_response();
    }
    if let Err(e) = s.ds.admit_connection(&c, ip).await {
        return e.into_response();
    }
    match upgrade {
        Ok(u) => u
            .protocols([WS_PROTOCOL])
            .max_message_size(crate::ws::MAX_CLIENT_FRAME)
            .max_frame_size(crate::ws::MAX_CLIENT_FRAME)
            // Small buffers: an idle connection costs a few KB, not tungstenite's default ~130 KB.
            .read_buffer_size(4096)
            .write_buffer_size(4096)
            .max_write_buffer_size(64 * 1024)
            .on_upgrade(move |socket| crate::ws::serve(socket, s, c, ip))
            .into_response(),
        Err(r) => rejection(r.status(), r.body_text()).into_response(),
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    Json(crate::openapi::document_with(state.ds.blobs.max_file_bytes))
}

/// Liveness: the process answers (also at `/health`).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String)))]
async fn health() -> &'static str {
    "ok"
}

/// Liveness, as `/healthz` (the older name).
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String)))]
async fn health_alias() -> &'static str {
    "ok"
}

/// Prometheus metrics (text format 0.0.4).
///
/// 404 when the operator serves them on their own address (`--metrics-listen`). No label names an
/// account, device, conversation or message.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        (status = 404, description = "Served on another address", body = ErrorBody)))]
async fn metrics_text(State(state): State<AppState>) -> Result<Response, DsError> {
    if !state.ds.config.metrics_on_api {
        return Err(DsError::not_found(
            "metrics are served on their own address",
        ));
    }
    Ok(metrics_response())
}

/// The metrics page, in Prometheus' text format.
pub fn metrics_response() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
        .into_response()
}

/// 503 `unavailable` for a node shutting down.
fn draining() -> DsError {
    DsError::new(
        ErrorCode::Unavailable,
        "draining: this node is shutting down",
    )
}

/// Readiness, for a load balancer.
///
/// 200 while this node serves and reaches its store and bus; 503 `unavailable` while it drains for
/// shutdown, or when either is unreachable.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String),
        (status = 503, description = "`unavailable`", body = ErrorBody)))]
async fn ready(State(state): State<AppState>) -> Result<&'static str, DsError> {
    let unavailable = |why: &'static str| DsError::new(ErrorCode::Unavailable, why);
    if state.draining() {
        return Err(draining());
    }
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.ds.store.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            return Err(unavailable("the store does not answer"));
        }
        Err(_) => return Err(unavailable("the store does not answer")),
    }
    if !state.ds.bus.ready() {
        return Err(unavailable("the bus is not connected"));
    }
    Ok("ready")
}

async fn method_not_allowed() -> DsError {
    DsError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// Every route: (method, path). The OpenAPI document is checked against this list in tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/accounts"),
    ("get", "/v1/accounts/{username}"),
    ("post", "/v1/key-packages"),
    ("delete", "/v1/devices/{device_id}"),
    ("get", "/v1/key-packages/count"),
    ("post", "/v1/key-packages/claim"),
    ("post", "/v1/dms"),
    ("post", "/v1/groups"),
    ("get", "/v1/conversations"),
    ("post", "/v1/conversations/{id}/leave"),
    ("post", "/v1/conversations/{id}/commits"),
    ("post", "/v1/conversations/{id}/messages"),
    ("post", "/v1/conversations/{id}/ephemeral"),
    ("get", "/v1/conversations/{id}/log"),
    ("get", "/v1/inbox"),
    ("post", "/v1/inbox/ack"),
    ("post", "/v1/links"),
    ("post", "/v1/links/fetch"),
    ("post", "/v1/links/redeem"),
    ("get", "/v1/ws"),
    ("get", "/openapi.json"),
    ("get", "/health"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/v1/blobs"),
    ("options", "/v1/blobs"),
    ("get", "/v1/blobs/{id}"),
    ("head", "/v1/blobs/{id}"),
    ("patch", "/v1/blobs/{id}"),
    ("delete", "/v1/blobs/{id}"),
];

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/accounts", post(register))
        .route("/v1/accounts/{username}", get(account))
        .route("/v1/key-packages", post(upload_kps))
        .route("/v1/devices/{device_id}", delete(revoke_device))
        .route("/v1/key-packages/count", get(kp_count))
        .route("/v1/key-packages/claim", post(claim))
        .route("/v1/dms", post(create_dm))
        .route("/v1/groups", post(create_group))
        .route("/v1/conversations", get(conversations))
        .route("/v1/conversations/{id}/leave", post(leave))
        .route("/v1/conversations/{id}/commits", post(commit))
        .route("/v1/conversations/{id}/messages", post(send))
        .route("/v1/conversations/{id}/ephemeral", post(ephemeral))
        .route("/v1/conversations/{id}/log", get(log))
        .route("/v1/inbox", get(inbox))
        .route("/v1/inbox/ack", post(ack_inbox))
        .route("/v1/links", post(create_link))
        .route("/v1/links/fetch", post(fetch_link))
        .route("/v1/links/redeem", post(redeem_link))
        .route("/v1/ws", get(ws))
        .route("/openapi.json", get(openapi))
        .route("/health", get(health_alias))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .merge(crate::blobs::routes())
        .fallback(crate::web::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}
