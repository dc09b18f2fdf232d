//! Connection lifecycle: WebSocket tunnels with half-close, every timeout, graceful shutdown, the access log,
//! the connection limit.

mod common;

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use common::{record, Backend, Proxy, Wire, WAIT};

/// Accepts a WebSocket upgrade, echoes until the proxy half-closes, then says "bye" and closes.
fn websocket_echo() -> Backend {
    Backend::raw(|stream, received| {
        let mut w = Wire::new(stream);
        let Some(req) = w.read_request() else { return };
        let upgrade = req.header("upgrade").unwrap_or_default();
        record(received, req);
        if upgrade != "websocket" {
            w.send(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        w.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n");
        let mut buf = [0u8; 1024];
        loop {
            match w.stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => w.stream.write_all(&buf[..n]).unwrap(),
            }
        }
        // The client's half-close reached us; our direction is still open.
        let _ = w.stream.write_all(b"bye");
    })
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn websocket_echo_through_the_tunnel_with_half_close() {
    // With --splice-min 1 each direction switches to splice(2) after its first byte; 0 copies throughout.
    for splice_min in ["0", "1"] {
        echo_through_tunnel(&["--splice-min", splice_min]);
    }
}

fn echo_through_tunnel(flags: &[&str]) {
    let backend = websocket_echo();
    let backend_arg = backend.arg();
    let mut args = vec!["--backend", backend_arg.as_str()];
    args.extend_from_slice(flags);
    let proxy = Proxy::start(&args);
    let mut w = Wire::connect(proxy.addr);
    w.send(UPGRADE);
    let head = w.read_response(true).unwrap();
    assert_eq!(head.status(), 101);
    assert_eq!(head.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(head.header("connection").as_deref(), Some("upgrade"));
    let forwarded = &backend.wait_requests(1)[0];
    assert_eq!(forwarded.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(forwarded.header("connection").as_deref(), Some("upgrade"));

    for msg in ["ping", "a longer frame of bytes"] {
        w.send(msg.as_bytes());
        let mut got = vec![0u8; msg.len()];
        w.stream.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes(), "{flags:?}");
    }
    // Bulk both ways at once: written from another thread, since the echo fills the buffers of both directions.
    let bulk: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut writer = w.stream.try_clone().unwrap();
    let sent = bulk.clone();
    let sender = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut got = vec![0u8; bulk.len()];
    w.stream.read_exact(&mut got).unwrap();
    sender.join().unwrap();
    assert!(got == bulk, "4 MiB echoed intact through the tunnel ({flags:?})");

    w.shutdown_write();
    assert_eq!(w.read_all(), b"bye", "the other direction stays open after our half-close ({flags:?})");
    // The tunnel's bytes count both ways: the head and 4 MiB and a bit in (`bin`), the 101 and as much out.
    let tunneled = (bulk.len() + "ping".len() + "a longer frame of bytes".len()) as u64;
    common::wait_until("the tunnel counted", || proxy.metric("shoal_frontend_bytes_in_total") > 0);
    assert_eq!(proxy.metric("shoal_frontend_bytes_in_total"), UPGRADE.len() as u64 + tunneled, "{flags:?}");
    assert!(proxy.metric("shoal_frontend_bytes_out_total") >= tunneled + 3, "{flags:?}");
    // Closed by its peers: no termination flag, no abort (HAProxy's `----`).
    assert!(proxy.log_line("GET /ws").contains(" 101 ") && proxy.log_line("GET /ws").contains(" ---- "));
    assert_eq!(proxy.backend_column("cli_abrt"), "0");
}

#[test]
fn upgrade_refused_by_the_backend_stays_http() {
    let backend = websocket_echo();
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n");
    let r = w.read_response(false).unwrap();
    assert_eq!(r.status(), 426);
    assert!(r.header("upgrade").is_none());
}

#[test]
fn tunnel_idle_timeout_closes_both_sides() {
    let backend = websocket_echo();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-tunnel", "300ms"]);
    let mut w = Wire::connect(proxy.addr);
    w.send(UPGRADE);
    assert_eq!(w.read_response(true).unwrap().status(), 101);
    assert!(w.is_closed(), "an idle tunnel is closed by the proxy");
    // As HAProxy 2.6 logs and counts a tunnel its `timeout tunnel` ends: a client timeout in the data phase.
    let line = proxy.log_line("GET /ws");
    assert!(line.contains(" 101 ") && line.contains(" cD-- "), "{line}");
    assert_eq!(proxy.backend_column("cli_abrt"), "1");
}

#[test]
fn slow_request_head_gets_408() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-head", "300ms"]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"GET /slowloris HTTP/1.1\r\nHost: t\r\n");
    let r = w.read_response(false).unwrap();
    assert_eq!(r.status(), 408);
    assert!(w.is_closed());
    assert!(backend.requests().is_empty());
}

#[test]
fn a_new_connection_s_first_head_is_due_within_the_head_timeout_of_the_connect() {
    // 1.3 s before the first byte, 1.3 s more for the rest: 2.6 s from the connect, over --timeout-head 2s,
    // though each wait alone is under it (the head timeout used to restart at the first byte). The margins
    // (0.7 s before the first byte's deadline, 0.6 s past the head's) leave room for a loaded machine.
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-head", "2s"]);
    let mut w = Wire::connect(proxy.addr);
    std::thread::sleep(Duration::from_millis(1300));
    w.send(b"GET /late HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(1300));
    let _ = w.stream.write_all(b"Host: t\r\n\r\n");
    let r = w.read_response(false).expect("an answer");
    assert_eq!(r.status(), 408);
    assert!(backend.requests().is_empty());
}

#[test]
fn a_head_in_two_pieces_is_timed_as_the_client_s_not_the_server_s() {
    // httplog's TR (receiving the head) gets the client's pause, Tc (connecting to the server) none of it.
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"GET /two-pieces HTTP/1.1\r\nHost: t\r\n");
    std::thread::sleep(Duration::from_millis(600));
    w.send(b"\r\n");
    assert_eq!(w.read_response(false).unwrap().status(), 200);
    let line = proxy.log_line("/two-pieces");
    let timers: Vec<i64> = line.split(' ').nth(4).unwrap().split('/').map(|t| t.parse().unwrap()).collect();
    let (tr, tc) = (timers[0], timers[2]);
    assert!(tr >= 300, "TR holds the client's pause: {line}");
    assert!(tc < 300, "Tc does not: {line}");
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-idle", "300ms"]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"GET /once HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(w.read_response(false).unwrap().status(), 200);
    assert!(w.is_closed(), "closed after the idle timeout, without a response");
}

#[test]
fn silent_new_connection_is_closed_without_a_response() {
    let proxy = Proxy::start(&["--timeout-head", "300ms"]);
    let mut w = Wire::connect(proxy.addr);
    assert!(w.read_all().is_empty());
}

#[test]
fn stalled_request_body_gets_408() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-client", "300ms"]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    let r = w.read_response(false).unwrap();
    assert_eq!(r.status(), 408);
    assert!(proxy.log_line("/stall").contains(" cD-- "));
}

#[test]
fn graceful_shutdown_finishes_requests_in_flight() {
    let (backend, release) = Backend::gated("done", "done");
    let mut proxy = Proxy::start(&["--backend", &backend.arg(), "--grace", "5s"]);
    // An idle keep-alive client is closed at shutdown; a client mid-request gets its answer.
    let mut idle = Wire::connect(proxy.addr);
    idle.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.read_response(false).unwrap().status(), 200);

    let mut busy = Wire::connect(proxy.addr);
    busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    backend.wait_requests(2);
    proxy.signal(libc::SIGTERM);
    proxy.stderr.wait_for("stop notice", |l| l.contains("stopping"));
    assert!(idle.is_closed(), "idle connections are closed at shutdown");
    release.send(()).unwrap();
    let r = busy.read_response(false).unwrap();
    assert_eq!((r.status(), r.body_str().as_str()), (200, "done"));
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let status = proxy.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(std::net::TcpStream::connect(proxy.addr).is_err(), "nothing listens after exit");
}

