//! TLS termination against real clients: curl verifies the certificate SNI picked on one listener, the
//! backend learns the request came over https, old protocols, garbage and silent clients are refused without
//! disturbing anyone, and plain requests can be redirected to https.
//!
//! Needs curl (`.ci/run` installs it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};

use common::certs::Pki;
use common::{Backend, Proxy, WAIT};

/// `curl https://NAME:PORT/PATH` resolved to `addr`, trusting the test CA.
fn curl(pki: &Pki, name: &str, addr: SocketAddr, path: &str) -> Output {
    curl_all(pki, name, addr, &[path], &[])
}

/// One curl fetching every path in turn (reusing its TLS session), with `extra` arguments.
fn curl_all(pki: &Pki, name: &str, addr: SocketAddr, paths: &[&str], extra: &[&str]) -> Output {
    let resolve = format!("{name}:{}:{}", addr.port(), addr.ip());
    let urls = paths.iter().map(|path| format!("https://{name}:{}{path}", addr.port()));
    Command::new("curl")
        .args(["-sS", "-v", "--max-time", "5", "--cacert"])
        .arg(&pki.ca_file)
        .args(extra)
        .args(["--resolve", &resolve])
        .args(urls)
        .output()
        .expect("curl")
}

/// A proxy in front of `backend` with a TLS listener serving `cert`, plus `extra` flags.
fn tls_proxy(backend: &Backend, cert: &std::path::Path, extra: &[&str]) -> Proxy {
    let cert = cert.to_str().unwrap();
    let args = ["--backend", &backend.arg(), "--tls-listen", "127.0.0.1:0", "--tls-cert", cert];
    Proxy::start(&[&args[..], extra].concat())
}

