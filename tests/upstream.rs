//! The backend side: pooled connection reuse and eviction, retries, and the 502/503/504 answers.

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::{record, Backend, Proxy, Wire};

#[test]
fn keep_alive_connections_are_pooled_and_reused() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "1"]);
    for i in 0..20 {
        // A new client connection each time: only the backend side is pooled.
        assert_eq!(common::get(proxy.addr, &format!("/{i}")).body_str(), format!("/{i}"));
    }
    assert_eq!(backend.wait_requests(20).len(), 20);
    assert_eq!(backend.connection_count(), 1, "one pooled backend connection serves every request");
}

/// Answers one request per connection, then closes it without saying so, as a backend whose keep-alive
/// timeout expired would. Each close is reported on `closed`.
fn closes_after_each(closed: mpsc::Sender<()>, garbage: bool) -> Backend {
    let closed = Arc::new(Mutex::new(closed));
    Backend::raw(move |stream, received| {
        let mut w = Wire::new(stream);
        if let Some(req) = w.read_request() {
            record(received, req);
            w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            if garbage {
                // Bytes nobody asked for make the idle connection unusable too.
                w.send(b"HTTP/1.1 200 OK\r\n");
                w.stream.flush().unwrap();
            }
        }
        drop(w);
        let _ = closed.lock().unwrap().send(());
    })
}

#[test]
fn idle_connections_the_backend_closed_are_not_used() {
    for garbage in [false, true] {
        let (tx, rx) = mpsc::channel();
        let backend = closes_after_each(tx, garbage);
        let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "1"]);
        for i in 0..5 {
            let r = common::request(
                proxy.addr,
                format!("POST /{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx").as_bytes(),
            );
            assert_eq!(r.status(), 200, "request {i} (garbage: {garbage})");
            rx.recv_timeout(common::WAIT).expect("backend closed its side");
        }
        assert_eq!(backend.connection_count(), 5, "each request needed a fresh connection");
    }
}

