//! Real clients through the proxy against a real nginx: curl, wrk and oha must all see zero errors.
//!
//! Needs nginx, curl, wrk and oha on PATH (`.ci/run` installs them); fails, rather than skips, without them.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::{free_port, Proxy, WAIT};

struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start() -> Nginx {
        let addr = free_port();
        let dir = std::env::temp_dir().join(format!("shoal-nginx-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/index.html"), "hello from nginx\n").unwrap();
        std::fs::write(dir.join("www/big"), vec![b'b'; 1 << 20]).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen {addr}; root {d}/www; keepalive_requests 100000;\n\
                 location /echo {{ client_max_body_size 10m; return 200 \"posted\\n\"; }} }} }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(which("nginx"))
            .args(["-c", dir.join("nginx.conf").to_str().unwrap(), "-p", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_port(addr);
        Nginx { child, addr, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(tool: &str) -> String {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/bin",
        &format!("{}/.cargo/bin", std::env::var("HOME").unwrap_or_default()),
    ] {
        let p = format!("{dir}/{tool}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run .ci/run, which installs it");
}

/// Waits until something accepts on `addr` (nginx has no readiness line to wait for).
fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::yield_now();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn curl_wrk_and_oha_through_shoal_to_nginx() {
    let nginx = Nginx::start();
    let proxy = Proxy::start(&["--backend", &nginx.addr.to_string(), "--access-log", "off"]);
    let url = format!("http://{}/", proxy.addr);

    let body = run(Command::new(which("curl")).args(["-sS", "--fail", &url]));
    assert_eq!(body, "hello from nginx\n");
    let big = run(Command::new(which("curl")).args([
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("{url}big"),
    ]));
    assert_eq!(big, (1 << 20).to_string());
    let posted = run(Command::new(which("curl")).args([
        "-sS",
        "--fail",
        "--data-binary",
        &"p".repeat(100_000),
        &format!("{url}echo"),
    ]));
    assert_eq!(posted, "posted\n");
    let old = run(Command::new(which("curl")).args(["-sS", "--fail", "--http1.0", &url]));
    assert_eq!(old, "hello from nginx\n");

    let wrk = run(Command::new(which("wrk")).args(["-t1", "-c16", "-d2s", &url]));
    assert!(!wrk.contains("Non-2xx") && !wrk.contains("Socket errors"), "wrk saw errors:\n{wrk}");
    let requests: u64 = wrk
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{wrk}"));
    assert!(requests > 1000, "wrk made only {requests} requests:\n{wrk}");

    let oha =
        run(Command::new(which("oha")).args(["-n", "5000", "-c", "16", "--no-tui", "--output-format", "json", &url]));
    let compact: String = oha.split_whitespace().collect();
    assert!(compact.contains("\"successRate\":1.0,"), "oha success rate:\n{oha}");
    assert!(compact.contains("\"statusCodeDistribution\":{\"200\":5000}"), "all 5000 answered 200:\n{oha}");
}
