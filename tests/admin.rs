//! The admin endpoints of a running proxy: HAProxy's stats CSV with the per-thread counters merged, the
//! stats page, Prometheus metrics.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
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
fn csv(proxy: &Proxy) -> Rows {
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

/// The CSV's rows by "pxname/svname".
type Rows = HashMap<String, HashMap<String, String>>;

/// A proxy with `threads` data-plane threads in front of the named static servers.
fn proxy_with(threads: usize, servers: &[(&str, SocketAddr)]) -> Proxy {
    let mut args = vec!["--threads".to_string(), threads.to_string()];
    for (name, addr) in servers {
        args.extend(["--backend".to_string(), format!("{name}={addr}")]);
    }
    Proxy::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The CSV once the frontend has counted `requests`: counting follows the response by a moment.
fn csv_after(proxy: &Proxy, requests: u64) -> Rows {
    csv_once(proxy, &format!("{requests} requests counted"), |rows| num(&rows["shoal/FRONTEND"], "req_tot") == requests)
}

/// The CSV once `settled` holds for it (`what` names the wait in the failure).
fn csv_once(proxy: &Proxy, what: &str, settled: impl Fn(&Rows) -> bool) -> Rows {
    let start = Instant::now();
    loop {
        let rows = csv(proxy);
        if settled(&rows) {
            return rows;
        }
        assert!(start.elapsed() < WAIT, "never {what}: {rows:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
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
    // Its refused connects were retried on another server: HAProxy's wredis, not econ, which counts requests
    // that gave up.
    assert!(num(s3, "wredis") >= 1, "the dead server's refused connects: {s3:?}");
    assert_eq!((num(s3, "econ"), num(s3, "stot")), (0, 0), "{s3:?}");
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
    // HAProxy's `stats uri /` matches a prefix: its default `/haproxy?stats` is the page too, options follow a
    // `;` wherever the path ends, and `;up` / `;no-maint` leave out servers DOWN (s3, refused) or in MAINT.
    assert!(admin_get(&proxy, "/haproxy?stats").1.contains("<table>"));
    assert!(!admin_get(&proxy, "/haproxy?stats;norefresh").1.contains("http-equiv=\"refresh\""));
    assert!(page.contains("http-equiv=\"refresh\""));
    assert_eq!(proxy.runtime("disable server nodes/s2"), "\n");
    let listed = |target: &str| -> Vec<String> {
        let (status, csv) = admin_get(&proxy, target);
        assert_eq!(status, 200, "{target}");
        csv.lines()
            .skip(1)
            .filter(|l| l.starts_with("nodes,s"))
            .map(|l| l.split(',').nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(listed("/haproxy?stats;csv"), ["s1", "s2", "s3"]);
    assert_eq!(listed("/;csv;up"), ["s1"]);
    assert_eq!(listed("/haproxy?stats;csv;no-maint"), ["s1", "s3"]);
    let up_page = admin_get(&proxy, "/;up").1;
    assert!(up_page.contains("s1 (") && !up_page.contains("s2 (") && !up_page.contains("s3 ("), "{up_page}");
}

/// The bodies of `n` GETs in a row.
fn bodies(proxy: &Proxy, n: usize) -> Vec<String> {
    (0..n).map(|_| common::get(proxy.addr, "/").body_str()).collect()
}

fn count(bodies: &[String], body: &str) -> usize {
    bodies.iter().filter(|b| *b == body).count()
}

/// Lines sent together outside prompt mode all run, as HAProxy runs them (`printf 'a\nb\n' | socat`): only
/// the first did, and the rest were dropped unanswered. `quit` ends its line's commands.
#[test]
fn runtime_api_runs_pipelined_lines_and_stops_at_quit() {
    let (one, two) = (Backend::http(|_| common::ok("one")), Backend::http(|_| common::ok("two")));
    let proxy = proxy_with(1, &[("s1", one.addr), ("s2", two.addr)]);
    let status_of = |server: &str| csv(&proxy)[&format!("nodes/{server}")]["status"].clone();
    assert_eq!(proxy.runtime("disable server nodes/s1\ndisable server nodes/s2"), "\n\n");
    assert_eq!((status_of("s1"), status_of("s2")), ("MAINT".into(), "MAINT".into()));
    assert_eq!(proxy.runtime("quit; enable server nodes/s1"), "");
    assert_eq!(status_of("s1"), "MAINT", "nothing after quit runs");
}

/// `shoal runtime` is the runtime API's client for an image without socat: the same answers as the socket
/// gives, the proxy's own `--runtime-api` setting accepted as its address, and exit 1 with the reason when
/// there is nothing to send or nothing answers.
#[test]
fn the_runtime_client_sends_a_line_and_prints_the_answer() {
    let one = Backend::http(|_| common::ok("one"));
    let proxy = proxy_with(1, &[("s1", one.addr)]);
    let api = proxy.runtime_api();
    let client = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal")).arg("runtime").args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let api_flag = api.to_string();
    let (code, out, _) = client(&["--api", &api_flag, "set", "server", "nodes/s1", "state", "drain;", "show", "stat"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("\n# pxname,svname,") && out.ends_with("\n\n"), "{out}");
    assert_eq!(csv(&proxy)["nodes/s1"]["status"], "DRAIN");
    assert_eq!(client(&["--api", &api_flag, "get weight nodes/s1"]).1, proxy.runtime("get weight nodes/s1"));
    // The proxy's setting, as SHOAL_RUNTIME_API holds it in its container: 0.0.0.0 is this host.
    let unspecified = format!("0.0.0.0:{}", api.port());
    let (code, out, _) = client(&["--api", &unspecified, "show", "info"]);
    assert!(code == Some(0) && out.starts_with("Name: shoal\n"), "{out}");

    let (code, _, err) = client(&["--api", &api_flag]);
    assert!(code == Some(1) && err.contains("give a command"), "{err}");
    let (code, _, err) = client(&["--api", &api_flag, "prompt"]);
    assert!(code == Some(1) && err.contains("interactive"), "{err}");
    let (code, _, err) = client(&["--api", "off", "show", "info"]);
    assert!(code == Some(1) && err.contains("the runtime API is \"off\""), "{err}");
    let nothing = common::free_port().to_string();
    let (code, _, err) = client(&["--api", &nothing, "show", "info"]);
    assert!(code == Some(1) && err.contains(&format!("runtime API at {nothing}")) && err.contains("refused"), "{err}");
}

/// A line whose answers pass 4 MiB is cut there with a message, the answers before it whole: they are written
/// as they are computed, so the limit counts what was sent as well as what waits.
#[test]
fn a_runtime_line_past_the_output_limit_is_cut_with_a_message() {
    // Servers nothing listens on: `show stat` lists them all the same, about 40 KiB of CSV per command.
    let addrs: Vec<SocketAddr> = (0..100).map(|_| common::free_port()).collect();
    let servers: Vec<(String, SocketAddr)> = addrs.iter().enumerate().map(|(i, a)| (format!("s{i}"), *a)).collect();
    let servers: Vec<(&str, SocketAddr)> = servers.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let proxy = proxy_with(1, &servers);
    let one = proxy.runtime("show stat");
    assert!(one.len() > 16 << 10, "one answer is {} bytes", one.len());
    let out = proxy.runtime(&"show stat;".repeat(400));
    let (answers, cut) = out.split_once("Output limit reached: the rest of the line is ignored.\n\n").expect("cut");
    assert_eq!(cut, "", "nothing follows the message");
    assert!(answers.len() > 4 << 20 && answers.len() <= (4 << 20) + 2 * one.len(), "{} bytes", answers.len());
    assert!(answers.starts_with("# pxname") && answers.ends_with("\n\n"), "whole answers only");
}

/// As HAProxy, the server is looked up before the rest of the command is read: an unknown one is named so
/// whatever follows (it got the usage text for a percentage, or the state's complaint).
#[test]
fn runtime_api_names_an_unknown_server_before_anything_else() {
    let one = Backend::http(|_| common::ok("one"));
    let proxy = proxy_with(1, &[("s1", one.addr)]);
    assert_eq!(proxy.runtime("set weight nodes/nope 50%"), "No such server.\n\n");
    assert_eq!(proxy.runtime("set server nodes/nope weight 50%"), "No such server.\n\n");
    assert_eq!(proxy.runtime("set server nodes/nope state bogus"), "No such server.\n\n");
    assert_eq!(
        proxy.runtime("set server nodes/s1 state bogus"),
        "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"
    );
    assert_eq!(proxy.runtime("set weight nodes/s1 50%"), "\n");
    assert_eq!(proxy.runtime("get weight nodes/s1"), "50 (initial 100)\n\n");
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
    // HAProxy's filters: {<iid>|<proxy>} <type> (1 frontends, 2 backends, 4 servers) <sid>, then up|no-maint.
    let rows = |filter: &str| -> Vec<String> {
        let out = proxy.runtime(&format!("show stat {filter}"));
        out.lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').take(2).collect::<Vec<_>>().join("/"))
            .collect()
    };
    assert_eq!(rows(""), ["shoal/FRONTEND", "nodes/s1", "nodes/s2", "nodes/BACKEND"]);
    assert_eq!(rows("-1 4 -1"), ["nodes/s1", "nodes/s2"]);
    assert_eq!(rows("nodes 2 -1"), ["nodes/BACKEND"]);
    assert_eq!(rows("2 -1 2"), ["nodes/s2", "nodes/BACKEND"], "by iid, one server by sid");
    assert_eq!(rows("1 -1 -1"), ["shoal/FRONTEND"]);
    assert_eq!(rows("-1 4 -1 no-maint"), ["nodes/s2"]);
    assert_eq!(rows("-1 5 -1 up"), ["shoal/FRONTEND", "nodes/s2"]);
    assert_eq!(proxy.runtime("show stat web 2 -1"), "No such proxy.\n\n");
    assert!(proxy.runtime("show stat typed").contains("CSV only"), "a format shoal lacks is refused, not ignored");
    assert!(proxy.runtime("show stat nodes").contains("usage: show stat"));

    // A value left out: the command's usage line, as HAProxy answers (the whole help before); words after
    // the server of `enable server` are ignored, as HAProxy ignores them (an unknown command before).
    assert_eq!(
        proxy.runtime("set server nodes/s1 state"),
        "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"
    );
    assert!(proxy.runtime("set server nodes/s1 weight").starts_with("Require <weight> or <weight%>"));
    assert!(proxy.runtime("set weight nodes/s1").starts_with("Require <weight> or <weight%>"));
    assert_eq!(proxy.runtime("set server nodes/nope state"), "No such server.\n\n");
    assert_eq!(proxy.runtime("enable server nodes/s1 now"), "\n");
    assert_eq!(status_of("s1"), "UP");
    assert_eq!(proxy.runtime("set server nodes/s1 state drain"), "\n");
    assert_eq!(count(&bodies(&proxy, 4), "two"), 4, "a draining s1 takes nothing new");
    assert_eq!(status_of("s1"), "DRAIN");
    assert_eq!(rows("-1 4 -1 up"), ["nodes/s1", "nodes/s2"], "a draining server is still up, as in HAProxy");

    // Two commands on one line, as HAProxy allows.
    assert_eq!(proxy.runtime("set server nodes/s1 state ready; set server nodes/s1 weight 300"), "\n\n");
    let seen = bodies(&proxy, 8);
    assert_eq!((count(&seen, "one"), count(&seen, "two")), (6, 2), "weights 300:100: {seen:?}");
    assert_eq!((status_of("s1"), csv(&proxy)["nodes/s1"]["weight"].clone()), ("UP".into(), "300".into()));

    let state = proxy.runtime("show servers state");
    let mut lines = state.lines();
    assert_eq!(lines.next(), Some("1"));
    // HAProxy 2.6.12's, captured: 25 columns.
    let header = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
                  srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state \
                  srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl \
                  srv_check_port srv_check_addr srv_agent_addr srv_agent_port";
    assert_eq!(lines.next(), Some(header));
    let s1: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!(s1.len(), 25, "{state}");
    assert_eq!((s1[1], s1[3], s1[5], s1[6], s1[7], s1[8]), ("nodes", "s1", "2", "0", "300", "100"), "{state}");
    // HAProxy's `get weight`, and weights as a percentage of the initial one.
    assert_eq!(proxy.runtime("get weight nodes/s1"), "300 (initial 100)\n\n");
    assert_eq!(proxy.runtime("set weight nodes/s1 50%; get weight nodes/s1"), "\n50 (initial 100)\n\n");
    assert_eq!(
        proxy.runtime("set weight nodes/s1 184467440737095517%; get weight nodes/s1"),
        "\n65535 (initial 100)\n\n"
    );
    assert_eq!(proxy.runtime("set server nodes/s1 weight 300"), "\n");
    assert_eq!(proxy.runtime("get weight nodes/nope"), "No such server.\n\n");
    let port = one.addr.port().to_string();
    assert_eq!((s1[4], s1[17], s1[18]), ("127.0.0.1", "-", port.as_str()), "address, no FQDN, port: {state}");

    assert_eq!(proxy.runtime("disable server nodes/s2"), "\n");
    assert_eq!(count(&bodies(&proxy, 3), "one"), 3);
    assert_eq!(proxy.runtime("enable server nodes/s2"), "\n");

    assert_eq!(proxy.runtime("set server nodes/nope state maint"), "No such server.\n\n");
    assert_eq!(proxy.runtime("set server other/s1 state maint"), "No such backend.\n\n");
    assert!(proxy.runtime("set server nodes/s1 state sleepy").contains("expects 'ready', 'drain' and 'maint'"));
    assert!(proxy.runtime("bogus").starts_with("Unknown command: 'bogus'"));
    let long = format!("set server nodes/s1 state maint {}; show stat", "x".repeat(5000));
    assert_eq!(proxy.runtime(&long), "Line too long.\n\n", "nothing of an over-long line is run");
    // A byte that is not UTF-8 gets an answer, not a silent close.
    let raw = |bytes: &[u8]| {
        let mut stream = std::net::TcpStream::connect(proxy.runtime_api()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(bytes).unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    };
    assert_eq!(raw(b"set server nodes/caf\xe9 state maint\n"), "No such server.\n\n");
    // One line is due within 5 s outside a prompt session: an idle client is let go, with nothing run.
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(proxy.runtime_api()).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(silent.read(&mut [0u8; 16]).unwrap(), 0, "closed without an answer");
    assert!(started.elapsed() < WAIT, "a silent client held a session for {:?}", started.elapsed());
    assert_eq!(status_of("s1"), "UP");

    // Interactive: a prompt after each answer until quit.
    let session = proxy.runtime("prompt\nshow info\nquit");
    // As HAProxy 2.6 answers `prompt\nshow info\nquit` (captured): "\n> Name: HAProxy\n...Tainted: 0\n\n> ".
    assert!(session.starts_with("\n> Name: shoal\n") && session.ends_with("\n\n> "), "{session:?}");
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
    assert_eq!(
        (num(s1, "wretr"), num(s1, "stot")),
        (0, 0),
        "s1 answered nothing: no session, and no retry here: {s1:?}"
    );
    assert_eq!(proxy.metric("shoal_server_redispatches_total{server=\"s1\"}"), 1);
    // The retry left s1 for s2: a redispatch, counted on s1 (HAProxy's wredis, not wretr) and on the backend.
    assert_eq!((num(s1, "wredis"), num(&rows["nodes/s2"], "wredis"), num(&rows["nodes/BACKEND"], "wredis")), (1, 0, 1));
    assert_eq!((num(s2, "econ"), num(s2, "stot"), num(s2, "hrsp_5xx")), (1, 0, 0), "s2 was never reached: {s2:?}");
    assert_eq!(num(&rows["shoal/FRONTEND"], "hrsp_5xx"), 1);
    // The proxy's own 503 is the backend's (HAProxy counts every response of a stream routed to it), though no
    // server answered it.
    let be = &rows["nodes/BACKEND"];
    assert_eq!((num(be, "hrsp_5xx"), num(be, "req_tot"), num(be, "stot"), num(be, "econ")), (1, 1, 1, 1), "{be:?}");
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

/// A server's `req_tot` and `hrsp_*` count the answers it gave. The proxy's own 502, to a server that closed
/// without one, and an exchange with no answer at all (a client gone mid-upload: HAProxy's -1, `hrsp_other`)
/// are the backend's and the frontend's, as HAProxy 2.6 counts them (measured beside it: s1 `hrsp_5xx` 0,
/// BACKEND 1). The server counted the 502 before, and nobody counted the -1.
#[test]
fn a_servers_rows_count_its_own_answers_and_the_proxys_are_the_backends() {
    let silent = Backend::raw(|stream, _| {
        let mut w = common::Wire::new(stream);
        // Reads the head, then closes without an answer (or, for an upload, waits for the client to go).
        if let Some(head) = w.read_head() {
            if String::from_utf8_lossy(&head).starts_with("POST") {
                let _ = w.stream.read(&mut [0u8; 16]);
                std::thread::park_timeout(WAIT);
            }
        }
    });
    let proxy = proxy_with(1, &[("s1", silent.addr)]);
    let mut w = common::Wire::connect(proxy.addr);
    w.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc");
    drop(w);
    let mut w = common::Wire::connect(proxy.addr);
    w.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(w.read_response(false).unwrap().status(), 502);
    let rows = csv_after(&proxy, 2);
    let (s1, be, fe) = (&rows["nodes/s1"], &rows["nodes/BACKEND"], &rows["shoal/FRONTEND"]);
    assert_eq!(
        (num(s1, "hrsp_5xx"), num(s1, "hrsp_other"), num(s1, "req_tot"), num(s1, "stot")),
        (0, 0, 0, 2),
        "{s1:?}"
    );
    assert_eq!((num(be, "hrsp_5xx"), num(be, "hrsp_other"), num(be, "req_tot")), (1, 1, 2), "{be:?}");
    assert_eq!((num(fe, "hrsp_5xx"), num(fe, "hrsp_other")), (1, 1), "{fe:?}");
}

/// The columns a row of `csv` fills, by the kind of row (FRONTEND, BACKEND or server) of proxy `pxname`
/// (frontend rows) and `backend` (the others).
fn filled_by_kind(csv: &str, frontend: &str, backend: &str) -> HashMap<&'static str, BTreeSet<String>> {
    let mut lines = csv.lines();
    let header: Vec<String> = lines.next().unwrap().trim_start_matches("# ").split(',').map(str::to_string).collect();
    let mut kinds = HashMap::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let kind = match (cells[0], cells[1]) {
            (px, "FRONTEND") if px == frontend => "frontend",
            (px, "BACKEND") if px == backend => "backend",
            (px, _) if px == backend => "server",
            _ => continue,
        };
        let filled = header.iter().zip(&cells).filter(|(_, v)| !v.is_empty()).map(|(c, _)| c.clone());
        kinds.insert(kind, filled.collect());
    }
    kinds
}

#[test]
fn every_csv_cell_haproxy_fills_is_filled_except_the_listed_ones() {
    // Rows HAProxy 2.6.12 printed for `fe` -> `be` (one server, 3 GETs), captured with its stats page.
    let haproxy =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/haproxy-2.6-show-stat-rows.csv"))
            .unwrap();
    let haproxy = filled_by_kind(&haproxy, "fe", "be");
    let backend = Backend::echo_path();
    // One thread: one pool, so which connections are reused is certain.
    let proxy = Proxy::start(&["--backend", &format!("web1={}", backend.addr), "--threads", "1"]);
    // Two GETs and a POST with a 100-byte chunked body, a chunk extension and a trailer (both dropped on the
    // way to the server): `bin` counts every request byte the client sent.
    let post = format!(
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n64;ext=1\r\n{}\r\n0\r\nX-T: y\r\n\r\n",
        "b".repeat(100)
    );
    let requests = ["GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n".into(), post];
    for raw in &requests {
        assert_eq!(common::request(proxy.addr, raw.as_bytes()).status(), 200);
    }
    let rows = csv_after(&proxy, 3);
    let sent: usize = requests.iter().map(String::len).sum();
    assert_eq!(num(&rows["shoal/FRONTEND"], "bin"), sent as u64, "bytes in, as the client sent them");
    assert_eq!(num(&rows["nodes/web1"], "bin"), sent as u64);
    assert_eq!(proxy.metric("shoal_frontend_bytes_in_total"), sent as u64);
    let shoal = filled_by_kind(&admin_get(&proxy, "/;csv").1, "shoal", "nodes");
    // What shoal has no value for, and why. HTTP/2 and HAProxy's per-mux h1_* counters are not in the list:
    // shoal speaks HTTP/1.1 only and keeps no per-mux counters.
    let not_kept = |kind: &str| -> BTreeSet<String> {
        let columns: &[&str] = match kind {
            "frontend" => &[],
            // srv_icur, idle_conn_cur, safe_conn_cur, used_conn_cur, need_conn_est: idle pools are per thread,
            // not per server.
            "server" => &["srv_icur", "idle_conn_cur", "safe_conn_cur", "used_conn_cur", "need_conn_est"],
            // slim: no fullconn; agg_*: no aggregated status codes.
            "backend" => &["slim", "agg_server_status", "agg_server_check_status", "agg_check_status"],
            _ => unreachable!(),
        };
        columns.iter().map(|c| c.to_string()).collect()
    };
    for kind in ["frontend", "server", "backend"] {
        let missing: BTreeSet<String> = haproxy[kind]
            .difference(&shoal[kind])
            .filter(|c| !c.starts_with("h1_") && !c.starts_with("h2_"))
            .cloned()
            .collect();
        assert_eq!(missing, not_kept(kind), "{kind} rows: the cells HAProxy fills that shoal leaves empty");
    }
    // Three requests on three client connections, one pooled server connection: 1 connect, 2 reuses.
    let server = &rows["nodes/web1"];
    assert_eq!((num(server, "connect"), num(server, "reuse")), (1, 2), "{server:?}");
    let metric = |name: &str| proxy.metric(&format!("shoal_server_{name}_total{{server=\"web1\"}}"));
    assert_eq!((metric("connects"), metric("reuses")), (1, 2));
    assert_eq!(num(&rows["shoal/FRONTEND"], "conn_tot"), 3);
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

/// The CSV's `qtime`..`ttime` and `*_max` columns, the page's percentiles and Prometheus' histograms, for a
/// server that makes every client wait 150 ms and one that answers at once.
#[test]
fn latencies_show_which_server_made_clients_wait() {
    const SLOW_MS: u64 = 150;
    let slow = Backend::http(|_| {
        std::thread::sleep(std::time::Duration::from_millis(SLOW_MS));
        common::ok("slow")
    });
    let fast = Backend::http(|_| common::ok("fast"));
    let proxy = proxy_with(2, &[("slow", slow.addr), ("fast", fast.addr)]);
    let bodies = bodies(&proxy, 8);
    let waited = count(&bodies, "slow") as u64;
    assert!(waited > 0 && waited < 8, "round robin sent requests to both: {bodies:?}");

    // Latencies are published a moment after the counters, by each thread in turn, and a page read while one
    // publishes may show a request in one histogram and not yet in another: wait until the frontend's and the
    // servers' response counts all cover the 8 requests.
    let start = Instant::now();
    let metrics = loop {
        let (_, metrics) = admin_get(&proxy, "/metrics");
        let count = |prefix: &str| -> u64 {
            metrics
                .lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter_map(|rest| rest.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        let frontend = count("shoal_frontend_total_seconds_count{frontend=\"http\"}");
        let servers = count("shoal_server_response_seconds_count{");
        if (frontend, servers) == (8, 8) {
            break metrics;
        }
        assert!(start.elapsed() < WAIT, "latencies never covered 8 requests:\n{metrics}");
    };
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("shoal_server_response_seconds_count{server=\"slow\"}") as u64, waited);
    assert_eq!(value("shoal_server_response_seconds_bucket{server=\"slow\",le=\"0.1\"}"), 0.0, "none under 100 ms");
    assert_eq!(value("shoal_server_response_seconds_bucket{server=\"slow\",le=\"+Inf\"}") as u64, waited);
    assert!(value("shoal_server_response_seconds_sum{server=\"slow\"}") >= waited as f64 * SLOW_MS as f64 / 1e3);
    assert_eq!(value("shoal_server_queue_seconds_count{server=\"fast\"}") as u64, 8 - waited);
    assert_eq!(value("shoal_frontend_total_seconds_count{frontend=\"http\"}"), 8.0);

    let rows = csv_after(&proxy, 8);
    let (s, f, be) = (&rows["nodes/slow"], &rows["nodes/fast"], &rows["nodes/BACKEND"]);
    for column in ["rtime", "ttime", "rtime_max", "ttime_max"] {
        assert!(num(s, column) >= SLOW_MS, "slow {column} = {}", s[column]);
        assert!(num(f, column) < num(s, column), "fast {column} = {} vs slow {}", f[column], s[column]);
    }
    assert_eq!((num(s, "qtime"), num(s, "qtime_max")), (0, 0), "no maxconn, no queue");
    assert_eq!(num(be, "rtime_max"), num(s, "rtime_max"), "the backend's maximum is its slowest server's");
    assert!(num(be, "rtime") < num(s, "rtime") && num(be, "rtime") > num(f, "rtime"), "an average of both: {be:?}");
    assert_eq!(rows["shoal/FRONTEND"]["rtime"], "", "HAProxy leaves frontends' latencies empty");

    let (_, page) = admin_get(&proxy, "/");
    let slow_row = page.split("<tr").find(|r| r.contains("slow (")).expect("a row for the slow server");
    let p50 = slow_row.split("class=\"latency\"").nth(1).expect("latency cells").trim_start_matches('>');
    let p50_ms: f64 = p50[..p50.find(' ').unwrap()].parse().unwrap_or_else(|_| panic!("{slow_row}"));
    assert!(p50_ms >= SLOW_MS as f64, "p50 of the slow server on the page: {slow_row}");
}

/// Rates (`rate`, `req_rate` and their maxima) are sampled once a second: under a steady trickle of requests
/// they show up, and never exceed what was sent.
#[test]
fn rates_show_requests_per_second() {
    let backend = Backend::http(|_| common::ok("ok"));
    let proxy = proxy_with(1, &[("s1", backend.addr)]);
    let start = Instant::now();
    let mut sent = 0u64;
    let rows = loop {
        for _ in 0..20 {
            assert_eq!(common::get(proxy.addr, "/").status(), 200);
            sent += 1;
        }
        let rows = csv(&proxy);
        let shown = ["req_rate_max", "rate_max"].map(|c| num(&rows["shoal/FRONTEND"], c));
        if shown.iter().all(|&v| v > 0) && num(&rows["nodes/s1"], "rate_max") > 0 {
            break rows;
        }
        assert!(start.elapsed() < WAIT, "no rate after {sent} requests: {:?}", rows["shoal/FRONTEND"]);
    };
    let (fe, s1) = (&rows["shoal/FRONTEND"], &rows["nodes/s1"]);
    assert!(num(fe, "req_rate_max") <= sent && num(s1, "rate_max") <= sent, "{fe:?}\n{s1:?}");
    assert!(num(fe, "req_rate") <= num(fe, "req_rate_max"));
    assert!(num(s1, "lastsess") <= 1, "a request within the last sample: {}", s1["lastsess"]);
    assert_eq!((num(s1, "chkdown"), num(s1, "downtime")), (0, 0));
    assert_eq!(s1["cli_abrt"], "0");
}

/// A backend answering `/health` with the status the returned cell holds (200 to begin with), anything else
/// 200 `checked`.
fn health_answering() -> (Backend, std::sync::Arc<std::sync::atomic::AtomicU16>) {
    use std::sync::atomic::{AtomicU16, Ordering};
    let answer = std::sync::Arc::new(AtomicU16::new(200));
    let code = answer.clone();
    let checked = Backend::http(move |req| {
        if req.start_line().contains("/health") {
            let code = code.load(Ordering::SeqCst);
            return format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").into_bytes();
        }
        common::ok("checked")
    });
    (checked, answer)
}

/// The proxy's own health checks of static servers fill HAProxy's check columns: `check_status`,
/// `check_code`, `check_duration`, `check_desc`, `last_chk` and `chkfail`.
#[test]
fn check_columns_tell_what_the_last_health_check_found() {
    use std::sync::atomic::Ordering;
    let (checked, answer) = health_answering();
    let dead = common::refused_port();
    let proxy = Proxy::start(&[
        "--backend",
        &format!("checked={}", checked.addr),
        "--backend",
        &format!("dead={}", dead.addr),
        "--backend-check-path",
        "/health",
        "--backend-check-interval",
        "500ms",
        "--backend-fall",
        "2",
    ]);
    let rows = csv_once(&proxy, "a passing check", |rows| rows["nodes/checked"]["check_status"] == "L7OK");
    // show servers state's check columns, in HAProxy 2.6's codes: status L7OKD (15), result passed (3), health
    // rise + fall - 1 (default rise 2, fall 2), state configured and enabled (6), no agent.
    let columns = |name: &str| {
        let state = proxy.runtime("show servers state");
        let row = state.lines().find(|l| l.split(' ').nth(3) == Some(name)).unwrap_or_else(|| panic!("{state}"));
        row.split(' ').skip(10).take(5).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(columns("checked"), "15 3 3 6 0");
    let (ok, down) = (&rows["nodes/checked"], &rows["nodes/dead"]);
    let health =
        |row: &HashMap<String, String>| ["check_rise", "check_fall", "check_health"].map(|c| row[c].clone()).join(" ");
    assert_eq!(health(ok), "2 2 3", "rise 2, fall 2, health at the top");
    assert_eq!((ok["check_code"].as_str(), ok["check_desc"].as_str()), ("200", "Layer7 check passed"));
    assert!(num(ok, "check_duration") < 500, "within the interval: {}", ok["check_duration"]);
    assert_eq!(num(ok, "chkfail"), 0);
    let down = if down["status"] != "DOWN" {
        csv_once(&proxy, "the dead server's check", |rows| rows["nodes/dead"]["status"] == "DOWN")["nodes/dead"].clone()
    } else {
        down.clone()
    };
    assert_eq!((down["check_status"].as_str(), down["check_code"].as_str()), ("L4CON", ""), "{down:?}");
    assert!(down["last_chk"].contains("connect"), "the reason: {}", down["last_chk"]);
    // As HAProxy's, a server starts UP one failure from DOWN; failures at the bottom are not counted.
    assert_eq!((down["status"].as_str(), health(&down).as_str(), down["chkfail"].as_str()), ("DOWN", "2 2 0", "1"));

    answer.store(503, Ordering::SeqCst);
    let rows = csv_once(&proxy, "a failing check counted", |rows| {
        rows["nodes/checked"]["status"] == "DOWN" && rows["nodes/checked"]["check_status"] == "L7STS"
    });
    let failing = &rows["nodes/checked"];
    assert_eq!((failing["check_code"].as_str(), failing["last_chk"].as_str()), ("503", "status 503"));
    assert_eq!(num(failing, "chkfail"), 2, "fall 2: two failures took it down, later ones are not counted");
    assert_eq!(health(failing), "2 2 0");
    let page = admin_get(&proxy, "/").1;
    assert!(page.contains("L7STS/503 in "), "the page's last check column");
    // The runtime API's `show servers state` lists it too, stopped (srv_op_state 0).
    let state = proxy.runtime("show servers state");
    let row = state.lines().find(|l| l.split(' ').nth(3) == Some("checked")).unwrap_or_else(|| panic!("{state}"));
    assert_eq!(row.split(' ').nth(5), Some("0"), "{row}");
    assert_eq!(columns("checked"), "17 2 0 6 0", "L7STS, failed, health 0");
}

/// Between two verdicts the status says how far a checked server is, as HAProxy's: `UP 2/3` after one failed
/// check of `fall` 3, `UP 1/3` after two, `DOWN 1/2` after one passing check of `rise` 2 (it read UP or DOWN).
#[test]
fn the_status_of_a_checked_server_shows_its_way_up_and_down() {
    use std::sync::atomic::Ordering;
    let (checked, answer) = health_answering();
    let proxy = Proxy::start(&[
        "--backend",
        &format!("checked={}", checked.addr),
        "--backend-check-path",
        "/health",
        "--backend-check-interval",
        "1s",
        "--backend-fall",
        "3",
    ]);
    let status = |rows: &Rows| rows["nodes/checked"]["status"].clone();
    csv_once(&proxy, "UP at the top, after a passing check", |rows| {
        status(rows) == "UP" && rows["nodes/checked"]["check_status"] == "L7OK"
    });
    answer.store(503, Ordering::SeqCst);
    for step in ["UP 2/3", "UP 1/3", "DOWN"] {
        csv_once(&proxy, step, |rows| status(rows) == step);
    }
    answer.store(200, Ordering::SeqCst);
    for step in ["DOWN 1/2", "UP"] {
        csv_once(&proxy, step, |rows| status(rows) == step);
    }
}

/// `smax`: the most requests a server had in flight at once, and the most client connections at once.
#[test]
fn smax_remembers_the_most_requests_in_flight_at_once() {
    let (backend, release) = Backend::gated("slow", "fast");
    let proxy = proxy_with(2, &[("s1", backend.addr)]);
    let addr = proxy.addr;
    let held: Vec<_> = (0..3).map(|_| std::thread::spawn(move || common::get(addr, "/slow"))).collect();
    backend.wait_requests(3);
    let rows = csv(&proxy);
    assert_eq!((num(&rows["nodes/s1"], "scur"), num(&rows["nodes/s1"], "smax")), (3, 3));
    for _ in 0..3 {
        release.send(()).unwrap();
    }
    for h in held {
        assert_eq!(h.join().unwrap().status(), 200);
    }
    assert_eq!(common::get(proxy.addr, "/").status(), 200);
    // A request leaves the server's in-flight count just after it is counted and logged.
    let rows = csv_once(&proxy, "4 requests counted and none in flight", |rows| {
        num(&rows["shoal/FRONTEND"], "req_tot") == 4 && num(&rows["nodes/s1"], "scur") == 0
    });
    assert_eq!(num(&rows["nodes/s1"], "smax"), 3, "the peak stays");
    assert_eq!(num(&rows["nodes/BACKEND"], "smax"), 3, "the backend's peak too");
    assert!(num(&rows["shoal/FRONTEND"], "smax") >= 3, "three clients at once: {:?}", rows["shoal/FRONTEND"]);
}
