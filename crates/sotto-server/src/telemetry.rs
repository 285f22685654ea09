//! Prometheus metrics (`/metrics`, or `--metrics-listen ADDR`), through the `metrics` facade.
//!
//! Labels name routes by their template, methods, statuses and fixed kinds: never a username,
//! a device, conversation or message id, or anything a request carries (`tests/metrics.rs`
//! scrapes after real traffic and looks for each).
//!
//! | metric | what |
//! | --- | --- |
//! | `sotto_http_requests_total{route,method,status}` | requests answered |
//! | `sotto_http_request_duration_seconds{route}` | time to the response head (histogram) |
//! | `sotto_messages_accepted_total` | application messages appended (HTTP and WebSocket) |
//! | `sotto_commits_accepted_total` | commits appended |
//! | `sotto_ws_connections` | open push connections on this node (gauge) |
//! | `sotto_rate_limited_total{class}` | requests refused by a rate limit |
//! | `sotto_store_batch_size` | operations per SQLite write transaction (histogram) |
//! | `sotto_store_commit_seconds` | time of each SQLite write transaction (histogram) |
//! | `sotto_store_queue_depth` | write jobs waiting for the SQLite writer (gauge) |
//! | `sotto_blob_bytes_total{direction}` | attachment bytes uploaded and served |
//! | `sotto_expired_entries_total`, `sotto_pruned_entries_total` | log entries deleted |
//! | `sotto_draining` | 1 while the node shuts down (gauge) |

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's Prometheus recorder, once (every server in a process shares it).
/// `None` when another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("sotto_store_batch_size".into()), &sizes)
                })
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}

/// Drains histogram samples into their buckets; the maintenance loop calls it every 2 s.
pub fn upkeep() {
    if let Some(h) = handle() {
        h.run_upkeep();
    }
}

/// A route template as a `'static` label: the router's own (so no request text can become a
/// label), or `unmatched`.
fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    let Some(m) = matched else {
        return "unmatched";
    };
    crate::http::ROUTES
        .iter()
        .find(|(_, path)| *path == m.as_str())
        .map_or("other", |(_, path)| path)
}

fn status_label(status: u16) -> &'static str {
    match status {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        410 => "410",
        412 => "412",
        413 => "413",
        416 => "416",
        429 => "429",
        500 => "500",
        503 => "503",
        507 => "507",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// Middleware: counts every request by route, method and status, and times it.
pub async fn track(req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(req).await;
    let status = status_label(response.status().as_u16());
    metrics::counter!("sotto_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("sotto_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_templates_and_fixed_words() {
        assert_eq!(route_label(None), "unmatched");
        assert_eq!(status_label(404), "404");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
    }
}
