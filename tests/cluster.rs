//! Gossip membership with real processes on loopback: agents join through any member, traffic follows
//! membership, start order does not matter, and the cluster key keeps strangers out.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Agent, Backend, Proxy, WAIT};

/// Polls GET / until it answers 200 from a backend (bounded); returns how long routing took.
fn wait_routed(proxy: &Proxy, body_contains: &str) -> Duration {
    let start = Instant::now();
    loop {
        let r = common::get(proxy.addr, "/");
        if r.status() == 200 && r.body_str().contains(body_contains) {
            return start.elapsed();
        }
        assert!(start.elapsed() < WAIT, "never routed to {body_contains}: last {}", r.status());
        std::thread::yield_now();
    }
}

fn named_backend(name: &'static str) -> Backend {
    Backend::http(move |_| common::ok(name))
}

#[test]
fn an_agent_joins_then_leaves_and_traffic_follows() {
    let app = named_backend("app-a");
    let proxy = Proxy::start(&[]);
    assert_eq!(common::get(proxy.addr, "/").status(), 503, "no backend before the join");
    let agent = Agent::start(&app.arg(), &proxy.gossip(), &["--name", "a"]);
    let took = wait_routed(&proxy, "app-a");
    eprintln!("join to first routed request: {took:?}");
    proxy.stderr.wait_for("member up", |l| l.contains("member up: a "));

    let mut agent = agent;
    agent.signal(libc::SIGTERM);
    proxy.stderr.wait_for("member down", |l| l.contains("member down: a "));
    // Waits on the outcome itself: an earlier "0 servers" line (state before member-up) says nothing here.
    let start = Instant::now();
    while common::get(proxy.addr, "/").status() != 503 {
        assert!(start.elapsed() < WAIT, "a member that left still gets traffic");
        std::thread::yield_now();
    }
    // Leaving on purpose is not a fault: no warning, from the agent or the proxy.
    assert!(agent.wait_exit().success());
    agent.stderr.wait_for("the leave", |l| l.contains("left the cluster"));
    let mut proxy = proxy;
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success());
    proxy.stderr.wait_for("the stop", |l| l.contains("stopped"));
    for line in agent.stderr.all().iter().chain(proxy.stderr.all().iter()) {
        assert!(!line.contains(" WARN ") && !line.contains(" ERROR "), "a clean stop logged: {line}");
    }
}

#[test]
fn members_over_the_limit_wait_with_a_log_line_until_one_leaves() {
    let (a, b, c) = (named_backend("a"), named_backend("b"), named_backend("c"));
    let proxy = Proxy::start(&["--max-members", "2"]);
    let first = Agent::start(&a.arg(), &proxy.gossip(), &["--name", "a"]);
    let _second = Agent::start(&b.arg(), &proxy.gossip(), &["--name", "b"]);
    wait_routed(&proxy, "a");
    wait_routed(&proxy, "b");
    let _third = Agent::start(&c.arg(), &proxy.gossip(), &["--name", "c"]);
    proxy.stderr.wait_for("the limit logged", |l| l.contains("member limit of 2 reached: ignoring c "));
    assert!((0..6).all(|_| common::get(proxy.addr, "/").body_str() != "c"), "a member over the limit got traffic");
    first.signal(libc::SIGTERM);
    proxy.stderr.wait_for("the first gone", |l| l.contains("member down: a "));
    wait_routed(&proxy, "c");
}

#[test]
fn a_wrong_cluster_key_is_ignored() {
    let app = named_backend("keyed");
    let (right, wrong) = (common::keygen(), common::keygen());
    let proxy = Proxy::start(&["--cluster-key", &right]);
    let _stranger = Agent::start(&app.arg(), &proxy.gossip(), &["--cluster-key", &wrong, "--name", "stranger"]);
    proxy.stderr.wait_for("rejected packets", |l| l.contains("a key this node does not hold"));
    assert_eq!(common::get(proxy.addr, "/").status(), 503);
    let _friend = Agent::start(&app.arg(), &proxy.gossip(), &["--cluster-key", &right, "--name", "friend"]);
    wait_routed(&proxy, "keyed");
    assert!(proxy.stderr.all().iter().all(|l| !l.contains("member up: stranger")));
}

