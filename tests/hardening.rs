//! Hostile surroundings, through the real binary: a log pipe whose reader went away, request bodies that are
//! already known to be broken, backends that answer before reading.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{open_descriptors, wait_until, Backend, Process, Proxy, Wire, WAIT};

/// Polls until something accepts on `addr`.
fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < WAIT, "nothing listens on {addr}");
        std::thread::yield_now();
    }
}

/// `n` requests on new connections (spread over every data-plane thread by SO_REUSEPORT): how many got 200.
fn answered(addr: SocketAddr, n: usize) -> usize {
    (0..n).filter(|_| common::http_get(addr, "/", Duration::from_secs(5)).is_ok()).count()
}

#[test]
fn a_log_pipe_whose_reader_is_gone_neither_stops_nor_weakens_the_proxy() {
    let backend = Backend::http(|_| common::ok("fine"));
    // Closed from the start, as `shoal proxy ... 2>&1 | head -0` would be: the first log line meets EPIPE.
    let addr = common::free_port();
    let admin = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["proxy", "--listen", &addr.to_string(), "--admin", &admin.to_string(), "--threads", "2"])
        .args(["--gossip", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0", "--backend", &backend.arg()])
        .env("SHOAL_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shoal");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let mut child = Process(child);
    wait_listening(addr);
    // Every request writes an access line and debug lines into the closed pipes, on both threads.
    assert_eq!(answered(addr, 200), 200, "every request answered while its log lines fail");
    assert!(child.try_wait().unwrap().is_none(), "the proxy is still running");
    // Threads hand their access lines over in batches, a moment later.
    let lost = |log: &str| -> u64 {
        let metrics = common::get(admin, "/metrics").body_str();
        let prefix = format!("shoal_log_lines_lost_total{{log=\"{log}\",cause=\"failed\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{prefix}\n{metrics}"));
        line[prefix.len()..].parse().unwrap()
    };
    let start = Instant::now();
    while lost("access") < 200 {
        assert!(start.elapsed() < WAIT, "the access lines that could not be written are counted: {}", lost("access"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lost("diagnostics") > 0, "so are the diagnostics");
    // A clean stop still: SIGTERM, exit 0.
    child.signal(libc::SIGTERM);
    assert!(child.wait_exit().success());
}

/// A log pipe whose reader stays but stops reading (`shoal proxy | sleep 1d`): the writer blocks, the queue
/// fills, lines are dropped and counted, and a stop still ends the process: the last flush used to wait for a
/// place in the full queue forever.
#[test]
fn a_log_pipe_nobody_reads_does_not_hold_the_exit() {
    let backend = Backend::http(|_| common::ok("fine"));
    let addr = common::free_port();
    let admin = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["proxy", "--listen", &addr.to_string(), "--admin", &admin.to_string(), "--threads", "1"])
        .args(["--gossip", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0", "--backend", &backend.arg()])
        .args(["--grace", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shoal");
    let _held_unread = (child.stdout.take(), child.stderr.take());
    let mut child = Process(child);
    wait_listening(addr);
    wait_listening(admin);
    // Access lines of 6 KB (long paths) fill the pipe (64 KiB), then the queue (1,024 batches of 32 KiB).
    let dropped = || {
        let metrics = common::get(admin, "/metrics").body_str();
        let prefix = "shoal_log_lines_lost_total{log=\"access\",cause=\"dropped\"} ";
        metrics.lines().find_map(|l| l.strip_prefix(prefix)).map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let request = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "x".repeat(6000));
    let mut client = Wire::connect(addr);
    let start = Instant::now();
    while dropped() == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "the queue never filled");
        for _ in 0..500 {
            client.send(request.as_bytes());
            assert_eq!(client.read_response(false).map(|r| r.status()), Some(200), "answered while the log is stuck");
        }
    }
    let stopped = Instant::now();
    child.signal(libc::SIGTERM);
    let status = child.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(stopped.elapsed() < WAIT, "the stop took {:?}", stopped.elapsed());
}

#[test]
fn a_check_whose_stdout_is_closed_does_not_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["proxy", "--check", "--backend", "127.0.0.1:9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(status.code(), Some(101), "no panic exit: {err}");
}

/// Sends `raw` through the proxy and returns the status; the backend must have seen nothing.
fn refused_before_any_server(raw: &[u8]) -> u16 {
    let backend = Backend::http(|_| common::ok("reached"));
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let status = common::request(proxy.addr, raw).status();
    // The proxy answered, so whatever it would have sent was sent already; and it logged why.
    proxy.stderr.wait_for("the refusal logged", |l| l.contains("refused"));
    assert_eq!(backend.connection_count(), 0, "nothing reached a server for {:?}", String::from_utf8_lossy(raw));
    status
}

#[test]
fn transfer_encoding_with_parameters_is_refused_before_any_server() {
    for te in ["chunked;", "chunked; foo=bar", "chunked ;x", "gzip;q=1, chunked"] {
        let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(refused_before_any_server(raw.as_bytes()), 400, "Transfer-Encoding: {te}");
    }
}

/// A Host that is no authority, or that names another site than an absolute-form target (which the server
/// would follow, RFC 9112 section 3.2.2, while the proxy balanced, redirected and logged by Host), is refused.
#[test]
fn a_host_that_disagrees_with_the_target_or_is_no_authority_is_refused() {
    for raw in [
        "GET http://internal.example/admin HTTP/1.1\r\nHost: public.example\r\n\r\n",
        "GET http://site.example:8080/ HTTP/1.1\r\nHost: site.example\r\n\r\n",
        "GET https://site.example:80/ HTTP/1.1\r\nHost: site.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: evil.example@good.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: good.example/evil\r\n\r\n",
    ] {
        assert_eq!(refused_before_any_server(raw.as_bytes()), 400, "{raw:?}");
    }
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let raw = b"GET http://Site.example:8080/in HTTP/1.1\r\nHost: site.example:8080\r\n\r\n";
    assert_eq!(common::request(proxy.addr, raw).body_str(), "http://Site.example:8080/in", "agreeing: forwarded");
    // A port that is the scheme's default, on either side, names the same authority (as HAProxy accepts).
    for (target, host) in
        [("http://a:80/d", "a"), ("http://a/d", "a:80"), ("https://a:443/d", "a"), ("http://a:/d", "a")]
    {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(common::request(proxy.addr, raw.as_bytes()).body_str(), target, "{raw:?}");
    }
}

#[test]
fn a_chunked_body_broken_in_its_first_bytes_reaches_no_server() {
    let head = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [
        "0x3\r\nabc\r\n0\r\n\r\n",
        "\r\nabc\r\n0\r\n\r\n",
        "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "3;ext\nabc\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
    ] {
        let status = refused_before_any_server(format!("{head}{body}").as_bytes());
        assert_eq!(status, 400, "body {body:?}");
    }
    // The same head with a good body goes through whole.
    let backend = Backend::http(|_| common::ok("reached"));
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let r = common::request(proxy.addr, format!("{head}3\r\nabc\r\n0\r\n\r\n").as_bytes());
    assert_eq!(r.body_str(), "reached");
    assert_eq!(backend.wait_requests(1)[0].body, b"abc");
}

#[test]
fn an_early_answer_reaches_the_client_although_the_body_was_never_read() {
    // Answers 413 to the head alone, as an app with a body size limit does, and reads nothing more.
    let backend = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        if w.read_head().is_some() {
            w.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!");
            std::thread::park_timeout(WAIT);
        }
    });
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    // More than the socket buffers on the way hold, and within what the proxy drains before closing.
    let body = vec![b'x'; 8 << 20];
    for attempt in 0..5 {
        let mut client = TcpStream::connect(proxy.addr).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        client.set_write_timeout(Some(WAIT)).unwrap();
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        // As curl without `Expect: 100-continue` does: the whole body first, then the answer. A reset while
        // sending is the answer lost.
        client.write_all(head.as_bytes()).unwrap();
        if let Err(e) = client.write_all(&body) {
            panic!("attempt {attempt}: the connection was reset under the client while it sent the body: {e}");
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"too big!") {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("attempt {attempt}: the answer was lost: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413"), "attempt {attempt}: {text:?}");
    }
}

/// A server that answers an upload early (keeping its connection alive) waits for the rest of the body, a
/// worker of its held: the proxy, which will not send the rest, closes that connection at once. It held it
/// until the client's lingering close was over (up to 2 s more, while the client still sent).
#[test]
fn an_early_answer_frees_the_servers_connection_before_the_clients_lingering_close() {
    let server_saw_the_close = Arc::new(AtomicBool::new(false));
    let saw = server_saw_the_close.clone();
    let backend = Backend::raw(move |stream, _| {
        let mut w = Wire::new(stream);
        if w.read_head().is_some() {
            w.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!");
            // Whatever of the body comes, until the proxy closes.
            let mut sink = [0u8; 65536];
            while (&w.stream).read(&mut sink).is_ok_and(|n| n > 0) {}
            saw.store(true, Ordering::SeqCst);
        }
    });
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-client", "30s"]);
    let mut client = Wire::connect(proxy.addr);
    client.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n");
    client.send(&[b'x'; 4096]);
    assert_eq!(client.read_response(false).unwrap().status(), 413);
    // The client goes on sending, as one that reads its answer late does; the proxy drains it meanwhile.
    let started = Instant::now();
    while !server_saw_the_close.load(Ordering::SeqCst) {
        assert!(started.elapsed() < WAIT, "the server's connection was never closed");
        client.stream.write_all(&[b'x'; 1024]).expect("the proxy still drains the client");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..10 {
        client.stream.write_all(&[b'x'; 1024]).expect("the server's connection closed before the client's");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A python3 child holding `n` connections to `addr` (non-blocking connects: those beyond what the listener
/// accepts wait in its queue or in SYN_SENT), each sent `payload` when it could take it, none ever read.
/// They all close when the guard drops.
struct Crowd(std::process::Child);

const CROWD: &str = r#"
import resource, select, socket, sys, time
host, port, n, payload = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    socks.append(s)
if payload:
    deadline = time.monotonic() + 2
    pending = list(socks)
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLOUT)
    while by_fd and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            try:
                by_fd[fd].send(payload)
            except OSError:
                pass
            poller.unregister(fd)
            del by_fd[fd]
print(len(socks), flush=True)
sys.stdin.read()
"#;

impl Crowd {
    fn gather(addr: SocketAddr, n: usize, payload: &str) -> Crowd {
        let mut child = Command::new("python3")
            .args(["-c", CROWD, &addr.ip().to_string(), &addr.port().to_string(), &n.to_string(), payload])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), n.to_string(), "the crowd opened its connections");
        Crowd(child)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Waits until `pid` holds no more than `baseline` + 2 descriptors (connections closing give theirs back;
/// a lingering close lasts up to 2 s); otherwise fails, listing what it holds.
fn descriptors_come_back(pid: u32, baseline: usize, what: &str) {
    let start = Instant::now();
    while open_descriptors(pid) > baseline + 2 {
        if start.elapsed() > WAIT {
            let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|l| l.display().to_string())
                .collect();
            panic!("{what}: descriptors leaked: {baseline} -> {}: {links:?}", links.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn crowds_on_the_control_listeners_leave_the_data_plane_answering() {
    let backend = Backend::http(|_| common::ok("fine"));
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--access-log", "off"]);
    // Every thread has its runtime and the upstream pool its connection before the count starts.
    assert_eq!(answered(proxy.addr, 300), 300, "the data plane answered every request");
    assert!(proxy.runtime("show info").contains("Name: shoal"));
    assert!(common::http_get(proxy.admin(), "/;csv", Duration::from_secs(5)).is_ok());
    let before = open_descriptors(proxy.pid());
    // 20,000 connections across the runtime API and the admin listener (two processes: one may not hold
    // them all under this machine's descriptor limit), half of the runtime ones in `prompt` sessions, and 500
    // that ask for the CSV in bulk and never read.
    let prompt = Crowd::gather(proxy.runtime_api(), 10_000, "prompt\n");
    let admin = Crowd::gather(proxy.admin(), 9_500, "GET /;csv HTTP/1.1\r\nHost: x\r\n\r\n");
    let bulk = "show stat;".repeat(400) + "\n";
    let non_readers = Crowd::gather(proxy.runtime_api(), 500, &bulk);
    assert_eq!(answered(proxy.addr, 300), 300, "the data plane answered every request");
    let held = open_descriptors(proxy.pid());
    eprintln!("descriptors: {before} at start, {held} with 20,000 control connections pending");
    // Ten runtime sessions and 32 admin connections at most, on each listener four evicted ones still closing
    // and one accepted while they do, and the last data-plane connections in their lingering close.
    assert!(held <= before + 42 + 2 * (4 + 1) + 4, "the control listeners took {} descriptors", held - before);
    drop((prompt, admin, non_readers));
    // And the operator gets in again once the crowd has gone.
    let start = Instant::now();
    loop {
        // A connect whose SYN meets a backlog the crowd still fills is retried by the kernel only after 1, 3,
        // 7 ... seconds, longer than this whole wait: each attempt gets a second, then a fresh SYN.
        let Ok(mut s) = TcpStream::connect_timeout(&proxy.runtime_api(), Duration::from_secs(1)) else {
            assert!(start.elapsed() < Duration::from_secs(90), "the runtime API never accepted again");
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(b"show info\n").unwrap();
        let mut out = String::new();
        if s.read_to_string(&mut out).is_ok() && out.contains("Name: shoal") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "the runtime API never answered again");
    }
}

/// Opens `n` connections to `addr` that say nothing. The kernel queues them in order, so the proxy accepts
/// them in order, before any connection opened after.
fn silent_sessions(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

/// The oldest silent connection was closed by the proxy; the others are still open.
fn quietest_closed(silent: Vec<TcpStream>) {
    let mut byte = [0u8; 1];
    silent[0].set_read_timeout(Some(WAIT)).unwrap();
    let read = (&silent[0]).read(&mut byte);
    assert!(common::closed(&read), "the quietest session was closed: {read:?}");
    for s in &silent[1..] {
        s.set_nonblocking(true).unwrap();
        let e = (&*s).read(&mut byte).expect_err("the other sessions are still open");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
}

#[test]
fn silent_connections_holding_every_control_slot_give_the_quietest_to_the_operator() {
    let proxy = Proxy::start(&["--access-log", "off"]);
    // The runtime API serves 10 sessions, each silent for up to 60 s before it is let go: the operator is
    // answered well before that, the quietest session closed for it.
    let silent = silent_sessions(proxy.runtime_api(), 10);
    let mut operator = TcpStream::connect(proxy.runtime_api()).unwrap();
    operator.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    operator.write_all(b"show info\n").unwrap();
    let mut out = String::new();
    operator.read_to_string(&mut out).unwrap();
    assert!(out.contains("Name: shoal"), "the operator was answered: {out:?}");
    quietest_closed(silent);
    // The admin listener's 32, silent for up to 5 s each.
    let silent = silent_sessions(proxy.admin(), 32);
    let mut scraper = TcpStream::connect(proxy.admin()).unwrap();
    scraper.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    scraper.write_all(b"GET /;csv HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = scraper.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "the scraper was answered: {out:?}");
    quietest_closed(silent);
}

#[test]
fn a_malformed_admin_request_is_answered_400_at_once() {
    // No Host on HTTP/1.1, on a connection the client keeps open: the answer comes, not the 5 s read timeout.
    let proxy = Proxy::start(&[]);
    let mut w = Wire::connect(proxy.admin());
    w.send(b"GET /;csv HTTP/1.1\r\n\r\n");
    let r = w.read_response(false).expect("an answer before the connection closes");
    assert_eq!(r.status(), 400);
}

/// A HEAD gets the head a GET gets and no body (the body came too: a client reusing the connection would read
/// it as its next answer).
#[test]
fn the_admin_side_answers_head_with_a_head_alone() {
    let proxy = Proxy::start(&[]);
    for path in ["/;csv", "/metrics", "/members", "/"] {
        let mut client = TcpStream::connect(proxy.admin()).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        client.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("the admin side closes after its answer");
        let text = String::from_utf8_lossy(&got);
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
        let length = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("a Content-Length");
        assert!(head.starts_with("HTTP/1.1 200") && length.parse::<usize>().unwrap() > 0, "{path}: {head}");
        assert_eq!(body, "", "{path}: a body after the head of a HEAD");
    }
}

#[test]
fn an_admin_answer_reaches_a_client_still_sending() {
    // A request the admin side does not read to its end (a body it ignores, a head over its 8 KiB), sent
    // whole before the answer is read, as curl does: a close with the rest unread would be a reset.
    let proxy = Proxy::start(&[]);
    let body = vec![b'x'; 8 << 20];
    let huge_header = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let cases = [
        (format!("POST /;csv HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()), "HTTP/1.1 200"),
        (format!("GET /;csv HTTP/1.1\r\nHost: x\r\n{huge_header}\r\n"), "HTTP/1.1 400"),
    ];
    for (head, status) in &cases {
        for attempt in 0..3 {
            let mut client = TcpStream::connect(proxy.admin()).unwrap();
            client.set_read_timeout(Some(WAIT)).unwrap();
            client.set_write_timeout(Some(WAIT)).unwrap();
            let sent = client.write_all(head.as_bytes()).and_then(|()| client.write_all(&body));
            if let Err(e) = sent {
                panic!("{status}, attempt {attempt}: reset while the client sent: {e}");
            }
            let mut got = Vec::new();
            if let Err(e) = client.read_to_end(&mut got) {
                panic!("{status}, attempt {attempt}: the answer was lost: {e} (got {} bytes)", got.len());
            }
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with(status), "attempt {attempt}: {text:?}");
        }
    }
}

#[test]
fn the_runtime_api_can_be_off_and_the_admin_page_locked() {
    let proxy = Proxy::start(&["--runtime-api", "off", "--admin-auth", "ops:s3cret"]);
    let admin = proxy.admin();
    assert!(!proxy.stderr.all().iter().any(|l| l.contains("runtime API on")), "no runtime API listener");
    for path in ["/", "/;csv", "/metrics"] {
        let r = common::get(admin, path);
        assert_eq!(r.status(), 401, "{path} without credentials");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Basic realm=\"shoal\""));
    }
    let ask = |credentials: &str| {
        let raw = format!("GET /;csv HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n\r\n");
        common::request(admin, raw.as_bytes())
    };
    // base64("ops:s3cret") and base64("ops:wrong").
    assert_eq!(ask("b3BzOnMzY3JldA==").status(), 200);
    assert_eq!(ask("b3BzOndyb25n").status(), 401);
    // The password never shows in --check.
    let out = common::shoal()
        .args(["proxy", "--check", "--gossip", "127.0.0.1:7946", "--admin-auth", "ops:s3cret"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("s3cret"), "{text}");
    let bad = common::shoal()
        .args(["proxy", "--check", "--gossip", "127.0.0.1:7946", "--admin-auth", "s3cret"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("admin-auth") && !err.contains("s3cret"), "{err}");
}

/// POSTs `pieces` of 512 bytes, one every `pace`, and returns the status.
fn slow_upload(proxy: SocketAddr, pieces: usize, pace: Duration) -> u16 {
    let mut client = TcpStream::connect(proxy).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", pieces * 512);
    client.write_all(head.as_bytes()).unwrap();
    for _ in 0..pieces {
        std::thread::sleep(pace);
        if client.write_all(&[b'u'; 512]).is_err() {
            break;
        }
    }
    let mut w = Wire::new(client);
    w.read_response(false).map_or(0, |r| r.status())
}

#[test]
fn a_slow_upload_that_keeps_moving_is_not_cut_by_the_server_timeout() {
    let backend = Backend::http(|req| common::ok(&format!("{} bytes", req.body.len())));
    // Server and client timeouts of 1 s; the upload lasts about 2.4 s, with a piece every 150 ms.
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-server", "1s", "--timeout-client", "1s"]);
    assert_eq!(slow_upload(proxy.addr, 16, Duration::from_millis(150)), 200, "the upload completes");
    assert_eq!(backend.wait_requests(1)[0].body.len(), 16 * 512);
    // The same upload spliced (bodies above 4 KiB): each piece the server takes counts as progress too.
    let spliced = Proxy::start(&[
        "--backend",
        &backend.arg(),
        "--timeout-server",
        "1s",
        "--timeout-client",
        "1s",
        "--splice-min",
        "4096",
    ]);
    assert_eq!(slow_upload(spliced.addr, 16, Duration::from_millis(150)), 200, "the spliced upload completes");
    // Inactivity still counts: a server that takes the whole body and never answers gets a 504.
    let silent = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        if w.read_request().is_some() {
            std::thread::park_timeout(WAIT);
        }
    });
    let proxy = Proxy::start(&["--backend", &silent.arg(), "--timeout-server", "1s"]);
    assert_eq!(slow_upload(proxy.addr, 2, Duration::from_millis(10)), 504);
}

/// The descriptors `pid` holds, as numbers, and how many of them are pipes.
/// The inode of the proxy's socket for the loopback connection from `client_port` to `proxy_port`
/// (`/proc/net/tcp`: local and remote address as hex `ip:port`, the inode in the tenth column).
fn proxy_end_of(client_port: u16, proxy_port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap_or(""), 16).ok();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && port_of(f[1]) == Some(proxy_port) && port_of(f[2]) == Some(client_port))
        .and_then(|f| f[9].parse().ok())
        .expect("the proxy's end of the connection in /proc/net/tcp")
}

fn descriptor_numbers(pid: u32) -> (Vec<u64>, usize) {
    let mut numbers = Vec::new();
    let mut pipes = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        numbers.push(entry.file_name().to_string_lossy().parse().unwrap());
        let link = std::fs::read_link(entry.path()).map(|l| l.display().to_string()).unwrap_or_default();
        pipes += usize::from(link.starts_with("pipe:"));
    }
    numbers.sort_unstable();
    (numbers, pipes)
}

#[test]
fn a_body_to_splice_is_copied_when_no_pipe_can_be_had() {
    let big: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let body = big.clone();
    let backend = Backend::http(move |req| {
        if !req.start_line().starts_with("GET /big ") {
            return common::ok("small");
        }
        let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        response.extend_from_slice(&body);
        response
    });
    // One data-plane thread, so the upstream connection pooled by the first request serves the second.
    let proxy =
        Proxy::start(&["--backend", &backend.arg(), "--threads", "1", "--splice-min", "4096", "--access-log", "off"]);
    let mut client = Wire::connect(proxy.addr);
    client.send(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(client.read_response(false).unwrap().body, b"small");
    // The proxy's end of this connection, by its socket's inode: a count of descriptors could miss it (once
    // in CI, something else closed meanwhile and the count never reached the one awaited).
    let inode = proxy_end_of(client.stream.local_addr().unwrap().port(), proxy.addr.port());
    let holds = |pid: u32| {
        let wanted = format!("socket:[{inode}]");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.display().to_string() == wanted))
    };
    assert!(holds(proxy.pid()), "the proxy holds the client's connection");
    drop(client);
    wait_until("the first client's descriptor closed", || !holds(proxy.pid()));
    // Room for exactly one more descriptor (the next client's): no pipe can be made for the splice.
    let (held, pipes_before) = descriptor_numbers(proxy.pid());
    let mut free = (0..).filter(|n| held.binary_search(n).is_err());
    let (_one, second) = (free.next().unwrap(), free.next().unwrap());
    limit_descriptors(proxy.pid(), second);
    let mut client = Wire::connect(proxy.addr);
    client.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    let response = client.read_response(false).expect("a whole response");
    assert_eq!(response.status(), 200);
    assert!(response.body == big, "the body arrived whole and in order ({} bytes)", response.body.len());
    let (_, pipes_after) = descriptor_numbers(proxy.pid());
    assert_eq!(pipes_after, pipes_before, "no pipe was made: the body was copied");
    limit_descriptors(proxy.pid(), u64::MAX);
    // With descriptors again, the same request is spliced through a pipe the thread then keeps.
    client.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(client.read_response(false).unwrap().body == big);
    wait_until("the spliced transfer's pipe kept", || descriptor_numbers(proxy.pid()).1 == pipes_before + 2);
}

#[test]
fn a_connection_limit_the_descriptor_limit_cannot_hold_is_refused_at_start() {
    let out = common::shoal()
        .args(["proxy", "--check", "--gossip", "127.0.0.1:7946", "--max-connections", "30000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`max-connections`") && err.contains("ulimit -n"), "{err}");
    // As HAProxy's `no strict-limits`: kept, with a warning.
    let out = common::shoal()
        .args([
            "proxy",
            "--check",
            "--gossip",
            "127.0.0.1:7946",
            "--max-connections",
            "30000",
            "--strict-limits",
            "off",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("--strict-limits off"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--max-connections 30000"));
}

/// Sets `pid`'s soft open-file limit (the hard one stays, so it can be raised again without privileges).
fn limit_descriptors(pid: u32, n: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit reads and writes only the structs we pass, which live on this stack frame.
    let rc = unsafe {
        libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim);
        lim.rlim_cur = n.min(lim.rlim_max);
        libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut())
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn out_of_descriptors_accept_backs_off_logs_once_a_second_and_recovers() {
    let backend = Backend::http(|_| common::ok("fine"));
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "1", "--max-connections", "500"]);
    assert_eq!(answered(proxy.addr, 1), 1);
    // Room for a handful more descriptors only, as when another part of the process took them.
    limit_descriptors(proxy.pid(), (open_descriptors(proxy.pid()) + 8) as u64);
    let started = Instant::now();
    let crowd: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(proxy.addr).unwrap()).collect();
    // Three lines: a second apart when the back-off holds the log, 50 ms apart if it logged every attempt.
    let emfile = |l: &str| l.contains("accept on") && l.contains("Too many open files");
    proxy.stderr.wait_count("three EMFILE lines", 3, emfile);
    let elapsed = started.elapsed().as_secs() as usize;
    let lines = proxy.stderr.all().iter().filter(|l| emfile(l)).count();
    assert!(lines <= elapsed + 2, "{lines} EMFILE lines in {elapsed} s:\n{}", proxy.stderr.all().join("\n"));
    // Descriptors free up: accepting works again, and the queued clients are served.
    limit_descriptors(proxy.pid(), u64::MAX);
    drop(crowd);
    proxy.stderr.wait_for("recovery logged", |l| l.contains("works again after"));
    assert_eq!(answered(proxy.addr, 20), 20);
}

#[test]
fn a_response_cut_mid_body_is_logged_and_counted_with_the_bytes_delivered() {
    // Promises 1,000,000 bytes, sends 300,000 and closes.
    let backend = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        if w.read_head().is_some() {
            w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
            w.send(&vec![b'c'; 300_000]);
        }
    });
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut client = Wire::connect(proxy.addr);
    client.send(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = client.read_all();
    assert!(got.len() > 300_000 && got.len() < 1_000_000, "the client got the part that came: {}", got.len());
    let line = proxy.log_line("GET /cut");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (status, bytes, term) = (fields[5], fields[6].parse::<u64>().unwrap(), fields[9]);
    assert_eq!((status, term), ("200", "SD--"), "{line}");
    assert_eq!(bytes, got.len() as u64, "the log counts what the client got: {line}");
    assert_eq!(proxy.metric("shoal_frontend_bytes_out_total"), got.len() as u64);
}

#[test]
fn every_bind_error_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp, udp) = (taken.local_addr().unwrap().to_string(), taken_udp.local_addr().unwrap().to_string());
    let base = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"];
    let runs: Vec<(Vec<&str>, &str)> = vec![
        (vec!["proxy", "--listen", &tcp, "--gossip", "127.0.0.1:0"], &tcp),
        (vec!["proxy", "--admin", &tcp, "--gossip", "127.0.0.1:0"], &tcp),
        (vec!["proxy", "--runtime-api", &tcp, "--gossip", "127.0.0.1:0"], &tcp),
        (vec!["proxy", "--gossip", &udp], &udp),
        (vec!["agent", "--service", "127.0.0.1:1", "--gossip", &udp, "--join", "127.0.0.1:1"], &udp),
        (vec!["webapp", "--listen", &tcp], &tcp),
    ];
    for (args, addr) in runs {
        let mut cmd = common::shoal();
        cmd.args(&args);
        if args[0] == "proxy" {
            // The defaults for whatever the run does not set itself.
            for pair in base.chunks(2) {
                if !args.contains(&pair[0]) {
                    cmd.args(pair);
                }
            }
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started although {addr} is taken");
        assert!(err.contains(&format!("bind {addr}")), "{args:?}: the error names {addr}: {err}");
    }
}

/// `wrk`'s "Socket errors" line as (connect, read, write, timeout); all zero when absent.
fn socket_errors(report: &str) -> [u64; 4] {
    let Some(line) = report.lines().find(|l| l.contains("Socket errors:")) else { return [0; 4] };
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    [numbers[0], numbers[1], numbers[2], numbers[3]]
}

#[test]
fn sigterm_under_wrk_loses_no_request_in_flight() {
    let (_app, app) = common::webapp("steady");
    for run in 1..=10 {
        let mut proxy = Proxy::start(&["--backend", &app, "--access-log", "off"]);
        let wrk = Command::new("wrk")
            .args(["-t2", "-c50", "-d2s", &format!("http://{}/", proxy.addr)])
            .stdout(Stdio::piped())
            .spawn()
            .expect("wrk (apt-get install wrk)");
        let start = Instant::now();
        while proxy.metric("shoal_frontend_requests_total") < 2000 {
            assert!(start.elapsed() < WAIT, "wrk's load never reached the proxy");
        }
        proxy.signal(libc::SIGTERM);
        assert!(proxy.wait_exit().success(), "run {run}: a clean exit");
        let report = String::from_utf8_lossy(&wrk.wait_with_output().unwrap().stdout).into_owned();
        let [_, read, _, timeout] = socket_errors(&report);
        // What wrk reports as connect and write errors are its reconnects to a listener that is gone (HAProxy's
        // soft stop shows the same); read errors and timeouts would be requests lost in flight.
        assert_eq!((read, timeout), (0, 0), "run {run}: requests lost in flight:\n{report}");
        assert!(!report.contains("Non-2xx"), "run {run}:\n{report}");
    }
}

/// A backend whose keep-alive connections answer `/bad` with `bad` (as it is) and `/good` with a clean
/// 200: after a bad answer, a good request must get the good one, never leftovers of the bad.
fn misbehaving(bad: &'static [u8]) -> Backend {
    Backend::raw(move |stream, _| {
        let mut w = Wire::new(stream);
        while let Some(req) = w.read_request() {
            if req.start_line().contains("/bad") {
                w.send(bad);
            } else {
                w.send(&common::ok("good"));
            }
        }
    })
}

/// Transfer-Encoding and Content-Length in one answer: framed by the first, as RFC 9112 says, but the
/// connection is not used again (whatever else reads it may frame by the second), as HAProxy closes it.
#[test]
fn an_answer_with_both_lengths_is_relayed_and_its_connection_not_pooled() {
    let backend =
        misbehaving(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "1"]);
    let bad = common::get(proxy.addr, "/bad");
    assert_eq!((bad.status(), bad.body_str().as_str()), (200, "abc"));
    assert_eq!(common::get(proxy.addr, "/good").body_str(), "good");
    assert_eq!(backend.connection_count(), 2, "the connection that carried both lengths was used again");
}

/// The proxy's own answers to HEAD are heads alone (RFC 9110 section 9.3.2): a 503 with no server up, a 400.
#[test]
fn the_proxys_own_answers_to_head_carry_no_body() {
    let dead = common::refused_port();
    let proxy = Proxy::start(&["--backend", &dead.addr.to_string()]);
    for (request, status) in [("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", 503), ("HEAD / HTTP/1.1\r\n\r\n", 400)] {
        let mut client = Wire::connect(proxy.addr);
        client.send(request.as_bytes());
        let all = client.read_all();
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")) && text.ends_with("\r\n\r\n"),
            "{request:?}: {text:?}"
        );
    }
}

#[test]
fn hostile_backends_get_clean_answers_and_poison_no_pooled_connection() {
    let endless_headers: &'static [u8] =
        Box::leak([b"HTTP/1.1 200 OK\r\n".to_vec(), b"X-Endless: yes\r\n".repeat(4096)].concat().into_boxed_slice());
    let cases: Vec<(&str, &'static [u8], &str, u16, &str)> = vec![
        ("garbage for a status line", b"HELLO THERE\r\n\r\n", "GET", 502, ""),
        (
            "more bytes than Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE-AFTER",
            "GET",
            200,
            "ok",
        ),
        ("a body on a 204", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", "GET", 204, ""),
        ("a body on a 304", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", "GET", 304, ""),
        ("a body on a HEAD answer", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "HEAD", 200, ""),
        ("endless headers", endless_headers, "GET", 502, ""),
        (
            "Transfer-Encoding on HTTP/1.0 (RFC 9112 section 6.1: faulty framing)",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "GET",
            502,
            "",
        ),
        (
            "two Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            "GET",
            502,
            "",
        ),
        // Bodiless answers' lengths were relayed unchecked: the client got both values, or the garbage.
        (
            "two Content-Lengths on a 304",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
            "GET",
            502,
            "",
        ),
        ("an invalid Content-Length on a HEAD answer", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", "HEAD", 502, ""),
    ];
    for (what, bad, method, status, body) in cases {
        let backend = misbehaving(bad);
        // One thread, so the good request finds the pooled connection the bad one used, if it was kept.
        // Idle pooled connections expire after a second, so descriptors must come back to the baseline.
        let proxy = Proxy::start(&[
            "--backend",
            &backend.arg(),
            "--threads",
            "1",
            "--access-log",
            "off",
            "--timeout-pool",
            "1s",
        ]);
        // The baseline once every thread is up and a pooled connection exists.
        assert_eq!(common::get(proxy.addr, "/good").status(), 200);
        let fds = open_descriptors(proxy.pid());
        for round in 0..3 {
            let mut client = Wire::connect(proxy.addr);
            client.send(format!("{method} /bad HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            let r = client.read_response(method == "HEAD").unwrap_or_else(|| panic!("{what}: no answer"));
            assert_eq!(r.status(), status, "{what}, round {round}");
            if status < 500 {
                assert_eq!(r.body_str(), body, "{what}, round {round}: the body as framed");
            }
            let good = common::get(proxy.addr, "/good");
            assert_eq!((good.status(), good.body_str().as_str()), (200, "good"), "{what}: the next request");
        }
        descriptors_come_back(proxy.pid(), fds, what);
    }
}

#[test]
fn an_endless_body_to_a_client_that_does_not_read_holds_no_more_than_buffers() {
    let backend = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        if w.read_head().is_some() {
            w.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            let chunk = [b"10000\r\n".to_vec(), vec![b'e'; 0x10000], b"\r\n".to_vec()].concat();
            while w.stream.write_all(&chunk).is_ok() {}
        }
    });
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "1"]);
    let rss = || common::rss_kib(proxy.pid());
    // RSS once it stops changing: the backend writes for ever, so growing memory would never settle.
    let settled = || -> u64 {
        let (mut previous, start) = (0, Instant::now());
        loop {
            let now = rss();
            if now == previous && start.elapsed() > Duration::from_secs(1) {
                return now;
            }
            previous = now;
            assert!(start.elapsed() < WAIT, "RSS never settled: {now} KiB");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let before = rss();
    let mut client = TcpStream::connect(proxy.addr).unwrap();
    client.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Read a little, then stop reading: the socket buffers on the way fill and the backend is held back.
    let mut buf = vec![0u8; 1 << 20];
    client.read_exact(&mut buf[..65536]).unwrap();
    let first = settled();
    // Another 32 MiB through, then stalled again: nothing may have piled up meanwhile.
    for _ in 0..32 {
        client.read_exact(&mut buf).unwrap();
    }
    let second = settled();
    eprintln!("RSS {before} KiB before, {first} KiB at the first stall, {second} KiB after 32 MiB more");
    assert!(second <= first + 1024, "memory piles up with the bytes relayed: {first} -> {second} KiB");
    assert!(first - before < 16 << 10, "the proxy holds {} KiB for one stalled response", first - before);
}

#[test]
fn runtime_lines_of_many_commands_to_clients_that_do_not_read_hold_no_more_than_buffers() {
    let backend = Backend::http(|_| common::ok("fine"));
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--access-log", "off"]);
    assert!(proxy.runtime("show info").contains("Name: shoal"));
    let before = common::rss_kib(proxy.pid());
    // Each line asks for about a megabyte; its client reads nothing, so every session stalls on its writes.
    let line = "help;".repeat(800) + "\n";
    let clients: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.runtime_api()).unwrap();
            s.write_all(line.as_bytes()).unwrap();
            s
        })
        .collect();
    wait_until("an answer to reach every client", || {
        clients.iter().all(|c| {
            c.set_nonblocking(true).unwrap();
            c.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0)
        })
    });
    let grown = common::rss_kib(proxy.pid()).saturating_sub(before);
    eprintln!("RSS grew {grown} KiB with 10 stalled sessions of 1 MiB answers each");
    assert!(grown < 4 << 10, "the runtime API holds {grown} KiB of answers nobody reads");
    drop(clients);
    assert!(proxy.runtime("show info").contains("Name: shoal"), "the runtime API still answers");
}

#[test]
fn clients_that_vanish_mid_request_or_mid_response_poison_nothing() {
    // `/big` answers 8 MiB; anything else echoes the length of the body it read.
    let backend = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        while let Some(req) = w.read_request() {
            if req.start_line().contains("/big") {
                w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n");
                if w.stream.write_all(&vec![b'b'; 8 << 20]).is_err() {
                    return;
                }
            } else {
                w.send(&common::ok(&format!("{} bytes", req.body.len())));
            }
        }
    });
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "1", "--timeout-pool", "1s"]);
    assert_eq!(common::get(proxy.addr, "/").body_str(), "0 bytes");
    let fds = open_descriptors(proxy.pid());
    for round in 0..5 {
        // Gone mid-body: half of a 1000-byte upload, then the connection closes.
        let mut c = TcpStream::connect(proxy.addr).unwrap();
        c.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").unwrap();
        c.write_all(&[b'u'; 500]).unwrap();
        drop(c);
        // Gone mid-response: 64 KiB of an 8 MiB answer read, then closed.
        let mut c = TcpStream::connect(proxy.addr).unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        c.read_exact(&mut [0u8; 65536]).unwrap();
        drop(c);
        // The next request on the pooled side gets a clean answer.
        let r = common::request(proxy.addr, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(r.body_str(), "3 bytes", "round {round}");
    }
    // Both cut exchanges are logged: a request cut by its client (CD, no status: HAProxy's -1) and a response
    // cut by its client (CD, with the bytes delivered).
    let cut_download = proxy.log_line("GET /big");
    let lines = proxy.stdout.all();
    assert!(lines.iter().any(|l| l.contains("/upload") && l.contains(" -1 0 - - CD--")), "{lines:?}");
    assert!(cut_download.contains(" CD--"), "{cut_download}");
    descriptors_come_back(proxy.pid(), fds, "clients that vanished");
}

