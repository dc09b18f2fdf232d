//! The admin endpoints of a running proxy: HAProxy's stats CSV with the per-thread counters merged, the
//! stats page, Prometheus metrics.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use common::{Backend, Proxy, WAIT};

/// GET on the admin port; the status and body.
fn admin_get(proxy: &Proxy, path: &str) -> (u16, String) {
    let r = common::get(proxy.admin(), path);
    (r.status(), r.body_str())
}

/// The CSV as one map per row (column name -> value), keyed by "pxname/svname"; every row must have exactly
/// the header's columns.
fn csv(proxy: &Proxy) -> HashMap<String, HashMap<String, String>> {
    let (status, body) = admin_get(proxy, "/;csv");
    assert_eq!(status, 200);
    let mut lines = body.lines();
    let header = lines.next().unwrap().strip_prefix("# ").expect("HAProxy's '# ' before the header");
    let names: Vec<&str> = header.split(',').collect();
    assert_eq!(&names[..8], ["pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot"]);
    lines
        .map(|line| {
            let values: Vec<&str> = line.split(',').collect();
            assert_eq!(values.len(), names.len(), "row {line:?} has the header's columns");
            let row: HashMap<String, String> =
                names.iter().zip(&values).map(|(n, v)| (n.to_string(), v.to_string())).collect();
            (format!("{}/{}", row["pxname"], row["svname"]), row)
        })
        .collect()
}

