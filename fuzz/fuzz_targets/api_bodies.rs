//! Every JSON body the server parses, and every one the client parses from the server.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sotto_api::parse_any_body(data);
});
