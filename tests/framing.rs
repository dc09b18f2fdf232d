//! Message framing through the proxy in both directions: Content-Length, chunked (extensions, trailers),
//! close-delimited, bodiless responses, interim 1xx, HTTP/1.0 clients, and large streamed bodies.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{record, Backend, Proxy, Wire};

/// A backend that answers each request path with a canned response.
fn canned() -> Backend {
    Backend::raw(|stream, received| {
        let mut w = Wire::new(stream);
        while let Some(req) = w.read_request() {
            let path = req.start_line().split(' ').nth(1).unwrap_or("").to_string();
            record(received, req);
            let reply: &[u8] = match path.as_str() {
                "/length" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                "/close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
                "/gzip-chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "/gzip-close" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nuntil close",
                "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                "/204" => b"HTTP/1.1 204 No Content\r\n\r\n",
                "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
                "/103" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                "/hop" => b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n",
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            };
            if w.stream.write_all(reply).is_err() || path.ends_with("close") {
                return;
            }
        }
    })
}

fn send(proxy: &Proxy, w: &mut Wire, method: &str, path: &str) -> common::Message {
    w.send(format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    w.read_response(method == "HEAD").unwrap_or_else(|| panic!("{method} {path}: no response via {}", proxy.addr))
}

#[test]
fn response_framing_modes_on_one_connection() {
    let backend = canned();
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);

    let r = send(&proxy, &mut w, "GET", "/length");
    assert_eq!((r.status(), r.body_str().as_str()), (200, "hello"));

    let r = send(&proxy, &mut w, "GET", "/chunked");
    assert_eq!(r.body_str(), "hello world");
    let raw = String::from_utf8_lossy(&r.raw);
    assert!(
        raw.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
        "extensions dropped, trailers kept: {raw}"
    );

    let r = send(&proxy, &mut w, "HEAD", "/head");
    assert_eq!(r.header("content-length").as_deref(), Some("1234"), "HEAD keeps the length and has no body");

    let r = send(&proxy, &mut w, "GET", "/204");
    assert_eq!((r.status(), r.body.len()), (204, 0));
    let r = send(&proxy, &mut w, "GET", "/304");
    assert_eq!((r.status(), r.body.len()), (304, 0));

    // An interim 1xx reaches an HTTP/1.1 client, then the final answer.
    w.send(b"GET /103 HTTP/1.1\r\nHost: t\r\n\r\n");
    let early = w.read_response(false).unwrap();
    assert_eq!(early.status(), 103);
    assert_eq!(early.header("link").as_deref(), Some("</s.css>"));
    let fin = w.read_response(false).unwrap();
    assert_eq!((fin.status(), fin.body_str().as_str()), (200, "ok"));

    let r = send(&proxy, &mut w, "GET", "/hop");
    assert!(r.header("x-secret").is_none() && r.header("keep-alive").is_none(), "hop-by-hop removed: {}", r.head);
    assert_eq!(r.header("x-kept").as_deref(), Some("2"));

    // Still the same client connection; a close-delimited body ends it.
    let r = send(&proxy, &mut w, "GET", "/close");
    assert_eq!(r.body_str(), "until close");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(w.is_closed());
}