/// A second SIGTERM (or Ctrl-C) during the drain closes what is still open at once, as an operator hurrying a
/// stop expects: it was ignored, and the drain ran to its `--grace` (a minute here). New clients are refused
/// during the drain, not left waiting.
#[test]
fn a_second_stop_ends_the_drain_at_once() {
    let (backend, _release) = Backend::gated("done", "done");
    let mut proxy = Proxy::start(&["--backend", &backend.arg(), "--grace", "60s", "--threads", "1"]);
    let mut busy = Wire::connect(proxy.addr);
    busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    backend.wait_requests(1);
    proxy.signal(libc::SIGTERM);
    proxy.stderr.wait_for("stop notice", |l| l.contains("stopping"));
    // Meanwhile a new client is refused at once (its SYNs went unanswered while the drain lasted).
    let refused = |e: std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
    common::wait_until("a new client refused", || {
        std::net::TcpStream::connect_timeout(&proxy.addr, Duration::from_millis(500)).is_err_and(refused)
    });
    assert!(busy.silent_for(Duration::from_millis(300)), "the request in flight is left to finish");
    let hurried = std::time::Instant::now();
    proxy.signal(libc::SIGTERM);
    proxy.stderr.wait_for("the second stop", |l| l.contains("stop asked for again"));
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = proxy.pid();
    std::thread::spawn(move || {
        let _ = tx.send(proxy.wait_exit());
    });
    let status = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| {
        // SAFETY: kill(2) on the proxy this test started, still running past the test's patience.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("the proxy still drained 5 s after the second stop")
    });
    assert!(status.success(), "{status:?}");
    assert!(busy.is_closed(), "the connection in flight is closed");
    eprintln!("second stop to exit: {:?}", hurried.elapsed());
}