#[test]
fn start_order_does_not_matter() {
    let app = named_backend("early");
    // The agent starts first, joining a proxy that does not exist yet.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gossip = format!("127.0.0.1:{port}");
    let _agent = Agent::start(&app.arg(), &gossip, &["--name", "early"]);
    let proxy = Proxy::start(&["--gossip", &gossip]);
    wait_routed(&proxy, "early");
    // The proxy restarts under the running agent: a new identity on the same address is found again.
    drop(proxy);
    let proxy = Proxy::start(&["--gossip", &gossip]);
    wait_routed(&proxy, "early");
    // A second proxy joining through the first sees the same backend.
    let second = Proxy::start(&["--join", &gossip]);
    wait_routed(&second, "early");
}

/// A real app process that can be killed: Python's http.server serving a file naming it.
struct App {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl App {
    fn start(name: &str) -> App {
        let port = common::free_port().port();
        let dir = std::env::temp_dir().join(format!("shoal-app-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), name).unwrap();
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "-d", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "app did not start");
            std::thread::yield_now();
        }
        App { child, port, _dir: dir }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[test]
fn a_killed_node_leaves_rotation_without_failed_requests() {
    let proxy = Proxy::start(&["--access-log", "off"]);
    let mut doomed_app = App::start("doomed");
    let survivor_app = App::start("survivor");
    let mut doomed = Agent::start(&doomed_app.addr(), &proxy.gossip(), &["--name", "doomed"]);
    let _survivor = Agent::start(&survivor_app.addr(), &proxy.gossip(), &["--name", "survivor"]);
    wait_routed(&proxy, "doomed");
    wait_routed(&proxy, "survivor");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), proxy.addr);
        std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let r = common::get(addr, "/");
                let counter = if r.status() == 200 { &ok } else { &failed };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let killed = Instant::now();
    doomed.child.kill().unwrap();
    doomed_app.child.kill().unwrap();
    let _ = (doomed.child.wait(), doomed_app.child.wait());
    proxy.stderr.wait_for("failure detected", |l| l.contains("member down: doomed "));
    eprintln!("kill to removal: {:?}", killed.elapsed());
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert!(ok.load(Ordering::SeqCst) > 0);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed while the dead node was still a member");
    assert_eq!(common::get(proxy.addr, "/").body_str(), "survivor");
}

/// Waits until the file at `path` holds a line satisfying `pred`.
fn wait_file_line(path: &std::path::Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| pred(l)) {
            return l.to_string();
        }
        assert!(start.elapsed() < WAIT, "no {what} in {}:\n{text}", path.display());
        std::thread::yield_now();
    }
}

