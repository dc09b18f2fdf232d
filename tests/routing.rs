//! Routing beyond round robin, through the real binary: sticky sessions with the lab's webapp, consistent
//! hashing, random and latency-aware choices around a slowed node, capacity reported by agent checks, health
//! checks of static servers, slow start and queueing at maxconn.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use common::{Agent, Backend, Message, Proxy, TempFile, Wire, WAIT};

/// A client that keeps cookies, as a browser does.
#[derive(Default)]
struct Browser {
    jar: BTreeMap<String, String>,
}

impl Browser {
    fn get(&mut self, addr: SocketAddr) -> Message {
        let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cookie = match cookies.is_empty() {
            true => String::new(),
            false => format!("Cookie: {}\r\n", cookies.join("; ")),
        };
        let raw = format!("GET / HTTP/1.1\r\nHost: lab\r\n{cookie}Connection: close\r\n\r\n");
        let r = common::request(addr, raw.as_bytes());
        assert_eq!(r.status(), 200, "{r:?}");
        for set in r.headers("set-cookie") {
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.jar.insert(name.trim().to_string(), value.trim().to_string());
        }
        r
    }
}

/// Field `name` of the webapp's one-line JSON answer, as text.
fn field(body: &str, name: &str) -> String {
    let at = body.find(&format!("\"{name}\":")).unwrap_or_else(|| panic!("no {name} in {body}")) + name.len() + 3;
    let rest = body[at..].trim_start_matches('"');
    rest[..rest.find(['"', ',', '}']).unwrap()].to_string()
}

/// The sticky cookies a response sets.
fn sticky_set(r: &Message, name: &str) -> Vec<String> {
    r.headers("set-cookie").into_iter().filter(|c| c.starts_with(&format!("{name}="))).collect()
}

fn visit(browser: &mut Browser, addr: SocketAddr) -> (String, u64) {
    let body = browser.get(addr).body_str();
    (field(&body, "host"), field(&body, "sessionViews").parse().unwrap())
}

#[test]
fn a_sticky_cookie_keeps_a_session_on_its_node_through_two_proxies_and_moves_once_on_maint() {
    let a = Proxy::start(&["--sticky-cookie", "SRV"]);
    let b = Proxy::start(&["--sticky-cookie", "SRV", "--join", &a.gossip()]);
    let names = ["w1", "w2", "w3"];
    let apps: Vec<_> = names.iter().map(|n| common::webapp(n)).collect();
    let _agents: Vec<Agent> =
        names.iter().zip(&apps).map(|(n, (_, addr))| Agent::start(addr, &a.gossip(), &["--name", n])).collect();
    for proxy in [&a, &b] {
        for name in names {
            proxy.wait_server(name, "UP", |status, _| status == "UP");
        }
    }

    let mut browser = Browser::default();
    let first = browser.get(a.addr);
    let node = field(&first.body_str(), "host");
    assert_eq!(field(&first.body_str(), "sessionViews"), "1");
    let set = sticky_set(&first, "SRV");
    assert_eq!(set.len(), 1, "one persistence cookie: {:?}", first.headers("set-cookie"));
    assert!(set[0].ends_with("; Path=/; HttpOnly"), "{}", set[0]);
    assert_eq!(first.header("cache-control").as_deref(), Some("no-cache=\"Set-Cookie\""), "HAProxy's nocache");
    let id = browser.jar["SRV"].clone();
    assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "an opaque id, not an address: {id}");

    for views in 2..=6 {
        let r = browser.get(a.addr);
        let body = r.body_str();
        assert_eq!((field(&body, "host"), field(&body, "sessionViews")), (node.clone(), views.to_string()));
        assert!(sticky_set(&r, "SRV").is_empty(), "a valid cookie is not set again");
    }
    // The id comes from the node's name: the second proxy honours the first one's cookie.
    for views in 7..=9 {
        assert_eq!(visit(&mut browser, b.addr), (node.clone(), views), "through the second proxy");
    }

    // Its node goes to maintenance: the session moves once, gets a new cookie, and stays on its new node.
    assert_eq!(a.runtime(&format!("set server nodes/{node} state maint")), "\n");
    a.wait_server(&node, "MAINT", |status, _| status == "MAINT");
    let moved = browser.get(a.addr);
    let new_node = field(&moved.body_str(), "host");
    assert_ne!(new_node, node, "a MAINT server keeps no session");
    assert_eq!(field(&moved.body_str(), "sessionViews"), "1", "a new node, a new session");
    assert_eq!(sticky_set(&moved, "SRV").len(), 1, "the stale cookie is replaced");
    assert_ne!(browser.jar["SRV"], id);
    for views in 2..=4 {
        assert_eq!(visit(&mut browser, a.addr), (new_node.clone(), views), "moved once, then sticks");
    }

    // A draining node keeps the sessions it has (HAProxy's drain) and takes no new client.
    assert_eq!(a.runtime(&format!("set server nodes/{new_node} state drain")), "\n");
    a.wait_server(&new_node, "DRAIN", |status, _| status == "DRAIN");
    assert_eq!(visit(&mut browser, a.addr), (new_node.clone(), 5), "draining keeps the session");
    for _ in 0..6 {
        let (host, _) = visit(&mut Browser::default(), a.addr);
        assert!(host != new_node && host != node, "a new client went to {host}");
    }
}

