//! The compose drop-in with real containers: `docker/docker-compose.yml` (the lab's file with HAProxy swapped
//! for shoal) on the FROM-scratch image that `docker/build.sh` makes. Web nodes start before the balancer, a
//! node added later with `docker run` gets traffic, and a SIGKILLed node leaves rotation without a failed
//! request. Needs Docker with docker-compose (CI installs and runs as root).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::containers::{build_image, get_host, root, run, stdout};
use common::http_get;

/// Longest wait for anything the cluster must do by itself (join, failure detection): generous, since a
/// loaded CI machine starts containers slowly. Each wait ends as soon as its event is seen.
const SETTLE: Duration = Duration::from_secs(60);
const IMAGE: &str = "shoal:compose-test";

/// A compose project of its own, removed (containers, network) when dropped, even after a failed assertion.
struct Project {
    name: String,
    extra: Vec<String>,
    key: String,
}

impl Project {
    fn new() -> Project {
        let key = run(Command::new(env!("CARGO_BIN_EXE_shoal")).arg("keygen"));
        Project { name: format!("shoaltest{}", std::process::id()), extra: Vec::new(), key: stdout(key) }
    }

    fn compose(&self, args: &[&str]) -> Command {
        let file = root().join("docker/docker-compose.yml");
        let mut cmd = Command::new("docker-compose");
        cmd.args(["--project-name", &self.name, "--file"]).arg(file).args(args);
        for published in ["SHOAL_PUBLISH", "SHOAL_ADMIN_PUBLISH"] {
            cmd.env(published, "127.0.0.1:");
        }
        cmd.env("SHOAL_IMAGE", IMAGE);
        cmd.env("SHOAL_CLUSTER_KEY", &self.key);
        cmd
    }

    fn container(&self, service: &str) -> String {
        stdout(run(&mut self.compose(&["ps", "-q", service])))
    }

    fn network(&self) -> String {
        format!("{}_heig", self.name)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        for name in &self.extra {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
        let _ = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "2"]).output();
    }
}

