//! Hosts of their own for tests: network namespaces plugged into one bridge (a switch in a namespace of its
//! own), each host with an address. A host's cable can be pulled at the switch (it goes dark: packets to it
//! are dropped and connects hang, as with a killed container), plugged back, or made lossy. Loss is an
//! nftables rule on the switch's port (`numgen random`): `tc netem` is not built into every kernel (this
//! machine's has no sch_netem), nf_tables is.
//! Needs root, iproute2 and nft (CI runs as root); fails, rather than skips, without them.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{http_get, Lines, Process, WAIT};

static LABS: AtomicUsize = AtomicUsize::new(0);

/// A switch and the hosts plugged into it; every namespace is deleted on drop.
pub struct Lab {
    switch: String,
    pub hosts: Vec<Host>,
}

pub struct Host {
    pub ns: String,
    pub ip: String,
    /// The switch's port for this host.
    port: String,
    switch: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2 is needed");
    assert!(
        out.status.success(),
        "ip {args:?} failed (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft(ns: &str, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft is needed");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A direction of a host's link, as seen from the host.
#[derive(Clone, Copy)]
pub enum Way {
    Out,
    In,
}

impl Way {
    /// The switch port matches frames from the host as coming in, those to it as going out.
    fn match_on(self) -> &'static str {
        match self {
            Way::Out => "iifname",
            Way::In => "oifname",
        }
    }
}

/// The packets the one counter of nft table `family table` in namespace `ns` counted.
fn nft_counter(ns: &str, family: &str, table: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", family, table])
        .output()
        .expect("nft is needed");
    let listing = String::from_utf8_lossy(&out.stdout);
    let count = listing.split("counter packets ").nth(1).and_then(|rest| rest.split(' ').next());
    count.and_then(|n| n.parse().ok()).expect("a counter")
}

impl Lab {
    /// `n` hosts, 10.77.0.1 .. 10.77.0.n, on one switch.
    pub fn new(n: usize) -> Lab {
        Lab::with_decoys(n, &[])
    }