#[test]
fn slowloris_and_slow_posts_by_the_thousand_leave_a_normal_client_answered() {
    let backend = Backend::http(|req| common::ok(&format!("{} bytes", req.body.len())));
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--access-log", "off", "--timeout-head", "2s"]);
    // 2,000 heads that never end, and 2,000 uploads that stall after their first bytes.
    let loris = Crowd::gather(proxy.addr, 2000, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let posts =
        Crowd::gather(proxy.addr, 2000, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc");
    assert_eq!(answered(proxy.addr, 200), 200, "the normal client is answered throughout");
    // The slowloris heads are cut by --timeout-head with a 408, as HAProxy's `timeout http-request` does.
    let start = Instant::now();
    while proxy.metric("shoal_frontend_responses_total{code=\"4xx\"}") < 2000 {
        assert!(start.elapsed() < WAIT, "the slow heads were not cut");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answered(proxy.addr, 20), 20);
    drop((loris, posts));
}

#[test]
fn a_flood_past_max_connections_waits_in_the_queue_and_is_served_as_slots_free() {
    let backend = Backend::http(|_| common::ok("fine"));
    let proxy = Proxy::start(&[
        "--backend",
        &backend.arg(),
        "--access-log",
        "off",
        "--max-connections",
        "500",
        "--timeout-head",
        "1s",
    ]);
    // 1,500 silent connections: 500 take every slot, the rest wait in the accept queue.
    let flood = Crowd::gather(proxy.addr, 1500, "");
    // A normal client waits its turn (slots free as --timeout-head cuts the silent ones) and is served.
    for _ in 0..5 {
        let body = common::http_get(proxy.addr, "/", WAIT).expect("served once a slot frees");
        assert_eq!(body, "fine");
    }
    drop(flood);
}

/// A client that resets its connection while the server works on its answer: the answer's status is logged
/// and counted (HAProxy: `200 ... CD--`, hrsp_2xx and cli_abrt), though the head never reached the client.
#[test]
fn a_client_gone_before_its_answer_is_logged_with_the_answers_status() {
    let (backend, release) = Backend::gated("late", "ok");
    let proxy = Proxy::start(&["--backend", &format!("s1={}", backend.addr), "--threads", "1"]);
    let client = TcpStream::connect(proxy.addr).unwrap();
    (&client).write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    wait_until("the request at the server", || backend.requests().len() == 1);
    socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
    drop(client);
    release.send(()).unwrap();
    let line = proxy.log_line("GET /slow");
    assert!(line.contains(" 200 ") && line.contains(" CD--"), "{line}");
    assert_eq!(proxy.servers_column("s1", "hrsp_2xx"), "1");
    assert_eq!(proxy.servers_column("s1", "cli_abrt"), "1");
}