/// One refused connect ejects a server for a while. The request that failed on it moves (a new cookie, as
/// HAProxy's redispatch); the server's other sticky clients are served elsewhere meanwhile but keep their
/// cookie, and are back on it once it is (each was given a new cookie, moved for good by a failure it never
/// saw).
#[test]
fn a_briefly_ejected_servers_sticky_clients_keep_their_cookie() {
    // `Connection: close`: no pooled connection outlives s1's listener.
    let reply = |name: &'static str| {
        move |_: &Message| {
            format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{name}").into_bytes()
        }
    };
    let s1 = Backend::http(reply("s1"));
    let (s2, s3) = (Backend::http(reply("s2")), Backend::http(reply("s3")));
    let s1_addr = s1.addr;
    let servers = [format!("s1={s1_addr}"), format!("s2={}", s2.addr), format!("s3={}", s3.addr)];
    let mut args = vec!["--sticky-cookie", "SRV", "--threads", "1"];
    servers.iter().for_each(|s| args.extend(["--backend", s.as_str()]));
    let proxy = Proxy::start(&args);
    let mut cookie = String::new();
    common::wait_until("an answer from s1 with its cookie", || {
        let r = common::get(proxy.addr, "/");
        if let (Some(set), "s1") = (sticky_set(&r, "SRV").first(), r.body_str().as_str()) {
            cookie = set.split(';').next().unwrap().to_string();
        }
        !cookie.is_empty()
    });
    let with = |cookie: &str| {
        let raw = format!("GET / HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
        common::request(proxy.addr, raw.as_bytes())
    };
    drop(s1);
    common::wait_until("s1's port refusing", || TcpStream::connect(s1_addr).is_err());
    let failed = with(&cookie);
    assert_ne!(failed.body_str(), "s1");
    assert_eq!(sticky_set(&failed, "SRV").len(), 1, "the request that failed on s1 moves: {failed:?}");
    // Later requests within the ejection (500 ms, then longer at each failure) are not tried on s1; they
    // go to one stand-in, the same each time (round robin sent them to s2 and s3 in turn).
    let kept: Vec<String> =
        (0..20).map(|_| with(&cookie)).filter(|r| sticky_set(r, "SRV").is_empty()).map(|r| r.body_str()).collect();
    assert!(!kept.is_empty(), "every request re-cookied");
    assert!(kept.iter().all(|b| b != "s1" && *b == kept[0]), "one stand-in: {kept:?}");
    let _s1 = Backend::http_on(s1_addr, reply("s1"));
    common::wait_until("the cookie's holder back on s1 once s1 is", || with(&cookie).body_str() == "s1");
}

#[test]
fn the_sticky_cookie_never_reaches_the_app_and_a_stale_one_is_replaced() {
    let s1 = Backend::http(|_| common::ok("s1"));
    let s2 = Backend::http(|_| common::ok("s2"));
    let private =
        Backend::http(|_| b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Length: 7\r\n\r\nprivate".to_vec());
    let proxy = Proxy::start(&[
        "--sticky-cookie",
        "SRV",
        "--backend",
        &format!("s1={}", s1.addr),
        "--backend",
        &format!("s2={},weight=100", s2.addr),
    ]);
    let first = common::get(proxy.addr, "/");
    let set = sticky_set(&first, "SRV");
    let value = set[0].strip_prefix("SRV=").unwrap().split(';').next().unwrap().to_string();
    let owner = first.body_str();
    let (mine, other) = if owner == "s1" { (&s1, &s2) } else { (&s2, &s1) };
    mine.clear();
    other.clear();

    let with = |cookie: &str| {
        let raw = format!("GET /x HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
        common::request(proxy.addr, raw.as_bytes())
    };
    for _ in 0..4 {
        let r = with(&format!("theme=dark; SRV={value}; lang=en"));
        assert_eq!(r.body_str(), owner, "the cookie decides");
        assert!(r.header("set-cookie").is_none());
    }
    assert_eq!(with(&format!("SRV={value}")).body_str(), owner);
    let seen = mine.wait_requests(5);
    for req in &seen[..4] {
        assert_eq!(req.headers("cookie"), ["theme=dark; lang=en"], "only the sticky cookie is removed");
    }
    assert!(seen[4].header("cookie").is_none(), "a Cookie field holding only the sticky cookie is dropped");
    assert!(other.requests().is_empty(), "the other server saw none of them");
    // Only the sticky cookie's bytes are cut: a value-only cookie stays one, spaces stay (`tok123=; b=2` before).
    assert_eq!(with(&format!("tok123; SRV={value}; b = 2")).body_str(), owner);
    assert_eq!(mine.requests().last().unwrap().headers("cookie"), ["tok123; b = 2"]);

    // A cookie naming no server, or not an id at all: the algorithm decides and the cookie is replaced.
    for stale in ["SRV=0123456789abcdef", "SRV=not-an-id", "SRV="] {
        let r = with(stale);
        assert_eq!(r.status(), 200, "{stale}");
        let set = sticky_set(&r, "SRV");
        assert!(set.len() == 1 && set[0] != format!("{stale}; Path=/; HttpOnly"), "{stale} replaced: {set:?}");
    }
    for req in s1.requests().iter().chain(&s2.requests()) {
        assert!(!req.headers("cookie").concat().contains("SRV"), "the app saw the persistence cookie: {req:?}");
    }

    // A response already private to the client needs no cache warning.
    let proxy = Proxy::start(&["--sticky-cookie", "SRV", "--backend", &format!("p={}", private.addr)]);
    let r = common::get(proxy.addr, "/");
    assert_eq!(sticky_set(&r, "SRV").len(), 1);
    assert_eq!(r.headers("cache-control"), ["private"]);
}

fn named(name: &'static str) -> Backend {
    Backend::http(move |_| common::ok(name))
}

/// A proxy in front of `servers` static backends named s0, s1, ..., with `args`.
fn proxy_over(servers: &[Backend], args: &[&str]) -> Proxy {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    for (i, s) in servers.iter().enumerate() {
        all.extend(["--backend".to_string(), format!("s{i}={}", s.addr)]);
    }
    Proxy::start(&all.iter().map(String::as_str).collect::<Vec<_>>())
}

fn four() -> Vec<Backend> {
    vec![named("s0"), named("s1"), named("s2"), named("s3")]
}

#[test]
fn uri_hashing_keeps_each_path_on_one_server_and_a_leaving_server_moves_only_its_own() {
    let servers = four();
    let proxy = proxy_over(&servers, &["--balance", "uri"]);
    let keys: Vec<String> = (0..200).map(|k| format!("/items/{k}")).collect();
    // The query string is not part of the key (HAProxy's `uri` hashes the path).
    let pass = |query: &str| -> Vec<String> {
        keys.iter().map(|k| common::get(proxy.addr, &format!("{k}?{query}")).body_str()).collect()
    };
    let first = pass("v=1");
    assert_eq!(first, pass("v=2"), "each key stays on its server");
    let mut shares: HashMap<&str, usize> = HashMap::new();
    for owner in &first {
        *shares.entry(owner).or_default() += 1;
    }
    assert!(shares.len() == 4 && shares.values().all(|&n| n >= 20), "every server owns keys: {shares:?}");

    assert_eq!(proxy.runtime("set server nodes/s2 state maint"), "\n");
    proxy.wait_server("s2", "MAINT", |status, _| status == "MAINT");
    let third = pass("v=3");
    let stayed = first.iter().filter(|o| *o != "s2").count();
    let moved = first.iter().zip(&third).filter(|(before, after)| *before != "s2" && before != after).count();
    eprintln!("of {stayed} keys on the servers that stayed, {moved} moved");
    assert!(moved * 100 <= stayed * 3, "{moved} of {stayed} keys of the remaining servers moved");
    assert!(third.iter().all(|o| o != "s2"), "no key on the server in maintenance");
}

/// GET `path` from source address `ip` (any of 127.0.0.0/8 is this host).
fn get_from(ip: Ipv4Addr, addr: SocketAddr, path: &str) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut wire = Wire::new(TcpStream::from(socket));
    wire.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
    wire.read_response(false).expect("a response").body_str()
}

#[test]
fn source_and_header_hashing_keep_clients_on_their_servers() {
    let servers = four();
    let by_source = proxy_over(&servers, &["--balance", "source"]);
    let clients: Vec<Ipv4Addr> = (10..50).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let owners: Vec<String> = clients.iter().map(|&ip| get_from(ip, by_source.addr, "/a")).collect();
    let again: Vec<String> = clients.iter().map(|&ip| get_from(ip, by_source.addr, "/b")).collect();
    assert_eq!(owners, again, "a client address keeps its server whatever the path");
    let distinct: std::collections::HashSet<_> = owners.iter().collect();
    assert!(distinct.len() >= 3, "40 clients spread: {owners:?}");

    let by_header = proxy_over(&servers, &["--balance", "hdr(X-User)"]);
    let ask = |user: &str| {
        let raw = format!("GET / HTTP/1.1\r\nHost: t\r\nX-User: {user}\r\nConnection: close\r\n\r\n");
        common::request(by_header.addr, raw.as_bytes()).body_str()
    };
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let owners: Vec<String> = users.iter().map(|u| ask(u)).collect();
    assert_eq!(owners, users.iter().map(|u| ask(u)).collect::<Vec<_>>(), "a header value keeps its server");
    assert!(owners.iter().collect::<std::collections::HashSet<_>>().len() >= 3, "{owners:?}");
    // A request without the header still gets an answer (round robin).
    let bodies: Vec<String> = (0..8).map(|_| common::get(by_header.addr, "/").body_str()).collect();
    assert!(bodies.iter().collect::<std::collections::HashSet<_>>().len() >= 2, "{bodies:?}");
    // Nor one whose header has no value (all of them went to the one server an empty key hashes to).
    let bodies: Vec<String> = (0..8).map(|_| ask("")).collect();
    assert!(bodies.iter().collect::<std::collections::HashSet<_>>().len() >= 2, "an empty X-User: {bodies:?}");
}

/// Backends that hold every request until `open` is called, counting arrivals.
struct Gate {
    state: Arc<(Mutex<bool>, Condvar)>,
    arrived: Arc<AtomicUsize>,
}

impl Gate {
    fn new() -> Gate {
        Gate { state: Arc::default(), arrived: Arc::default() }
    }

    fn backend(&self, name: &'static str) -> Backend {
        let (state, arrived) = (self.state.clone(), self.arrived.clone());
        Backend::http(move |_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + WAIT;
            let (lock, cv) = &*state;
            let mut open = lock.lock().unwrap();
            while !*open && Instant::now() < deadline {
                open = cv.wait_timeout(open, WAIT).unwrap().0;
            }
            common::ok(name)
        })
    }

    fn wait_arrived(&self, n: usize) {
        let start = Instant::now();
        while self.arrived.load(Ordering::SeqCst) < n {
            assert!(start.elapsed() < WAIT, "request {n} never reached a backend");
            std::thread::yield_now();
        }
    }

    fn open(&self) {
        *self.state.0.lock().unwrap() = true;
        self.state.1.notify_all();
    }
}

