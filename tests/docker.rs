//! The compose drop-in with real containers: `docker/docker-compose.yml` (the lab's file with HAProxy swapped
//! for shoal) on the FROM-scratch image that `docker/build.sh` makes. Web nodes start before the balancer, a
//! node added later with `docker run` gets traffic, and a SIGKILLed node leaves rotation without a failed
//! request. Needs Docker with docker-compose (CI installs and runs as root).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Longest wait for anything the cluster must do by itself (join, failure detection): generous, since a
/// loaded CI machine starts containers slowly. Each wait ends as soon as its event is seen.
const SETTLE: Duration = Duration::from_secs(60);
const IMAGE: &str = "shoal:compose-test";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(out: Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

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
        for published in ["SHOAL_PUBLISH", "SHOAL_ADMIN_PUBLISH", "SHOAL_RUNTIME_PUBLISH"] {
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

/// One GET /; the responding container's host name, or why not.
fn get_host(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("read: {e}"))?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(response.lines().next().unwrap_or("no response").to_string());
    }
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let host = body.split("\"host\":\"").nth(1).and_then(|rest| rest.split('"').next());
    host.map(str::to_string).ok_or_else(|| format!("no host in {body}"))
}

/// The body of GET `path` from `addr`.
fn fetch(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
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
        match get_host(addr) {
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
    let built = run(Command::new(root().join("docker/build.sh")).env("SHOAL_IMAGE", IMAGE));
    assert_eq!(stdout(built), IMAGE);
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

    // The stats CSV on the published 1936 lists the two live servers, UP, and the requests they served.
    let admin: SocketAddr = stdout(run(&mut project.compose(&["port", "ha", "1936"]))).parse().unwrap();
    let csv = fetch(admin, "/;csv");
    assert!(csv.starts_with("# pxname,svname,"), "{csv}");
    let servers: Vec<Vec<&str>> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[0] == "nodes" && f[1] != "BACKEND")
        .collect();
    assert_eq!(servers.len(), 2, "{csv}");
    let mut names: Vec<&str> = servers.iter().map(|f| f[1]).collect();
    names.sort();
    assert_eq!(names, ["s2", "s3"], "servers are named after their host names, as Serf names nodes: {csv}");
    assert!(servers.iter().all(|f| f[17] == "UP" && f[7].parse::<u64>().unwrap() > 0), "{csv}");
}
