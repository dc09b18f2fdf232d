//! Health checks decide whether an agent's node gets traffic; SIGTERM drains a node with no failed request:
//! proxies stop sending it new requests, finish what is in flight, acknowledge, and only then does it leave.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{Agent, Backend, Proxy, WAIT};

fn status_until(proxy: &Proxy, want: u16) {
    let start = Instant::now();
    loop {
        let got = common::get(proxy.addr, "/").status();
        if got == want {
            return;
        }
        assert!(start.elapsed() < WAIT, "never got {want}, last {got}");
        std::thread::yield_now();
    }
}

#[test]
fn traffic_only_while_the_health_check_passes() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let app = Backend::http(move |req| {
        if req.start_line().contains("/health") && !h.load(Ordering::SeqCst) {
            return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec();
        }
        common::ok("app")
    });
    let proxy = Proxy::start(&[]);
    let agent = Agent::start(
        &app.arg(),
        &proxy.gossip(),
        &["--name", "chk", "--check-path", "/health", "--check-interval", "100ms", "--rise", "2", "--fall", "2"],
    );
    proxy.stderr.wait_for("member up", |l| l.contains("member up: chk "));
    app.wait_requests(2); // two failing checks have run
    assert_eq!(common::get(proxy.addr, "/").status(), 503, "no traffic before the first passing check");

    healthy.store(true, Ordering::SeqCst);
    agent.stderr.wait_for("healthy", |l| l.contains("is healthy"));
    status_until(&proxy, 200);

    healthy.store(false, Ordering::SeqCst);
    agent.stderr.wait_for("unhealthy", |l| l.contains("is unhealthy"));
    status_until(&proxy, 503);
}

#[test]
fn sigterm_drains_with_no_failed_request() {
    let (a, release) = Backend::gated("a-slow", "a");
    let b = Backend::http(|_| common::ok("b"));
    let proxy = Proxy::start(&["--access-log", "off"]);
    let mut agent_a = Agent::start(&a.arg(), &proxy.gossip(), &["--name", "a", "--drain-timeout", "10s"]);
    let _agent_b = Agent::start(&b.arg(), &proxy.gossip(), &["--name", "b"]);
    proxy.stderr.wait_for("both members", |l| l.contains("backend set now has 2 servers"));

    // Put one slow request in flight on `a` (round robin may send the first tries to `b`).
    let slow = std::thread::spawn({
        let addr = proxy.addr;
        move || loop {
            let r = common::get(addr, "/slow");
            if r.body_str() == "a-slow" {
                return r;
            }
        }
    });
    let start = Instant::now();
    while !a.requests().iter().any(|r| r.start_line().contains("/slow")) {
        assert!(start.elapsed() < WAIT, "the slow request never reached a");
        std::thread::yield_now();
    }

    // Steady load throughout the drain.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = std::thread::spawn({
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), proxy.addr);
        move || {
            while !stop.load(Ordering::SeqCst) {
                let r = common::get(addr, "/");
                let counter = if r.status() == 200 { &ok } else { &failed };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    agent_a.signal(libc::SIGTERM);
    agent_a.stderr.wait_for("drain started", |l| l.contains("draining: waiting"));
    proxy.stderr.wait_for("a out of the set", |l| l.contains("backend set now has 1 servers"));
    assert!(
        !agent_a.stderr.all().iter().any(|l| l.contains("drained")),
        "a proxy acknowledged while a request to the node was still in flight"
    );
    release.send(()).unwrap();
    assert_eq!(slow.join().unwrap().status(), 200, "the in-flight request finishes");
    agent_a.stderr.wait_for("drained", |l| l.contains("drained: 1 proxies acknowledged"));
    assert!(agent_a.wait_exit().success());
    proxy.stderr.wait_for("a left", |l| l.contains("member down: a "));

    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert!(ok.load(Ordering::SeqCst) > 0);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during the drain");
}

#[test]
fn a_drain_waits_for_every_proxy() {
    let (app, release) = Backend::gated("d", "d");
    let first = Proxy::start(&["--access-log", "off"]);
    let second = Proxy::start(&["--access-log", "off", "--join", &first.gossip()]);
    let mut agent = Agent::start(&app.arg(), &first.gossip(), &["--name", "d", "--drain-timeout", "10s"]);
    for p in [&first, &second] {
        p.stderr.wait_for("the node in each set", |l| l.contains("backend set now has 1 servers"));
        p.stderr.wait_for("the other proxy", |l| l.contains("(Proxy)"));
    }
    // A request in flight through the second proxy only.
    let slow = std::thread::spawn({
        let addr = second.addr;
        move || common::get(addr, "/slow")
    });
    let start = Instant::now();
    while !app.requests().iter().any(|r| r.start_line().contains("/slow")) {
        assert!(start.elapsed() < WAIT, "the slow request never arrived");
        std::thread::yield_now();
    }
    agent.signal(libc::SIGTERM);
    for p in [&first, &second] {
        p.stderr.wait_for("the node out of each set", |l| l.contains("backend set now has 0 servers"));
    }
    assert!(
        !agent.stderr.all().iter().any(|l| l.contains("drained")),
        "drained while the second proxy still had a request in flight"
    );
    release.send(()).unwrap();
    assert_eq!(slow.join().unwrap().status(), 200);
    agent.stderr.wait_for("both acknowledged", |l| l.contains("drained: 2 proxies acknowledged"));
    assert!(agent.wait_exit().success());
}
