//! SIGUSR2 swaps the running proxy for the binary now at its path, with the listening sockets handed over:
//! under wrk's keep-alive load and a client opening a new connection per request, no socket error, no non-2xx
//! and no refused connection, the backend being a gossip member (health-checked) the new process must know at
//! once; the pid file names the new process and the old one exits. A broken binary at that path leaves the
//! old process serving, and says why.
//!
//! Needs wrk (`.ci/run` installs it).

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{wait_until, Agent, Backend, Proxy};

/// A copy of the shoal binary in a directory of its own, so the test can replace it; removed on drop.
struct BinaryCopy {
    dir: PathBuf,
    path: PathBuf,
}

impl BinaryCopy {
    fn new(test: &str) -> BinaryCopy {
        let dir = std::env::temp_dir().join(format!("shoal-upgrade-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = BinaryCopy { path: dir.join("shoal"), dir };
        copy.install(Path::new(env!("CARGO_BIN_EXE_shoal")));
        copy
    }

    /// Puts `from` at the copy's path the way a package upgrade does: a new file renamed over the old one.
    fn install(&self, from: &Path) {
        let staged = self.dir.join("shoal.new");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, &self.path).unwrap();
    }

    /// A "binary" that fails at once, as a broken build would.
    fn install_broken(&self) {
        let staged = self.dir.join("shoal.new");
        std::fs::write(&staged, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::rename(&staged, &self.path).unwrap();
    }
}

impl BinaryCopy {
    /// A "binary" that fails once `go` exists.
    fn install_failing_once(&self, go: &Path) {
        let staged = self.dir.join("shoal.new");
        let script = format!(
            "#!/bin/sh\necho 'broken build, slowly' >&2\nwhile [ ! -e '{}' ]; do sleep 0.05; done\nexit 3\n",
            go.display()
        );
        std::fs::write(&staged, script).unwrap();
        std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::rename(&staged, &self.path).unwrap();
    }
}

impl Drop for BinaryCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Exited: absent, or a zombie its adopter has not reaped.
fn gone(pid: u32) -> bool {
    !alive(pid) || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
}

/// Kills the process named in the pid file when dropped: the upgraded proxy is not the test's child.
struct KillFromPidFile(PathBuf);

impl Drop for KillFromPidFile {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0) {
            // SAFETY: kill(2) on a pid the proxy wrote; SIGKILL ends it whatever it does.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A proxy started from `binary` with `args` and a pid file in the binary's directory, once the file names it;
/// returns it with the pid file (whose process is killed when it is dropped).
fn started(binary: &BinaryCopy, args: &[&str]) -> (Proxy, KillFromPidFile) {
    let pid_file = binary.dir.join("pid");
    let args = [args, &["--pid-file", pid_file.to_str().unwrap()]].concat();
    let proxy = Proxy::start_from(&binary.path, &args, &[]);
    let pid = proxy.pid();
    wait_until("the pid file", || read_pid(&pid_file) == Some(pid));
    (proxy, KillFromPidFile(pid_file))
}

#[test]
fn sigusr2_swaps_the_process_without_losing_a_request() {
    let binary = BinaryCopy::new("swap");
    let backend = Backend::http(|_| common::ok("served"));
    let pid_file = std::env::temp_dir().join(format!("shoal-upgrade-{}.pid", std::process::id()));
    let _cleanup = KillFromPidFile(pid_file.clone());
    let pid_arg = pid_file.to_str().unwrap();
    let args = ["--pid-file", pid_arg, "--access-log", "off"];
    let mut proxy = Proxy::start_from(&binary.path, &args, &[]);
    let _agent = Agent::start(&backend.arg(), &proxy.gossip(), &["--name", "web", "--check-path", "/"]);
    wait_until("the member routed", || common::get(proxy.addr, "/").body_str() == "served");
    let old = proxy.pid();
    wait_until("the pid file", || read_pid(&pid_file) == Some(old));

    // A broken binary first: the old process keeps serving, and says why.
    binary.install_broken();
    proxy.signal(libc::SIGUSR2);
    let failed = proxy.stderr.wait_for("the failed upgrade", |l| l.contains("upgrade failed"));
    assert!(failed.contains("exited") && failed.contains("keeps serving"), "{failed}");
    assert_eq!(common::get(proxy.addr, "/").body_str(), "served");
    assert_eq!(read_pid(&pid_file), Some(old));
    // Its gossip, paused for the successor, goes on: a member that joins now is heard of.
    proxy.stderr.wait_for("gossip resumed", |l| l.contains("gossip resumed as generation"));
    let _second = Agent::start(&backend.arg(), &proxy.gossip(), &["--name", "web2", "--check-path", "/"]);
    proxy.stderr.wait_for("a member that joined after the failed upgrade", |l| l.contains("member up: web2 "));

    // Then a good one, under load.
    binary.install(Path::new(env!("CARGO_BIN_EXE_shoal")));
    let url = format!("http://{}/", proxy.addr);
    let wrk = Command::new("wrk")
        .args(["-t2", "-c32", "-d4s", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk (apt-get install wrk)");
    let (ok, failed, refused, stop) =
        (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match common::http_get(proxy.addr, "/", Duration::from_secs(3)) {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) if e.contains("refused") => refused.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        });
        wait_until("load flowing", || ok.load(Ordering::SeqCst) > 50);
        proxy.signal(libc::SIGUSR2);
        wait_until("the new process in the pid file", || read_pid(&pid_file).is_some_and(|p| p != old));
        let before = ok.load(Ordering::SeqCst);
        wait_until("load after the swap", || ok.load(Ordering::SeqCst) > before + 50);
        stop.store(true, Ordering::SeqCst);
    });
    let out = wrk.wait_with_output().unwrap();

    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    eprintln!(
        "new connection per request: {} answered, {} failed, {} refused",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
    assert!(report.contains("requests in"), "{report}");
    assert!(!report.contains("Non-2xx") && !report.contains("Socket errors"), "wrk saw errors:\n{report}");
    assert_eq!((failed.load(Ordering::SeqCst), refused.load(Ordering::SeqCst)), (0, 0));

    let new = read_pid(&pid_file).unwrap();
    assert!(alive(new), "the new process serves");
    assert!(proxy.wait_exit().success(), "the old process exits cleanly");
    assert!(!alive(old) || std::fs::read_to_string(format!("/proc/{old}/stat")).is_ok_and(|s| s.contains(") Z")));
    assert_eq!(common::get(proxy.addr, "/").body_str(), "served", "the new process answers on the same port");
    proxy.stderr.wait_for("the handover logged", |l| l.contains(&format!("upgrade: pid {new} serves now")));
}

/// Sends SIGUSR2 to `pid` and waits for the pid file to name another process; returns it.
fn upgrade(pid: u32, pid_file: &Path) -> u32 {
    // SAFETY: kill(2) on a proxy process this test started (directly or by an upgrade).
    unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
    wait_until("the successor in the pid file", || read_pid(pid_file).is_some_and(|p| p != pid));
    read_pid(pid_file).unwrap()
}

/// What answers 30 requests in a row, by body.
fn answering(proxy: &Proxy) -> std::collections::BTreeSet<String> {
    (0..30).map(|_| common::get(proxy.addr, "/").body_str()).collect()
}

#[test]
fn an_upgrade_keeps_the_operators_overrides_and_passes_on_a_stop_asked_for_meanwhile() {
    let binary = BinaryCopy::new("overrides");
    let (a, b, c) =
        (Backend::http(|_| common::ok("a")), Backend::http(|_| common::ok("b")), Backend::http(|_| common::ok("c")));
    let pid_file = std::env::temp_dir().join(format!("shoal-upgrade-overrides-{}.pid", std::process::id()));
    let _cleanup = KillFromPidFile(pid_file.clone());
    let (a_arg, b_arg) = (format!("a={}", a.addr), format!("b={}", b.addr));
    let args = ["--pid-file", pid_file.to_str().unwrap(), "--backend", &a_arg, "--backend", &b_arg, "--threads", "1"];
    let mut proxy = Proxy::start_from(&binary.path, &args, &[]);
    let agent = Agent::start(&c.arg(), &proxy.gossip(), &["--name", "c", "--check-path", "/"]);
    let all: std::collections::BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    wait_until("a, b and the member c answering", || answering(&proxy) == all);
    assert_eq!(proxy.runtime("set server nodes/a state maint; set server nodes/c weight 0"), "\n\n");
    let only_b: std::collections::BTreeSet<String> = ["b".to_string()].into();
    assert_eq!(answering(&proxy), only_b);

    // The successor starts with the overrides in force: a still in maintenance, c still weighted 0.
    let first = proxy.pid();
    wait_until("the pid file", || read_pid(&pid_file) == Some(first));
    let second = upgrade(first, &pid_file);
    assert!(proxy.wait_exit().success());
    assert_eq!(answering(&proxy), only_b, "overrides lost in the upgrade");
    let state = proxy.runtime("show servers state");
    let row = |name: &str| state.lines().find(|l| l.split(' ').nth(3) == Some(name)).unwrap_or_default().to_string();
    assert_eq!(row("a").split(' ').nth(6), Some("1"), "a in maintenance (srv_admin_state 1): {state}");

    // A stop sent while an upgrade is under way (the successor waits for the paused member c, up to 3 s)
    // goes on to the process that serves once it does.
    agent.signal(libc::SIGSTOP);
    // SAFETY: kill(2) on the proxy the pid file names, started by this test's upgrade.
    unsafe { libc::kill(second as i32, libc::SIGUSR2) };
    proxy.stderr.wait_count("the second upgrade starting", 2, |l| l.contains("upgrade: starting"));
    // SAFETY: as above.
    unsafe { libc::kill(second as i32, libc::SIGTERM) };
    // The successor waits up to 3 s for the paused member, then leaves and stops: more than WAIT under load.
    let start = Instant::now();
    while !(gone(second) && read_pid(&pid_file).is_none() && std::net::TcpStream::connect(proxy.addr).is_err()) {
        assert!(start.elapsed() < Duration::from_secs(30), "a proxy process still serves: {:?}", proxy.stderr.all());
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = proxy.stderr.all();
    let passed = lines.iter().position(|l| l.contains("a stop asked for during the upgrade goes on to pid"));
    let starting = lines.iter().rposition(|l| l.contains("upgrade: starting"));
    assert!(passed.is_some() && starting < passed, "the stop came during the upgrade and went on: {lines:?}");
    agent.signal(libc::SIGCONT);
}

/// Both processes hold the gossip socket during an upgrade. While the successor starts, the predecessor must
/// not read it: each datagram reaches one reader, so the successor lost answers meant for it (a member it
/// probes unanswered is suspected), and the predecessor, still probing under the identity the successor
/// replaces, was told it is down and rejoined. Three members, two upgrades: no rejoin anywhere, every member
/// routed by the successor.
#[test]
fn an_upgrade_leaves_the_gossip_to_the_successor() {
    let binary = BinaryCopy::new("gossip");
    let pid_file = std::env::temp_dir().join(format!("shoal-upgrade-gossip-{}.pid", std::process::id()));
    let _cleanup = KillFromPidFile(pid_file.clone());
    let args = ["--pid-file", pid_file.to_str().unwrap(), "--threads", "1", "--access-log", "off"];
    let mut proxy = Proxy::start_from(&binary.path, &args, &[]);
    let names: [&'static str; 3] = ["a", "b", "c"];
    let backends: Vec<Backend> = names.iter().map(|&n| Backend::http(move |_| common::ok(n))).collect();
    let agents: Vec<Agent> = names
        .iter()
        .zip(&backends)
        .map(|(n, b)| Agent::start(&b.arg(), &proxy.gossip(), &["--name", n, "--check-path", "/"]))
        .collect();
    let all: std::collections::BTreeSet<String> = names.map(String::from).into();
    wait_until("a, b and c answering", || answering(&proxy) == all);
    let mut pid = proxy.pid();
    wait_until("the pid file", || read_pid(&pid_file) == Some(pid));
    for round in 1..=2 {
        pid = upgrade(pid, &pid_file);
        proxy.stderr.wait_count("the predecessor gone", round, |l| l.contains("left the cluster"));
        assert_eq!(answering(&proxy), all, "after upgrade {round}");
    }
    proxy.wait_exit();
    let rejoined = |lines: Vec<String>| lines.into_iter().filter(|l| l.contains("rejoined as generation")).count();
    assert_eq!(rejoined(proxy.stderr.all()), 0, "a proxy process rejoined: {:?}", proxy.stderr.all());
    for (name, agent) in names.iter().zip(&agents) {
        assert_eq!(rejoined(agent.stderr.all()), 0, "{name} rejoined: {:?}", agent.stderr.all());
    }
    let lines = proxy.stderr.all();
    assert!(!lines.iter().any(|l| l.contains("serving before every member")), "{lines:?}");
    // SAFETY: kill(2) on the proxy the pid file names, started by this test's upgrades.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_until("the last proxy gone", || gone(pid));
}

/// Writes at `path` a release that records its pid in `marker`, then runs shoal.
fn marking_release(path: &Path, marker: &Path) {
    let script =
        format!("#!/bin/sh\necho \"$$\" > '{}'\nexec '{}' \"$@\"\n", marker.display(), env!("CARGO_BIN_EXE_shoal"));
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Points `link` at `target` as a deploy does (a new symlink renamed over it), upgrades the proxy, and checks
/// that the release there ran (its `marker` holds the new pid); returns that pid.
fn repoint_and_upgrade(link: &Path, target: &Path, marker: &Path, proxy: &mut Proxy, pid_file: &Path) -> u32 {
    let staged = link.with_extension("new");
    std::os::unix::fs::symlink(target, &staged).unwrap();
    std::fs::rename(&staged, link).unwrap();
    let new = upgrade(proxy.pid(), pid_file);
    assert!(proxy.wait_exit().success());
    let ran = std::fs::read_to_string(marker).unwrap_or_default();
    assert_eq!(ran.trim(), new.to_string(), "the release {} names now did not run", link.display());
    new
}

/// Started through a symlink (`/usr/local/bin/shoal -> /opt/shoal/1.4/shoal`), the proxy upgrades to what the
/// symlink names at the signal: a release repointed to runs. It restarted the old release before (the path
/// was read from /proc/self/exe, which had followed the symlink at the start), saying it had upgraded. The
/// successor's event hooks do not get the handover's variables (descriptors meant for it alone).
#[test]
fn an_upgrade_runs_what_the_started_symlink_names_now_and_its_hooks_get_no_handover_variables() {
    let binary = BinaryCopy::new("symlink");
    let link = binary.dir.join("current");
    std::os::unix::fs::symlink(&binary.path, &link).unwrap();
    let marker = binary.dir.join("new-release-ran");
    let release = binary.dir.join("release-2");
    marking_release(&release, &marker);

    let backend = Backend::http(|_| common::ok("served"));
    let pid_file = binary.dir.join("pid");
    let _cleanup = KillFromPidFile(pid_file.clone());
    let hook = "env | grep -o '^SHOAL_[A-Z_]*' | sed 's/^/hook-env /' >&2; echo hook-ran >&2";
    let args = ["--pid-file", pid_file.to_str().unwrap(), "--threads", "1", "--on-event", hook];
    let mut proxy = Proxy::start_from(&link, &args, &[]);
    let first = proxy.pid();
    wait_until("the pid file", || read_pid(&pid_file) == Some(first));
    let second = repoint_and_upgrade(&link, &release, &marker, &mut proxy, &pid_file);

    // A member joining now runs the successor's hook.
    let _agent = Agent::start(&backend.arg(), &proxy.gossip(), &["--name", "web", "--check-path", "/"]);
    wait_until("the member routed", || common::get(proxy.addr, "/").body_str() == "served");
    proxy.stderr.wait_for("the successor's hook", |l| l == "hook-ran");
    let handover: Vec<String> = proxy
        .stderr
        .all()
        .into_iter()
        .filter(|l| {
            let handover = ["INHERIT", "READY_FD", "PEERS", "OVERRIDES", "STATICS_DOWN"];
            handover.iter().any(|v| l == &format!("hook-env SHOAL_{v}"))
        })
        .collect();
    assert!(handover.is_empty(), "the hook got the handover's variables: {handover:?}");
    // SAFETY: kill(2) on the proxy the pid file names, started by this test's upgrade.
    unsafe { libc::kill(second as i32, libc::SIGTERM) };
    wait_until("the successor gone", || gone(second));
}

/// Started as `./shoal` in a directory reached through a symlink (`cd /opt/shoal/current`), the proxy upgrades
/// to what that directory names at the signal: the shell's `$PWD`, not the physical directory, which is the
/// old release's (re-run before, through getcwd).
#[test]
fn an_upgrade_from_a_relative_path_follows_the_shells_directory() {
    let binary = BinaryCopy::new("relative");
    let (first, second) = (binary.dir.join("release-1"), binary.dir.join("release-2"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    std::fs::rename(&binary.path, first.join("shoal")).unwrap();
    let marker = binary.dir.join("release-2-ran");
    marking_release(&second.join("shoal"), &marker);
    let current = binary.dir.join("current");
    std::os::unix::fs::symlink(&first, &current).unwrap();

    let pid_file = binary.dir.join("pid");
    let _cleanup = KillFromPidFile(pid_file.clone());
    let pwd = current.to_str().unwrap();
    let args = ["--pid-file", pid_file.to_str().unwrap(), "--threads", "1"];
    let mut proxy = Proxy::start_in(Some(&current), Path::new("./shoal"), &args, &[("PWD", pwd)]);
    let old = proxy.pid();
    wait_until("the pid file", || read_pid(&pid_file) == Some(old));
    let new = repoint_and_upgrade(&current, &second, &marker, &mut proxy, &pid_file);
    // SAFETY: kill(2) on the proxy the pid file names, started by this test's upgrade.
    unsafe { libc::kill(new as i32, libc::SIGTERM) };
    wait_until("the new process gone", || gone(new));
}

/// A reload or an upgrade asked for while the proxy still loads its configuration (here: its key file is a
/// FIFO no one has written yet) is ignored, not fatal: both signals killed it before their handlers were in.
#[test]
fn a_reload_or_upgrade_signal_during_the_start_does_not_kill_the_proxy() {
    let dir = std::env::temp_dir().join(format!("shoal-early-signal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("key");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path in a directory of the test's own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let mut child = common::shoal()
        .args(["proxy", "--listen", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--admin", "off", "--runtime-api", "off"])
        .arg("--cluster-key-file")
        .arg(&fifo)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = common::Lines::default();
    lines.clone().collect_from(child.stderr.take().unwrap());
    // A writer's non-blocking open succeeds once the proxy has the FIFO open for reading: it is loading.
    let writer = loop {
        match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo) {
            Ok(w) => break w,
            Err(_) => {
                assert!(child.try_wait().unwrap().is_none(), "the proxy exited: {:?}", lines.all());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    for sig in [libc::SIGHUP, libc::SIGUSR2] {
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let key = format!("{}\n", common::keygen());
    let _ = std::io::Write::write_all(&mut { writer }, key.as_bytes());
    // The file is read again (checked, loaded, then watched for a new key): every reader gets the key, until
    // the proxy is gone (a FIFO with no writer would hold a read, and the proxy, for good).
    let exited = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            while !exited.load(Ordering::SeqCst) {
                let open = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
                if let Ok(mut w) = open {
                    let _ = std::io::Write::write_all(&mut w, key.as_bytes());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let listening =
            std::panic::catch_unwind(|| lines.wait_for("the proxy listening", |l| l.contains("listening on ")));
        let alive = child.try_wait().unwrap().is_none();
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        exited.store(true, Ordering::SeqCst);
        assert!(listening.is_ok() && alive, "the proxy died of a signal sent while it loaded: {status}");
        status
    });
    assert!(status.success(), "{:?}", lines.all());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A proxy with a pid file and a request in flight that its server answers ("slow done") once released: what
/// keeps an old process draining after an upgrade.
struct Holding {
    proxy: Proxy,
    pid_file: KillFromPidFile,
    busy: common::Wire,
    release: std::sync::mpsc::Sender<()>,
    _backend: Backend,
}

impl Holding {
    fn start(binary: &BinaryCopy) -> Holding {
        let (backend, release) = Backend::gated("slow done", "done");
        let backend_arg = backend.arg();
        let (proxy, pid_file) = started(binary, &["--backend", &backend_arg, "--grace", "30s", "--threads", "1"]);
        let mut busy = common::Wire::connect(proxy.addr);
        busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
        backend.wait_requests(1);
        Holding { proxy, pid_file, busy, release, _backend: backend }
    }
}

/// While the old process finishes a request after the handover, the new one dies (a release that crashes on
/// its first real traffic): nothing accepts connections any more. The old process says so, removes the pid
/// file that names the dead process and exits with an error once drained, so that a supervisor restarts the
/// proxy; it exited 0 and left the dead pid in the file, which systemd takes for a clean stop.
#[test]
fn a_successor_dying_while_the_old_process_drains_is_an_error() {
    let binary = BinaryCopy::new("dying");
    let Holding { mut proxy, pid_file, mut busy, release, _backend } = Holding::start(&binary);
    let (old, pid_file) = (proxy.pid(), &pid_file.0);

    // The new release serves, then dies a second later.
    let crashing = binary.dir.join("crashing");
    let script =
        format!("#!/bin/sh\n(sleep 1; kill -9 $$) >/dev/null 2>&1 &\nexec '{}' \"$@\"\n", env!("CARGO_BIN_EXE_shoal"));
    std::fs::write(&crashing, script).unwrap();
    std::fs::set_permissions(&crashing, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    binary.install(&crashing);
    let new = upgrade(old, pid_file);
    let said = proxy.stderr.wait_for("the dead successor noticed", |l| l.contains("nothing accepts connections now"));
    assert!(said.contains(&format!("pid {new}")), "{said}");
    wait_until("the dead pid out of the pid file", || read_pid(pid_file).is_none());

    release.send(()).unwrap();
    let answer = busy.read_response(false).expect("the request in flight answered");
    assert_eq!(answer.body_str(), "slow done");
    let status = proxy.wait_exit();
    assert!(!status.success(), "the old process exited {status:?} with nothing serving after it");
}

/// `systemctl stop` signals the unit's main process, still the old one while it finishes a request after an
/// upgrade: the stop goes on to the new process, which stops gracefully (no failure: the old one logs it),
/// and the old one exits 0 once it has, so that systemd does not kill the new one mid-drain. It cut its own
/// requests and left the new process running (for systemd's SIGKILL).
#[test]
fn a_stop_sent_to_the_old_process_while_it_drains_stops_the_new_one_too() {
    let binary = BinaryCopy::new("stopped");
    let Holding { mut proxy, pid_file, mut busy, release, _backend } = Holding::start(&binary);
    let (old, pid_file) = (proxy.pid(), &pid_file.0);
    let new = upgrade(old, pid_file);
    proxy.stderr.wait_for("the old process draining", |l| l.contains("left the cluster"));
    proxy.signal(libc::SIGTERM);
    proxy
        .stderr
        .wait_for("the stop passed on", |l| l.contains(&format!("a stop sent to this process goes on to pid {new}")));
    proxy.stderr.wait_for("the new one stopped", |l| l.contains(&format!("the new process (pid {new}) stopped")));
    assert!(gone(new));
    release.send(()).unwrap();
    assert_eq!(busy.read_response(false).expect("the request in flight").body_str(), "slow done");
    assert!(proxy.wait_exit().success());
}

/// `systemctl reload` signals the unit's main process, still the old one while it finishes its requests after
/// an upgrade: the SIGHUP goes on to the new process, which serves and reloads the file. It was ignored.
#[test]
fn a_reload_sent_to_the_old_process_while_it_drains_reaches_the_new_one() {
    let binary = BinaryCopy::new("reload-drain");
    let (first, release) = Backend::gated("slow", "first");
    let second = Backend::http(|_| common::ok("second"));
    let listen = common::free_port();
    let file = common::TempFile::new(
        "upgrade-reload.toml",
        &format!("listen = [\"{listen}\"]\nbackend = [\"a={}\"]\nthreads = 1\ngrace = \"30s\"\n", first.addr),
    );
    let (mut proxy, pid_file) = started(&binary, &["--config", file.arg()]);
    let (old, pid_file) = (proxy.pid(), &pid_file.0);
    let mut busy = common::Wire::connect(proxy.addr);
    busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    first.wait_requests(1);
    let new = upgrade(old, pid_file);
    // Past the handover itself (signals pending at its end were passed on before): the old process left.
    proxy.stderr.wait_for("the old process draining", |l| l.contains("left the cluster"));

    file.write(&format!("listen = [\"{listen}\"]\nbackend = [\"b={}\"]\nthreads = 1\ngrace = \"30s\"\n", second.addr));
    proxy.signal(libc::SIGHUP);
    proxy.stderr.wait_for("the reload passed on", |l| l.contains(&format!("goes on to pid {new}")));
    wait_until("the new process serving the reloaded file", || common::get(proxy.addr, "/").body_str() == "second");
    release.send(()).unwrap();
    assert_eq!(busy.read_response(false).expect("the request in flight").body_str(), "slow");
    assert!(proxy.wait_exit().success());
    // SAFETY: kill(2) on the proxy the pid file names, started by this test's upgrade.
    unsafe { libc::kill(new as i32, libc::SIGTERM) };
    wait_until("the new process gone", || gone(new));
}

/// A static server its health check holds DOWN stays DOWN in the new process, as HAProxy's server-state file
/// keeps it: it started UP there, one failed check from DOWN, and took requests until that check failed,
/// which for a server that leaves checks unanswered is a whole interval (here 30 s in the file the new
/// process reads, during which every other request got the server's 503).
#[test]
fn a_static_server_down_by_its_check_stays_down_across_an_upgrade() {
    let binary = BinaryCopy::new("statics-down");
    let sick = Backend::http(|req| {
        if req.start_line().contains("/health") {
            std::thread::sleep(Duration::from_secs(5));
        }
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick".to_vec()
    });
    let well = Backend::http(|_| common::ok("well"));
    let listen = common::free_port();
    let file_with = |interval: &str, fall: u32| {
        format!(
            "listen = [\"{listen}\"]\nbackend = [\"sick={}\", \"well={}\"]\nthreads = 1\nbackend-check-path = \"/health\"\n\
             backend-check-interval = \"{interval}\"\nbackend-fall = {fall}\n",
            sick.addr, well.addr
        )
    };
    let file = common::TempFile::new("statics-down.toml", &file_with("100ms", 1));
    let (mut proxy, pid_file) = started(&binary, &["--config", file.arg()]);
    let (old, pid_file) = (proxy.pid(), &pid_file.0);
    proxy.wait_server("sick", "DOWN", |status, _| status == "DOWN");
    let well_only: std::collections::BTreeSet<String> = ["well".to_string()].into();
    assert_eq!(answering(&proxy), well_only);

    // The new process's checks are slow and forgiving: what it starts with decides the first 30 s.
    file.write(&file_with("30s", 3));
    let new = upgrade(old, pid_file);
    assert!(proxy.wait_exit().success());
    assert_eq!(answering(&proxy), well_only, "the sick server took requests after the upgrade");
    assert_eq!(proxy.server_rows()["sick"]["status"], "DOWN");
    // SAFETY: kill(2) on the proxy the pid file names, started by this test's upgrade.
    unsafe { libc::kill(new as i32, libc::SIGTERM) };
    wait_until("the new process gone", || gone(new));
}

/// A second SIGUSR2 sent while an upgrade is failing (an impatient operator, a deploy script's retry) is
/// dropped, with a line saying so: it started a second attempt with the same broken binary at once, gossip
/// paused again for nothing.
#[test]
fn an_upgrade_asked_for_during_a_failing_one_is_dropped() {
    let binary = BinaryCopy::new("failing-twice");
    let backend = Backend::http(|_| common::ok("served"));
    let (proxy, _pid_file) = started(&binary, &["--backend", &backend.arg(), "--threads", "1"]);
    let go = binary.dir.join("go");
    binary.install_failing_once(&go);
    proxy.signal(libc::SIGUSR2);
    proxy.stderr.wait_for("the broken binary running", |l| l == "broken build, slowly");
    proxy.signal(libc::SIGUSR2);
    std::fs::write(&go, "").unwrap();
    proxy.stderr.wait_for("the failure", |l| l.contains("upgrade failed"));
    proxy.stderr.wait_for("the second signal dropped", |l| l.contains("came during the failed upgrade is dropped"));
    let attempts = proxy.stderr.all().iter().filter(|l| l.contains("upgrade: starting")).count();
    assert_eq!(attempts, 1, "{:?}", proxy.stderr.all());
    assert_eq!(common::get(proxy.addr, "/").body_str(), "served");
}
