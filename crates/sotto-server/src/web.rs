//! The web client, served at `/` from the same origin as the API, so that its Content-Security-
//! Policy can allow connections to its own origin and nothing else.
//!
//! The bundle is a directory (`web/dist`, built by `scripts/web-build`): `index.html` and
//! content-hashed files under `assets/`. Without one, `/` says how to build it. Only GET and HEAD
//! of files in that directory are served; a path that names anything else is a JSON 404 like any
//! unknown route.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::ds::DsError;
use crate::AppState;

/// The policy on every page, script and module served here: scripts, the worker and the wasm
/// only from this origin (`'wasm-unsafe-eval'` lets the page compile WebAssembly, not run text as
/// script), connections (fetch, the WebSocket) only to this origin, no inline script or style,
/// no plugins, no framing, no forms posting elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    worker-src 'self'; connect-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
    font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const NOT_BUILT: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Sotto</title></head><body><h1>Sotto</h1>\
<p>This sottod has no web client bundle. Build it from the repository with \
<code>scripts/web-build</code> (or run the server with <code>scripts/run</code>, which builds it \
first), then restart sottod. It serves the bundle from <code>--web-dir</code> \
(default <code>./web/dist</code>).</p></body></html>\n";

fn content_type(path: &Path) -> Option<&'static str> {
    Some(match path.extension()?.to_str()? {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" | "webmanifest" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// The file `uri` names inside `root`, if the path is one a bundle can have: segments of ASCII
/// letters, digits, `.`, `-` and `_`, none starting with a dot (so no `..` and no hidden files).
fn file_in(root: &Path, uri: &Uri) -> Option<PathBuf> {
    let rel = uri.path().strip_prefix('/')?;
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let mut out = root.to_path_buf();
    for seg in rel.split('/') {
        let ok = !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn with_headers(mut r: Response, cache: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// Every request no API route matched: a file of the web client, or a JSON 404.
pub async fn fallback(State(s): State<AppState>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return DsError::not_found("no such route").into_response();
    }
    let Some(root) = s.ds.config.web_dir.as_deref() else {
        return DsError::not_found("no such route").into_response();
    };
    let Some(path) = file_in(root, &uri) else {
        return DsError::not_found("no such route").into_response();
    };
    let Some(ct) = content_type(&path) else {
        return DsError::not_found("no such route").into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            // Files under assets/ are named by their content's hash; the page is not.
            let cache = if uri.path().starts_with("/assets/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            let len = bytes.len();
            let mut r = if method == Method::HEAD {
                ([(header::CONTENT_TYPE, ct)], ()).into_response()
            } else {
                ([(header::CONTENT_TYPE, ct)], bytes).into_response()
            };
            // HEAD says how long the file is, as GET would.
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            with_headers(r, cache)
        }
        Err(_) if uri.path() == "/" => with_headers(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                NOT_BUILT,
            )
                .into_response(),
            "no-cache",
        ),
        Err(_) => DsError::not_found("no such route").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_inside_the_bundle_are_files() {
        let root = Path::new("/srv/web");
        let f = |p: &str| file_in(root, &p.parse::<Uri>().expect("uri"));
        assert_eq!(f("/"), Some(root.join("index.html")));
        assert_eq!(
            f("/assets/index-3f2a.js"),
            Some(root.join("assets/index-3f2a.js"))
        );
        for bad in [
            "/../etc/passwd",
            "/assets/../../x",
            "/.env",
            "/a//b",
            "/a%2f..",
            "/a/",
        ] {
            assert_eq!(f(bad), None, "{bad}");
        }
    }
}