/// Each FRONTEND row of the stats CSV as `pxname` and the `columns` asked for, separated by spaces.
fn frontend_cells(proxy: &Proxy, columns: &[&str]) -> Vec<String> {
    let csv = common::get(proxy.admin(), "/;csv").body_str();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().trim_start_matches("# ").split(',').collect();
    let cell = |row: &str, name: &str| {
        let i = header.iter().position(|h| *h == name).unwrap();
        row.split(',').nth(i).unwrap_or_default().to_string()
    };
    lines
        .filter(|l| l.split(',').nth(1) == Some("FRONTEND"))
        .map(|l| {
            [cell(l, "pxname")].into_iter().chain(columns.iter().map(|c| cell(l, c))).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// A TLS client for `a.test` over `tcp`, trusting the test CA and offering `alpn` (none if empty).
fn tls_client(pki: &Pki, alpn: &[&[u8]], tcp: TcpStream) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

#[test]
fn show_info_totals_count_tls_clients_too() {
    // HAProxy's CumConns and CumReq are the process's, every frontend's: 2 TLS requests and 1 plain make 3.
    let pki = Pki::new();
    pki.leaf("a.pem", &["a.test"]);
    let backend = Backend::echo_path();
    let proxy = tls_proxy(&backend, &pki.dir, &[]);
    for path in ["/one", "/two"] {
        assert!(curl(&pki, "a.test", proxy.tls(), path).status.success());
    }
    assert_eq!(common::get(proxy.addr, "/three").status(), 200);
    // A request is counted as its answer goes out: wait (bounded) rather than read once.
    let totals = || {
        let info = proxy.runtime("show info");
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_string();
        (field("CumConns:"), field("CumReq:"))
    };
    common::wait_until("3 connections and 3 requests in show info", || totals() == ("3".into(), "3".into()));
    // And the CSV's TLS cells, HAProxy's: sessions are TLS sessions on the TLS frontend only.
    let tls_cells = ["ssl_sess", "ssl_failed_handshake", "conn_tot"];
    assert_eq!(frontend_cells(&proxy, &tls_cells), ["shoal 0 0 1", "shoal-tls 2 0 2"]);
}

/// A client that comes back with its session ticket resumes rather than negotiating again, and the TLS
/// frontend's `ssl_reused_sess` counts it (it was left empty).
#[test]
fn a_resumed_session_is_counted() {
    let pki = Pki::new();
    pki.leaf("a.pem", &["a.test"]);
    let backend = Backend::echo_path();
    let proxy = tls_proxy(&backend, &pki.dir, &[]);
    // One curl, two URLs, each on a connection of its own (the server closes the first): curl offers the
    // ticket it got on the first.
    let out = curl_all(&pki, "a.test", proxy.tls(), &["/one", "/two"], &["-H", "Connection: close"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/one/two", "{}", String::from_utf8_lossy(&out.stderr));
    common::wait_until("two TLS sessions counted", || {
        frontend_cells(&proxy, &["ssl_sess"]).contains(&"shoal-tls 2".to_string())
    });
    assert_eq!(frontend_cells(&proxy, &["ssl_sess", "ssl_reused_sess"]), ["shoal 0 0", "shoal-tls 2 1"]);
}

#[test]
fn each_frontend_counts_its_own_open_connections() {
    // Two clients on the TLS listener (still in their handshakes, which HAProxy's scur counts too) and one on
    // the plain listener: shoal-tls shows 2, FRONTEND 1, and the metrics say the same.
    let pki = Pki::new();
    pki.leaf("a.pem", &["a.test"]);
    let backend = Backend::echo_path();
    let proxy = tls_proxy(&backend, &pki.dir, &["--timeout-handshake", "60s", "--timeout-head", "60s"]);
    let _held: Vec<TcpStream> =
        [proxy.tls(), proxy.tls(), proxy.addr].into_iter().map(|addr| TcpStream::connect(addr).unwrap()).collect();
    common::wait_until("2 TLS and 1 plain connection in the CSV", || {
        frontend_cells(&proxy, &["scur", "smax"]) == ["shoal 1 1".to_string(), "shoal-tls 2 2".to_string()]
    });
    assert_eq!(proxy.metric("shoal_frontend_current_connections"), 1);
    assert_eq!(proxy.metric("shoal_frontend_tls_current_connections"), 2);
}

#[test]
fn sni_picks_the_certificate_and_the_backend_learns_https() {
    let pki = Pki::new();
    pki.leaf("a.pem", &["a.test"]);
    pki.leaf("b.pem", &["b.test", "*.wild.test"]);
    let backend = Backend::echo_path();
    let proxy = tls_proxy(&backend, &pki.dir, &[]);
    let tls = proxy.tls();

    for name in ["a.test", "b.test", "x.wild.test"] {
        let out = curl(&pki, name, tls, &format!("/{name}"));
        let verbose = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: curl failed:\n{verbose}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("/{name}"));
        assert!(verbose.contains(&format!("CN={}", if name == "a.test" { "a.test" } else { "b.test" })), "{verbose}");
        assert!(verbose.contains("ALPN: server accepted http/1.1"), "{verbose}");
    }
    // A name no certificate serves gets the first (default) one, which the client rightly refuses.
    let out = curl(&pki, "c.test", tls, "/");
    assert_eq!(out.status.code(), Some(60), "certificate verification must fail for c.test");

    let seen = backend.wait_requests(3);
    for req in &seen {
        assert_eq!(req.header("x-forwarded-proto").as_deref(), Some("https"), "{}", req.head);
        assert_eq!(req.header("x-forwarded-port"), Some(tls.port().to_string()));
    }
    assert_eq!(proxy.metric("shoal_frontend_tls_requests_total"), 3);
    let plain = common::get(proxy.addr, "/plain");
    assert_eq!(plain.status(), 200);
    let last = backend.wait_requests(4).pop().unwrap();
    assert_eq!(last.header("x-forwarded-proto").as_deref(), Some("http"));
    let log = proxy.log_line("\"GET /b.test HTTP/1.1\"");
    assert!(log.contains(" shoal~ nodes/"), "a TLS request is logged on the frontend shoal~: {log}");
}

/// A ClientHello that offers TLS 1.1 only (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // suites TLS 1.2 would accept
    body.extend_from_slice(&[0x01, 0x00]);
    // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256) and supported_groups (x25519, P-256):
    // what a TLS 1.2 server needs before it looks at the version.
    body.extend_from_slice(&[0x00, 0x14, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);
    body.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

/// What the server sends back to `bytes` before closing.
fn answer_to(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    if !bytes.is_empty() {
        s.write_all(bytes).unwrap();
    }
    let mut got = Vec::new();
    let read = s.read_to_end(&mut got).map(|_| 0);
    assert!(read.is_ok() || common::closed(&read), "the server neither answered nor closed: {read:?}");
    got
}

#[test]
fn old_protocols_garbage_and_silence_are_refused_without_disturbing_others() {
    let pki = Pki::new();
    let cert = pki.leaf("a.pem", &["a.test"]);
    let backend = Backend::echo_path();
    let proxy = tls_proxy(&backend, &cert, &["--timeout-handshake", "300ms"]);
    let tls = proxy.tls();
    // A client that holds a handshake open while the others come and go.
    let mut silent = TcpStream::connect(tls).unwrap();

    let alert = answer_to(tls, &tls11_client_hello());
    assert_eq!(alert.first(), Some(&0x15), "an alert record for TLS 1.1: {alert:02x?}");
    assert_eq!(alert.get(5..7), Some(&[0x02, 0x46][..]), "fatal protocol_version: {alert:02x?}");
    assert!(curl(&pki, "a.test", tls, "/after-tls11").status.success());

    let garbage = answer_to(tls, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert!(!garbage.windows(4).any(|w| w == b"HTTP"), "no HTTP answer over a TLS port: {garbage:?}");
    assert!(curl(&pki, "a.test", tls, "/after-garbage").status.success());

    // The silent one is cut at the handshake timeout.
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    let read = silent.read(&mut buf);
    assert!(common::closed(&read), "a silent client is closed: {read:?}");
    assert!(curl(&pki, "a.test", tls, "/after-silence").status.success());
    assert!(proxy.metric("shoal_frontend_tls_handshake_failures_total") >= 3);
    assert_eq!(proxy.metric("shoal_frontend_tls_requests_total"), 3);
}

#[test]
fn plain_requests_can_be_redirected_to_https() {
    let pki = Pki::new();
    let cert = pki.leaf("a.pem", &["a.test"]);
    let backend = Backend::echo_path();
    let proxy = tls_proxy(&backend, &cert, &["--redirect-https"]);
    let port = proxy.tls().port();
    let r = common::request(proxy.addr, b"GET /cart?item=3 HTTP/1.1\r\nHost: shop.test:8080\r\n\r\n");
    assert_eq!(r.status(), 301);
    assert_eq!(r.header("location"), Some(format!("https://shop.test:{port}/cart?item=3")));
    assert!(backend.requests().is_empty(), "a redirected request reaches no backend");
    assert!(curl(&pki, "a.test", proxy.tls(), "/secure").status.success());
    // HAProxy counts requests its rules answer (a redirect) as intercepted.
    assert_eq!(frontend_cells(&proxy, &["intercepted", "hrsp_3xx"]), ["shoal 1 1", "shoal-tls 0 0"]);
}

#[test]
fn a_tls_listener_without_a_usable_certificate_is_refused_by_name() {
    let out = common::shoal()
        .args(["proxy", "--listen", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`tls-cert`"), "{err}");
    let out = common::shoal()
        .args(["proxy", "--check", "--gossip", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
        .args(["--tls-cert", "/nonexistent/site.pem"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/nonexistent/site.pem"), "{err}");
}

/// A client offering only `http/1.0` in ALPN is served over HTTP/1.0: rustls sent a fatal
/// no_application_protocol alert when the lists shared nothing (the server offered http/1.1 only).
#[test]
fn an_http_1_0_client_offering_only_http_1_0_in_alpn_is_served() {
    let pki = Pki::new();
    pki.leaf("a.pem", &["a.test"]);
    let backend = Backend::echo_path();
    let proxy = tls_proxy(&backend, &pki.dir, &[]);
    let mut tls = tls_client(&pki, &[b"http/1.0"], TcpStream::connect(proxy.tls()).unwrap());
    tls.write_all(b"GET /old HTTP/1.0\r\nHost: a.test\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 200 ") || answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.ends_with("/old"), "{answer:?}");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.0"[..]));
}

/// A client whose TCP connection was accepted before a stop, and whose handshake comes after it, is served
/// (its request answered with `Connection: close`), as a plain client's request would be: a stop used to
/// drop handshakes under way, and an upgrade stops the old process the moment the new one serves.
#[test]
fn a_handshake_under_way_at_a_stop_completes_and_is_served() {
    let pki = Pki::new();
    pki.leaf("a.pem", &["a.test"]);
    let backend = Backend::echo_path();
    // One thread: once its listener stops taking connections, the thread holding the client has seen the stop.
    let mut proxy = tls_proxy(&backend, &pki.dir, &["--grace", "5s", "--threads", "1"]);
    let tcp = TcpStream::connect(proxy.tls()).unwrap();
    common::wait_until("the TLS client accepted", || proxy.metric("shoal_frontend_tls_current_connections") == 1);
    proxy.signal(libc::SIGTERM);
    proxy.stderr.wait_for("the stop", |l| l.contains("stopping"));
    let tls_addr = proxy.tls();
    let refused = || TcpStream::connect_timeout(&tls_addr, std::time::Duration::from_millis(100)).is_err();
    common::wait_until("the thread stopping", refused);

    let mut tls = tls_client(&pki, &[], tcp);
    tls.write_all(b"GET /late HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200 "), "{answer:?}");
    assert!(answer.contains("\r\nconnection: close\r\n") && answer.ends_with("/late"), "{answer:?}");
    assert!(proxy.wait_exit().success());
}

/// Two large keep-alive responses reach, whole, a TLS client that reads slower than the proxy writes.
/// tokio-rustls counts a write done once the TLS layer takes the plaintext, even when the socket cannot take
/// the records yet, so the proxy flushes at the end of each response: without it the last records would wait
/// for the client's next request, and the client for them, until `--timeout-idle`. (Here the kernel's send
/// buffer took the last records every time, flush or not: this guards the whole path, it did not catch it.)
#[test]
fn the_end_of_a_keep_alive_response_reaches_a_slow_tls_client() {
    // More than the proxy's socket buffer takes (up to 4 MiB here, tcp_wmem), so its last writes wait.
    const BODY: usize = 32 << 20;
    let pki = Pki::new();
    pki.leaf("a.pem", &["a.test"]);
    let backend = Backend::http(|_| {
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + BODY, b'x');
        answer
    });
    let proxy = tls_proxy(&backend, &pki.dir, &[]);
    // A small receive window keeps the proxy's socket full: the client reads slower than the proxy writes.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&proxy.tls().into()).unwrap();
    let mut tls = tls_client(&pki, &[], socket.into());
    tls.sock.set_read_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
    for round in 0..2 {
        tls.write_all(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut piece = [0u8; 16 * 1024];
        let complete = |got: &[u8]| common::find(got, b"\r\n\r\n").is_some_and(|end| got.len() == end + 4 + BODY);
        while !complete(&got) {
            match tls.read(&mut piece) {
                Ok(0) => panic!("round {round}: closed after {} bytes", got.len()),
                Ok(n) => got.extend_from_slice(&piece[..n]),
                Err(e) => panic!("round {round}: stalled after {} bytes: {e}", got.len()),
            }
        }
        assert!(got.starts_with(b"HTTP/1.1 200 "), "round {round}");
    }
}