#[test]
fn http10_client_gets_chunked_bodies_unchunked() {
    let backend = canned();
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let all = String::from_utf8(w.read_all()).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(!all.to_ascii_lowercase().contains("transfer-encoding"), "{all}");
    assert!(all.contains("Connection: close\r\n") && all.ends_with("\r\n\r\nhello world"), "{all}");

    // Keep-alive for HTTP/1.0 with a length-delimited answer is announced explicitly.
    let mut w = Wire::connect(proxy.addr);
    w.send(b"GET /length HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = w.read_response(false).unwrap();
    assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    w.send(b"GET /length HTTP/1.0\r\n\r\n");
    let r = w.read_response(false).unwrap();
    assert_eq!((r.body_str().as_str(), r.header("connection").as_deref()), ("hello", Some("close")));
}

#[test]
fn a_transfer_coding_an_http10_client_cannot_take_is_a_502() {
    // RFC 9112 section 6.1: no Transfer-Encoding to an HTTP/1.0 client. Chunked can be undone, gzip cannot:
    // dropping its name would deliver bytes the client cannot read.
    let backend = canned();
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    for path in ["/gzip-chunked", "/gzip-close"] {
        let mut w = Wire::connect(proxy.addr);
        w.send(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let r = w.read_response(false).unwrap();
        assert_eq!(r.status(), 502, "{path}: {}", r.head);
        assert!(proxy.log_line(path).contains(" PH-- "), "{}", proxy.log_line(path));
        // An HTTP/1.1 client gets it as it is.
        let mut w = Wire::connect(proxy.addr);
        let r = send(&proxy, &mut w, "GET", path);
        assert_eq!(r.status(), 200);
        let te = r.header("transfer-encoding").unwrap_or_default();
        assert!(te.starts_with("gzip"), "{path}: {}", r.head);
    }
}

/// Echoes the request body length and a checksum, so a large body can be verified without a copy.
fn summing_backend() -> Backend {
    Backend::http(|req| {
        let sum: u64 = req.body.iter().map(|&b| u64::from(b)).sum();
        let text = format!("{} {}", req.body.len(), sum);
        if req.start_line().contains("/big") {
            let body = vec![b'x'; 3 << 20];
            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(&body);
            return out;
        }
        common::ok(&text)
    })
}

#[test]
fn large_bodies_stream_both_ways() {
    // Above the threshold bodies go through splice(2); with 0 through the buffer: both must agree.
    for splice_min in ["65536", "0"] {
        large_bodies_with(&["--splice-min", splice_min]);
    }
}

fn large_bodies_with(args: &[&str]) {
    let backend = summing_backend();
    let proxy = Proxy::start(&[&["--backend", &backend.arg()][..], args].concat());
    let body: Vec<u8> = (0..(2 << 20)).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();

    let mut w = Wire::connect(proxy.addr);
    let mut req = format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(&body);
    w.send(&req);
    assert_eq!(w.read_response(false).unwrap().body_str(), format!("{} {sum}", body.len()));

    // The same body chunked, in uneven chunks.
    let mut chunked = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(77_777) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    w.send(&chunked);
    assert_eq!(w.read_response(false).unwrap().body_str(), format!("{} {sum}", body.len()));

    w.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = w.read_response(false).unwrap();
    assert_eq!(r.body.len(), 3 << 20);
    assert!(r.body.iter().all(|&b| b == b'x'));

    // A client that reads slowly: the proxy holds what it cannot deliver yet and goes on reading the server.
    let mut slow = TcpStream::connect(proxy.addr).unwrap();
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut piece = [0u8; 32 << 10];
    loop {
        match slow.read(&mut piece).unwrap() {
            0 => break,
            n => got.extend_from_slice(&piece[..n]),
        }
        // The slowness under test: about 30 KiB every 2 ms, a tenth of the rate the server sends at.
        std::thread::sleep(Duration::from_millis(2));
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    assert_eq!(got.len() - head_end, 3 << 20, "the whole body reached the slow client");
    assert!(got[head_end..].iter().all(|&b| b == b'x'));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::http(|req| {
        let path = req.start_line().split(' ').nth(1).unwrap_or("").to_string();
        common::ok(&path)
    });
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);
    let mut batch = Vec::new();
    for i in 0..8 {
        batch.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    batch.extend_from_slice(
        b"POST /p8 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /p9 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    w.send(&batch);
    for i in 0..10 {
        let r = w.read_response(false).unwrap();
        assert_eq!(r.body_str(), format!("/p{i}"));
    }
}

#[test]
fn expect_100_continue_is_relayed_once() {
    let backend = Backend::raw(|stream, received| {
        let mut w = Wire::new(stream);
        let Some(head) = w.read_head() else { return };
        // Two interim answers: the client must see one.
        w.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n");
        let mut msg = common::Message { head: String::from_utf8_lossy(&head).into_owned(), ..Default::default() };
        let mut body = [0u8; 5];
        std::io::Read::read_exact(&mut w.stream, &mut body).unwrap();
        msg.body = body.to_vec();
        record(received, msg);
        w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
    });
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = w.read_response(false).unwrap();
    assert_eq!(interim.status(), 100);
    w.send(b"hello");
    let fin = w.read_response(false).unwrap();
    assert_eq!((fin.status(), fin.body_str().as_str()), (200, "done"), "exactly one 100 Continue before the answer");
    let got = backend.wait_requests(1);
    assert!(got[0].head.contains("Expect: 100-continue"), "the expectation is forwarded: {}", got[0].head);
    assert_eq!(got[0].body, b"hello");
}

#[test]
fn an_early_answer_streams_to_its_end_though_the_client_never_sends_the_body() {
    // The server answers before reading the body and trickles its answer for longer than --timeout-client;
    // the client, told the answer, never sends the body. The body's wait times out on the client side, but
    // the answer under way must still reach the client whole (then the connection closes).
    let backend = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        if w.read_head().is_some() {
            w.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 20\r\n\r\n");
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(100));
                w.send(b"x");
            }
        }
        let _ = w.read_all();
    });
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-client", "1s"]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let r = w.read_response(false).unwrap();
    assert_eq!((r.status(), r.body_str().as_str()), (403, "xxxxxxxxxxxxxxxxxxxx"), "the whole answer");
    assert!(w.is_closed(), "the body never came, so the connection cannot carry another request");
}