/// The stop comes while an answer streams, its head already sent without `Connection: close`: a request the
/// client pipelined behind it is answered too, with the close, instead of being dropped unread with the
/// connection (which resets it, and can take the end of the first answer along).
#[test]
fn a_request_pipelined_behind_an_answer_under_way_at_a_stop_is_answered() {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let backend = Backend::raw(move |stream, _| {
        let mut wire = Wire::new(stream);
        while let Some(request) = wire.read_request() {
            if request.start_line().contains("/slow") {
                wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n");
                released.lock().unwrap().recv().unwrap();
                wire.send(b"done");
            } else {
                wire.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond");
            }
        }
    });
    // One thread: once its listener stops taking connections, the thread serving the client has seen the stop.
    let mut proxy = Proxy::start(&["--backend", &backend.arg(), "--grace", "5s", "--threads", "1"]);
    let mut client = Wire::connect(proxy.addr);
    client.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n");
    // The first answer's head reached the client before the stop: it cannot carry the close.
    let head = String::from_utf8(client.read_head().expect("the first answer's head")).unwrap();
    assert!(head.starts_with("HTTP/1.1 200") && !head.to_ascii_lowercase().contains("connection: close"), "{head}");
    proxy.signal(libc::SIGTERM);
    proxy.stderr.wait_for("stop notice", |l| l.contains("stopping"));
    let refused = || std::net::TcpStream::connect_timeout(&proxy.addr, Duration::from_millis(100)).is_err();
    common::wait_until("the thread stopping", refused);
    release.send(()).unwrap();
    assert_eq!(client.read_bytes(4).as_deref(), Some(&b"done"[..]), "the first answer's body");
    let second = client.read_response(false).expect("the pipelined request's answer");
    assert_eq!((second.status(), second.body_str().as_str()), (200, "second"));
    assert_eq!(second.header("connection").as_deref(), Some("close"));
    assert!(client.is_closed());
    assert!(proxy.wait_exit().success());
}

#[test]
fn access_log_has_the_httplog_shape() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &format!("s1={}", backend.arg())]);
    common::get(proxy.addr, "/logged?q=1");
    let line = proxy.log_line("/logged");
    // 127.0.0.1:PORT [27/Nov/2026:21:05:48.123] shoal nodes/s1 0/0/0/1/1 200 NN - - ---- 1/1/0/0/0 0/0 "GET ..."
    let fields: Vec<&str> = line.split(' ').collect();
    assert!(fields[0].starts_with("127.0.0.1:"), "{line}");
    assert!(fields[1].starts_with('[') && fields[1].ends_with(']') && fields[1].len() == 26, "{line}");
    assert_eq!(&fields[2..4], ["shoal", "nodes/s1"], "{line}");
    assert_eq!(fields[4].split('/').count(), 5, "timers: {line}");
    assert!(fields[4].split('/').all(|t| t.parse::<i64>().is_ok_and(|v| v >= 0)), "{line}");
    assert_eq!(fields[5], "200");
    assert!(fields[6].parse::<u64>().unwrap() > 0);
    assert_eq!(&fields[7..10], ["-", "-", "----"], "{line}");
    // %ac/%fc/%bc/%sc/%rc: its connection counts, the request itself no longer does (HAProxy 2.6 logs a lone
    // request `1/1/0/0/0`).
    assert_eq!(fields[10], "1/1/0/0/0", "{line}");
    assert!(line.ends_with("0/0 \"GET /logged?q=1 HTTP/1.1\""), "{line}");

    // Stopped, a proxy flushes its log; its output is read to the end before it is checked for the line.
    let mut quiet = Proxy::start(&["--backend", &backend.arg(), "--access-log", "off"]);
    common::get(quiet.addr, "/unlogged");
    quiet.signal(libc::SIGTERM);
    assert!(quiet.wait_exit().success());
    quiet.stdout.wait_closed("the quiet proxy's stdout");
    assert!(quiet.stdout.all().is_empty(), "no access log when switched off: {:?}", quiet.stdout.all());
}

