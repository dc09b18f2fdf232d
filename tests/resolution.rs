//! Backend names under a DNS server that never answers, or answers slowly: the proxy runs on a host of its
//! own (a network namespace) whose resolv.conf names a UDP socket in the test, with the longest wait glibc
//! allows (30 s a try, 5 tries). Whatever the resolver does, a request must cost no more than its connect
//! timeout, the other servers must go on serving and being checked, a burst of requests must share one
//! lookup, and a server whose address works must not be kept out by its lookups.
//!
//! Needs root and iproute2 (CI runs as root); fails, rather than skips, without them.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::lab::{Host, Lab};
use common::{http_get, Backend, Lines, Process};

const HTTP: u16 = 80;
/// A name only the silent DNS server could answer for.
const SILENT: &str = "web.shoal.test:9000";

/// A DNS server on the host's loopback that counts the queries it receives and, while answering, answers
/// each A query with `ip` (and AAAA with nothing) `delay` after it came; while silent, nothing.
struct Dns {
    queries: Arc<AtomicUsize>,
    answering: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Dns {
    /// With the longest wait glibc allows: 30 s a try, 5 tries.
    fn start(host: &Host, delay: Duration, ip: [u8; 4]) -> Dns {
        host.resolv_conf("nameserver 127.0.0.1\noptions timeout:30 attempts:5\n");
        let socket = host.enter(|| UdpSocket::bind("127.0.0.1:53").expect("bind the DNS server"));
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let flag = || Arc::new(AtomicBool::new(false));
        let dns = Dns { queries: Arc::default(), answering: flag(), stop: flag() };
        dns.answering.store(true, Ordering::SeqCst);
        let (q, a, s) = (dns.queries.clone(), dns.answering.clone(), dns.stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                q.fetch_add(1, Ordering::SeqCst);
                let Some(reply) = dns_answer(&buf[..n], ip).filter(|_| a.load(Ordering::SeqCst)) else { continue };
                let socket = socket.try_clone().unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _ = socket.send_to(&reply, from);
                });
            }
        });
        dns
    }

    fn silent(host: &Host) -> Dns {
        let dns = Dns::start(host, Duration::ZERO, [127, 0, 0, 1]);
        dns.go_silent();
        dns
    }

    fn go_silent(&self) {
        self.answering.store(false, Ordering::SeqCst);
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The reply to one query: the question back, and for an A question one answer, `ip`.
fn dns_answer(query: &[u8], ip: [u8; 4]) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    let question = query.get(12..end + 5)?;
    let is_a = question[question.len() - 4..question.len() - 2] == [0, 1];
    let mut reply = query[..2].to_vec();
    reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if is_a {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&ip);
    }
    Some(reply)
}

