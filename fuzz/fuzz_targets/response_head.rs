//! Any bytes as a backend's response head (the first byte picks the delivery): no panic, and an accepted
//! head reaches the client with the same status and framing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::http::check::response_round_trip(data));