/// Sends GETs until `done` holds for the hosts seen in the last `window` answers; every GET must succeed
/// when `no_failures`. Returns those hosts.
fn until(
    addr: SocketAddr,
    what: &str,
    window: usize,
    no_failures: bool,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let start = Instant::now();
    let mut recent: Vec<String> = Vec::new();
    loop {
        match get_host(addr, Duration::from_secs(15)) {
            Ok(host) => {
                recent.push(host);
                if recent.len() > window {
                    recent.remove(0);
                }
                if recent.len() == window && done(&recent) {
                    return recent;
                }
            }
            Err(e) if no_failures => panic!("a request failed while waiting for {what}: {e}"),
            Err(_) => {}
        }
        assert!(start.elapsed() < SETTLE, "{what}: not seen within {SETTLE:?}; last answers {recent:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn distinct(hosts: &[String]) -> usize {
    let mut h = hosts.to_vec();
    h.sort();
    h.dedup();
    h.len()
}

#[test]
fn compose_swap_nodes_join_in_any_order_and_leave_on_failure() {
    build_image(IMAGE);
    let mut project = Project::new();

    // Without a cluster key, compose refuses to start and says how to make one.
    let unkeyed = project.compose(&["config"]).env_remove("SHOAL_CLUSTER_KEY").output().unwrap();
    assert!(!unkeyed.status.success() && String::from_utf8_lossy(&unkeyed.stderr).contains("keygen"));

    // The web nodes first: with Serf they could not join before `ha` was up; agents retry until it is.
    run(&mut project.compose(&["up", "-d", "s1", "s2"]));
    run(&mut project.compose(&["up", "-d", "ha"]));
    let published = stdout(run(&mut project.compose(&["port", "ha", "80"])));
    let addr: SocketAddr = published.parse().unwrap_or_else(|_| panic!("unexpected port line {published:?}"));

    until(addr, "both web nodes in rotation", 8, false, |h| distinct(h) == 2);

    // The runtime API changes routing and asks no password: the operator reaches it through the proxy's
    // container with the image's own client, a web node on the same network does not reach it at all.
    let info = stdout(run(&mut project.compose(&["exec", "-T", "ha", "/shoal", "runtime", "show", "info"])));
    assert!(info.starts_with("Name: shoal"), "{info}");
    let from_node = project
        .compose(&["exec", "-T", "s1", "/shoal", "runtime", "--api", "ha:9999", "show", "info"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&from_node.stderr);
    assert!(!from_node.status.success() && err.contains("refused"), "a web node reached the runtime API: {err}");
    // The web node's app runs as nobody beside its agent (root, PID 1).
    let top = stdout(run(Command::new("docker").args(["top", &project.container("s1"), "-o", "pid,uid,args"])));
    let uid_of = |command: &str| {
        let rows = top.lines().map(|l| l.split_whitespace().collect::<Vec<_>>());
        rows.filter(|f| f.len() > 3 && f[3] == command).map(|f| f[1].to_string()).next()
    };
    assert_eq!((uid_of("agent"), uid_of("webapp")), (Some("0".into()), Some("65534".into())), "{top}");

    // A third node started by hand on the project's network, as the lab does with `docker run`.
    let s3 = format!("{}_s3_manual", project.name);
    project.extra.push(s3.clone());
    let key = format!("SHOAL_CLUSTER_KEY={}", project.key);
    let network = project.network();
    let docker_run = ["run", "-d", "--name", &s3, "--hostname", "s3", "--network", &network, "--env", &key, IMAGE];
    run(Command::new("docker").args(docker_run).args([
        "agent",
        "--service",
        "0.0.0.0:3000",
        "--join",
        "ha:7946",
        "--check-path",
        "/",
        "--",
        "/shoal",
        "webapp",
        "--listen",
        "0.0.0.0:3000",
    ]));
    let three = until(addr, "the added node in rotation", 12, true, |h| distinct(h) == 3);

    // SIGKILL one: it must leave rotation, and no request may fail meanwhile (a connect failure is retried
    // on another node until the gossip failure detector removes it).
    let s1 = project.container("s1");
    let s1_host = "s1";
    assert!(three.iter().any(|h| h == s1_host), "s1 was serving: {three:?}");
    run(Command::new("docker").args(["kill", &s1]));
    until(addr, "the killed node out of rotation", 12, true, |h| distinct(h) == 2 && !h.iter().any(|x| x == s1_host));

    // The stats CSV on the published 1936 lists the two live servers UP with the requests they served, and
    // the dead one DOWN with its counters (kept for the retention window, as HAProxy keeps a DOWN server),
    // once gossip has declared it gone; the backend's total is the servers' sum.
    let admin: SocketAddr = stdout(run(&mut project.compose(&["port", "ha", "1936"]))).parse().unwrap();
    let start = Instant::now();
    let (csv, servers) = loop {
        let csv = http_get(admin, "/;csv", Duration::from_secs(15)).expect("the stats CSV");
        assert!(csv.starts_with("# pxname,svname,"), "{csv}");
        let servers: Vec<Vec<String>> = csv
            .lines()
            .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter(|f| f[0] == "nodes" && f[1] != "BACKEND")
            .collect();
        assert!(servers.iter().all(|f| f[1] != "s1" || f[17] == "DOWN"), "the killed node is not DOWN: {csv}");
        let up = servers.iter().filter(|f| f[17] == "UP").count();
        if up == 2 && servers.len() == 3 {
            break (csv, servers);
        }
        assert!(start.elapsed() < SETTLE, "never two servers UP and the dead one DOWN: {csv}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut names: Vec<&str> = servers.iter().map(|f| f[1].as_str()).collect();
    names.sort();
    assert_eq!(names, ["s1", "s2", "s3"], "servers are named after their host names, as Serf names nodes: {csv}");
    assert!(servers.iter().all(|f| f[7].parse::<u64>().unwrap() > 0), "each kept what it served: {csv}");
    let backend: Vec<u64> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f[0] == "nodes" && f[1] == "BACKEND")
        .map(|f| [7, 30].map(|i| f[i].parse().unwrap()).to_vec())
        .unwrap();
    let sum: u64 = servers.iter().map(|f| f[7].parse::<u64>().unwrap()).sum();
    // As HAProxy's: `lbtot` the requests its servers took, the dead one's included; `stot` every request
    // routed to it, those answered 503 with no server up included.
    assert_eq!(backend[1], sum, "the backend's lbtot is its servers' sum, the dead one's included: {csv}");
    assert!(backend[0] >= sum, "the backend's stot counts every request routed to it: {csv}");
}
