//! Replays the corpus of the fuzz target `connection` (fuzz/corpus/connection: seeds and what the fuzzer
//! kept) through the whole per-connection state machine, asserting what the target asserts.

use shoal::proxy::harness::{check, split_input, Harness};

#[test]
fn the_connection_fuzz_corpus_holds() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/connection");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is there: {} files", files.len());
    let harness = Harness::new().unwrap();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let (client, backend) = split_input(&data);
        let outcome = harness.run(client, backend);
        if let Err(why) = check(client, &outcome) {
            panic!("{}: {why}", file.display());
        }
    }
}

/// The harness really proxies: a request reaches the backend and its answer the client; a refused one
/// reaches nothing; a check that sees a smuggled request fails.
#[test]
fn the_harness_drives_real_exchanges_and_its_check_can_fail() {
    let harness = Harness::new().unwrap();
    let get = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
    let outcome = harness.run(get, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let to_client = String::from_utf8_lossy(&outcome.to_client);
    assert!(to_client.starts_with("HTTP/1.1 200 OK") && to_client.ends_with("ok"), "{to_client}");
    assert!(outcome.to_backend[0].starts_with(b"GET /x HTTP/1.1\r\n"), "{:?}", outcome.to_backend);
    assert!(check(get, &outcome).is_ok());

    let refused = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;\r\n\r\n0\r\n\r\n";
    let outcome = harness.run(refused, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(String::from_utf8_lossy(&outcome.to_client).starts_with("HTTP/1.1 400"));
    assert!(outcome.to_backend.iter().all(Vec::is_empty), "{:?}", outcome.to_backend);

    // What a desync would look like: two requests on one backend connection for one from the client.
    let mut smuggled = harness.run(get, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    smuggled.to_backend[0].extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(check(get, &smuggled).is_err(), "the check catches a second request");
}
