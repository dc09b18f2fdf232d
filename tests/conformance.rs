//! Table-driven conformance: raw request bytes in, and for each case the statuses the client gets, exactly
//! what the backend receives, and a normal request served afterwards.

mod common;

use common::{Backend, Proxy, Wire};

struct Case {
    name: &'static str,
    request: &'static str,
    /// Statuses the client reads, in order.
    statuses: &'static [u16],
    /// Every byte the backend must receive, `{xf}` standing for the X-Forwarded-* block; empty: nothing.
    upstream: &'static str,
}

const fn ok(name: &'static str, request: &'static str, upstream: &'static str) -> Case {
    Case { name, request, statuses: &[200], upstream }
}

const fn refused(name: &'static str, request: &'static str, status: u16) -> Case {
    Case { name, request, statuses: status_slice(status), upstream: "" }
}

const fn status_slice(status: u16) -> &'static [u16] {
    match status {
        400 => &[400],
        414 => &[414],
        431 => &[431],
        501 => &[501],
        505 => &[505],
        _ => panic!("add the status to status_slice"),
    }
}

const GET: &str = "GET / HTTP/1.1\r\nHost: a\r\n{xf}\r\n";

fn cases() -> Vec<Case> {
    vec![
        // Accepted, normalised on the way.
        ok("simple GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", GET),
        ok("absolute-form target", "GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", "GET http://a/x HTTP/1.1\r\nHost: a\r\n{xf}\r\n"),
        ok("HTTP/1.2 served as HTTP/1.1 (RFC 9110 2.5)", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", GET),
        ok("leading empty line ignored", "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", GET),
        ok("bare LF endings re-written with CRLF", "GET / HTTP/1.1\nHost: a\n\n", GET),
        ok("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS * HTTP/1.1\r\nHost: a\r\n{xf}\r\n"),
        ok(
            "Content-Length body",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n{xf}\r\nhello",
        ),
        ok(
            "Content-Length zero kept",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n{xf}\r\n",
        ),
        ok(
            "identical duplicate Content-Length folded",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n{xf}\r\nabc",
        ),
        ok(
            "identical Content-Length list folded",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n{xf}\r\nabc",
        ),
        ok(
            "leading zeros in Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n{xf}\r\nabc",
        ),
        ok(
            "chunked extensions dropped",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=\"v\\\"x\";y\r\nhello\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n{xf}\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ok(
            "chunked trailers forwarded",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n{xf}\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n",
        ),
        ok(
            "trailers cannot claim what the headers may not",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Forwarded-Proto: https\r\n\
             Forwarded: for=6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nHost: b\r\nX-Sum: 9\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n{xf}\r\n0\r\nX-Sum: 9\r\n\r\n",
        ),
        ok(
            "chunk sizes normalised",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n00A\r\n0123456789\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n{xf}\r\na\r\n0123456789\r\n0\r\n\r\n",
        ),
        ok(
            "gzip, chunked passes through",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n{xf}\r\n1\r\nz\r\n0\r\n\r\n",
        ),
        ok(
            "tab as whitespace around a value",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\t\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n{xf}\r\n0\r\n\r\n",
        ),
        ok(
            "hop-by-hop fields removed",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
             TE: trailers\r\nTrailer: X-Sum\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-End: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-End: 2\r\n{xf}\r\n",
        ),
        ok(
            "Connection cannot strip what the proxy relies on",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Host, X-Forwarded-For, X-Forwarded-Port\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n{xf}\r\n",
        ),
        ok(
            "client X-Forwarded-Proto and -Port replaced",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n\r\n",
            GET,
        ),
        ok(
            "a client's claims about its connection dropped, in any spelling",
            "GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Ssl: on\r\n\
             X_Forwarded_Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Scheme: https\r\n\
             x_forwarded_for: 6.6.6.6\r\nX-Keep: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Keep: 1\r\n{xf}\r\n",
        ),
        ok("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n{xf}\r\n"),
        ok("obs-text in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-T: caf\u{e9}\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nX-T: caf\u{e9}\r\n{xf}\r\n"),
        Case {
            name: "body bytes are not a second request",
            request: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 26\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            statuses: &[200],
            upstream: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 26\r\n{xf}\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        },
        Case {
            name: "bytes after a body are the next request",
            request: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
            statuses: &[200, 200],
            upstream: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n{xf}\r\nhiGET /2 HTTP/1.1\r\nHost: a\r\n{xf}\r\n",
        },
        Case {
            name: "bytes after the last chunk are the next request",
            request: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
            statuses: &[200, 200],
            upstream: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n{xf}\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n{xf}\r\n",
        },
        // Content-Length faults.
        refused("Content-Length with a plus sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
        refused("negative Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        refused("Content-Length with inner space", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400),
        refused("hex Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
        refused("empty Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
        refused("differing Content-Length fields", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
        refused("differing Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
        refused("overflowing Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        // Transfer-Encoding faults.
        refused(
            "Content-Length with Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        refused(
            "Transfer-Encoding with Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            400,
        ),
        refused("last coding not chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        refused("chunked twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
        refused(
            "chunked twice in two fields",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        refused("chunked then gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        refused("empty coding element", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", 400),
        refused("Transfer-Encoding on HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        refused("unknown coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", 501),
        refused("xchunked is not chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
        refused("identity is not a coding any more", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        // Chunk framing faults (the head may already be on its way: the backend never gets a complete request).
        refused("chunk size not hex", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n", 400),
        refused("empty chunk size line", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n0\r\n\r\n", 400),
        refused("chunk size with bare LF", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\nhi\r\n0\r\n\r\n", 400),
        refused("chunk data overruns its size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiX\r\n0\r\n\r\n", 400),
        refused("chunk size overflows", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", 400),
        refused("negative chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nhi\r\n0\r\n\r\n", 400),
        refused("chunk extension with a control byte", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;a\x01\r\nhi\r\n0\r\n\r\n", 400),
        refused("chunk extension without a name", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;=x\r\nhi\r\n0\r\n\r\n", 400),
        refused("unterminated quoted extension", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;a=\"x\r\nhi\r\n0\r\n\r\n", 400),
        // Header syntax faults.
        refused("whitespace before colon", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
        refused("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  continued\r\n\r\n", 400),
        refused("first header line folded", "GET / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n", 400),
        refused("space inside a field name", "GET / HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n", 400),
        refused("bare CR in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n", 400),
        refused("NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", 400),
        refused("missing Host on HTTP/1.1", "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
        refused("repeated Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        refused("empty field name", "GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", 400),
        // Request line faults.
        refused("invalid byte in method", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        refused("space inside the target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        refused("control byte in the target", "GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        refused("target not origin-form", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        refused("HTTP/0.9 request", "GET /\r\n\r\n", 400),
        refused("lower-case version", "GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        refused("two-digit minor version", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400),
        refused("HTTP/2.0 request line", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        refused("HTTP/3.0 request line", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        refused("CONNECT is not proxied", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    ]
}

/// Cases built at run time: size limits.
fn large_cases() -> Vec<(String, String, u16)> {
    let many: String = (0..120).map(|i| format!("X-{i}: v\r\n")).collect();
    vec![
        ("too many headers".into(), format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"), 431),
        (
            "header section too large".into(),
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000)),
            431,
        ),
        ("request line too long".into(), format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(20_000)), 414),
    ]
}

#[test]
fn raw_request_table() {
    let backend = Backend::http(|_| common::ok("fine"));
    let proxy = Proxy::start(&["--backend", &backend.arg()]);
    let xf =
        format!("X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: {}\r\n", proxy.addr.port());
    let table = cases();
    assert!(table.len() + large_cases().len() >= 40, "the issue asks for at least 40 cases");
    let mut refusals = 0;
    for case in &table {
        run_case(
            &proxy,
            &backend,
            case.name,
            case.request.as_bytes(),
            case.statuses,
            &case.upstream.replace("{xf}", &xf),
        );
        refusals += usize::from(case.upstream.is_empty());
    }
    for (name, request, status) in large_cases() {
        run_case(&proxy, &backend, &name, request.as_bytes(), &[status], "");
        refusals += 1;
    }
    // Every refusal leaves an httplog line naming it a bad request.
    let bad_heads = refusals - count_body_faults(&table);
    proxy
        .stdout
        .wait_count("<BADREQ> log lines", bad_heads, |l| l.contains(" shoal/<NOSRV> ") && l.ends_with("\"<BADREQ>\""));
    let stderr = proxy.stderr.all();
    assert!(stderr.iter().filter(|l| l.contains("refused request")).count() >= refusals, "a reason per refusal");
}

/// Chunk faults are found after the head, so their log line carries the request line, not `<BADREQ>`.
fn count_body_faults(table: &[Case]) -> usize {
    table
        .iter()
        .filter(|c| c.upstream.is_empty() && c.request.contains("chunked\r\n\r\n") && c.statuses == [400])
        .count()
}

fn run_case(proxy: &Proxy, backend: &Backend, name: &str, request: &[u8], statuses: &[u16], upstream: &str) {
    backend.clear();
    let mut client = Wire::connect(proxy.addr);
    client.send(request);
    for (i, want) in statuses.iter().enumerate() {
        let resp = client.read_response(false).unwrap_or_else(|| panic!("{name}: no response {i}"));
        assert_eq!(resp.status(), *want, "{name}: response {i}: {}", resp.head);
        if *want >= 400 {
            assert_eq!(resp.header("connection").as_deref(), Some("close"), "{name}: a refusal closes");
            assert!(client.is_closed(), "{name}: the connection must be closed after a refusal");
        }
    }
    // A normal request on a fresh connection is served, and marks the end of what this case sent upstream.
    let after = common::get(proxy.addr, "/after");
    assert_eq!(after.status(), 200, "{name}: the proxy must still serve a normal request");
    let received = backend.requests();
    let (last, before) = received.split_last().expect("the /after request reached the backend");
    assert!(last.start_line().starts_with("GET /after "), "{name}: unexpected last request {}", last.head);
    let got: Vec<u8> = before.iter().flat_map(|m| m.raw.clone()).collect();
    assert_eq!(String::from_utf8_lossy(&got), upstream, "{name}: bytes received by the backend");
}