/// A server on the host's loopback that answers `200 up` and closes each connection (so none is pooled),
/// until dropped: then its port refuses connections.
struct Closing {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Closing {
    fn serve(host: &Host, port: u16) -> Closing {
        let listener = host.enter(|| std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let mut w = common::Wire::new(stream);
                        if w.read_head().is_some() {
                            w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nup");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Closing { stop, thread: Some(thread) }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn proxy(host: &Host, extra: &[&str]) -> (Process, Lines) {
    let listen = host.addr(HTTP).to_string();
    let args = [
        "proxy",
        "--listen",
        &listen,
        "--gossip",
        "127.0.0.1:7946",
        "--admin",
        "127.0.0.1:0",
        "--runtime-api",
        "127.0.0.1:0",
    ];
    let (process, log) = host.shoal(&[&args[..], extra].concat(), &[]);
    log.wait_for("the proxy listening", |l| l.contains("listening on "));
    (process, log)
}

/// A test backend listening on the host.
fn backend_on(host: &Host, make: impl FnOnce() -> Backend + Send) -> Backend {
    host.enter(make)
}

#[test]
fn a_resolver_that_never_answers_costs_a_request_its_connect_timeout_and_one_lookup_for_all() {
    let lab = Lab::new(1);
    let host = lab.host(0);
    let dns = Dns::silent(host);
    let (_proxy, log) = proxy(host, &["--backend", &format!("web={SILENT}"), "--timeout-connect", "1s"]);
    let addr = host.addr(HTTP);
    // Twenty clients at once, each willing to wait 8 s: a lookup that is not bounded holds them for the
    // resolver's 150 s.
    let answers: Vec<Result<String, String>> = host.enter(|| {
        std::thread::scope(|s| {
            let clients: Vec<_> =
                (0..20).map(|_| s.spawn(move || http_get(addr, "/", Duration::from_secs(8)))).collect();
            clients.into_iter().map(|c| c.join().unwrap()).collect()
        })
    });
    for answer in &answers {
        assert_eq!(answer, &Err("HTTP/1.1 503 Service Unavailable".to_string()), "{answers:?}");
    }
    log.wait_for("the lookup's timeout logged", |l| {
        l.contains("server web") && l.contains("no answer from the resolver")
    });
    // glibc asks for A and AAAA records once per lookup; one lookup a request would be 40 queries.
    let queries = dns.queries();
    eprintln!("{queries} DNS queries for 20 requests");
    assert!((1..=4).contains(&queries), "the requests share one lookup: {queries} queries");
}

#[test]
fn a_name_the_resolver_never_answers_for_does_not_hold_back_the_other_server() {
    let lab = Lab::new(1);
    let host = lab.host(0);
    let _dns = Dns::silent(host);
    let echo = backend_on(host, Backend::echo_path);
    let literal = format!("lit={}", echo.addr);
    let (_proxy, log) = proxy(host, &["--backend", &format!("web={SILENT}"), "--backend", &literal]);
    let addr = host.addr(HTTP);
    // Round-robin sends every other request to the name first: its attempt is given up after
    // --timeout-attempt (250 ms) and the request goes on to the other server.
    for i in 0..6 {
        let path = format!("/r{i}");
        assert_eq!(host.enter(|| http_get(addr, &path, Duration::from_secs(4))), Ok(path.clone()));
    }
    log.wait_for("the abandoned lookup logged", |l| {
        l.contains("server web") && l.contains("no answer from the resolver")
    });
}

#[test]
fn the_other_servers_are_still_checked_while_a_lookup_hangs() {
    let lab = Lab::new(1);
    let host = lab.host(0);
    let _dns = Dns::silent(host);
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let checked = backend_on(host, move || {
        Backend::http(move |_| {
            let status = if flag.load(Ordering::SeqCst) { "200 OK" } else { "503 Service Unavailable" };
            format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok").into_bytes()
        })
    });
    let literal = format!("lit={}", checked.addr);
    let checks = ["--backend-check-path", "/health", "--backend-check-interval", "500ms", "--backend-fall", "1"];
    let servers = ["--backend", &format!("web={SILENT}"), "--backend", &literal];
    let (_proxy, log) = proxy(host, &[&servers[..], &checks[..]].concat());
    log.wait_for("the name's check failing", |l| l.contains("server web is DOWN") && l.contains("resolver"));
    // The name's lookup still hangs (150 s): the other server's check goes on all the same.
    let addr: SocketAddr = host.addr(HTTP);
    assert_eq!(host.enter(|| http_get(addr, "/", Duration::from_secs(4))), Ok("ok".into()));
    healthy.store(false, Ordering::SeqCst);
    log.wait_for("the other server's failed check", |l| l.contains("server lit is DOWN"));
}

#[test]
fn a_slow_resolver_does_not_keep_out_a_server_whose_address_works() {
    // The resolver answers after 1.25 s, more than --timeout-connect: the first request cannot wait for it,
    // later ones use its answer. When the server stops, it is skipped; once it is back, the probes that look
    // for it (every 500 ms, each starting a lookup) must connect to the address it has, whatever their
    // lookups do. (A probe that waited for its own lookup would give up at 1 s, and the lookup would end in
    // the half second before the next probe starts another, every time.)
    let lab = Lab::new(1);
    let host = lab.host(0);
    let dns = Dns::start(host, Duration::from_millis(1250), [127, 0, 0, 1]);
    let port = 9000;
    let serve = || Closing::serve(host, port);
    let server = serve();
    let (_proxy, log) = proxy(host, &["--backend", &format!("web=web.shoal.test:{port}"), "--timeout-connect", "1s"]);
    let addr = host.addr(HTTP);
    let get = || host.enter(|| http_get(addr, "/", Duration::from_secs(4)));
    assert_eq!(get(), Err("HTTP/1.1 503 Service Unavailable".into()), "the lookup takes longer than the connect");
    common::wait_until("the lookup's answer in use", || get() == Ok("up".into()));
    // The probes connect to it and take it back (it was skipped when the first lookup timed out).
    log.wait_for("the server back in rotation", |l| l.contains("server web") && l.contains("back in rotation"));
    drop(server);
    assert!(get().is_err(), "the server is gone");
    // Skipped twice: after the first lookup's timeout, and now for the refused connect.
    log.wait_count("the server skipped", 2, |l| l.contains("server web") && l.contains("skipped for"));
    // Back only once the lookup its failure started has ended and a probe has started another (A and AAAA
    // queries each).
    let skipped_at = dns.queries();
    common::wait_until("a probe's own lookup", || dns.queries() >= skipped_at + 4);
    let _server = serve();
    log.wait_count("the server back in rotation", 2, |l| l.contains("server web") && l.contains("back in rotation"));
    for l in log.all() {
        eprintln!("LOG {l}");
    }
    eprintln!("queries {}", dns.queries());
    assert_eq!(get(), Ok("up".into()));
}

#[test]
fn a_node_joined_by_name_comes_back_after_a_partition_while_its_dns_is_down() {
    // An agent joins through a name (as swarm's tasks.ha). Then its DNS server goes silent and its link is
    // cut for long enough that it and the proxy declare each other gone: once the link is back, neither has
    // a member to talk to, and the agent's seed is the only way back. It must announce itself to the name's
    // last address rather than wait on lookups that never answer.
    let lab = Lab::new(2);
    let (proxy_host, node_host) = (lab.host(0), lab.host(1));
    let dns = Dns::start(node_host, Duration::ZERO, [10, 77, 0, 1]);
    let key = common::keygen();
    let (listen, gossip) = (proxy_host.addr(HTTP).to_string(), proxy_host.addr(7946).to_string());
    let args =
        ["proxy", "--listen", &listen, "--gossip", &gossip, "--admin", "127.0.0.1:0", "--runtime-api", "127.0.0.1:0"];
    let (_proxy, log) = proxy_host.shoal(&args, &[("SHOAL_CLUSTER_KEY", &key)]);
    log.wait_for("the proxy listening", |l| l.contains("listening on "));
    let (service, gossip) = (node_host.addr(3000).to_string(), node_host.addr(7946).to_string());
    let exe = env!("CARGO_BIN_EXE_shoal");
    let agent_args = ["agent", "--service", &service, "--gossip", &gossip, "--join", "gw.shoal.test:7946"];
    let app = ["--name", "n1", "--", exe, "webapp", "--listen", &service, "--name", "n1"];
    let (_agent, _) = node_host.shoal(&[&agent_args[..], &app[..]].concat(), &[("SHOAL_CLUSTER_KEY", &key)]);
    log.wait_for("the agent joined by name", |l| l.contains("member up: n1 "));
    dns.go_silent();
    node_host.cut();
    log.wait_for("the agent declared gone", |l| l.contains("member down: n1 "));
    node_host.heal();
    log.wait_count("the agent back", 2, |l| l.contains("member up: n1 "));
    proxy_host.wait_get(proxy_host.addr(HTTP), "/", "n1 served", |body| body.contains("n1"));
}