/// Sends `n` requests for `path` one after the other, each held at its backend; returns where they went.
fn hot_key(proxy: &Proxy, gate: &Gate, path: &'static str, n: usize) -> HashMap<String, usize> {
    let addr = proxy.addr;
    let before = gate.arrived.load(Ordering::SeqCst);
    let held: Vec<_> = (0..n)
        .map(|i| {
            let t = std::thread::spawn(move || common::get(addr, path).body_str());
            gate.wait_arrived(before + i + 1);
            t
        })
        .collect();
    gate.open();
    let mut counts = HashMap::new();
    for t in held {
        *counts.entry(t.join().unwrap()).or_default() += 1;
    }
    counts
}

#[test]
fn a_balance_factor_caps_the_server_of_a_hot_key() {
    let gate = Gate::new();
    let servers = vec![gate.backend("s0"), gate.backend("s1"), gate.backend("s2"), gate.backend("s3")];
    let unbounded = proxy_over(&servers, &["--balance", "uri"]);
    let counts = hot_key(&unbounded, &gate, "/hot", 8);
    assert_eq!(counts.len(), 1, "without a factor a hot key stays on its server: {counts:?}");

    let gate = Gate::new();
    let servers = vec![gate.backend("s0"), gate.backend("s1"), gate.backend("s2"), gate.backend("s3")];
    let bounded = proxy_over(&servers, &["--balance", "uri", "--hash-balance-factor", "150"]);
    let counts = hot_key(&bounded, &gate, "/hot", 8);
    // 8 requests over 4 servers: 1.5 x the average of 2 is 3.
    assert!(counts.values().all(|&n| n <= 3), "no server above 150% of the average: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 8);
}

/// The share of `requests` (from `clients` threads at once) each webapp host answered.
fn shares(proxy: &Proxy, clients: usize, requests: usize) -> HashMap<String, usize> {
    let addr = proxy.addr;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                (0..requests / clients).map(|_| field(&common::get(addr, "/").body_str(), "host")).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut counts = HashMap::new();
    for t in threads {
        for host in t.join().unwrap() {
            *counts.entry(host).or_default() += 1;
        }
    }
    counts
}

#[test]
fn random_and_latency_aware_choices_avoid_a_slowed_node() {
    let apps: Vec<_> = ["w1", "w2", "slow"].iter().map(|n| common::webapp(n)).collect();
    let slow_addr: SocketAddr = apps[2].1.parse().unwrap();
    let body = br#"{"delay": 200}"#;
    let raw = format!("POST /delay HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let r = common::request(slow_addr, &[raw.as_bytes(), body].concat());
    assert_eq!(r.status(), 200, "{r:?}");
    let backends: Vec<String> = apps.iter().map(|(_, addr)| addr.clone()).collect();
    let mut results = Vec::new();
    for args in [
        &["--balance", "roundrobin"][..],
        &["--balance", "random"],
        &["--balance", "random", "--latency-aware", "on"],
        &["--balance", "leastconn", "--latency-aware", "on"],
    ] {
        let mut all: Vec<&str> = args.to_vec();
        for b in &backends {
            all.extend(["--backend", b]);
        }
        let proxy = Proxy::start(&all);
        let counts = shares(&proxy, 4, 100);
        let slow = counts.get("slow").copied().unwrap_or(0);
        eprintln!("{args:?}: {counts:?}");
        results.push((args.join(" "), slow));
    }
    assert!((30..=36).contains(&results[0].1), "round robin gives the slow node its third: {results:?}");
    for (args, slow) in &results[1..] {
        assert!(*slow < 20, "{args}: the slow node got {slow} of 100");
    }
}

#[test]
fn an_agent_check_sets_weight_drain_and_maint_and_a_failing_one_falls_back() {
    let (app_a, app_b) = (named("a"), named("b"));
    let proxy = Proxy::start(&[]);
    let report = TempFile::new("agent-check", "ready\n");
    let check = format!("cat {}", report.arg());
    let mut agent_a = Agent::start(
        &app_a.arg(),
        &proxy.gossip(),
        &["--name", "a", "--agent-check", &check, "--agent-inter", "100ms"],
    );
    let _agent_b = Agent::start(&app_b.arg(), &proxy.gossip(), &["--name", "b"]);
    let (_, full) = proxy.wait_server("a", "UP", |status, _| status == "UP");
    proxy.wait_server("b", "UP", |status, _| status == "UP");

    report.write("50%\n");
    let asked = Instant::now();
    proxy.wait_server("a", "at half weight", |status, weight| status == "UP" && weight == full / 2);
    eprintln!("'50%' applied by the proxy {:?} after the app said it (checked every 100ms)", asked.elapsed());
    let bodies: Vec<String> = (0..300).map(|_| common::get(proxy.addr, "/").body_str()).collect();
    let a = bodies.iter().filter(|b| *b == "a").count();
    assert!((90..=110).contains(&a), "half the weight, a third of 300 requests rather than half: {a}");

    report.write("drain\n");
    proxy.wait_server("a", "DRAIN", |status, _| status == "DRAIN");
    assert!((0..20).all(|_| common::get(proxy.addr, "/").body_str() == "b"), "a draining node takes nothing new");
    // What a line leaves out stays as it was (HAProxy's "parameters which are not advertised by the agent are
    // not changed"): a weight alone keeps the drain, which only `ready` ends; `down` lasts until `up`, and
    // may carry a description after a `#`.
    report.write("75%\n");
    proxy.wait_server("a", "still DRAIN, at 3/4", |status, weight| status == "DRAIN" && weight == full * 3 / 4);
    report.write("ready\n");
    proxy.wait_server("a", "UP at 3/4", |status, weight| status == "UP" && weight == full * 3 / 4);
    report.write("down # disk full\n");
    proxy.wait_server("a", "DOWN", |status, _| status == "DOWN");
    report.write("50%\n");
    proxy.wait_server("a", "still DOWN, at half", |status, weight| status == "DOWN" && weight == full / 2);
    report.write("up\n");
    proxy.wait_server("a", "UP at half", |status, weight| status == "UP" && weight == full / 2);
    report.write("maint\n");
    proxy.wait_server("a", "MAINT", |status, _| status == "MAINT");

    // The check itself fails (the command exits non-zero): back to the configured weight and state, logged.
    std::fs::remove_file(&report.0).unwrap();
    agent_a.stderr.wait_for("the failure logged", |l| l.contains("agent check") && l.contains("failed"));
    proxy.wait_server("a", "back to its configured weight", |status, weight| status == "UP" && weight == full);
    assert!((0..20).any(|_| common::get(proxy.addr, "/").body_str() == "a"));
    agent_a.signal(libc::SIGTERM);
    assert!(agent_a.wait_exit().success());
}

/// An operator's `set weight` holds until the node's agent check reports a weight of its own, which then
/// replaces it, as HAProxy's agent-check replaces a weight set on its socket (it held for ever).
#[test]
fn an_agent_checks_next_weight_replaces_the_operators() {
    let app = named("a");
    let proxy = Proxy::start(&[]);
    let report = TempFile::new("agent-check", "50%\n");
    let check = format!("cat {}", report.arg());
    let _agent =
        Agent::start(&app.arg(), &proxy.gossip(), &["--name", "a", "--agent-check", &check, "--agent-inter", "100ms"]);
    proxy.wait_server("a", "at half weight", |status, weight| status == "UP" && weight == 50);
    assert_eq!(proxy.runtime("set weight nodes/a 10"), "\n");
    proxy.wait_server("a", "at the operator's weight", |_, weight| weight == 10);
    report.write("75%\n");
    proxy.wait_server("a", "at the agent's new weight", |status, weight| status == "UP" && weight == 75);
}

/// An agent-check command that outlives its time (a pipeline stuck on a hung app) is killed with everything
/// it started: only its shell was, and each check left its `sleep` behind.
#[test]
fn an_agent_check_command_that_hangs_leaves_no_process_behind() {
    let app = named("a");
    let proxy = Proxy::start(&[]);
    let runs = TempFile::new("agent-check-runs", "");
    let marker = format!("{}.{}", 900_000 + std::process::id() % 90_000, 17);
    let check = format!("echo run >> {}; sleep {marker} | cat", runs.arg());
    let mut agent =
        Agent::start(&app.arg(), &proxy.gossip(), &["--name", "a", "--agent-check", &check, "--agent-inter", "100ms"]);
    common::wait_until("ten checks run", || std::fs::read_to_string(&runs.0).unwrap_or_default().lines().count() >= 10);
    let sleeping = || {
        let out = std::process::Command::new("pgrep").args(["-f", &format!("^sleep {marker}")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    common::wait_until("a check's sleep seen (the count below counts something)", || sleeping() >= 1);
    // At most the current check's (a killed one may take a moment to go); each check left one behind before.
    common::wait_until("no sleep left behind by 10 checks", || sleeping() <= 1);
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit().success());
    common::wait_until("no check process left after the agent", || sleeping() == 0);
}

/// A check under way does not hold up the agent: SIGTERM is acted on at once, not when the check returns
/// (each check, up to its interval, was awaited in the agent's loop; here that is a minute).
#[test]
fn an_agent_stops_at_once_while_a_check_hangs() {
    let app = named("a");
    let proxy = Proxy::start(&[]);
    let runs = TempFile::new("agent-check-started", "");
    let check = format!("echo run >> {}; sleep 1000", runs.arg());
    let mut agent =
        Agent::start(&app.arg(), &proxy.gossip(), &["--name", "a", "--agent-check", &check, "--agent-inter", "60s"]);
    common::wait_until("the check started", || !std::fs::read_to_string(&runs.0).unwrap_or_default().is_empty());
    agent.signal(libc::SIGTERM);
    agent.stderr.wait_for("the stop begun", |l| l.contains("stopping: draining"));
    assert!(agent.wait_exit().success());
}

#[test]
fn static_servers_are_health_checked_with_rise_fall_and_a_status_range() {
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    let checked = Backend::http(move |req| {
        if req.start_line().contains("/health") {
            let code = answer.load(Ordering::SeqCst);
            return format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").into_bytes();
        }
        common::ok("checked")
    });
    let steady = named("steady");
    let proxy = Proxy::start(&[
        "--backend",
        &format!("checked={}", checked.addr),
        "--backend",
        &format!("steady={}", steady.addr),
        "--backend-check-path",
        "/health",
        "--backend-check-interval",
        "100ms",
        "--backend-rise",
        "2",
        "--backend-fall",
        "2",
        "--backend-check-status",
        "200-299",
    ]);
    proxy.wait_server("checked", "UP", |s, _| s == "UP");
    // As HAProxy's, a server starts UP one failure from DOWN: once a check has passed, it takes `fall`.
    common::wait_until("a first check passed", || proxy.servers_column("checked", "check_health") == "3");
    // A redirect is outside 200-299.
    status.store(302, Ordering::SeqCst);
    proxy.wait_server("checked", "DOWN", |s, _| s == "DOWN");
    proxy.stderr.wait_for("the verdict logged", |l| l.contains("server checked is DOWN: check failed"));
    assert!((0..10).all(|_| common::get(proxy.addr, "/").body_str() == "steady"), "a DOWN server gets nothing");
    status.store(204, Ordering::SeqCst);
    proxy.wait_server("checked", "UP again", |s, _| s == "UP");
    proxy.stderr.wait_for("the recovery logged", |l| l.contains("server checked is UP"));
    assert!((0..10).any(|_| common::get(proxy.addr, "/").body_str() == "checked"));
    let checks = checked.requests().iter().filter(|r| r.start_line().contains(" /health ")).count();
    assert!(checks >= 5, "one passed, two failed took it down, two passing ones back: {checks}");
}

#[test]
fn a_joining_node_ramps_its_weight_up_under_slowstart() {
    let (app_a, app_b) = (named("a"), named("b"));
    let proxy = Proxy::start(&["--slowstart", "5s"]);
    let _a = Agent::start(&app_a.arg(), &proxy.gossip(), &["--name", "a"]);
    let (_, full) = proxy.wait_server("a", "UP", |s, _| s == "UP");
    let _b = Agent::start(&app_b.arg(), &proxy.gossip(), &["--name", "b"]);
    let (_, start) = proxy.wait_server("b", "UP", |s, _| s == "UP");
    assert!(start < full, "a server new to rotation starts below its weight: {start} of {full}");
    // HAProxy's uweight is the weight it ramps towards, in the CSV and in `show servers state`
    // (srv_uweight, srv_iweight).
    assert_eq!(proxy.servers_column("b", "uweight"), full.to_string());
    let state = proxy.runtime("show servers state");
    let row = state.lines().find(|l| l.split(' ').nth(3) == Some("b")).unwrap_or_else(|| panic!("{state}"));
    assert_eq!(row.split(' ').skip(7).take(2).collect::<Vec<_>>(), [full.to_string(), full.to_string()], "{row}");
    assert_eq!(row.split(' ').nth(5), Some("1"), "srv_op_state 1, starting, while it ramps: {row}");
    // HAProxy's throttle: the percent of its weight reached while it ramps, then nothing.
    let throttle = proxy.servers_column("b", "throttle");
    assert!(throttle.parse::<u64>().is_ok_and(|t| t < 100), "throttle while ramping: {throttle:?}");
    let mut seen = vec![start];
    let begun = Instant::now();
    while seen.last() != Some(&full) {
        let (_, weight) = proxy.servers()["b"].clone();
        if seen.last() != Some(&weight) {
            seen.push(weight);
        }
        assert!(begun.elapsed() < WAIT, "never reached its full weight: {seen:?}");
        std::thread::yield_now();
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]) && seen.len() >= 4, "ramped up in steps: {seen:?}");
    assert_eq!(proxy.servers_column("b", "throttle"), "", "no throttle at full weight");
    let state = proxy.runtime("show servers state");
    let row = state.lines().find(|l| l.split(' ').nth(3) == Some("b")).unwrap_or_else(|| panic!("{state}"));
    assert_eq!(row.split(' ').nth(5), Some("2"), "srv_op_state 2, running, at full weight: {row}");
}

#[test]
fn a_full_server_queues_requests_until_a_slot_frees_or_the_queue_timeout() {
    let (app, release) = Backend::gated("slow done", "fast");
    let proxy = Proxy::start(&["--backend", &format!("one={},maxconn=1", app.addr), "--timeout-queue", "300ms"]);
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || common::get(addr, "/slow").body_str());
    app.wait_requests(1);
    // The one slot is taken: the next request waits in the queue, and is served once the slot frees.
    let queued = std::thread::spawn(move || common::get(addr, "/queued").body_str());
    let start = Instant::now();
    while proxy.servers_column("one", "qcur") != "1" {
        assert!(start.elapsed() < WAIT, "the second request never queued");
        std::thread::yield_now();
    }
    assert_eq!(proxy.servers_column("one", "slim"), "1");
    assert_eq!(proxy.servers_column("one", "qlimit"), "1024", "maxqueue's default, as HAProxy shows it");
    assert_eq!(app.requests().len(), 1, "the queued request has not reached the server");
    release.send(()).unwrap();
    assert_eq!(slow.join().unwrap(), "slow done");
    assert_eq!(queued.join().unwrap(), "fast");
    // HAProxy's qmax: the most that waited at once, on the server and on the backend (it said 0).
    let rows = proxy.server_rows();
    assert_eq!((rows["one"]["qcur"].as_str(), rows["one"]["qmax"].as_str()), ("0", "1"));
    let csv = common::get(proxy.admin(), "/;csv").body_str();
    let backend = csv.lines().find(|l| l.starts_with("nodes,BACKEND,")).unwrap();
    assert!(backend.starts_with("nodes,BACKEND,0,1,"), "{backend}");
    let line = proxy.log_line("GET /queued");
    let timers: Vec<i64> =
        line.split(' ').find(|w| w.matches('/').count() == 4).unwrap().split('/').map(|t| t.parse().unwrap()).collect();
    assert!(timers[1] > 0, "Tw is the time spent queued, until the release: {line}");

    // Held longer than --timeout-queue: a 503 with HAProxy's sQ flags.
    let slow = std::thread::spawn(move || common::get(addr, "/slow").body_str());
    app.wait_requests(3);
    let r = common::get(addr, "/too-late");
    assert_eq!(r.status(), 503);
    let line = proxy.log_line("GET /too-late");
    assert!(line.contains(" sQ") && line.contains(" nodes/one "), "the server it waited for is named: {line}");
    // A queue timeout is a failed connection to HAProxy, on the server and so on the backend; the request
    // was never in flight to the server, whose peak stays within its maxconn (it counted it: 2 of 1).
    assert_eq!((proxy.servers_column("one", "econ"), proxy.backend_column("econ")), ("1".into(), "1".into()));
    assert_eq!(proxy.servers_column("one", "smax"), "1");
    release.send(()).unwrap();
    assert_eq!(slow.join().unwrap(), "slow done");
}

/// The access log's `%sq` counts the requests ahead in the server's queue, and `%bc` the backend's requests
/// in flight and queued, as HAProxy's `beconn` (it said `0/0` and left the queued ones out).
#[test]
fn the_log_counts_queued_requests() {
    let (app, release) = Backend::gated("slow done", "fast");
    let proxy = Proxy::start(&["--backend", &format!("one={},maxconn=1", app.addr)]);
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || common::get(addr, "/slow").body_str());
    app.wait_requests(1);
    let mut queued = Vec::new();
    for (i, path) in ["/q1", "/q2"].into_iter().enumerate() {
        queued.push(std::thread::spawn(move || common::get(addr, path).body_str()));
        common::wait_until(path, || proxy.servers_column("one", "qcur") == (i + 1).to_string());
    }
    // The BACKEND row counts them as the log does (HAProxy's beconn): one in flight and two queued.
    assert_eq!(proxy.backend_column("scur"), "3");
    release.send(()).unwrap();
    assert_eq!(slow.join().unwrap(), "slow done");
    for q in queued {
        assert_eq!(q.join().unwrap(), "fast");
    }
    let field = |line: &str, at: usize| line.split(' ').nth(at).unwrap_or_default().to_string();
    let (slow, q1, q2) = (proxy.log_line("GET /slow"), proxy.log_line("GET /q1"), proxy.log_line("GET /q2"));
    assert_eq!((field(&q1, 11), field(&q2, 11)), ("0/0".to_string(), "1/0".to_string()), "%sq/%bq:\n{q1}\n{q2}");
    // /slow ended with both others queued; it counts itself no longer (HAProxy 2.6 logs such a request
    // `3/3/2/0/0`).
    assert_eq!(field(&slow, 10).split('/').skip(2).take(2).collect::<Vec<_>>(), ["2", "0"], "%bc/%sc: {slow}");
}