#[test]
fn a_client_that_stops_its_body_mid_answer_ends_the_exchange_as_its_own_doing() {
    // A streaming server answers at once and echoes as the body comes; the client sends 10 of 100 bytes and
    // stalls. Once --timeout-client ends the body, the server is told (a half-close): it ends its answer, and
    // the exchange is logged as the client's (`cD`), not as the server's after --timeout-server (`sD`).
    let backend = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        if w.read_head().is_some() {
            w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
            // The rest of the body, until the proxy says there is no more; then the answer is cut.
            let _ = w.read_all();
        }
    });
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-client", "1s", "--timeout-server", "60s"]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"POST /stalled HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789");
    let all = String::from_utf8(w.read_all()).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 OK"), "{all}");
    let line = proxy.log_line("/stalled");
    assert!(line.contains(" cD-- "), "{line}");
    let name = proxy.servers().into_keys().next().unwrap();
    assert_eq!(proxy.servers_column(&name, "eresp"), "0", "not the server's error");
    // A client timeout is a client abort to HAProxy (`cli_abrt`), on the server and the backend.
    assert_eq!((proxy.servers_column(&name, "cli_abrt"), proxy.backend_column("cli_abrt")), ("1".into(), "1".into()));
}

#[test]
fn an_answer_still_streaming_when_the_client_stops_its_body_is_not_cut() {
    // The server streams its answer (a byte every 100 ms for 3 s) while it waits for the body, and would
    // abort it on hearing there is no more; the client sent 10 of 100 body bytes and reads. Its body times
    // out after 1 s, but the answer keeps moving: the server is not told, and the answer arrives whole.
    let backend = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        if w.read_head().is_some() {
            w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n");
            w.stream.set_nonblocking(true).unwrap();
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(100));
                let mut probe = [0u8; 64];
                if matches!(w.stream.read(&mut probe), Ok(0)) {
                    return; // told there is no more body: the answer is abandoned
                }
                w.stream.set_nonblocking(false).unwrap();
                w.send(b"x");
                w.stream.set_nonblocking(true).unwrap();
            }
        }
    });
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--timeout-client", "1s"]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"POST /streaming HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789");
    let r = w.read_response(false).expect("the whole answer");
    assert_eq!(r.body_str(), "x".repeat(30));
}

#[test]
fn early_final_answer_to_expect_closes_without_waiting_for_the_body() {
    let backend = Backend::raw(|stream, _| {
        let mut w = Wire::new(stream);
        if w.read_head().is_some() {
            w.send(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n");
        }
        let _ = w.read_all();
    });
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n");
    let r = w.read_response(false).unwrap();
    assert_eq!(r.status(), 417);
    assert_eq!(r.header("connection").as_deref(), Some("close"), "the unread body makes the connection unusable");
    assert!(w.is_closed());
}

/// A malformed chunked body that arrives with its head is the proxy's refusal: 400, logged `PD` and counted
/// with the frontend's refused requests, as when it arrives later (it was logged `CR`, a client's abort, and
/// not counted).
#[test]
fn a_bad_chunk_that_comes_with_its_head_is_refused_and_counted() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let mut w = Wire::connect(proxy.addr);
    w.send(b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(w.read_response(false).unwrap().status(), 400);
    let line = proxy.log_line("POST /bad");
    assert!(line.contains(" PD--"), "{line}");
    assert_eq!(proxy.metric("shoal_frontend_refused_total"), 1);
    assert!(backend.requests().is_empty(), "nothing reached the server");
}
