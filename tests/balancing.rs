//! Balancing algorithms end to end (weighted round robin is in tests/cluster.rs): leastconn sends new requests
//! away from a server that is still busy.

mod common;

use std::time::Instant;

use common::{Backend, Proxy, WAIT};

#[test]
fn leastconn_sends_new_requests_away_from_a_busy_server() {
    let (s1, release) = Backend::gated("slow done", "s1");
    let s2 = Backend::http(|_| common::ok("s2"));
    let proxy = Proxy::start(&[
        "--balance",
        "leastconn",
        "--backend",
        &format!("s1={}", s1.addr),
        "--backend",
        &format!("s2={}", s2.addr),
    ]);
    // Both are idle, so a tie decides where /slow goes: send it until s1 holds one.
    let start = Instant::now();
    let slow = loop {
        let addr = proxy.addr;
        let attempt = std::thread::spawn(move || common::get(addr, "/slow").body_str());
        while !attempt.is_finished() && !s1.requests().iter().any(|r| r.start_line().contains("/slow")) {
            assert!(start.elapsed() < WAIT, "s1 never got /slow");
            std::thread::yield_now();
        }
        if !attempt.is_finished() {
            break attempt;
        }
        assert_eq!(attempt.join().unwrap(), "s2");
    };

    // s1 has a request in flight and s2 none: every new request goes to s2, on either thread. A response can
    // reach the client a moment before its thread counts the request done: wait for s2's count to be back at
    // 0, or the other thread would rightly see a tie.
    let in_flight = |name: &str| proxy.servers_column(name, "scur");
    let bodies: Vec<String> = (0..6)
        .map(|_| {
            let start = Instant::now();
            while (in_flight("s1"), in_flight("s2")) != ("1".to_string(), "0".to_string()) {
                assert!(start.elapsed() < WAIT, "s1 {} s2 {} in flight", in_flight("s1"), in_flight("s2"));
                std::thread::yield_now();
            }
            common::get(proxy.addr, "/").body_str()
        })
        .collect();
    assert!(bodies.iter().all(|b| b == "s2"), "leastconn chose the busy server: {bodies:?}");

    release.send(()).unwrap();
    assert_eq!(slow.join().unwrap(), "slow done");
    // Idle again: both share new requests.
    let bodies: Vec<String> = (0..6).map(|_| common::get(proxy.addr, "/").body_str()).collect();
    assert!(bodies.iter().any(|b| b == "s1") && bodies.iter().any(|b| b == "s2"), "{bodies:?}");
}

#[test]
fn an_unknown_algorithm_is_refused_by_name() {
    let out =
        common::shoal().args(["proxy", "--check", "--gossip", "127.0.0.1:0", "--balance", "bogus"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--balance") && err.contains("roundrobin, leastconn, random, source, uri or hdr(NAME)"),
        "{err}"
    );
}