/// A request a server closed its connection on without an answer, retried, then held in the other's full
/// queue past `--timeout-queue`, reached no server in the end: HAProxy logs its `sQ` with no connect time and
/// charges the server it waited for with a failed connection only, not with a session or a 503.
#[test]
fn a_retry_that_ends_in_a_queue_is_charged_only_the_queue_failure() {
    // `mute` closes every connection without answering; `busy` has one slot, held by /slow.
    let mute = Backend::replying(Vec::new());
    let (busy, release) = Backend::gated("slow done", "fast");
    let proxy = Proxy::start(&[
        "--backend",
        &format!("mute={}", mute.addr),
        "--backend",
        &format!("busy={},maxconn=1", busy.addr),
        "--timeout-queue",
        "300ms",
    ]);
    let addr = proxy.addr;
    assert_eq!(proxy.runtime("disable server nodes/mute"), "\n");
    let slow = std::thread::spawn(move || common::get(addr, "/slow").body_str());
    busy.wait_requests(1);
    assert_eq!(proxy.runtime("enable server nodes/mute"), "\n");
    let before = proxy.server_rows()["busy"].clone();
    // `busy` is full: round robin sends it to `mute`, whose silence sends it on to `busy`'s queue.
    assert_eq!(common::get(addr, "/late").status(), 503);
    let line = proxy.log_line("GET /late");
    assert!(line.contains(" sQ") && line.contains(" nodes/busy "), "{line}");
    let timers: Vec<i64> =
        line.split(' ').find(|w| w.matches('/').count() == 4).unwrap().split('/').map(|t| t.parse().unwrap()).collect();
    assert_eq!(timers[2], -1, "no connection was made to the server that ended it: {line}");
    assert!(line.split(' ').nth(10).is_some_and(|c| c.ends_with("/+1")), "it was retried on another server: {line}");
    let after = proxy.server_rows()["busy"].clone();
    for column in ["stot", "hrsp_5xx", "bin"] {
        assert_eq!(after[column], before[column], "{column} of a server the request never reached");
    }
    assert_eq!(after["econ"], "1", "the queue timeout");
    assert_eq!((proxy.backend_column("hrsp_5xx"), proxy.backend_column("req_tot")), ("1".into(), "1".into()));
    release.send(()).unwrap();
    assert_eq!(slow.join().unwrap(), "slow done");
}

