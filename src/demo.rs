//! `shoal demo`: one command that shows the whole product on one machine: a proxy, then N nodes, each an
//! agent supervising a `shoal webapp`, joining by gossip. All are child processes of this binary, each in a
//! process group of its own, so a Ctrl-C at the terminal reaches the demo alone and it stops them in order:
//! the proxy finishes what is in flight first, then the agents leave and stop their apps.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::logging::say;

pub struct DemoConfig {
    pub listen: SocketAddr,
    pub nodes: usize,
    /// First app port; 0 picks free ports.
    pub first_port: u16,
    pub gossip_port: u16,
    pub admin_port: u16,
    pub runtime_api_port: u16,
}

pub fn run(config: DemoConfig) -> std::io::Result<()> {
    let stop = crate::signals::BlockingStop::install()?;
    let exe = std::env::current_exe()?;
    let seed = format!("127.0.0.1:{}", config.gossip_port);
    let admin = format!("127.0.0.1:{}", config.admin_port);
    let runtime_api = format!("127.0.0.1:{}", config.runtime_api_port);
    // Gossip stays on loopback here, but the demo shows the setup as it should be: sealed with a key of its
    // own, handed to every node through the environment (not argv, which `ps` shows).
    let key = crate::cluster::seal::generate()?;
    let mut proxy = Command::new(&exe)
        .env("SHOAL_CLUSTER_KEY", &key)
        .args(["proxy", "--listen", &config.listen.to_string(), "--gossip", &seed])
        .args(["--admin", &admin, "--runtime-api", &runtime_api])
        .process_group(0)
        .spawn()?;
    let mut agents: Vec<Child> = Vec::new();
    for i in 1..=config.nodes {
        let port = if config.first_port == 0 { free_port()? } else { config.first_port + (i as u16 - 1) };
        let service = format!("127.0.0.1:{port}");
        let name = format!("s{i}");
        let agent = Command::new(&exe)
            .env("SHOAL_CLUSTER_KEY", &key)
            .args(["agent", "--service", &service, "--gossip", "127.0.0.1:0", "--join", &seed, "--name", &name])
            .args(["--check-path", "/", "--check-interval", "1s", "--"])
            .arg(&exe)
            .args(["webapp", "--listen", &service, "--name", &name])
            .process_group(0)
            .spawn()?;
        agents.push(agent);
    }
    let url = format!("http://{}/", config.listen);
    let ready = wait_all_nodes(&mut proxy, config.listen, config.nodes, Duration::from_secs(15));
    let out = &mut io::stdout();
    match ready {
        Ok(()) => say(out, format_args!("shoal demo ready: {} nodes behind {url}", config.nodes)),
        Err(Waited::ProxyExited(status)) => {
            stop_all(&mut proxy, &mut agents);
            return Err(io::Error::other(format!("the proxy could not start ({status}); its log says why above")));
        }
        Err(Waited::Seen(seen)) => {
            say(out, format_args!("shoal demo: only {seen} of {} nodes answer yet behind {url}", config.nodes))
        }
    }
    say(out, format_args!("  curl -i {url}                                  # round robin across the nodes"));
    say(out, format_args!("  curl -i -c /tmp/jar -b /tmp/jar {url}          # sessionViews counts per node"));
    say(out, format_args!("  curl -X POST -d '{{\"delay\":500}}' {url}delay     # slow the next node down"));
    if config.admin_port != 0 {
        say(out, format_args!("  curl 'http://{admin}/;csv'                   # HAProxy's stats CSV (the page: /)"));
    }
    if config.runtime_api_port != 0 {
        say(
            out,
            format_args!(
                "  echo 'set server nodes/s1 state drain' | socat - tcp:{runtime_api}   # HAProxy's runtime API"
            ),
        );
    }
    say(out, format_args!("Ctrl-C stops everything in order: the proxy finishes its requests, then the nodes leave."));

    stop.wait();
    stop_all(&mut proxy, &mut agents);
    Ok(())
}

/// The proxy first (it finishes requests in flight and stops accepting), then the agents (each leaves the
/// cluster and stops its app last).
fn stop_all(proxy: &mut Child, agents: &mut [Child]) {
    signal(proxy, libc::SIGTERM);
    let _ = proxy.wait();
    for a in agents.iter() {
        signal(a, libc::SIGTERM);
    }
    for a in agents.iter_mut() {
        let _ = a.wait();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

enum Waited {
    /// How many distinct nodes answered in time.
    Seen(usize),
    ProxyExited(std::process::ExitStatus),
}

/// Polls GET / through the proxy, 20 times a second at most (the stats then show the demo's own traffic as
/// a trickle), until `n` distinct nodes have answered.
fn wait_all_nodes(proxy: &mut Child, addr: SocketAddr, n: usize, within: Duration) -> Result<(), Waited> {
    let deadline = Instant::now() + within;
    let mut seen = HashSet::new();
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proxy.try_wait() {
            return Err(Waited::ProxyExited(status));
        }
        let next = Instant::now() + Duration::from_millis(50);
        if let Some(host) = fetch_host(addr) {
            seen.insert(host);
            if seen.len() >= n {
                return Ok(());
            }
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Err(Waited::Seen(seen.len()))
}

/// The `host` field of one `GET /` answer.
fn fetch_host(proxy: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    let host = text.split("\"host\":\"").nth(1)?.split('"').next()?;
    Some(host.to_string())
}