/// A proxy with `threads` data-plane threads in front of the named static servers.
fn proxy_with(threads: usize, servers: &[(&str, SocketAddr)]) -> Proxy {
    let mut args = vec!["--threads".to_string(), threads.to_string()];
    for (name, addr) in servers {
        args.extend(["--backend".to_string(), format!("{name}={addr}")]);
    }
    Proxy::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The CSV once the frontend has counted `requests`: counting follows the response by a moment.
fn csv_after(proxy: &Proxy, requests: u64) -> HashMap<String, HashMap<String, String>> {
    let start = Instant::now();
    loop {
        let rows = csv(proxy);
        if num(&rows["shoal/FRONTEND"], "req_tot") == requests {
            return rows;
        }
        assert!(start.elapsed() < WAIT, "never counted {requests} requests: {:?}", rows["shoal/FRONTEND"]);
    }
}

fn num(row: &HashMap<String, String>, column: &str) -> u64 {
    row[column].parse().unwrap_or_else(|_| panic!("{column} = {:?} is not a number", row[column]))
}

#[test]
fn csv_page_and_metrics_count_what_clients_saw() {
    let good = Backend::http(|_| common::ok("good"));
    let bad = Backend::http(|_| b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail".to_vec());
    let refused = common::refused_port();
    let dead = refused.addr;
    let proxy = proxy_with(2, &[("s1", good.addr), ("s2", bad.addr), ("s3", dead)]);

    let mut seen = HashMap::<u16, u64>::new();
    for _ in 0..12 {
        *seen.entry(common::get(proxy.addr, "/").status()).or_default() += 1;
    }
    let refused = common::request(proxy.addr, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(refused.status(), 400, "no Host");
    assert_eq!(seen.values().sum::<u64>(), 12);

    let rows = csv_after(&proxy, 13);
    let fe = &rows["shoal/FRONTEND"];
    assert_eq!((fe["type"].as_str(), fe["status"].as_str()), ("0", "OPEN"));
    assert_eq!(num(fe, "hrsp_2xx"), seen[&200]);
    assert_eq!(num(fe, "hrsp_5xx"), seen[&500]);
    assert_eq!((num(fe, "hrsp_4xx"), num(fe, "ereq")), (1, 1));
    assert_eq!(num(fe, "stot"), 13, "one connection per request");

    let (s1, s2, s3) = (&rows["nodes/s1"], &rows["nodes/s2"], &rows["nodes/s3"]);
    assert_eq!((num(s1, "hrsp_2xx"), num(s1, "hrsp_5xx")), (seen[&200], 0), "s1 {s1:?}\ns2 {s2:?}\ns3 {s3:?}");
    assert_eq!((num(s2, "hrsp_5xx"), num(s2, "hrsp_2xx")), (seen[&500], 0));
    assert!(num(s3, "econ") >= 1, "the dead server's refused connects: {s3:?}");
    assert_eq!(num(s3, "stot"), 0);
    assert_eq!((s1["type"].as_str(), s1["weight"].as_str()), ("2", "100"));

    let be = &rows["nodes/BACKEND"];
    assert_eq!(be["type"], "1");
    assert_eq!(num(be, "stot"), num(s1, "stot") + num(s2, "stot") + num(s3, "stot"));
    assert_eq!(num(be, "stot"), 12, "every request but the refused one reached a server");
    assert_eq!(num(be, "hrsp_2xx") + num(be, "hrsp_5xx"), 12);

    let (status, metrics) = admin_get(&proxy, "/metrics");
    assert_eq!(status, 200);
    let line = format!("shoal_server_responses_total{{server=\"s1\",code=\"2xx\"}} {}", seen[&200]);
    assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    assert!(metrics.lines().any(|l| l == "shoal_frontend_requests_total 13"), "{metrics}");

    let (status, page) = admin_get(&proxy, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<table>") && page.contains(&format!("s1 ({})", good.addr)), "{page}");
    assert_eq!(admin_get(&proxy, "/nope").0, 404);
}

/// The bodies of `n` GETs in a row.
fn bodies(proxy: &Proxy, n: usize) -> Vec<String> {
    (0..n).map(|_| common::get(proxy.addr, "/").body_str()).collect()
}

fn count(bodies: &[String], body: &str) -> usize {
    bodies.iter().filter(|b| *b == body).count()
}

#[test]
fn runtime_api_sets_server_state_and_weight() {
    let one = Backend::http(|_| common::ok("one"));
    let two = Backend::http(|_| common::ok("two"));
    // One thread: one round-robin cursor, so shares are exact over whole cycles.
    let proxy = proxy_with(1, &[("s1", one.addr), ("s2", two.addr)]);
    let status_of = |server: &str| csv(&proxy)[&format!("nodes/{server}")]["status"].clone();

    let stat = proxy.runtime("show stat");
    assert!(stat.starts_with("# pxname,svname,") && stat.ends_with("\n\n"), "CSV then an empty line: {stat:?}");

    assert_eq!(proxy.runtime("set server nodes/s1 state maint"), "\n");
    assert_eq!(count(&bodies(&proxy, 4), "two"), 4, "s1 in maintenance takes nothing");
    assert_eq!(status_of("s1"), "MAINT");

    assert_eq!(proxy.runtime("set server nodes/s1 state drain"), "\n");
    assert_eq!(count(&bodies(&proxy, 4), "two"), 4, "a draining s1 takes nothing new");
    assert_eq!(status_of("s1"), "DRAIN");

    // Two commands on one line, as HAProxy allows.
    assert_eq!(proxy.runtime("set server nodes/s1 state ready; set server nodes/s1 weight 300"), "\n\n");
    let seen = bodies(&proxy, 8);
    assert_eq!((count(&seen, "one"), count(&seen, "two")), (6, 2), "weights 300:100: {seen:?}");
    assert_eq!((status_of("s1"), csv(&proxy)["nodes/s1"]["weight"].clone()), ("UP".into(), "300".into()));

    let state = proxy.runtime("show servers state");
    let mut lines = state.lines();
    assert_eq!(lines.next(), Some("1"));
    assert!(lines.next().unwrap().starts_with("# be_id be_name srv_id srv_name srv_addr srv_op_state"));
    let s1: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!((s1[1], s1[3], s1[5], s1[6], s1[7]), ("nodes", "s1", "2", "0", "300"), "{state}");

    assert_eq!(proxy.runtime("disable server nodes/s2"), "\n");
    assert_eq!(count(&bodies(&proxy, 3), "one"), 3);
    assert_eq!(proxy.runtime("enable server nodes/s2"), "\n");

    assert_eq!(proxy.runtime("set server nodes/nope state maint"), "No such server.\n\n");
    assert_eq!(proxy.runtime("set server other/s1 state maint"), "No such backend.\n\n");
    assert!(proxy.runtime("set server nodes/s1 state sleepy").contains("expects 'ready', 'drain' and 'maint'"));
    assert!(proxy.runtime("bogus").starts_with("Unknown command: 'bogus'"));
    let long = format!("set server nodes/s1 state maint {}; show stat", "x".repeat(5000));
    assert_eq!(proxy.runtime(&long), "Line too long.\n\n", "nothing of an over-long line is run");
    assert_eq!(status_of("s1"), "UP");

    // Interactive: a prompt after each answer until quit.
    let session = proxy.runtime("prompt\nshow info\nquit");
    assert!(session.starts_with("> Name: shoal\n") && session.ends_with("\n\n> "), "{session:?}");
    proxy.stderr.wait_for("the change logged", |l| l.contains("runtime API: server nodes/s1 weight set to 300"));
}

#[test]
fn a_retried_request_counts_only_against_servers_that_answered() {
    // s1 takes the request and closes without answering; the retry goes to s2, which refuses connections.
    let mute = Backend::replying(Vec::new());
    let refused = common::refused_port();
    let proxy = proxy_with(1, &[("s1", mute.addr), ("s2", refused.addr)]);
    assert_eq!(common::get(proxy.addr, "/").status(), 503);
    let rows = csv_after(&proxy, 1);
    let (s1, s2) = (&rows["nodes/s1"], &rows["nodes/s2"]);
    assert_eq!((num(s1, "wretr"), num(s1, "stot")), (1, 0), "s1 answered nothing: a retry, no session: {s1:?}");
    assert_eq!((num(s2, "econ"), num(s2, "stot"), num(s2, "hrsp_5xx")), (1, 0, 0), "s2 was never reached: {s2:?}");
    assert_eq!(num(&rows["shoal/FRONTEND"], "hrsp_5xx"), 1);
}

#[test]
fn a_response_cut_mid_body_counts_its_status_and_a_server_error() {
    // The head says 100 bytes; the backend sends 10 and closes.
    let cut = Backend::replying(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec());
    let proxy = proxy_with(1, &[("s1", cut.addr)]);
    let mut w = common::Wire::connect(proxy.addr);
    w.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(w.read_response(true).unwrap().status(), 200, "the head reached the client");
    assert!(w.read_all().len() < 100, "the body is cut and the connection closed");
    let rows = csv_after(&proxy, 1);
    let s1 = &rows["nodes/s1"];
    assert_eq!((num(s1, "hrsp_2xx"), num(s1, "eresp")), (1, 1), "{s1:?}");
    assert_eq!(num(&rows["shoal/FRONTEND"], "hrsp_2xx"), 1);
}

#[test]
fn the_csv_header_is_haproxy_2_6_s_byte_for_byte_and_every_row_fills_it() {
    // Captured with `echo "show stat" | socat - tcp:...` from Debian 12's haproxy 2.6.12.
    let haproxy =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/haproxy-2.6-show-stat-header.txt"))
            .unwrap();
    let backend = Backend::http(|_| common::ok("ok"));
    let proxy = Proxy::start(&[
        "--backend",
        &format!("s1={}", backend.addr),
        "--sticky-cookie",
        "SRV",
        "--balance",
        "leastconn",
    ]);
    assert_eq!(common::get(proxy.addr, "/").status(), 200);
    let (_, body) = admin_get(&proxy, "/;csv");
    let mut lines = body.lines();
    let header = lines.next().unwrap();
    assert_eq!(header, haproxy.trim_end_matches('\n'), "HAProxy 2.6's header, byte for byte");
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    assert_eq!(columns.len(), 129, "128 columns and the trailing comma");
    for line in lines.clone() {
        assert_eq!(line.split(',').count(), columns.len(), "a row as wide as the header: {line}");
    }
    let rows = csv_after(&proxy, 1);
    let server = &rows["nodes/s1"];
    assert_eq!(server["addr"], backend.addr.to_string());
    assert_eq!(server["mode"], "http");
    assert!(!server["cookie"].is_empty(), "the sticky cookie's id");
    assert_eq!(rows["nodes/BACKEND"]["algo"], "leastconn");
    assert_eq!(rows["shoal/FRONTEND"]["req_tot"], "1");
}