/// `GET path` with `Cookie: cookie` on a connection of its own: the body.
fn get_with_cookie(addr: SocketAddr, path: &str, cookie: &str) -> String {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n");
    common::request(addr, raw.as_bytes()).body_str()
}

/// MAINT, as HAProxy's `disable server`: no new requests, those in flight end where they are. A GET waiting for
/// its answer was abandoned after `--timeout-attempt` and sent to another server, so it ran twice; one queued
/// for the server waited for its slot (or the queue timeout) instead of going elsewhere.
#[test]
fn maint_lets_requests_in_flight_finish_and_sends_queued_ones_elsewhere() {
    let ((a, release), b) = (Backend::gated("a slow", "a"), named("b"));
    let proxy = Proxy::start(&[
        "--backend",
        &format!("a={},maxconn=1", a.addr),
        "--backend",
        &format!("b={}", b.addr),
        "--threads",
        "1",
        "--sticky-cookie",
        "SRV",
        "--timeout-attempt",
        "100ms",
        "--timeout-queue",
        "20s",
    ]);
    let addr = proxy.addr;
    let cookie = (0..10)
        .map(|_| common::get(addr, "/"))
        .find(|r| r.body_str() == "a")
        .map(|r| sticky_set(&r, "SRV")[0].split(';').next().unwrap().to_string())
        .expect("a answered one of ten");
    let on_a = a.requests().len();
    let c = cookie.clone();
    let in_flight = std::thread::spawn(move || get_with_cookie(addr, "/slow", &c));
    a.wait_requests(on_a + 1);
    let c = cookie.clone();
    let queued = std::thread::spawn(move || get_with_cookie(addr, "/queued", &c));
    common::wait_until("the second request queued on a", || proxy.servers_column("a", "qcur") == "1");
    assert_eq!(proxy.runtime("set server nodes/a state maint"), "\n");
    assert_eq!(queued.join().unwrap(), "b", "the queued request went to b at once");
    // Ten times the attempt timeout after which a request in flight used to be sent again.
    let window = Instant::now();
    while window.elapsed() < std::time::Duration::from_secs(1) {
        assert!(!b.requests().iter().any(|r| r.start_line().contains("/slow")), "the request in flight ran twice");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    release.send(()).unwrap();
    assert_eq!(in_flight.join().unwrap(), "a slow", "answered by the server in maintenance that had it");
    assert_eq!(proxy.servers_column("a", "qcur"), "0");
}

/// Servers a and b of one slot each, one thread; each holding a slow request until released; then four
/// requests to `/q` queued, 2 on each.
struct FourQueued {
    proxy: Proxy,
    release: [std::sync::mpsc::Sender<()>; 2],
    slow: Vec<std::thread::JoinHandle<String>>,
    queued: Vec<std::thread::JoinHandle<Message>>,
}

fn four_queued_on_two_full_servers() -> (FourQueued, [Backend; 2]) {
    let ((a, release_a), (b, release_b)) = (Backend::gated("a slow", "a"), Backend::gated("b slow", "b"));
    let servers = [format!("a={},maxconn=1", a.addr), format!("b={},maxconn=1", b.addr)];
    let proxy = Proxy::start(&["--backend", &servers[0], "--backend", &servers[1], "--threads", "1"]);
    let addr = proxy.addr;
    let slow: Vec<_> = (0..2).map(|_| std::thread::spawn(move || common::get(addr, "/slow").body_str())).collect();
    common::wait_until("a slow request on each", || a.requests().len() == 1 && b.requests().len() == 1);
    let queued: Vec<_> = (0..4).map(|_| std::thread::spawn(move || common::get(addr, "/q"))).collect();
    common::wait_until("four queued", || {
        let rows = proxy.server_rows();
        rows["a"]["qcur"].parse::<u32>().unwrap_or(0) + rows["b"]["qcur"].parse::<u32>().unwrap_or(0) == 4
    });
    (FourQueued { proxy, release: [release_a, release_b], slow, queued }, [a, b])
}

/// Every server full: queued requests spread over the servers' queues (round robin put them all on the first
/// full server it met, whose queue filled while the others stayed empty).
#[test]
fn with_every_server_full_queued_requests_spread_over_the_queues() {
    let (f, _servers) = four_queued_on_two_full_servers();
    let queues = (f.proxy.servers_column("a", "qcur"), f.proxy.servers_column("b", "qcur"));
    assert_eq!(queues, ("2".into(), "2".into()));
    f.release.iter().for_each(|r| r.send(()).unwrap());
    for t in f.slow {
        assert!(t.join().unwrap().ends_with("slow"));
    }
    for t in f.queued {
        assert_eq!(t.join().unwrap().status(), 200);
    }
}

/// Every server full, two requests queued on each; b frees its slot and its queue empties while a's request
/// still holds a: b serves a's queued requests too, as HAProxy's backend queue is served by whichever server
/// frees a slot (they waited for a, b idle, until the queue timeout's 503).
#[test]
fn a_server_that_frees_a_slot_serves_requests_queued_for_another() {
    let (f, _servers) = four_queued_on_two_full_servers();
    f.release[1].send(()).unwrap();
    for t in f.queued {
        assert_eq!(t.join().unwrap().body_str(), "b", "served by b while a still holds its slow request");
    }
    assert_eq!(f.proxy.servers_column("a", "qcur"), "0");
    f.release[0].send(()).unwrap();
    for t in f.slow {
        assert!(t.join().unwrap().ends_with("slow"));
    }
}

/// A request pinned by its cookie to a server whose queue is full goes to another server's queue, as HAProxy
/// redispatches it (it was answered 503 at once while b would serve it).
#[test]
fn a_request_finding_its_servers_queue_full_queues_on_another() {
    let ((a, release_a), (b, release_b)) = (Backend::gated("a slow", "a"), Backend::gated("b slow", "b"));
    let proxy = Proxy::start(&[
        "--backend",
        &format!("a={},maxconn=1,maxqueue=1", a.addr),
        "--backend",
        &format!("b={},maxconn=1", b.addr),
        "--sticky-cookie",
        "SRV",
    ]);
    let addr = proxy.addr;
    let cookie = (0..10)
        .map(|_| common::get(addr, "/"))
        .find(|r| r.body_str() == "a")
        .map(|r| sticky_set(&r, "SRV")[0].split(';').next().unwrap().to_string())
        .expect("a answered one of ten");
    let c = cookie.clone();
    let held_a = std::thread::spawn(move || get_with_cookie(addr, "/slow", &c));
    common::wait_until("a full", || proxy.servers_column("a", "scur") == "1");
    let held_b = std::thread::spawn(move || common::get(addr, "/slow").body_str());
    common::wait_until("b full", || proxy.servers_column("b", "scur") == "1");
    let c = cookie.clone();
    let queued_a = std::thread::spawn(move || get_with_cookie(addr, "/q1", &c));
    common::wait_until("a's queue full", || proxy.servers_column("a", "qcur") == "1");
    let c = cookie.clone();
    let overflow = std::thread::spawn(move || get_with_cookie(addr, "/q2", &c));
    common::wait_until("the next queued on b", || proxy.servers_column("b", "qcur") == "1");
    release_b.send(()).unwrap();
    assert_eq!(held_b.join().unwrap(), "b slow");
    assert_eq!(overflow.join().unwrap(), "b", "served by b");
    release_a.send(()).unwrap();
    assert_eq!(held_a.join().unwrap(), "a slow");
    assert_eq!(queued_a.join().unwrap(), "a", "the one in a's queue stays there: its cookie names a");
}

/// `maxqueue=0` is no limit, as in HAProxy: it turned the queue off, and every request finding the server
/// full got a 503.
#[test]
fn maxqueue_0_queues_without_a_limit() {
    let (app, release) = Backend::gated("slow done", "fast");
    let proxy = Proxy::start(&["--backend", &format!("one={},maxconn=1,maxqueue=0", app.addr)]);
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || common::get(addr, "/slow").body_str());
    app.wait_requests(1);
    let queued: Vec<_> = (0..3).map(|_| std::thread::spawn(move || common::get(addr, "/queued").body_str())).collect();
    common::wait_until("three queued", || proxy.servers_column("one", "qcur") == "3");
    assert_eq!(proxy.servers_column("one", "qlimit"), "", "no limit shown, as HAProxy shows none");
    release.send(()).unwrap();
    assert_eq!(slow.join().unwrap(), "slow done");
    for q in queued {
        assert_eq!(q.join().unwrap(), "fast");
    }
}

