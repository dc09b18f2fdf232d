//! Configuration from flags, `SHOAL_*` environment variables and a TOML file; errors name the field.

mod common;

use common::{shoal, Backend, Proxy, TempFile};

fn check(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = shoal();
    cmd.arg("proxy").arg("--check").args(args);
    if !args.contains(&"--gossip") {
        cmd.args(["--gossip", "127.0.0.1:7946"]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(text: &str) -> TempFile {
    TempFile::new("config.toml", text)
}

#[test]
fn file_env_and_flags_merge_in_order() {
    let f =
        file("listen = [\"127.0.0.1:8001\"]\nbackend = [\"a=10.0.0.1:80\"]\nthreads = 3\ntimeout-connect = \"2s\"\n");
    let (ok, out, err) = check(&["--config", f.arg(), "--threads", "1"], &[("SHOAL_TIMEOUT_CONNECT", "750ms")]);
    assert!(ok, "{err}");
    assert!(out.contains("127.0.0.1:8001"), "file value used: {out}");
    assert!(out.contains("--threads 1\n"), "flag beats file: {out}");
    assert!(out.contains("--timeout-connect 750ms\n"), "env beats file: {out}");
    let (ok, out, _) = check(&[], &[("SHOAL_BACKEND", "s1=web1:3000,s2=web2:3000")]);
    assert!(ok && out.contains("--backend s1=web1:3000,weight=100\n--backend s2=web2:3000"), "{out}");
}

#[test]
fn bad_values_name_the_field_and_line() {
    let f = file("threads = 2\n\ntimeout-server = \"5x\"\n");
    let (ok, _, err) = check(&["--config", f.arg()], &[]);
    assert!(!ok);
    assert!(err.contains(":3: field `timeout-server`") && err.contains("unknown unit"), "{err}");

    let f = file("listen = [\"0.0.0.0:80\"]\nbakend = [\"x:1\"]\n");
    let (ok, _, err) = check(&["--config", f.arg()], &[]);
    assert!(!ok && err.contains("bakend") && err.contains("line 2"), "unknown field: {err}");

    let f = file("max-headers = 1000\n");
    let (ok, _, err) = check(&["--config", f.arg()], &[]);
    assert!(!ok && err.contains("max-headers"), "{err}");

    let (ok, _, err) = check(&["--backend", "web"], &[]);
    assert!(!ok && err.contains("--backend"), "{err}");
    let (ok, _, err) = check(&[], &[("SHOAL_TIMEOUT_IDLE", "soon")]);
    assert!(
        !ok && err.contains("--timeout-idle") && err.contains("SHOAL_TIMEOUT_IDLE"),
        "named by its variable: {err}"
    );
    let (ok, _, err) = check(&["--config", "/nonexistent/shoal.toml"], &[]);
    assert!(!ok && err.contains("/nonexistent/shoal.toml"), "{err}");

    let (ok, _, err) = check(&["--cluster-key", "s3cret-passphrase"], &[]);
    assert!(!ok && err.contains("`cluster-key`") && err.contains("shoal keygen"), "{err}");
    assert!(!err.contains("s3cret-passphrase"), "a bad key is not echoed: {err}");
    let f = file("cluster-key = [\"c2hvcnQ=\"]\n");
    let (ok, _, err) = check(&["--config", f.arg()], &[]);
    assert!(!ok && err.contains(":1: field `cluster-key`") && err.contains("32 bytes"), "{err}");
    let (ok, _, err) = check(&["--cluster-key-file", "/nonexistent/keys"], &[]);
    assert!(!ok && err.contains("`cluster-key-file`") && err.contains("/nonexistent/keys"), "{err}");

    // One address for plain and TLS clients: the kernel would split them at random.
    let (ok, _, err) = check(&["--listen", "127.0.0.1:8443", "--tls-listen", "127.0.0.1:8443"], &[]);
    assert!(!ok && err.contains("`tls-listen`: 127.0.0.1:8443 is also a plain listener"), "{err}");
    // Named as the file spells it, not as the code does.
    let f = file("runtime-api = \"nowhere\"\n");
    let (ok, _, err) = check(&["--config", f.arg()], &[]);
    assert!(!ok && err.contains(":1: field `runtime-api`"), "{err}");
    // A check interval of 0 spun, and every check timed out at once; rise or fall out of range wrapped.
    let checks = ["--backend", "a=127.0.0.1:9", "--backend-check-path", "/"];
    let (ok, _, err) = check(&[&checks[..], &["--backend-check-interval", "0"]].concat(), &[]);
    assert!(!ok && err.contains("`backend-check-interval`: must be more than 0"), "{err}");
    let f = file("backend-rise = 4294967296\n");
    let (ok, _, err) = check(&[&checks[..], &["--config", f.arg()]].concat(), &[]);
    assert!(!ok && err.contains("`backend-rise`") && err.contains("outside 1..=1000"), "{err}");
    let (ok, _, err) = check(&[&checks[..], &["--backend-fall", "0"]].concat(), &[]);
    assert!(!ok && err.contains("`backend-fall`"), "{err}");
}

/// `--cluster-key-file` beats `SHOAL_CLUSTER_KEY` as any flag beats the environment (the compose file sets
/// the variable; an operator rotates with a file): clap refused the two together, naming a flag never typed.
#[test]
fn a_cluster_key_file_flag_beats_the_key_in_the_environment() {
    let keys = file(&format!("{}\n", common::keygen()));
    let key = common::keygen();
    let (ok, out, err) = check(&["--cluster-key-file", keys.arg()], &[("SHOAL_CLUSTER_KEY", &key)]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("--cluster-key-file {}\n", keys.arg())) && !out.contains("--cluster-key <"), "{out}");
    let (ok, out, err) = check(&["--cluster-key", &key], &[("SHOAL_CLUSTER_KEY_FILE", keys.arg())]);
    assert!(ok && out.contains("--cluster-key <secret>") && !out.contains("--cluster-key-file"), "{out}{err}");
    let (ok, _, err) = check(&["--cluster-key", &key, "--cluster-key-file", keys.arg()], &[]);
    assert!(!ok && err.contains("`cluster-key-file`") && err.contains("keep one"), "{err}");
}

/// Runs `shoal agent` with `args` (and a check, and `true` to supervise) and returns its stderr once it has
/// exited, failing if it exits 0 or is still running after `WAIT`.
fn agent_refused(args: &[&str]) -> String {
    let base = ["agent", "--service", "127.0.0.1:9", "--gossip", "127.0.0.1:0", "--check-path", "/"];
    refused(shoal().args(base).args(args).args(["--", "true"]), args)
}

/// `--app-user` names what it cannot use: a user or group no file knows, root, or no app to run.
#[test]
fn an_app_user_that_cannot_be_used_is_refused_by_name() {
    for (value, says) in [
        ("no-such-user-here", "no user \"no-such-user-here\""),
        ("65534:no-such-group-here", "no group \"no-such-group-here\""),
        ("0", "as root"),
        ("65534:", "no group"),
    ] {
        let err = agent_refused(&["--app-user", value]);
        assert!(err.contains("`app-user`") && err.contains(says), "{value}: {err}");
    }
    let base = ["agent", "--service", "127.0.0.1:9", "--gossip", "127.0.0.1:0", "--app-user", "65534"];
    let err = refused(shoal().args(base), &base);
    assert!(err.contains("`app-user`: there is no app"), "{err}");
    // Root without the capabilities to change user and signal the app (a container's `cap_drop`).
    let mut capless = std::process::Command::new("setpriv");
    capless.args(["--bounding-set=-setuid,-kill", "--", env!("CARGO_BIN_EXE_shoal")]).args(base).args(["--", "true"]);
    let err = refused(&mut capless, &base);
    assert!(err.contains("`app-user`") && err.contains("CAP_KILL, CAP_SETUID") && !err.contains("SETGID"), "{err}");
}

/// Runs `cmd` and returns its stderr once it has exited, failing if it exits 0 or still runs after `WAIT`.
fn refused(cmd: &mut std::process::Command, args: &[&str]) -> String {
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > common::WAIT {
            let _ = child.kill();
            panic!("{args:?} accepted: the agent runs");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{args:?} accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The agent's check settings: 0 made its loops spin (a check per turn, or /bin/sh in a tight loop).
#[test]
fn an_agent_with_a_zero_interval_or_count_is_refused_by_name() {
    for (flag, value) in [("--check-interval", "0"), ("--agent-inter", "0s"), ("--rise", "0"), ("--fall", "0")] {
        let err = agent_refused(&[flag, value]);
        let field = flag.trim_start_matches('-');
        assert!(err.contains(&format!("`{field}`: must be more than 0")), "{flag}: {err}");
    }
}

/// Values that were accepted and then failed quietly: a check whose request line every server answers 400,
/// two servers sharing the one verdict their name gets, a key file never read, a name cut short.
#[test]
fn values_that_would_fail_quietly_later_are_refused_by_name() {
    for servers in [["web=127.0.0.1:1", "web=127.0.0.1:2"], ["127.0.0.1:1", "127.0.0.1:1"]] {
        let (ok, _, err) = check(&["--backend", servers[0], "--backend", servers[1]], &[]);
        assert!(!ok && err.contains("`backend`: two servers are named"), "{servers:?}: {err}");
    }
    let (ok, _, err) = check(&["--backend-check-path", "/a b"], &[]);
    assert!(!ok && err.contains("--backend-check-path") && err.contains("percent-encode"), "{err}");
    let f = file("backend-check-path = \"/health\\tcheck\"\n");
    let (ok, _, err) = check(&["--config", f.arg()], &[]);
    assert!(!ok && err.contains(":1: field `backend-check-path`"), "{err}");
    // Read, and refused, although no path turns the checks on yet.
    let f = file("backend-check-interval = \"5x\"\n");
    let (ok, _, err) = check(&["--config", f.arg()], &[]);
    assert!(!ok && err.contains(":1: field `backend-check-interval`"), "{err}");
    let (ok, _, err) = check(&["--backend-rise", "0"], &[]);
    assert!(!ok && err.contains("`backend-rise`"), "{err}");
    let (ok, _, err) = check(&["--backend-check-interval", "0"], &[]);
    assert!(!ok && err.contains("`backend-check-interval`: must be more than 0"), "accepted while no path: {err}");
    // An empty variable is a value to clap: `sh -c ""` ran on every event.
    let (ok, _, err) = check(&[], &[("SHOAL_ON_EVENT", "")]);
    assert!(!ok && err.contains("`on-event`: empty command"), "{err}");
    // `SHOAL_JOIN="a:1, b:2"`: " b:2" passed the check and never resolved.
    let (ok, out, err) = check(&[], &[("SHOAL_JOIN", "127.0.0.1:7001, 127.0.0.1:7002")]);
    assert!(ok && out.contains("--join 127.0.0.1:7001\n--join 127.0.0.1:7002\n"), "{err}{out}");
    // Each thread accepts on its own listener: three connections cannot be shared by four.
    let (ok, _, err) = check(&["--threads", "4", "--max-connections", "3"], &[]);
    assert!(!ok && err.contains("`max-connections`: 3 is fewer than the 4 threads"), "{err}");
    let (ok, out, err) = check(&["--threads", "2", "--max-connections", "3"], &[]);
    assert!(ok && out.contains("--max-connections 3\n"), "{err}");
    // In one file, as with flags: keep one.
    let keys = file(&format!("{}\n", common::keygen()));
    let f = file(&format!("cluster-key = \"{}\"\ncluster-key-file = \"{}\"\n", common::keygen(), keys.arg()));
    let (ok, _, err) = check(&["--config", f.arg()], &[]);
    assert!(!ok && err.contains("`cluster-key-file`: given with cluster-key in the same file"), "{err}");
    // The on/off spellings every other switch takes.
    let (ok, _, err) = check(&["--gossip", "0.0.0.0:7946"], &[("SHOAL_GOSSIP_INSECURE", "on")]);
    assert!(ok, "{err}");

    let err = agent_refused(&["--name", &"n".repeat(40)]);
    assert!(err.contains("`name`: ") && err.contains("at most 32"), "{err}");
    // `set server nodes/web 1 ...` cannot name it: the runtime API splits on spaces.
    for name in ["web 1", "web/1"] {
        let err = agent_refused(&["--name", name]);
        assert!(err.contains("`name`: invalid server name"), "{name}: {err}");
    }
    let err = agent_refused(&["--agent-check", " "]);
    assert!(err.contains("`agent-check`: empty"), "{err}");
    let out = shoal().args(["members", "--status", "alvie"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && err.contains("alvie") && err.contains("alive"), "{err}");
    let err = agent_refused(&["--check-path", "/health check"]);
    assert!(err.contains("--check-path"), "{err}");
    let err = agent_refused(&["--check-method", "get"]);
    assert!(err.contains("--check-method") && err.contains("HEAD or GET"), "{err}");

    let out = shoal().args(["demo", "--first-port", "65535", "--nodes", "2"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`first-port`: 2 nodes from port 65535 go past 65535"), "{err}");
}

#[test]
fn cluster_keys_never_show_in_the_checked_configuration() {
    let (k1, k2) = (common::keygen(), common::keygen());
    let (ok, out, err) = check(&[], &[("SHOAL_CLUSTER_KEY", &format!("{k1},{k2}"))]);
    assert!(ok, "{err}");
    assert!(!out.contains(&k1) && !out.contains(&k2), "keys printed: {out}");
    assert!(out.contains("<secret>"), "{out}");
    let f = file(&format!("cluster-key = [\"{k1}\", \"{k2}\"]\n"));
    let (ok, out, err) = check(&["--config", f.arg()], &[]);
    assert!(ok && !out.contains(&k1), "{err}{out}");
}

#[test]
fn env_configures_a_running_proxy() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start_with(&[], &[("SHOAL_BACKEND", &backend.arg()), ("SHOAL_ACCESS_LOG", "off")]);
    assert_eq!(common::get(proxy.addr, "/env").body_str(), "/env");
}

/// As HAProxy: a pid file that cannot be written refuses the start (it logged, served on, and a service
/// manager waiting on the file never saw it).
#[test]
fn a_pid_file_that_cannot_be_written_fails_the_start() {
    let args = ["proxy", "--listen", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let pid_file = ["--runtime-api", "off", "--pid-file", "/nonexistent/shoal.pid"];
    let err = refused(shoal().args(args).args(pid_file), &pid_file);
    assert!(err.contains("`pid-file`: cannot write /nonexistent/shoal.pid"), "{err}");

    // A second instance started by mistake fails to bind (the same admin address): the running one's pid
    // file stays as it was (the second wrote its own pid first, then removed the file as its own).
    let file = TempFile::new("pid", "");
    let running = Proxy::start(&["--pid-file", file.arg()]);
    let mine = format!("{}\n", running.pid());
    common::wait_until("the pid file written", || std::fs::read_to_string(&file.0).is_ok_and(|p| p == mine));
    let admin = running.admin().to_string();
    let again = ["--admin", &admin, "--runtime-api", "off", "--pid-file", file.arg()];
    let err = refused(shoal().args(&args[..5]).args(again), &again);
    assert!(err.contains(&admin), "{err}");
    assert_eq!(std::fs::read_to_string(&file.0).unwrap(), mine, "the running proxy's pid file");
}

/// The runtime API asks no password and changes routing: beyond loopback, said at start.
#[test]
fn a_runtime_api_beyond_loopback_is_warned_about() {
    let open = Proxy::start(&["--runtime-api", "0.0.0.0:0"]);
    open.stderr
        .wait_for("the warning", |l| l.contains("the runtime API on 0.0.0.0:") && l.contains("asks no password"));
    let quiet = Proxy::start(&[]);
    quiet.runtime_api();
    assert!(!quiet.stderr.all().iter().any(|l| l.contains("asks no password")), "{:?}", quiet.stderr.all());
}

#[test]
fn an_address_in_use_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let out = shoal().args(["proxy", "--listen", &listen, "--gossip", "127.0.0.1:0"]).output().unwrap();
    // SO_REUSEPORT lets two shoal processes share a port, but not a socket bound without it.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bind"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A second proxy started by mistake on a running one's port is refused, naming the way to replace one: with
/// SO_REUSEPORT it joined the port's group and took its share of the connections under its own configuration.
/// The running one keeps every connection.
#[test]
fn a_second_proxy_on_a_running_ones_port_is_refused() {
    let backend = Backend::echo_path();
    let running = Proxy::start(&["--backend", &backend.arg(), "--threads", "1"]);
    let listen = running.addr.to_string();
    let args = ["proxy", "--listen", &listen, "--gossip", "127.0.0.1:0", "--admin", "off", "--runtime-api", "off"];
    let err = refused(shoal().args(args), &args);
    assert!(err.contains(&format!("bind {listen}: ")) && err.contains("another process listens there"), "{err}");
    assert!(err.contains("Address already in use") && err.contains("USR2"), "{err}");
    for _ in 0..20 {
        assert_eq!(common::get(running.addr, "/still").body_str(), "/still");
    }
}

/// The process's own addresses on one port are not another process's: `127.0.0.1:P` and the dual-stack
/// `[::]:P` together (the probe for a second proxy refused the second of them).
#[test]
fn a_proxy_may_listen_on_overlapping_addresses_of_one_port() {
    let backend = Backend::echo_path();
    let port = common::free_port().port();
    let (v4, any) = (format!("127.0.0.1:{port}"), format!("[::]:{port}"));
    let proxy = Proxy::start(&["--listen", &v4, "--listen", &any, "--backend", &backend.arg(), "--threads", "1"]);
    assert_eq!(common::get(proxy.addr, "/v4").body_str(), "/v4");
    let v6: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    assert_eq!(common::get(v6, "/v6").body_str(), "/v6");
}

#[test]
fn pinned_threads_run_on_one_cpu_each() {
    let backend = Backend::echo_path();
    let proxy = Proxy::start(&["--backend", &backend.arg(), "--threads", "2", "--pin-cpus", "on"]);
    proxy.stderr.wait_count("both threads pinned", 2, |l| l.contains("pinned to CPU"));
    let tasks = std::fs::read_dir(format!("/proc/{}/task", proxy.pid())).unwrap();
    let mut pinned = Vec::new();
    for task in tasks {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        if name.starts_with("shoal-w") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let list = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
            pinned.push(list.split_whitespace().nth(1).unwrap().to_string());
        }
    }
    pinned.sort();
    assert_eq!(pinned.len(), 2, "two data-plane threads");
    assert!(pinned.iter().all(|l| !l.contains('-') && !l.contains(',')), "one CPU each: {pinned:?}");
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert_ne!(pinned[0], pinned[1], "different CPUs");
    }
    assert_eq!(common::get(proxy.addr, "/pinned").body_str(), "/pinned");
}

/// What `--check` prints, given back as flags, is the same configuration: an IPv6 backend's default name
/// did not read back (`[::1]:81=::1:81`), and `--strict-limits off` was left out, so a `max-connections`
/// above the descriptor limit was refused the second time.
#[test]
fn what_check_prints_reads_back_as_the_same_configuration() {
    let given = ["--backend", "[::1]:81", "--backend", "v4=127.0.0.1:82,maxconn=5", "--max-connections", "50000"];
    let (ok, printed, err) = check(&[&given[..], &["--strict-limits", "off"]].concat(), &[]);
    assert!(ok, "{err}");
    let args: Vec<String> = printed
        .lines()
        .filter(|l| l.starts_with("--"))
        .flat_map(|l| match l.split_once(' ') {
            Some((flag, value)) => vec![flag.to_string(), value.to_string()],
            None => vec![l.to_string()],
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, again, err) = check(&args, &[]);
    assert!(ok, "{printed}\n{err}");
    assert_eq!(again, printed);
    assert!(
        printed.contains("--backend [::1]:81,weight=100\n") && printed.contains("--strict-limits off\n"),
        "{printed}"
    );
}