#[test]
fn connections_over_max_connections_wait_in_the_listen_queue() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "1", "--max-connections", "2"]);
    let mut held: Vec<Wire> = (0..2)
        .map(|i| {
            let mut w = Wire::connect(proxy.addr);
            w.send(format!("GET /held{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            assert_eq!(w.read_response(false).unwrap().status(), 200);
            w
        })
        .collect();

    // The kernel completes the handshake, but shoal does not accept a third connection while two are open.
    let mut waiting = Wire::connect(proxy.addr);
    waiting.send(b"GET /waiting HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        waiting.silent_for(std::time::Duration::from_millis(300)),
        "a third connection is served while two are open"
    );
    assert_eq!(backend.requests().len(), 2);

    // One closes: the waiting connection is accepted and its request answered.
    drop(held.remove(0));
    let r = waiting.read_response(false).expect("served once a slot frees up");
    assert_eq!((r.status(), r.body_str().as_str()), (200, "/waiting"));
}

/// Split over threads, `--max-connections` still holds for the process: each thread took it divided and rounded
/// up, so 3 over 2 threads let 4 clients in.
#[test]
fn max_connections_holds_for_the_process_whatever_the_threads() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "2", "--max-connections", "3"]);
    // 32 clients, hashed by the kernel to either thread's listener: each thread has two or more to serve.
    let _held: Vec<Wire> = (0..32)
        .map(|i| {
            let mut w = Wire::connect(proxy.addr);
            w.send(format!("GET /held{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            w
        })
        .collect();
    common::wait_until("three served", || backend.requests().len() >= 3);
    // Kept alive, the three hold their slots; give a fourth every chance to be let in.
    let settle = std::time::Instant::now();
    while settle.elapsed() < std::time::Duration::from_millis(500) {
        assert_eq!(backend.requests().len(), 3, "more clients served at once than --max-connections");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An upgrade request with a body, answered 101 at once, before the proxy could forward the body (the server
/// reads nothing until it has answered): the server still gets the body exactly once and then the tunnel's
/// bytes. The switch used to cut the body's forwarding mid-write, and the piece being written went again
/// through the tunnel.
#[test]
fn a_101_before_the_request_body_is_through_still_gets_the_body_once() {
    const BODY: usize = 16 << 20;
    let pattern = |i: usize| (i % 251) as u8;
    let (received_tx, received) = std::sync::mpsc::channel::<Vec<u8>>();
    let received_tx = Mutex::new(received_tx);
    let backend = Backend::raw(move |mut stream, _| {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\n");
        let mut all = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while all.len() < BODY + 3 {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = received_tx.lock().unwrap().send(all);
    });
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut client = std::net::TcpStream::connect(proxy.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: test\r\nContent-Length: {BODY}\r\n\r\n"
    );
    let mut sent = head.into_bytes();
    sent.extend((0..BODY).map(pattern));
    sent.extend_from_slice(b"END");
    let writer = {
        let mut client = client.try_clone().unwrap();
        std::thread::spawn(move || client.write_all(&sent))
    };
    let mut answer = [0u8; 12];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101");
    writer.join().unwrap().unwrap();
    let got = received.recv_timeout(WAIT).unwrap();
    assert_eq!(got.len(), BODY + 3, "the body once, then the tunnel's 3 bytes");
    assert!(got[..BODY].iter().enumerate().all(|(i, b)| *b == pattern(i)), "the body in order, whole");
    assert_eq!(&got[BODY..], b"END");
}