/// A member announcing a static server's name is told apart by its address (`s0@...`), and so is its sticky
/// cookie and hash-ring seed: they followed the first name, so both servers shared one cookie and a session
/// begun on the static server went to the member.
#[test]
fn a_member_named_like_a_static_server_gets_a_cookie_of_its_own() {
    let (static_s0, member) = (named("static"), named("member"));
    let proxy = Proxy::start(&["--sticky-cookie", "SRV", "--backend", &format!("s0={}", static_s0.addr)]);
    let _agent = Agent::start(&member.arg(), &proxy.gossip(), &["--name", "s0"]);
    proxy.stderr.wait_for("the member renamed", |l| l.contains("is now called s0@"));
    proxy.wait_server("s0", "the static server UP", |s, _| s == "UP");
    common::wait_until("the member in rotation", || {
        proxy.server_rows().iter().any(|(name, row)| name.starts_with("s0@") && row["status"] == "UP")
    });
    let rows = proxy.server_rows();
    let cookies: std::collections::BTreeSet<&String> = rows.values().map(|row| &row["cookie"]).collect();
    assert_eq!(cookies.len(), 2, "one cookie each: {rows:?}");
    // A session begun on the static server stays there.
    let browser = std::cell::RefCell::new(Browser::default());
    common::wait_until("a session begun on the static server", || {
        let mut browser = browser.borrow_mut();
        browser.jar.clear();
        browser.get(proxy.addr).body_str() == "static"
    });
    let mut browser = browser.into_inner();
    for _ in 0..10 {
        assert_eq!(browser.get(proxy.addr).body_str(), "static");
    }
}