#[test]
fn a_retry_on_a_full_server_does_not_wait_for_its_own_slot() {
    // The only server takes one request at a time (maxconn=1). Its first connection answers one request, then
    // reads the next and closes without answering (the keep-alive race): the GET is retried on a fresh
    // connection to the same server, which must not queue behind the slot its own first attempt held.
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    let backend = Backend::raw(move |stream, _| {
        let first = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        let mut w = Wire::new(stream);
        let mut requests = 0;
        while w.read_request().is_some() {
            requests += 1;
            if first && requests == 2 {
                return;
            }
            w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let server = format!("one={},maxconn=1", backend.arg());
    let proxy = Proxy::start(&["--backend", &server, "--threads", "1", "--timeout-queue", "300ms"]);
    assert_eq!(common::get(proxy.addr, "/a").body_str(), "ok");
    let r = common::get(proxy.addr, "/b");
    assert_eq!((r.status(), r.body_str().as_str()), (200, "ok"), "retried on a fresh connection, not 503 sQ");
    assert_eq!(retries(&proxy.log_line("GET /b")), 1);
}

/// `%rc`, the last of the log's `%ac/%fc/%bc/%sc/%rc` field.
fn retries(line: &str) -> u32 {
    let counts = line.split(' ').nth(10).unwrap_or_default();
    counts.rsplit('/').next().and_then(|rc| rc.parse().ok()).unwrap_or(0)
}

#[test]
fn a_refused_connect_is_retried_on_another_backend() {
    let live = Backend::echo_path();
    let refused = common::refused_port();
    let dead = refused.addr.to_string();
    let proxy = Proxy::start(&["--backend", &format!("dead={dead}"), "--backend", &format!("live={}", live.arg())]);
    for i in 0..10 {
        assert_eq!(common::get(proxy.addr, &format!("/r{i}")).status(), 200);
    }
    let line = proxy.stdout.wait_for("a retried request", |l| l.contains(" nodes/live ") && retries(l) == 1);
    assert!(line.contains(" 200 "), "{line}");
    // Ended on another server than its first: HAProxy's `+` before the count marks the redispatch.
    assert!(line.split(' ').nth(10).is_some_and(|counts| counts.ends_with("/+1")), "{line}");
    // After the first failure the dead server is ejected on every thread: later requests go straight to the
    // live one instead of paying for a retry each time.
    proxy.stdout.wait_count("all ten requests", 10, |l| l.contains(" nodes/live ") && l.contains(" 200 "));
    let retried = proxy.stdout.all().iter().filter(|l| retries(l) > 0).count();
    assert!(retried <= 2, "{retried} requests retried: the failed server should have been ejected");
}

#[test]
fn no_backend_is_503() {
    // As HAProxy logs them: routed to the backend, no server to pick (`nodes/<NOSRV>`, no queue reached: Tw
    // -1); a server picked whose connect failed is named (it said `shoal/<NOSRV>` for both).
    let proxy = Proxy::start(&[]);
    let r = common::get(proxy.addr, "/");
    assert_eq!(r.status(), 503);
    let line = proxy.log_line("GET / ");
    assert!(line.contains(" nodes/<NOSRV> ") && line.contains("/-1/-1/-1/") && line.contains(" SC-- "), "{line}");
    // A connection error of the backend's own: HAProxy counts it in the BACKEND row's econ, tied to no server.
    // /metrics counts the request with its response, so that responses never outnumber requests.
    assert_eq!(proxy.backend_column("econ"), "1");
    common::wait_until("the 503 counted", || proxy.metric("shoal_backend_responses_total{code=\"5xx\"}") == 1);
    assert_eq!(proxy.metric("shoal_backend_requests_total"), 1);
    let refused = common::refused_port();
    let dead = refused.addr.to_string();
    let proxy = Proxy::start(&["--backend", &dead]);
    assert_eq!(common::get(proxy.addr, "/").status(), 503);
    let line = proxy.log_line("GET / ");
    assert!(line.contains(&format!(" nodes/{dead} ")) && line.contains(" SC-- "), "{line}");
}

#[test]
fn garbage_or_silence_from_a_backend_is_502() {
    for reply in [&b"SSH-2.0-OpenSSH_9\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b""] {
        let backend = Backend::replying(reply.to_vec());
        let proxy = Proxy::start(&["--backend", &backend.arg()]);
        let r = common::get(proxy.addr, "/");
        assert_eq!(r.status(), 502, "reply {:?}", String::from_utf8_lossy(&reply_of(&r)));
    }
}

#[test]
fn an_http_1_2_response_is_relayed_as_http_1_1() {
    let backend = Backend::replying(b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let r = common::get(proxy.addr, "/");
    assert_eq!((r.start_line(), r.body_str().as_str()), ("HTTP/1.1 200 OK", "ok"));
}

fn reply_of(m: &common::Message) -> Vec<u8> {
    m.raw.clone()
}

#[test]
fn a_backend_that_does_not_answer_in_time_is_504() {
    let (release, wait) = mpsc::channel::<()>();
    let wait = Arc::new(Mutex::new(wait));
    let backend = Backend::raw(move |stream, _| {
        let mut w = Wire::new(stream);
        let _ = w.read_head();
        let _ = wait.lock().unwrap().recv_timeout(common::WAIT);
    });
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-server", "200ms"]);
    let r = common::get(proxy.addr, "/slow");
    assert_eq!(r.status(), 504);
    assert!(proxy.log_line("/slow").contains(" sH-- "), "server-timeout termination state");
    drop(release);
}

#[test]
fn a_backend_dying_mid_body_closes_the_client_connection() {
    let backend = Backend::replying(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial".to_vec());
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n");
    let all = String::from_utf8(w.read_all()).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 OK") && all.ends_with("partial"), "{all}");
    assert!(proxy.log_line("/cut").contains(" SD-- "));
}

#[test]
fn backend_names_are_resolved() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &format!("web=localhost:{}", backend.addr.port())]);
    assert_eq!(common::get(proxy.addr, "/named").body_str(), "/named");
}

#[test]
fn a_backend_dying_mid_way_through_a_spliced_body_closes_the_client() {
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    reply.resize(reply.len() + 300_000, b'z');
    let backend = Backend::replying(reply);
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--splice-min", "65536"]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"GET /big-cut HTTP/1.1\r\nHost: t\r\n\r\n");
    let all = w.read_all();
    let head_end = common::find(&all, b"\r\n\r\n").unwrap() + 4;
    assert_eq!(all.len() - head_end, 300_000, "every byte the backend sent, then the close");
    assert!(proxy.log_line("/big-cut").contains(" SD-- "));
}

#[test]
fn a_backend_that_never_accepts_times_out_on_connect() {
    // A listener that never accepts, with its tiny queue already full: the kernel drops further SYNs, so a
    // connect hangs until the proxy's connect timeout.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    let proxy = Proxy::start(&["--backend", &format!("stuck={addr}"), "--timeout-connect", "300ms"]);
    let r = common::get(proxy.addr, "/stuck");
    assert_eq!(r.status(), 503);
    assert!(proxy.log_line("/stuck").contains(" sC-- "), "connect-timeout termination state");
    assert!(proxy.stderr.all().iter().any(|l| l.contains("connect timed out")));
    drop(fillers);
}

/// `--timeout-connect` is spent connecting, not waiting in a full server's queue: a request that waited there
/// longer still gets a whole connect. It got 1 ms, which a connect outlasts on any real link (here its
/// first SYN is dropped, so it needs the kernel's retry a second later): 503 `sC`, and the healthy server
/// ejected. In a network namespace (needs root).
#[test]
fn a_request_queued_past_the_connect_timeout_still_gets_a_whole_connect() {
    let lab = common::lab::Lab::new(1);
    let host = lab.host(0);
    let (gate, gated) = mpsc::channel::<()>();
    let gated = Mutex::new(gated);
    let backend = host.enter(|| {
        Backend::http(move |req| {
            if req.start_line().contains("/slow") {
                let _ = gated.lock().unwrap().recv();
            }
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
        })
    });
    let server = format!("s1={},maxconn=1", backend.addr);
    let (listen, admin) = (host.addr(8080), host.addr(1936));
    let (listen_arg, admin_arg) = (listen.to_string(), admin.to_string());
    let args =
        ["proxy", "--listen", &listen_arg, "--gossip", "127.0.0.1:0", "--admin", &admin_arg, "--runtime-api", "off"];
    let limits = ["--backend", &server, "--timeout-connect", "4s", "--timeout-queue", "20s", "--threads", "1"];
    let (_proxy, log) = host.shoal(&[&args[..], &limits[..]].concat(), &[]);
    log.wait_for("the proxy listening", |l| l.contains("listening on "));
    let get = |path: &'static str| host.enter(|| common::http_get(listen, path, std::time::Duration::from_secs(10)));
    std::thread::scope(|s| {
        let slow = s.spawn(|| get("/slow"));
        backend.wait_requests(1);
        let queued = s.spawn(|| get("/queued"));
        host.wait_get(admin, "/;csv", "the second request in s1's queue", |csv| {
            csv.lines().any(|l| l.starts_with("nodes,s1,1,"))
        });
        // Held in the queue past the connect timeout; its connect will need a SYN retry (after 1 s, or 3 s).
        std::thread::sleep(std::time::Duration::from_millis(4200));
        host.drop_syns_to(backend.addr.port());
        gate.send(()).unwrap();
        assert_eq!(slow.join().unwrap(), Ok("ok".to_string()));
        common::wait_until("the queued request's first SYN dropped", || host.syns_dropped(backend.addr.port()) >= 1);
        host.pass_syns_to(backend.addr.port());
        assert_eq!(queued.join().unwrap(), Ok("ok".to_string()), "the queued request; log: {:?}", log.all());
    });
    assert!(!log.all().iter().any(|l| l.contains("skipped for")), "a healthy server ejected: {:?}", log.all());
}

/// The access log's `Tq/Tw/Tc/Tr/Tt` timers.
fn timers(line: &str) -> Vec<i64> {
    let field = line.split(' ').find(|f| f.split('/').count() == 5 && f.split('/').all(|t| t.parse::<i64>().is_ok()));
    field.unwrap_or_else(|| panic!("no timers in {line}")).split('/').map(|t| t.parse().unwrap()).collect()
}

/// With one slot (maxconn=1): a request that waits in the queue logs that wait as `Tw` only, not again in
/// `Tc` (HAProxy's `Tc` leaves `Tw` out); and an error answer gives the slot back before its client's
/// lingering close, as a response does, so the next request is not held behind it.
#[test]
fn the_queue_wait_is_logged_once_and_an_error_answer_frees_its_slot_at_once() {
    let (gate, gated) = mpsc::channel::<()>();
    let gated = Mutex::new(gated);
    let backend = Backend::http(move |req| {
        if req.start_line().contains("/held") {
            let _ = gated.lock().unwrap().recv();
        }
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    });
    let server = format!("one={},maxconn=1", backend.arg());
    let args = ["--backend", &server, "--threads", "1", "--timeout-queue", "5s", "--timeout-server", "2s"];
    let proxy = Proxy::start(&args);
    std::thread::scope(|s| {
        let addr = proxy.addr;
        let held = s.spawn(move || common::get(addr, "/held"));
        backend.wait_requests(1);
        let queued = s.spawn(move || common::get(addr, "/queued"));
        common::wait_until("the second request in the queue", || proxy.servers_column("one", "qcur") == "1");
        std::thread::sleep(std::time::Duration::from_millis(800));
        gate.send(()).unwrap();
        assert_eq!(held.join().unwrap().status(), 200);
        assert_eq!(queued.join().unwrap().status(), 200);
    });
    let t = timers(&proxy.log_line("GET /queued"));
    assert!(t[1] >= 800, "Tw counts the wait: {t:?}");
    assert!(t[2] < t[1] / 2, "Tc is the connect alone, not the wait again: {t:?}");

    // A server that does not answer in time: 504, and the client keeps its side open after reading it.
    let mut stalled = Wire::connect(proxy.addr);
    stalled.send(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n");
    let answer = stalled.read_response(false).expect("the 504");
    assert_eq!(answer.status(), 504);
    let next = common::get(proxy.addr, "/next");
    assert_eq!(next.status(), 200, "the slot was held through the 504's lingering close: 503 sQ");
    gate.send(()).unwrap();
}

/// The proxy's half-second housekeeping (slow-start steps, fading response times, probes of ejected servers)
/// keeps its pace while a probe hangs: the probe of a server whose connects go unanswered (its SYNs dropped,
/// in a network namespace; needs root) took up to --timeout-connect, and the loop waited for it, so a ramp
/// moved every 5 s instead of every 500 ms.
#[test]
fn a_hanging_probe_does_not_hold_back_a_slow_start() {
    let lab = common::lab::Lab::new(1);
    let host = lab.host(0);
    let (a, b) = (host.enter(|| Backend::http(|_| common::ok("a"))), host.enter(|| Backend::http(|_| common::ok("b"))));
    let dark = host.enter(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let dark_port = dark.local_addr().unwrap().port();
    host.drop_syns_to(dark_port);
    let (listen, admin) = (host.addr(8080), host.addr(1936));
    let (listen_arg, admin_arg) = (listen.to_string(), admin.to_string());
    let servers = format!("a={},b={},dark=127.0.0.1:{dark_port}", a.addr, b.addr);
    let args = ["proxy", "--listen", &listen_arg, "--gossip", "127.0.0.1:0", "--admin", &admin_arg];
    let more = ["--runtime-api", "127.0.0.1:9999", "--backend", &servers, "--slowstart", "20s", "--threads", "1"];
    let (_proxy, log) = host.shoal(&[&args[..], &more[..]].concat(), &[]);
    log.wait_for("the proxy listening", |l| l.contains("listening on "));
    // Round robin: one of three requests tries the dark server, is abandoned after --timeout-attempt and
    // served elsewhere; the dark server is ejected and probed from then on.
    for _ in 0..3 {
        assert_eq!(host.enter(|| common::http_get(listen, "/", std::time::Duration::from_secs(5))).map(|_| ()), Ok(()));
    }
    log.wait_for("the dark server ejected", |l| l.contains("server dark") && l.contains("skipped for"));
    let runtime = |line: &str| {
        host.enter(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9999").unwrap();
            s.write_all(format!("{line}\n").as_bytes()).unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out).unwrap();
            out
        })
    };
    runtime("disable server nodes/b; enable server nodes/b");
    let weight_of_b = || {
        let csv = host.enter(|| common::http_get(admin, "/;csv", std::time::Duration::from_secs(2))).unwrap();
        let row = csv.lines().find(|l| l.starts_with("nodes,b,")).unwrap().to_string();
        row.split(',').nth(18).unwrap().parse::<u32>().unwrap()
    };
    // Four ramp steps within 4 s (each 500 ms); with the loop waiting on the 5 s probe, at most one.
    let start = std::time::Instant::now();
    let mut weights = std::collections::BTreeSet::new();
    while start.elapsed() < std::time::Duration::from_secs(4) && weights.len() < 4 {
        weights.insert(weight_of_b());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(weights.len() >= 4, "b's weight while it ramps, over 4 s: {weights:?}");
    drop(dark);
}

/// A host that accepts connects but never acknowledges a request (data segments to it dropped at the switch
/// of a network namespace lab; needs root) passes every probe at once and fails the next request again. Each time it is
/// readmitted and fails again it stays out twice as long: 500 ms, 1 s, 2 s, 4 s. It was readmitted by the
/// next probe every time, each cycle costing a request `--timeout-attempt`.
#[test]
fn a_server_that_connects_but_loses_requests_stays_out_longer_each_time() {
    let lab = common::lab::Lab::new(2);
    let (host, far) = (lab.host(0), lab.host(1));
    let good = host.enter(|| Backend::http(|_| common::ok("good")));
    let flaky = far.enter(|| Backend::http_on(far.addr(8000), |_| common::ok("flaky")));
    host.drop_data_sent_to(flaky.addr.port());
    let (listen, admin) = (host.addr(8080), host.addr(1936));
    let (listen_arg, admin_arg) = (listen.to_string(), admin.to_string());
    let servers = format!("good={},flaky={}", good.addr, flaky.addr);
    let args = ["proxy", "--listen", &listen_arg, "--gossip", "127.0.0.1:0", "--admin", &admin_arg];
    let more = ["--runtime-api", "off", "--backend", &servers, "--threads", "1"];
    let (_proxy, log) = host.shoal(&[&args[..], &more[..]].concat(), &[]);
    log.wait_for("the proxy listening", |l| l.contains("listening on "));
    let ejections = || -> Vec<String> {
        log.all().into_iter().filter(|l| l.contains("server flaky") && l.contains("not acknowledged")).collect()
    };
    let start = std::time::Instant::now();
    let mut served = 0;
    while ejections().len() < 4 {
        let got = host.enter(|| common::http_get(listen, "/", std::time::Duration::from_secs(5)));
        assert_eq!(got, Ok("good".to_string()), "every request served by the good server");
        served += 1;
        assert!(start.elapsed() < std::time::Duration::from_secs(40), "4 ejections in 40 s: {:?}", ejections());
    }
    let lines = ejections();
    let outs: Vec<&str> =
        lines.iter().map(|l| l.split("skipped for ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("-")).collect();
    assert_eq!(outs[..4], ["500", "1000", "2000", "4000"], "after {served} requests: {lines:?}");
    // And it did stay out that long: each readmission comes no sooner than its time out after the ejection
    // (a lower bound, which a slow machine only widens).
    let at = |line: &str| -> f64 {
        let time = line.split('T').nth(1).and_then(|t| t.split('Z').next()).expect("a timestamp");
        time.split(':').fold(0.0, |acc, part| acc * 60.0 + part.parse::<f64>().unwrap())
    };
    let all = log.all();
    for (ejected, out) in lines.iter().zip([0.5, 1.0, 2.0]) {
        let back = all
            .iter()
            .filter(|l| l.contains("server flaky") && l.contains("back in rotation"))
            .map(|l| at(l))
            .find(|t| *t > at(ejected))
            .expect("readmitted after each ejection");
        assert!(
            back - at(ejected) >= out * 0.95,
            "readmitted {:.3} s after an ejection of {out} s",
            back - at(ejected)
        );
    }
    assert_eq!(good.requests().len(), served, "each request once at the good server");
}
