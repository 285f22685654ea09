//! `sotto-bench`: load generation against a real `sottod` over its real API.
//!
//! ```text
//! relay   N devices in DM pairs, an open-loop schedule of R messages/s in total; real MLS
//!         application messages prepared before the timed part; receivers are woken over the
//!         WebSocket and fetch over HTTP, as the SDK does
//! fanout  one group of N member devices, each on its own WebSocket; one message at a time, and
//!         the time until the last device has fetched it
//! ```
//! Criterion benches live in `benches/` (the SDK send + sync round trip).

pub mod fanout;
pub mod relay;
pub mod server;