/// Under `--slowstart` a server coming back ramps from weight 1, but one set to weight 0 stays out: the ramp
/// gave it 1 (about one request in 101 here).
#[test]
fn a_server_weighted_0_takes_nothing_while_it_ramps() {
    let servers = [named("a"), named("b")];
    let proxy = proxy_over(&servers, &["--slowstart", "60s", "--threads", "1"]);
    let ramp = "set server nodes/s1 weight 0; disable server nodes/s1; enable server nodes/s1";
    assert_eq!(proxy.runtime(ramp), "\n\n\n");
    proxy.wait_server("s1", "s1 back UP", |s, _| s == "UP");
    assert_eq!(proxy.servers_column("s1", "weight"), "0");
    let answers: Vec<String> = (0..600).map(|_| common::get(proxy.addr, "/").body_str()).collect();
    assert!(answers.iter().all(|a| a == "a"), "only a answers: {:?}", answers.iter().find(|a| *a != "a"));
}

/// `--agent-check http://...` whose app sends its line chunked (Node's `res.write("50%\n"); res.end()`): the
/// line is the payload's first, not the chunk size (`"4" is not an agent-check word`, and the weight stayed).
#[test]
fn an_http_agent_check_answered_chunked_is_read() {
    let app = Backend::http(|req| {
        if req.start_line().contains("/capacity") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n50%\n\r\n0\r\n\r\n".to_vec()
        } else {
            common::ok("app")
        }
    });
    let proxy = Proxy::start(&[]);
    let check = format!("http://{}/capacity", app.addr);
    let agent = Agent::start(
        &app.arg(),
        &proxy.gossip(),
        &["--name", "a", "--agent-check", &check, "--agent-inter", "100ms", "--weight", "100"],
    );
    proxy.wait_server("a", "at half weight", |status, weight| status == "UP" && weight == 50);
    assert!(!agent.stderr.all().iter().any(|l| l.contains("agent-check word")), "{:?}", agent.stderr.all());
}
