//! Test harness: the real `shoal` binary, scripted backends on real sockets, and a small HTTP reader written
//! independently of the crate's parser so the tests do not merely agree with the code under test.
#![allow(dead_code)]

pub mod capture;
pub mod certs;
pub mod containers;
pub mod lab;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for any single wait on an event; tests never sleep for a fixed time.
pub const WAIT: Duration = Duration::from_secs(10);

/// Lines collected from a child's output, with a condition variable to wait for one.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>, Arc<std::sync::atomic::AtomicBool>);

impl Lines {
    /// Collects the lines of `out` (a child's stdout or stderr) in the background.
    pub fn collect_from(self, out: impl Read + Send + 'static) {
        self.collect(out)
    }

    fn collect(self, out: impl Read + Send + 'static) {
        std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut raw = Vec::new();
            // Lossy: a line that is not UTF-8 is kept (with replacement characters), not the end of the output.
            while out.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
                let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
                let line = String::from_utf8_lossy(text.strip_suffix(b"\r").unwrap_or(text)).into_owned();
                raw.clear();
                let (lock, cv) = &*self.0;
                lock.lock().unwrap().push(line);
                cv.notify_all();
            }
            let (lock, cv) = &*self.0;
            let _held = lock.lock().unwrap();
            self.1.store(true, Ordering::SeqCst);
            cv.notify_all();
        });
    }

    /// Waits until the output has ended (the child closed it, by exiting) and every line is collected.
    pub fn wait_closed(&self, what: &str) {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + WAIT;
        let mut lines = lock.lock().unwrap();
        while !self.1.load(Ordering::SeqCst) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for the end of {what}"));
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits until a line satisfies `pred` and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + WAIT;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {what}; lines so far:\n{}", lines.join("\n")));
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits until at least `n` lines satisfy `pred`.
    pub fn wait_count(&self, what: &str, n: usize, pred: impl Fn(&str) -> bool) {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + WAIT;
        let mut lines = lock.lock().unwrap();
        while lines.iter().filter(|l| pred(l)).count() < n {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {n} x {what}; lines so far:\n{}", lines.join("\n")));
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn all(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().clone()
    }
}

/// A child process that is killed when dropped.
pub struct Process(pub Child);

impl Process {
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    /// Waits for the process to exit (bounded) and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process {} did not exit", self.0.id());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `shoal proxy`.
pub struct Proxy {
    child: Process,
    pub addr: SocketAddr,
    pub stdout: Lines,
    pub stderr: Lines,
}

pub fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

/// A file in the temporary directory, removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// A new file holding `text`; `hint` goes into its name.
    pub fn new(hint: &str, text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let f = TempFile(std::env::temp_dir().join(format!("shoal-test-{}-{n}-{hint}", std::process::id())));
        f.write(text);
        f
    }

    /// Replaces the contents at once (a rename), as an operator's editor or a secret update would.
    pub fn write(&self, text: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh cluster key, from `shoal keygen`.
pub fn keygen() -> String {
    let out = shoal().arg("keygen").output().expect("shoal keygen");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Proxy {
    /// Starts `shoal proxy` on an ephemeral loopback port with `args`, and waits until it listens.
    pub fn start(args: &[&str]) -> Proxy {
        Self::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Proxy {
        Proxy::start_from(std::path::Path::new(env!("CARGO_BIN_EXE_shoal")), args, env)
    }

    /// Starts the binary at `exe` as a proxy. Unless `args` say otherwise (or a `--config` file does), it
    /// listens on an ephemeral loopback port and keeps every other socket on loopback too.
    pub fn start_from(exe: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        Proxy::start_in(None, exe, args, env)
    }

    /// The same, started in the directory `dir` (a relative `exe` is found there).
    pub fn start_in(
        dir: Option<&std::path::Path>,
        exe: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let mut cmd = Command::new(exe);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.arg("proxy");
        if !args.contains(&"--listen") && !args.contains(&"--config") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        // A configuration file may set the threads itself (a reload then keeps the running count).
        if !args.contains(&"--threads") && !args.contains(&"--config") {
            cmd.args(["--threads", "2"]);
        }
        if !args.contains(&"--gossip") {
            cmd.args(["--gossip", "127.0.0.1:0"]);
        }
        if !args.contains(&"--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        if !args.contains(&"--runtime-api") {
            cmd.args(["--runtime-api", "127.0.0.1:0"]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // A binary copied for the test (tests/upgrade.rs) may still be open for writing in a process another
        // test thread forked meanwhile, until that process execs: ETXTBSY, for a moment.
        let started = Instant::now();
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && started.elapsed() < WAIT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                spawned => break spawned.expect("start shoal"),
            }
        };
        let stdout = Lines::default();
        let stderr = Lines::default();
        stdout.clone().collect(child.stdout.take().unwrap());
        stderr.clone().collect(child.stderr.take().unwrap());
        let line = stderr.wait_for("listening line", |l| l.contains("listening on "));
        let addr = line.rsplit("listening on ").next().unwrap().trim().parse().unwrap();
        Proxy { child: Process(child), addr, stdout, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gossip address the proxy advertises.
    pub fn gossip(&self) -> String {
        gossip_of(&self.stderr)
    }

    /// Where the runtime API listens.
    pub fn runtime_api(&self) -> SocketAddr {
        let line = self.stderr.wait_for("runtime API line", |l| l.contains("runtime API on "));
        line.rsplit("runtime API on ").next().unwrap().trim().parse().unwrap()
    }

    /// The value of Prometheus sample `name` (with its labels) on the admin endpoint; a sample that is not
    /// there fails the test (a renamed series must not read as 0).
    pub fn metric(&self, name: &str) -> u64 {
        let text = get(self.admin(), "/metrics").body_str();
        let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
        let line = line.unwrap_or_else(|| panic!("no sample {name} on /metrics"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Where TLS clients are accepted (the first TLS listener).
    pub fn tls(&self) -> SocketAddr {
        let line = self.stderr.wait_for("TLS listener line", |l| l.contains("accepting TLS on "));
        line.rsplit("accepting TLS on ").next().unwrap().trim().parse().unwrap()
    }

    /// Where the admin endpoints (stats page, CSV, metrics) are served.
    pub fn admin(&self) -> SocketAddr {
        let line = self.stderr.wait_for("admin line", |l| l.contains("admin on "));
        line.rsplit("admin on ").next().unwrap().split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: i32) {
        self.child.signal(sig)
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.wait_exit()
    }

    /// One runtime API exchange as `socat - tcp:HOST:9999` makes it: send the line, read until the proxy closes.
    pub fn runtime(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(self.runtime_api()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    /// The rows of the stats CSV for servers of the backend, by server name (column name -> value).
    pub fn server_rows(&self) -> std::collections::HashMap<String, std::collections::HashMap<String, String>> {
        let csv = get(self.admin(), "/;csv").body_str();
        let mut lines = csv.lines();
        let header: Vec<String> = lines.next().unwrap().trim_start_matches("# ").split(',').map(String::from).collect();
        lines
            .map(|l| {
                header.iter().cloned().zip(l.split(',').map(String::from)).collect::<std::collections::HashMap<_, _>>()
            })
            .filter(|row| row["pxname"] == "nodes" && row["svname"] != "BACKEND")
            .map(|row| (row["svname"].clone(), row))
            .collect()
    }

    /// Each server's `status` and `weight` in the stats CSV, by server name.
    pub fn servers(&self) -> std::collections::HashMap<String, (String, u64)> {
        let rows = self.server_rows();
        rows.into_iter()
            .map(|(name, row)| (name, (row["status"].clone(), row["weight"].parse().unwrap_or(0))))
            .collect()
    }

    /// Server `name`'s value in CSV column `column`.
    /// A cell of the `nodes/BACKEND` row.
    pub fn backend_column(&self, column: &str) -> String {
        let csv = get(self.admin(), "/;csv").body_str();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().trim_start_matches("# ").split(',').collect();
        let at = header.iter().position(|c| *c == column).expect("a CSV column");
        let row = lines.find(|l| l.starts_with("nodes,BACKEND,")).expect("the BACKEND row");
        row.split(',').nth(at).unwrap_or_default().to_string()
    }

    pub fn servers_column(&self, name: &str, column: &str) -> String {
        self.server_rows()[name][column].clone()
    }

    /// Waits until server `name`'s CSV row satisfies `done` (status, weight); returns that row.
    pub fn wait_server(&self, name: &str, what: &str, done: impl Fn(&str, u64) -> bool) -> (String, u64) {
        let start = Instant::now();
        loop {
            if let Some((status, weight)) = self.servers().remove(name) {
                if done(&status, weight) {
                    return (status, weight);
                }
            }
            assert!(start.elapsed() < WAIT, "server {name} never {what}: {:?}", self.servers());
            std::thread::yield_now();
        }
    }

    /// The access log line that mentions `needle`.
    pub fn log_line(&self, needle: &str) -> String {
        self.stdout.wait_for(needle, |l| l.contains(needle))
    }
}

fn gossip_of(stderr: &Lines) -> String {
    let line = stderr.wait_for("gossip line", |l| l.contains("advertised as "));
    line.rsplit("advertised as ").next().unwrap().trim().to_string()
}

/// A running `shoal agent`.
pub struct Agent {
    pub child: Process,
    pub stderr: Lines,
}

impl Agent {
    pub fn start(service: &str, join: &str, extra: &[&str]) -> Agent {
        Agent::start_wrapped(&[], service, join, extra, &[])
    }

    /// The same with variables set in the agent's environment, started through `wrapper` (a program and its
    /// arguments, which runs the rest of its command line; empty for none).
    pub fn start_wrapped(wrapper: &[&str], service: &str, join: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_shoal"));
                c
            }
            None => shoal(),
        };
        cmd.envs(env.iter().copied());
        cmd.args(["agent", "--service", service, "--join", join]);
        if !extra.contains(&"--gossip") {
            cmd.args(["--gossip", "127.0.0.1:0"]);
        }
        let mut child = cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start agent");
        let stderr = Lines::default();
        stderr.clone().collect(child.stderr.take().unwrap());
        gossip_of(&stderr);
        Agent { child: Process(child), stderr }
    }

    pub fn gossip(&self) -> String {
        gossip_of(&self.stderr)
    }

    pub fn signal(&self, sig: i32) {
        self.child.signal(sig)
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.wait_exit()
    }
}

/// A parsed HTTP message as the test reads it.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Start line and header lines, without the final blank line.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Every byte of the message exactly as it arrived.
    pub raw: Vec<u8>,
}

impl Message {
    pub fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    pub fn start_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// Every value of header `name`, case-insensitively.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A buffered connection with message framing.
pub struct Wire {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).expect("connect");
        Wire::new(stream)
    }

    pub fn new(stream: TcpStream) -> Wire {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Wire { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads more bytes; false once the peer has closed (EOF, or a reset). A read that times out fails the
    /// test: the peer neither sent nor closed within the read timeout, and a close must not be assumed.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "the peer neither sent nor closed within the read timeout ({} bytes buffered)",
                        self.buf.len()
                    )
                }
                Err(_) => return false,
            }
        }
    }

    /// True when nothing arrives, and the peer does not close, for `quiet`.
    pub fn silent_for(&mut self, quiet: Duration) -> bool {
        let before = self.stream.read_timeout().unwrap();
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let mut chunk = [0u8; 65536];
        let silent = match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        };
        self.stream.set_read_timeout(before).unwrap();
        silent && self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// Reads one head (through the blank line); `None` at EOF.
    pub fn read_head(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                return Some(self.take(i + 4));
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next `n` bytes, whatever they are; `None` if the peer closes first.
    pub fn read_bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        self.read_exact_raw(n)
    }

    fn read_exact_raw(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.take(n))
    }

    fn read_line_raw(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Some(self.take(i + 2));
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads a chunked body, returning (raw bytes, payload).
    fn read_chunked(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut raw = Vec::new();
        let mut payload = Vec::new();
        loop {
            let line = self.read_line_raw()?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let size = usize::from_str_radix(text.trim().split(';').next().unwrap().trim(), 16).ok()?;
            if size == 0 {
                loop {
                    let t = self.read_line_raw()?;
                    raw.extend_from_slice(&t);
                    if t == b"\r\n" {
                        return Some((raw, payload));
                    }
                }
            }
            let data = self.read_exact_raw(size + 2)?;
            payload.extend_from_slice(&data[..size]);
            raw.extend_from_slice(&data);
        }
    }

    fn read_to_end_raw(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }

    /// Reads one request as a server would.
    pub fn read_request(&mut self) -> Option<Message> {
        let head = self.read_head()?;
        let mut msg = message_from_head(head);
        self.read_body(&mut msg, false, true)?;
        Some(msg)
    }

    /// Reads one response; `to_head` says the request was HEAD.
    pub fn read_response(&mut self, to_head: bool) -> Option<Message> {
        let head = self.read_head()?;
        let mut msg = message_from_head(head);
        self.read_body(&mut msg, to_head, false)?;
        Some(msg)
    }

    fn read_body(&mut self, msg: &mut Message, to_head: bool, is_request: bool) -> Option<()> {
        let status = msg.status();
        let bodiless = to_head || (!is_request && ((100..200).contains(&status) || status == 204 || status == 304));
        if bodiless {
            return Some(());
        }
        let chunked = msg.headers("transfer-encoding").iter().any(|v| v.to_ascii_lowercase().ends_with("chunked"));
        if chunked {
            let (raw, payload) = self.read_chunked()?;
            msg.raw.extend_from_slice(&raw);
            msg.body = payload;
        } else if let Some(n) = msg.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let body = self.read_exact_raw(n)?;
            msg.raw.extend_from_slice(&body);
            msg.body = body;
        } else if !is_request {
            let body = self.read_to_end_raw();
            msg.raw.extend_from_slice(&body);
            msg.body = body;
        }
        Some(())
    }

    /// Everything until the peer closes (a read timeout fails the test).
    pub fn read_all(&mut self) -> Vec<u8> {
        self.read_to_end_raw()
    }

    /// True when the peer has closed: reading yields EOF (a reset counts too); false when bytes come first. A
    /// peer that neither sends nor closes within the read timeout fails the test.
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

/// Whether a read's result says the peer closed: EOF or a reset, not a read timeout.
pub fn closed(read: &std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => *n == 0,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted),
    }
}

fn message_from_head(head: Vec<u8>) -> Message {
    let text = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
    Message { head: text, body: Vec::new(), raw: head }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection; returns the response.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Message {
    let mut w = Wire::connect(addr);
    w.send(raw);
    let head = raw.starts_with(b"HEAD ");
    w.read_response(head).expect("a response")
}

pub fn get(addr: SocketAddr, path: &str) -> Message {
    request(addr, format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
}

type Handler = dyn Fn(&Message) -> Vec<u8> + Send + Sync;

/// A test backend on an ephemeral loopback port.
pub struct Backend {
    pub addr: SocketAddr,
    received: Arc<(Mutex<Vec<Message>>, Condvar)>,
    pub connections: Arc<AtomicUsize>,
    stop: mpsc::Sender<()>,
}

impl Backend {
    /// An HTTP/1.1 keep-alive server answering each request with `handler`'s bytes, recording every request.
    pub fn http(handler: impl Fn(&Message) -> Vec<u8> + Send + Sync + 'static) -> Backend {
        Backend::http_on("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// The same on `bind` (an address of a lab host, from a thread in its namespace).
    pub fn http_on(bind: SocketAddr, handler: impl Fn(&Message) -> Vec<u8> + Send + Sync + 'static) -> Backend {
        let handler: Arc<Handler> = Arc::new(handler);
        Self::raw_on(bind, move |stream, received| {
            let mut w = Wire::new(stream);
            while let Some(req) = w.read_request() {
                // Recorded on arrival, before the handler runs (it may block).
                record(received, req.clone());
                let reply = handler(&req);
                if w.stream.write_all(&reply).is_err() {
                    return;
                }
                if find(&reply, b"\r\n\r\n").is_some_and(|i| {
                    String::from_utf8_lossy(&reply[..i]).to_ascii_lowercase().contains("connection: close")
                }) {
                    return;
                }
            }
        })
    }

    /// Answers every request `200` with a body naming the request path.
    pub fn echo_path() -> Backend {
        Backend::http(|req| {
            let path = req.start_line().split(' ').nth(1).unwrap_or("").to_string();
            ok(&path)
        })
    }

    /// Answers `/slow` with `slow_body` only once the returned sender releases it (or drops), everything else
    /// with `body` at once: a request that stays in flight for as long as a test needs.
    pub fn gated(slow_body: &'static str, body: &'static str) -> (Backend, mpsc::Sender<()>) {
        let (release, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let backend = Backend::http(move |req| {
            if req.start_line().contains("/slow") {
                let _ = gate.lock().unwrap().recv_timeout(WAIT);
                return ok(slow_body);
            }
            ok(body)
        });
        (backend, release)
    }

    /// Reads one request head per connection, sends `reply` as it is (possibly broken or cut), and closes.
    pub fn replying(reply: Vec<u8>) -> Backend {
        Backend::raw(move |stream, _| {
            let mut w = Wire::new(stream);
            if w.read_head().is_some() {
                w.send(&reply);
            }
        })
    }

    /// A backend whose connections are handled by `f`, which may record messages itself.
    pub fn raw(f: impl Fn(TcpStream, &Arc<(Mutex<Vec<Message>>, Condvar)>) + Send + Sync + 'static) -> Backend {
        Backend::raw_on("127.0.0.1:0".parse().unwrap(), f)
    }

    fn raw_on(
        bind: SocketAddr,
        f: impl Fn(TcpStream, &Arc<(Mutex<Vec<Message>>, Condvar)>) + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<(Mutex<Vec<Message>>, Condvar)> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = mpsc::channel::<()>();
        let f = Arc::new(f);
        let (rec, conns) = (received.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.try_recv().is_ok() {
                    return;
                }
                let Ok(stream) = stream else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                let (f, rec) = (f.clone(), rec.clone());
                std::thread::spawn(move || f(stream, &rec));
            }
        });
        Backend { addr, received, connections, stop }
    }

    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// Waits until `n` requests have arrived and returns all of them.
    pub fn wait_requests(&self, n: usize) -> Vec<Message> {
        let (lock, cv) = &*self.received;
        let deadline = Instant::now() + WAIT;
        let mut got = lock.lock().unwrap();
        while got.len() < n {
            let left = deadline.checked_duration_since(Instant::now()).expect("backend requests");
            got = cv.wait_timeout(got, left).unwrap().0;
        }
        got.clone()
    }

    pub fn requests(&self) -> Vec<Message> {
        self.received.0.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.received.0.lock().unwrap().clear();
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        let _ = TcpStream::connect(self.addr);
    }
}

pub fn record(received: &Arc<(Mutex<Vec<Message>>, Condvar)>, msg: Message) {
    let (lock, cv) = &**received;
    lock.lock().unwrap().push(msg);
    cv.notify_all();
}

/// `200 OK` with a text body.
pub fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}", body.len()).into_bytes()
}

/// `shoal webapp` (the lab's Node app) named `name` on a free loopback port, as a process of its own that a
/// test can kill; returns it with its address.
pub fn webapp(name: &str) -> (Process, String) {
    let addr = free_port().to_string();
    let child = shoal()
        .args(["webapp", "--listen", &addr, "--name", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("webapp");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "webapp did not start");
        std::thread::yield_now();
    }
    (Process(child), addr)
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Polls `done` until it holds (failing after `WAIT`); returns how long that took.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// The descriptors a process has open (0 once it is gone).
pub fn open_descriptors(pid: u32) -> usize {
    match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d.count(),
        // Gone: nothing open. Anything else (an undumpable proxy read by a user without CAP_SYS_PTRACE) must
        // not read as none.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => panic!("/proc/{pid}/fd: {e}"),
    }
}

/// A loopback port with nothing listening on it right now, for a server the test is about to start.
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A loopback port that refuses connections for as long as the guard lives: bound but never listening, so no
/// concurrent test can take it (a port that was merely freed may be reused by another test's server).
pub struct RefusedPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

pub fn refused_port() -> RefusedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    RefusedPort { addr, _socket: socket }
}

/// One request on a new connection, `Connection: close`, all within `budget`; the body of a 200.
pub fn http_get(addr: SocketAddr, path: &str, budget: Duration) -> Result<String, String> {
    let deadline = Instant::now() + budget;
    let mut stream = TcpStream::connect_timeout(&addr, budget).map_err(|e| format!("connect: {e}"))?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left())).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        stream.set_read_timeout(Some(left())).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read after {:?}: {e}", budget - left())),
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        Some((head, _)) => Err(head.lines().next().unwrap_or_default().to_string()),
        None => Err(format!("no response head: {text:?}")),
    }
}