    /// The same, where the hosts numbered in `decoys` (from 0) also have an interface of their own
    /// (192.168.77.1/24, one end of a veth pair going nowhere) that comes before their link to the switch, as a container's gateway
    /// bridge can come before its overlay network.
    pub fn with_decoys(n: usize, decoys: &[usize]) -> Lab {
        let tag = format!("{}x{}", std::process::id() % 100_000, LABS.fetch_add(1, Ordering::SeqCst));
        let switch = format!("shsw{tag}");
        ip(&["netns", "add", &switch]);
        let mut lab = Lab { switch: switch.clone(), hosts: Vec::new() };
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let ns = format!("sh{tag}h{i}");
            ip(&["netns", "add", &ns]);
            if decoys.contains(&(i - 1)) {
                ip(&["-n", &ns, "link", "add", "decoy0", "type", "veth", "peer", "name", "decoy1"]);
                ip(&["-n", &ns, "addr", "add", "192.168.77.1/24", "dev", "decoy0"]);
                ip(&["-n", &ns, "link", "set", "decoy0", "up"]);
                ip(&["-n", &ns, "link", "set", "decoy1", "up"]);
            }
            let port = format!("p{i}");
            let host = Host { ns: ns.clone(), ip: format!("10.77.0.{i}"), port: port.clone(), switch: switch.clone() };
            lab.hosts.push(host);
            ip(&["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &switch]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &port, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("10.77.0.{i}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", h.ns));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.switch]).status();
    }
}

impl Host {
    /// Pulls the cable at the switch: nothing reaches the host or leaves it, and nobody is told.
    pub fn cut(&self) {
        ip(&["-n", &self.switch, "link", "set", &self.port, "down"]);
    }

    /// Plugs the cable back.
    pub fn heal(&self) {
        ip(&["-n", &self.switch, "link", "set", &self.port, "up"]);
    }

    /// Drops `percent` of the frames in each direction of this host's link, at random.
    pub fn lossy(&self, percent: u32) {
        let port = &self.port;
        nft(
            &self.switch,
            &format!(
                "table bridge lossy_{port} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
                 iifname \"{port}\" numgen random mod 100 < {percent} drop\n    \
                 oifname \"{port}\" numgen random mod 100 < {percent} drop\n  }}\n}}\n"
            ),
        );
    }

    /// Stops dropping frames on this host's link.
    pub fn lossless(&self) {
        nft(&self.switch, &format!("delete table bridge lossy_{}\n", self.port));
    }

    /// Drops the SYNs this host sends to its own TCP port `port` (the host's clients and proxies connecting
    /// to a server on it): a connect waits for the kernel's retry, a second later. Counted.
    pub fn drop_syns_to(&self, port: u16) {
        nft(
            &self.ns,
            &format!(
                "table inet syns_{port} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    \
                 tcp dport {port} tcp flags & (syn | ack) == syn counter drop\n  }}\n}}\n"
            ),
        );
    }

    /// How many SYNs `drop_syns_to(port)` dropped so far.
    pub fn syns_dropped(&self, port: u16) -> u64 {
        nft_counter(&self.ns, "inet", &format!("syns_{port}"))
    }

    /// Stops `drop_syns_to(port)`.
    pub fn pass_syns_to(&self, port: u16) {
        nft(&self.ns, &format!("delete table inet syns_{port}\n"));
    }

    /// Drops, at the switch, the TCP segments carrying data (PSH) that this host sends to port `port` of
    /// another: connects succeed, requests are never acknowledged, as over a link that loses what it carries.
    pub fn drop_data_sent_to(&self, port: u16) {
        let link = &self.port;
        nft(
            &self.switch,
            &format!(
                "table bridge data_{link}_{port} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
                 iifname \"{link}\" tcp dport {port} tcp flags & psh == psh drop\n  }}\n}}\n"
            ),
        );
    }

    /// Drops the UDP datagrams to `port` this host sends (`Way::Out`) or is sent (`Way::In`), counting them;
    /// everything else flows.
    pub fn drop_udp(&self, way: Way, port: u16) {
        let (table, iface) = (self.udp_table(way), way.match_on());
        let link = &self.port;
        nft(
            &self.switch,
            &format!(
                "table bridge {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
                 {iface} \"{link}\" udp dport {port} counter drop\n  }}\n}}\n"
            ),
        );
    }

    /// How many datagrams `drop_udp(way, ..)` dropped so far.
    pub fn dropped_udp(&self, way: Way) -> u64 {
        nft_counter(&self.switch, "bridge", &self.udp_table(way))
    }

    /// Stops `drop_udp(way, ..)`.
    pub fn pass_udp(&self, way: Way) {
        nft(&self.switch, &format!("delete table bridge {}\n", self.udp_table(way)));
    }

    fn udp_table(&self, way: Way) -> String {
        format!("udp_{}_{}", way.match_on(), self.port)
    }

    /// The share of UDP round trips from this host to `other` that come back (of 300 sent).
    pub fn round_trips(&self, other: &Host) -> f64 {
        let echo = other.enter(|| std::net::UdpSocket::bind(other.addr(9)).unwrap());
        echo.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let to = other.addr(9);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut buf = [0u8; 64];
                while !done.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = echo.recv_from(&mut buf) {
                        let _ = echo.send_to(&buf[..n], from);
                    }
                }
            });
            let share = self.enter(|| {
                let probe = std::net::UdpSocket::bind(self.addr(0)).unwrap();
                probe.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                let mut back = 0;
                for i in 0u32..300 {
                    probe.send_to(&i.to_be_bytes(), to).unwrap();
                    let mut buf = [0u8; 64];
                    // A late reply to an earlier probe is not this probe's.
                    while let Ok((4, _)) = probe.recv_from(&mut buf) {
                        if buf[..4] == i.to_be_bytes() {
                            back += 1;
                            break;
                        }
                    }
                }
                f64::from(back) / 300.0
            });
            done.store(true, Ordering::SeqCst);
            share
        })
    }

    /// Gives this host address `to` (in the lab's /24) instead of its own: another host's, for a machine restored
    /// in its place. Cut one of the two while the other is plugged in.
    pub fn readdress(&mut self, to: &str) {
        ip(&["-n", &self.ns, "addr", "del", &format!("{}/24", self.ip), "dev", "eth0"]);
        ip(&["-n", &self.ns, "addr", "add", &format!("{to}/24"), "dev", "eth0"]);
        self.ip = to.to_string();
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip).parse().unwrap()
    }

    /// Gives the programs started on this host (through `ip netns exec`, which mounts `/etc/netns/NS/*` over
    /// `/etc`) their own resolver configuration.
    pub fn resolv_conf(&self, text: &str) {
        let dir = format!("/etc/netns/{}", self.ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/resolv.conf"), text).unwrap();
    }

    /// `program args` run inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Starts `shoal ARGS` on this host, collecting its stderr.
    pub fn shoal(&self, args: &[&str], env: &[(&str, &str)]) -> (Process, Lines) {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_shoal"));
        cmd.args(args).envs(env.iter().copied());
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn shoal");
        let lines = Lines::default();
        lines.clone().collect_from(child.stderr.take().unwrap());
        (Process(child), lines)
    }

    /// Runs `f` on a thread that lives in this host's network namespace, so its sockets do too.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("netns file");
                // SAFETY: setns on a namespace fd we hold; CLONE_NEWNET moves only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in namespace")
        })
    }

    /// `GET path` from this host on a new connection, with a 2 s budget; the body of a 200, or the failure.
    pub fn get(&self, addr: SocketAddr, path: &str) -> Result<String, String> {
        self.enter(|| http_get(addr, path, Duration::from_secs(2)))
    }

    /// Polls `GET path` from this host until `done` accepts the body (bounded by [`WAIT`]).
    pub fn wait_get(&self, addr: SocketAddr, path: &str, what: &str, done: impl Fn(&str) -> bool + Sync) -> String {
        self.enter(|| {
            let start = Instant::now();
            loop {
                let got = http_get(addr, path, Duration::from_secs(2));
                if let Ok(body) = &got {
                    if done(body) {
                        return body.clone();
                    }
                }
                assert!(start.elapsed() < WAIT, "never saw {what} at {addr}{path}; last: {got:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    }
}
