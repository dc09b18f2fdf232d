//! Any bytes as a client's request head: no panic, and an accepted head is forwarded with the same framing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::http::check::request_round_trip(data));
