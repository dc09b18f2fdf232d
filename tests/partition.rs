//! Two hosts for real: network namespaces joined by a veth pair, the proxy on one, an agent and its webapp on
//! the other. Cutting the link takes the backend out of rotation; healing it brings it back.
//!
//! Needs root and iproute2 (CI runs as root); fails, rather than skips, without them.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Lines, Process, WAIT};

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]);
        c
    }

    fn ip(&self, args: &[&str]) {
        let status = self.exec().arg("ip").args(args).status().expect("ip");
        assert!(status.success(), "ip {args:?} in {}", self.0);
    }

    /// GET / through `url` from inside this namespace; the body, or an empty string on failure.
    fn curl(&self, url: &str) -> String {
        let out = self.exec().args(["curl", "-s", "-m", "2", url]).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("iproute2 is needed");
    assert!(status.success(), "ip {args:?} failed: this test needs root");
}

fn spawn(cmd: &mut Command) -> (Process, Lines) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let lines = Lines::default();
    lines.clone().collect_from(child.stderr.take().unwrap());
    (Process(child), lines)
}

fn wait_body(ns: &Netns, url: &str, needle: &str) {
    let start = Instant::now();
    loop {
        if ns.curl(url).contains(needle) {
            return;
        }
        assert!(start.elapsed() < WAIT, "{url} never answered with {needle}");
    }
}

#[test]
fn a_backend_cut_off_leaves_rotation_and_returns_when_healed() {
    let id = std::process::id() % 200 + 20;
    let (a, b) = (Netns::new(format!("shoal{id}a")), Netns::new(format!("shoal{id}b")));
    let (va, vb) = (format!("shl{id}a"), format!("shl{id}b"));
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "netns", &a.0]);
    ip(&["link", "set", &vb, "netns", &b.0]);
    let (ip_a, ip_b) = (format!("10.213.{id}.1"), format!("10.213.{id}.2"));
    a.ip(&["addr", "add", &format!("{ip_a}/24"), "dev", &va]);
    b.ip(&["addr", "add", &format!("{ip_b}/24"), "dev", &vb]);
    a.ip(&["link", "set", &va, "up"]);
    b.ip(&["link", "set", &vb, "up"]);

    let exe = env!("CARGO_BIN_EXE_shoal");
    let seed = format!("{ip_a}:7946");
    let (_proxy, proxy_log) =
        spawn(a.exec().args([exe, "proxy", "--listen", &format!("{ip_a}:8080"), "--gossip", &seed]));
    let service = format!("{ip_b}:3000");
    let (_agent, _agent_log) = spawn(b.exec().args([
        exe,
        "agent",
        "--service",
        &service,
        "--gossip",
        &format!("{ip_b}:7946"),
        "--join",
        &seed,
        "--name",
        "far",
        "--",
        exe,
        "webapp",
        "--listen",
        &service,
        "--name",
        "far",
    ]));
    let url = format!("http://{ip_a}:8080/");
    wait_body(&a, &url, "\"host\":\"far\"");

    b.ip(&["link", "set", &vb, "down"]);
    proxy_log.wait_for("the cut-off node declared down", |l| l.contains("member down: far "));
    proxy_log.wait_for("an empty set", |l| l.contains("backend set now has 0 servers"));
    assert!(a.curl(&url).contains("503"), "no backend while cut off");

    b.ip(&["link", "set", &vb, "up"]);
    proxy_log.wait_count("the node back", 2, |l| l.contains("member up: far "));
    wait_body(&a, &url, "\"host\":\"far\"");
}
