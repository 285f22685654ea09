//! `sotto-bench`: load generation against a real `sottod` over its real API.
//!
//! ```text
//! relay   N devices in DM pairs, an open-loop schedule of R messages/s in total; real MLS
//!         application messages prepared before the timed part; receivers are woken over the
//!         WebSocket and fetch over HTTP, as the SDK does
//! fanout  one group of N member devices, each on its own WebSocket; one message at a time, and
//!         the time until the last device has fetched it
//! idle    N authenticated, idle WebSocket connections: server RSS per connection, connects/s
//! media   one file through sottod: encrypt+upload and download+decrypt MB/s beside the AEAD's
//!         and a loopback copy's, and the RSS growth of client and server
//! ```
//! Criterion benches live in `benches/` (the SDK send + sync round trip).

pub mod fanout;
pub mod idle;
pub mod media;
pub mod relay;
pub mod server;

/// An HTTP client pool for the load generator. reqwest is built with rustls and no default crypto
/// provider (sotto-client brings its own configuration): install ring's first.
pub(crate) fn http_client(max_idle: usize) -> reqwest::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(max_idle)
        .build()
}