#[test]
fn on_event_handlers_get_serf_style_lines() {
    let log = std::env::temp_dir().join(format!("shoal-events-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let handler = format!(
        "while IFS= read -r line; do printf '%s\\t%s\\n' \"$SHOAL_EVENT\" \"$line\"; done >> {}",
        log.display()
    );
    let proxy = Proxy::start(&["--on-event", &handler]);
    let app = named_backend("ev");
    let agent = Agent::start(&app.arg(), &proxy.gossip(), &["--name", "ev1", "--tag", "role=web", "--tag", "dc=lab"]);
    wait_file_line(&log, "join", |l| l.starts_with("member-join\tev1\t127.0.0.1\tbackend\t"));
    wait_file_line(&log, "tags", |l| l.ends_with("ev1\t127.0.0.1\tbackend\trole=web,dc=lab"));

    agent.signal(libc::SIGTERM);
    wait_file_line(&log, "leave", |l| l.starts_with("member-leave\tev1\t127.0.0.1\tbackend"));

    let mut doomed = Agent::start(&app.arg(), &proxy.gossip(), &["--name", "ev2"]);
    wait_file_line(&log, "second join", |l| l.starts_with("member-join\tev2\t"));
    doomed.child.kill().unwrap();
    let _ = doomed.child.wait();
    wait_file_line(&log, "failure", |l| l.starts_with("member-failed\tev2\t127.0.0.1\tbackend"));
    let _ = std::fs::remove_file(&log);
}

/// The cluster key and the admin password reach shoal through its environment; a handler it runs does not
/// inherit them (the supervised app never did).
#[test]
fn event_handlers_do_not_inherit_the_secrets() {
    let log = std::env::temp_dir().join(format!("shoal-event-env-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let handler = format!(
        "cat > /dev/null; printf 'key=%s auth=%s\\n' \"${{SHOAL_CLUSTER_KEY-unset}}\" \"${{SHOAL_ADMIN_AUTH-unset}}\" >> {}",
        log.display()
    );
    let key = common::keygen();
    let proxy =
        Proxy::start_with(&["--on-event", &handler], &[("SHOAL_CLUSTER_KEY", &key), ("SHOAL_ADMIN_AUTH", "u:p")]);
    let app = named_backend("env");
    let _agent = Agent::start(&app.arg(), &proxy.gossip(), &["--name", "env1", "--cluster-key", &key]);
    let line = wait_file_line(&log, "the handler's line", |l| l.starts_with("key="));
    assert_eq!(line, "key=unset auth=unset");
    let _ = std::fs::remove_file(&log);
}

/// Absent, or a zombie waiting for whoever adopted it.
fn process_gone(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

#[test]
fn a_hung_event_handler_is_killed_with_its_children_and_later_events_still_run() {
    let dir = std::env::temp_dir().join(format!("shoal-hung-handler-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (hung, log) = (dir.join("hung"), dir.join("events.log"));
    // The first run starts a child of its own and hangs without reading its input; later runs log theirs.
    let handler = format!(
        "if [ ! -e {hung} ]; then sleep 3600 & echo \"$$ $!\" > {hung}.tmp; mv {hung}.tmp {hung}; exec sleep 3600; fi; \
         while IFS= read -r line; do printf '%s\\t%s\\n' \"$SHOAL_EVENT\" \"$line\"; done >> {log}",
        hung = hung.display(),
        log = log.display()
    );
    let proxy = Proxy::start(&["--on-event", &handler, "--on-event-timeout", "1s"]);
    let app = named_backend("hh");
    let _first = Agent::start(&app.arg(), &proxy.gossip(), &["--name", "hh1"]);
    wait_until("the first run hanging", || hung.exists());
    let pids = std::fs::read_to_string(&hung).unwrap();
    proxy.stderr.wait_for("the hung handler killed", |l| {
        l.contains("event handler for member-join still running after 1s") && l.contains("killed")
    });
    for pid in pids.split_whitespace() {
        wait_until("the handler and its child gone", || process_gone(pid));
    }
    let _second = Agent::start(&app.arg(), &proxy.gossip(), &["--name", "hh2"]);
    wait_file_line(&log, "the next join", |l| l.starts_with("member-join\thh2\t127.0.0.1\tbackend"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restart_on_the_same_address_replaces_the_old_identity() {
    let old_app = named_backend("old-app");
    let new_app = named_backend("new-app");
    let proxy = Proxy::start(&[]);
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gossip = format!("127.0.0.1:{port}");
    let mut first = Agent::start(&old_app.arg(), &proxy.gossip(), &["--gossip", &gossip, "--name", "node"]);
    wait_routed(&proxy, "old-app");
    // Killed without a word, and back at once on the same address with a new service: the newer generation
    // wins, so the old app (still up here) gets nothing more.
    first.child.kill().unwrap();
    let _ = first.child.wait();
    let _second = Agent::start(&new_app.arg(), &proxy.gossip(), &["--gossip", &gossip, "--name", "node"]);
    wait_routed(&proxy, "new-app");
    for _ in 0..6 {
        assert_eq!(common::get(proxy.addr, "/").body_str(), "new-app");
    }
}

#[test]
fn weights_from_agents_share_traffic() {
    let heavy = named_backend("heavy");
    let light = named_backend("light");
    // One thread: one round-robin cursor, so the shares are exact over whole cycles.
    let proxy = Proxy::start(&["--threads", "1"]);
    let _a = Agent::start(&heavy.arg(), &proxy.gossip(), &["--name", "heavy", "--weight", "300"]);
    let _b = Agent::start(&light.arg(), &proxy.gossip(), &["--name", "light", "--weight", "100"]);
    proxy.stderr.wait_for("both members in the set", |l| l.contains("backend set now has 2 servers"));
    let bodies: Vec<String> = (0..400).map(|_| common::get(proxy.addr, "/").body_str()).collect();
    let heavy_share = bodies.iter().filter(|b| *b == "heavy").count();
    let light_share = bodies.iter().filter(|b| *b == "light").count();
    assert_eq!((heavy_share, light_share), (300, 100), "weights 300:100 over 400 requests");
}

fn frontend_requests(proxy: &Proxy) -> u64 {
    let text = common::get(proxy.admin(), "/metrics").body_str();
    let line = text.lines().find(|l| l.starts_with("shoal_frontend_requests_total ")).expect("metric");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn wrk_sees_no_error_while_a_node_and_its_app_are_killed() {
    let proxy = Proxy::start(&["--access-log", "off"]);
    let (_survivor_app, survivor) = common::webapp("survivor");
    let _survivor = Agent::start(&survivor, &proxy.gossip(), &["--name", "survivor"]);
    wait_routed(&proxy, "\"host\":\"survivor\"");
    for run in 1..=10 {
        let name = format!("doomed{run}");
        let (mut app, addr) = common::webapp(&name);
        let mut agent = Agent::start(&addr, &proxy.gossip(), &["--name", &name]);
        wait_routed(&proxy, &format!("\"host\":\"{name}\""));
        let url = format!("http://{}/", proxy.addr);
        let wrk = Command::new("wrk")
            .args(["-t2", "-c50", "-d2s", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wrk (apt-get install wrk)");
        // Killed while wrk's load flows.
        let before = frontend_requests(&proxy);
        let start = Instant::now();
        while frontend_requests(&proxy) < before + 1000 {
            assert!(start.elapsed() < WAIT, "wrk's load never reached the proxy");
            std::thread::yield_now();
        }
        agent.child.kill().unwrap();
        app.kill().unwrap();
        let _ = (agent.child.wait(), app.wait());
        let out = wrk.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        eprintln!("run {run}: {}", report.lines().find(|l| l.contains("requests in")).unwrap_or("?").trim());
        assert!(out.status.success() && report.contains("requests in"), "wrk failed: {report}");
        assert!(!report.contains("Non-2xx"), "run {run}: non-2xx responses while {name} was killed:\n{report}");
        assert!(!report.contains("Socket errors"), "run {run}: socket errors while {name} was killed:\n{report}");
    }
}

/// `shoal members --admin ADDR` with `extra` flags: its stdout.
fn members(proxy: &Proxy, extra: &[&str]) -> String {
    let out = common::shoal().args(["members", "--admin", &proxy.admin().to_string()]).args(extra).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `SHOAL_ADMIN` as the proxy's own environment spells it (`docker exec ha shoal members`): a listen address
/// such as `:1936` or `0.0.0.0:1936` reaches this host's admin side; `off` says why there is nothing to ask.
#[test]
fn shoal_members_takes_the_admin_setting_as_the_proxy_spells_it() {
    let proxy = Proxy::start(&[]);
    let port = proxy.admin().port();
    for spelled in [format!(":{port}"), format!("0.0.0.0:{port}")] {
        let out = common::shoal().args(["members"]).env("SHOAL_ADMIN", &spelled).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && stdout.contains(" balancer"), "{spelled}: {stdout}{stderr}");
    }
    let out = common::shoal().args(["members"]).env("SHOAL_ADMIN", "off").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("the admin listener is \"off\""), "{stderr}");
}

#[test]
fn shoal_members_lists_proxy_and_agents_with_roles_tags_and_states_and_agrees_with_the_page() {
    let proxy = Proxy::start(&[]);
    let (_blue_app, blue) = common::webapp("blue");
    let (_green_app, green) = common::webapp("green");
    let _blue = Agent::start(&blue, &proxy.gossip(), &["--name", "blue", "--tag", "color=blue"]);
    let mut green_agent = Agent::start(&green, &proxy.gossip(), &["--name", "green", "--tag", "color=green"]);
    proxy.stderr.wait_for("both members in the set", |l| l.contains("backend set now has 2 servers"));
    // Tags come with each member's state broadcast, a moment after it joins.
    let start = Instant::now();
    while !(members(&proxy, &[]).contains("color=blue") && members(&proxy, &[]).contains("color=green")) {
        assert!(start.elapsed() < WAIT, "tags never arrived:\n{}", members(&proxy, &[]));
        std::thread::sleep(Duration::from_millis(50));
    }
    let table = members(&proxy, &[]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("Node") && lines.len() == 4, "the proxy and two agents:\n{table}");
    assert!(
        lines.iter().any(|l| l.contains(" balancer")),
        "the proxy itself, role `balancer` as event handlers see it:\n{table}"
    );
    for (name, app) in [("blue", &blue), ("green", &green)] {
        let line = lines.iter().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}:\n{table}"));
        assert!(line.contains("alive") && line.contains("backend") && line.contains(app.as_str()), "{line}");
        assert!(line.contains(&format!("color={name}")), "{line}");
    }
    let only_green = members(&proxy, &["--tag", "color=green"]);
    assert!(only_green.contains("green") && !only_green.contains("blue"), "{only_green}");
    let json: serde_json::Value = serde_json::from_str(&members(&proxy, &["--format", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3, "{json}");
    // The page's cluster table says the same.
    let page = common::get(proxy.admin(), "/").body_str();
    for name in ["blue", "green"] {
        assert!(page.contains(&format!("<td>{name}</td>")), "{name} on the page");
    }
    // A member that dies stays listed, as failed, with its generation.
    green_agent.child.kill().unwrap();
    let start = Instant::now();
    while !members(&proxy, &["--status", "failed"]).contains("green") {
        assert!(start.elapsed() < WAIT, "green never shown as failed:\n{}", members(&proxy, &[]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let page = common::get(proxy.admin(), "/").body_str();
    assert!(page.contains("class=\"failed\""), "the page shows it failed");
}

#[test]
fn a_dead_node_stays_listed_down_with_its_counters_and_keeps_them_when_it_comes_back() {
    let proxy = Proxy::start(&["--access-log", "off"]);
    let (_keeper_app, keeper) = common::webapp("keeper");
    let _keeper = Agent::start(&keeper, &proxy.gossip(), &["--name", "keeper"]);
    let (mut phoenix_app, phoenix) = common::webapp("phoenix");
    let mut agent = Agent::start(&phoenix, &proxy.gossip(), &["--name", "phoenix"]);
    wait_routed(&proxy, "\"host\":\"phoenix\"");
    for _ in 0..40 {
        assert_eq!(common::get(proxy.addr, "/").status(), 200);
    }
    let stot = |name: &str| proxy.servers_column(name, "stot").parse::<u64>().unwrap();
    // A response reaches the client just before it is counted: read once every request is. Only the 200s
    // reached a server: waiting for the agents to join may have drawn 503s from the proxy itself.
    let start = Instant::now();
    while stot("keeper") + stot("phoenix") < proxy.metric("shoal_frontend_responses_total{code=\"2xx\"}") {
        assert!(start.elapsed() < WAIT, "the servers' counts never added up to the frontend's");
    }
    let served = stot("phoenix");
    assert!(served > 0, "phoenix served some of the 40");
    agent.child.kill().unwrap();
    phoenix_app.kill().unwrap();
    let _ = (agent.child.wait(), phoenix_app.wait());
    // Gossip declares it gone; it stays listed, DOWN, with what it served.
    proxy.wait_server("phoenix", "listed DOWN once gone", |status, _| status == "DOWN");
    let start = Instant::now();
    while !proxy.stderr.all().iter().any(|l| l.contains("1 servers in rotation, 2 known")) {
        assert!(start.elapsed() < WAIT, "phoenix never left rotation while staying known");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stot("phoenix"), served, "its counters kept");
    // The stats sample state changes once a second: one fall, and downtime that grows while it stays down.
    let column = |name: &str| proxy.servers_column("phoenix", name).parse::<u64>().unwrap();
    let start = Instant::now();
    while !(column("chkdown") == 1 && column("downtime") >= 1) {
        assert!(start.elapsed() < WAIT, "chkdown {} downtime {}", column("chkdown"), column("downtime"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(column("lastchg") >= column("downtime"), "down since its last change");
    let page = common::get(proxy.admin(), "/").body_str();
    let row = page.split("<tr").find(|r| r.contains("phoenix (")).expect("phoenix on the page");
    assert!(row.starts_with(" class=\"active_down\""), "red, as HAProxy shows a DOWN server: {row}");
    // A listed server is one the runtime API can act on: held out before it comes back ("No such server."
    // before), then let go.
    assert_eq!(proxy.runtime("set server nodes/phoenix state maint"), "\n");
    proxy.wait_server("phoenix", "MAINT", |status, _| status == "MAINT");
    assert_eq!(proxy.runtime("set server nodes/phoenix state ready"), "\n");
    let restarted = Instant::now();
    // Back under the same name (a restart: new process, new port): its counts go on from there.
    let (_phoenix_app, phoenix) = common::webapp("phoenix");
    let _agent = Agent::start(&phoenix, &proxy.gossip(), &["--name", "phoenix"]);
    proxy.wait_server("phoenix", "UP again", |status, _| status == "UP");
    wait_routed(&proxy, "\"host\":\"phoenix\"");
    // The response that showed it routed is counted a moment after it reached the client.
    let start = Instant::now();
    while stot("phoenix") <= served {
        assert!(start.elapsed() < WAIT, "never counted on from {served}: {}", stot("phoenix"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    while column("lastchg") > restarted.elapsed().as_secs() {
        assert!(start.elapsed() < WAIT, "lastchg {} never counted from the restart", column("lastchg"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(column("chkdown"), 1, "coming back up is no fall");
    // Across the kill and the restart, the servers' counts still add up to the frontend's.
    let start = Instant::now();
    while stot("keeper") + stot("phoenix") != proxy.metric("shoal_frontend_requests_total") {
        assert!(start.elapsed() < WAIT, "the servers' counts stopped adding up to the frontend's");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = proxy.server_rows();
    assert_eq!(rows.len(), 2, "one row per name, not one per generation: {:?}", rows.keys());
}
