//! Any bytes as a chunked body (the first byte sets the read size): decoded alike whole or in pieces, and
//! re-chunked to the same payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::http::check::chunked_round_trip(data));
