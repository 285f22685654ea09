//! `sotto-bench`: benchmarks of Sotto end to end. Today: the SDK send + sync round trip over a real
//! loopback socket (`benches/roundtrip.rs`). The load generator binary (`sotto-bench relay|idle|fanout`)
//! comes with the performance issue.
