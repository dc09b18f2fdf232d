//! The whole per-connection state machine with arbitrary client and backend bytes (`shoal::proxy::harness`):
//! no panic, no client request turned into two on a backend connection, nothing forwarded of a refused one.
#![no_main]

use std::cell::OnceCell;

use libfuzzer_sys::fuzz_target;
use shoal::proxy::harness::{check, split_input, Harness};

thread_local! {
    static HARNESS: OnceCell<Harness> = const { OnceCell::new() };
}

fuzz_target!(|data: &[u8]| {
    let (client, backend) = split_input(data);
    HARNESS.with(|h| {
        let harness = h.get_or_init(|| Harness::new().expect("harness"));
        let outcome = harness.run(client, backend);
        if let Err(why) = check(client, &outcome) {
            panic!("{why}");
        }
    });
});
