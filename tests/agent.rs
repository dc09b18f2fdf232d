//! `shoal agent -- CMD`: the supervised app is restarted when it crashes, gets the signals the agent gets,
//! and is stopped last, after the agent has left the cluster; the agent exits with the app's status.

mod common;

use common::{Agent, Backend, Proxy};

#[test]
fn a_crashing_child_is_restarted() {
    let app = Backend::echo_path();
    let proxy = Proxy::start(&[]);
    let agent = Agent::start(&app.arg(), &proxy.gossip(), &["--", "sh", "-c", "echo child-ran >&2; exit 3"]);
    agent.stderr.wait_count("three starts", 3, |l| l.contains("child started: sh -c"));
    agent.stderr.wait_for("exit status logged", |l| l.contains("child exited (exit status: 3)"));
    agent.stderr.wait_count("the child's own output", 3, |l| l == "child-ran");
}

#[test]
fn signals_are_forwarded_and_stop_ends_with_the_childs_status() {
    let app = Backend::echo_path();
    let proxy = Proxy::start(&[]);
    let script = "trap 'echo got-hup >&2' HUP; trap 'echo got-term >&2; exit 7' TERM; echo ready >&2; \
                  while :; do sleep 0.05; done";
    let mut agent = Agent::start(&app.arg(), &proxy.gossip(), &["--name", "sup", "--", "sh", "-c", script]);
    agent.stderr.wait_for("child ready", |l| l == "ready");
    proxy.stderr.wait_for("agent joined", |l| l.contains("member up: sup "));

    agent.signal(libc::SIGHUP);
    agent.stderr.wait_for("forwarded HUP", |l| l == "got-hup");

    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(7), "the agent exits with the child's status");
    let lines = agent.stderr.all();
    let left = lines.iter().position(|l| l.contains("left the cluster")).expect("left the cluster");
    let stopped = lines.iter().position(|l| l == "got-term").expect("child got SIGTERM");
    assert!(left < stopped, "the agent leaves the cluster before stopping the app");
    proxy.stderr.wait_for("member gone", |l| l.contains("member down: sup "));
}

#[test]
fn the_app_does_not_outlive_a_killed_agent() {
    let app = Backend::echo_path();
    let proxy = Proxy::start(&[]);
    let script = "trap 'echo child-got-term >&2; exit 0' TERM; echo ready >&2; while :; do sleep 0.05; done";
    let mut agent = Agent::start(&app.arg(), &proxy.gossip(), &["--", "sh", "-c", script]);
    agent.stderr.wait_for("child ready", |l| l == "ready");
    agent.child.kill().unwrap();
    let _ = agent.child.wait();
    agent.stderr.wait_for("the orphaned app told to stop", |l| l == "child-got-term");
}

#[test]
fn an_agent_runs_event_handlers_too() {
    let app = Backend::echo_path();
    let proxy = Proxy::start(&[]);
    let handler = "while IFS= read -r line; do printf 'event %s %s\\n' \"$SHOAL_EVENT\" \"$line\" >&2; done";
    let agent = Agent::start(&app.arg(), &proxy.gossip(), &["--name", "watcher", "--on-event", handler]);
    agent
        .stderr
        .wait_for("the proxy seen joining", |l| l.starts_with("event member-join ") && l.ends_with("\tbalancer\t"));
}

#[test]
fn a_start_that_fails_is_tried_again() {
    // The app runs half a second and exits; meanwhile it stops being executable, so the next start fails.
    // Once it is executable again, the supervisor must start it again (it gave up for good before).
    use std::os::unix::fs::PermissionsExt;
    let app = Backend::echo_path();
    let proxy = Proxy::start(&[]);
    let script = common::TempFile::new("app.sh", "#!/bin/sh\necho app-ran >&2\nsleep 0.5\nexit 3\n");
    let mode = |m: u32| std::fs::set_permissions(&script.0, std::fs::Permissions::from_mode(m)).unwrap();
    mode(0o755);
    let agent = Agent::start(&app.arg(), &proxy.gossip(), &["--", script.arg()]);
    agent.stderr.wait_for("the first run", |l| l == "app-ran");
    mode(0o644);
    agent.stderr.wait_for("the failed start", |l| l.contains("cannot start") && l.contains("trying again"));
    mode(0o755);
    agent.stderr.wait_count("a run after the failed start", 2, |l| l == "app-ran");
}

/// The children of process `pid` (every thread's), with their state letters.
fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).unwrap_or('?');
            out.push((child, state));
        }
    }
    out
}

/// An agent in a PID namespace of its own, as in a container whose image runs it as PID 1; the process is
/// `unshare`, which exits with the agent's status; the agent's host pid comes third.
fn agent_as_pid_1(proxy: &Proxy, service: &Backend, args: &[&str], app: &str) -> (common::Process, common::Lines, u32) {
    let mut unshare = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_shoal"), "agent", "--service", &service.arg()])
        .args(["--join", &proxy.gossip(), "--gossip", "127.0.0.1:0"])
        .args(args)
        .args(["--", "sh", "-c", app])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare (util-linux), as root");
    let stderr = common::Lines::default();
    stderr.clone().collect_from(unshare.stderr.take().unwrap());
    let unshare = common::Process(unshare);
    let mut agent = None;
    common::wait_until("the agent, unshare's child", || {
        agent = children_of(unshare.0.id()).first().map(|c| c.0);
        agent.is_some()
    });
    (unshare, stderr, agent.expect("waited"))
}

#[test]
fn as_pid_1_the_agent_reaps_what_its_app_leaves_behind() {
    // The app leaves a process behind that outlives it briefly: adopted by the agent, it must not stay a
    // zombie.
    let (app, proxy) = (Backend::echo_path(), Proxy::start(&[]));
    let (_unshare, stderr, agent) = agent_as_pid_1(&proxy, &app, &[], "(sleep 1 &); echo ready >&2; exec sleep 1000");
    stderr.wait_for("the app running", |l| l == "ready");
    common::wait_until("the left-behind process adopted by the agent", || children_of(agent).len() == 2);
    common::wait_until("it exited and was reaped: only the app left", || {
        let children = children_of(agent);
        children.len() == 1 && children.iter().all(|(_, state)| *state != 'Z')
    });
}

#[test]
fn as_pid_1_the_agent_stops_once_its_app_and_what_it_started_have_ended() {
    // `sh -c 'sleep ...; true'`: the stop's SIGTERM ends the shell and its sleep; the sleep, re-parented to
    // the agent, stayed an unreaped zombie, still a member of the app's process group, so the group looked
    // alive and the stop waited out its whole 30 s grace, then "killed" it.
    let (app, proxy) = (Backend::echo_path(), Proxy::start(&[]));
    let (mut unshare, stderr, agent) =
        agent_as_pid_1(&proxy, &app, &["--stop-timeout", "30s"], "echo ready >&2; sleep 1000; true");
    stderr.wait_for("the app running", |l| l == "ready");
    // SAFETY: kill(2) on the agent, a process of this test's.
    unsafe { libc::kill(agent as i32, libc::SIGTERM) };
    let status = unshare.wait_exit();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "the app's status, as a shell reports it");
    stderr.wait_closed("the agent's output");
    assert!(!stderr.all().iter().any(|l| l.contains("did not stop within")), "{:?}", stderr.all());
}

#[test]
fn as_pid_1_sigquit_stops_the_agent_gracefully() {
    // An image whose STOPSIGNAL is SIGQUIT (nginx's): a PID 1 without a handler ignores it, so Docker waited
    // out its grace and SIGKILLed the container, the node never drained. The app gets the same SIGQUIT
    // (nginx's graceful stop; SIGTERM is its fast one).
    let (app, proxy) = (Backend::echo_path(), Proxy::start(&[]));
    let script = "trap 'echo app-got-QUIT >&2; exit 0' QUIT; echo ready >&2; while :; do sleep 0.1; done";
    let (mut unshare, stderr, agent) = agent_as_pid_1(&proxy, &app, &[], script);
    stderr.wait_for("the app running", |l| l == "ready");
    // SAFETY: kill(2) on the agent, a process of this test's.
    unsafe { libc::kill(agent as i32, libc::SIGQUIT) };
    assert!(unshare.wait_exit().success(), "the app's status: {:?}", stderr.all());
    let lines = stderr.all();
    let (left, quit) =
        (lines.iter().position(|l| l.contains("left the cluster")), lines.iter().position(|l| l == "app-got-QUIT"));
    assert!(left.is_some() && quit > left, "the node left, then the app got SIGQUIT: {lines:?}");
}

#[test]
fn stopped_between_runs_the_agent_exits_with_the_apps_last_status() {
    // A crash-looping app: stopped while it waits out its backoff, the agent must not report a clean exit.
    let app = Backend::echo_path();
    let proxy = Proxy::start(&[]);
    let mut agent = Agent::start(&app.arg(), &proxy.gossip(), &["--", "sh", "-c", "trap 'exit 3' TERM; exit 3"]);
    agent.stderr.wait_count("two runs ended", 2, |l| l.contains("child exited (exit status: 3)"));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit().code(), Some(3));
}

#[test]
fn an_app_that_cannot_start_makes_the_agent_exit_as_a_shell_would() {
    // Never started at all: stopped, the agent exited 0, as if the app had run and ended well.
    let app = Backend::echo_path();
    let proxy = Proxy::start(&[]);
    let mut agent = Agent::start(&app.arg(), &proxy.gossip(), &["--", "/nonexistent/app"]);
    agent.stderr.wait_for("the failed start", |l| l.contains("cannot start"));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit().code(), Some(127), "command not found");
}

#[test]
fn without_a_health_check_a_node_whose_app_is_down_takes_no_requests() {
    // The agent checks nothing but supervises the app: while the app is down between restarts (here a crash
    // loop, its backoff growing to seconds), the node is DOWN at the proxy; it stayed UP before.
    let service = Backend::echo_path();
    let proxy = Proxy::start(&[]);
    let _agent = Agent::start(&service.arg(), &proxy.gossip(), &["--name", "looping", "--", "sh", "-c", "exit 1"]);
    proxy.wait_server("looping", "DOWN while its app waits to restart", |status, _| status == "DOWN");
}

#[test]
fn shoal_check_answers_a_containers_healthcheck() {
    let up = Backend::echo_path();
    let failing = Backend::http(|_| b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n".to_vec());
    let refused = common::free_port();
    let check = |url: &str| {
        let out = common::shoal().args(["check", url]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    assert_eq!(check(&format!("http://{}/health", up.addr)), (Some(0), String::new()));
    assert_eq!(up.requests()[0].start_line(), "GET /health HTTP/1.1");
    let (code, why) = check(&format!("http://{}/", failing.addr));
    assert!(code == Some(1) && why.contains("503"), "{code:?} {why}");
    let (code, why) = check(&format!("http://{refused}/"));
    assert!(code == Some(1) && why.contains("connect"), "{code:?} {why}");
    let (code, why) = check("localhost:3000/");
    assert!(code == Some(2) && why.contains("http://"), "a bad URL is refused as a flag: {code:?} {why}");
}

/// The agent started in a process group of its own, as a shell starts a job, with the app in it.
fn agent_as_a_job(proxy: &Proxy, service: &Backend, app: &str) -> (common::Process, common::Lines) {
    use std::os::unix::process::CommandExt;
    let mut cmd = common::shoal();
    cmd.args(["agent", "--service", &service.arg(), "--join", &proxy.gossip(), "--gossip", "127.0.0.1:0"])
        .args(["--stop-timeout", "5s", "--", "sh", "-c", app])
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("start agent");
    let stderr = common::Lines::default();
    stderr.clone().collect_from(child.stderr.take().unwrap());
    (common::Process(child), stderr)
}

/// A loopback `--service` on a node that gossips beyond loopback sends every proxy on another host to
/// itself: said at start, rather than found by the 502s.
#[test]
fn a_loopback_service_gossiped_beyond_loopback_is_warned_about() {
    let mut cmd = common::shoal();
    cmd.args(["agent", "--service", "127.0.0.1:9", "--gossip", "0.0.0.0:0", "--gossip-insecure", "--join"])
        .arg("127.0.0.1:9")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("start agent");
    let stderr = common::Lines::default();
    stderr.clone().collect_from(child.stderr.take().unwrap());
    let _agent = common::Process(child);
    stderr.wait_for("the warning", |l| {
        l.contains("service 127.0.0.1:9 is a loopback address: proxies on other hosts would connect to themselves")
    });
}

#[test]
fn a_ctrl_c_reaches_the_agent_alone_which_leaves_before_it_stops_the_app() {
    // Ctrl-C signals the terminal's whole foreground job: the app, in the agent's group, got SIGINT itself
    // and died while its node was still in rotation. In a group of its own, it gets the agent's SIGTERM, after
    // the node has left.
    let (service, proxy) = (Backend::echo_path(), Proxy::start(&[]));
    let app = "trap 'echo app-got-INT >&2; exit 0' INT; trap 'echo app-got-TERM >&2; exit 0' TERM; \
               echo app-ready >&2; while :; do sleep 0.1; done";
    let (mut agent, stderr) = agent_as_a_job(&proxy, &service, app);
    stderr.wait_for("the app running", |l| l == "app-ready");
    // SAFETY: kill(2) on the process group the agent leads.
    unsafe { libc::kill(-(agent.0.id() as i32), libc::SIGINT) };
    stderr.wait_for("the app stopped", |l| l.starts_with("app-got-"));
    let lines = stderr.all();
    let (left, stopped) =
        (lines.iter().position(|l| l.contains("left the cluster")), lines.iter().position(|l| l == "app-got-TERM"));
    assert!(left.is_some() && stopped > left, "the node left, then the app got SIGTERM: {lines:?}");
    assert!(agent.wait_exit().success());
}

/// A `sleep` duration no other test or process uses, to find a test's sleeps by.
fn sleep_marker(test: u32) -> String {
    format!("{}.{test}", 800_000 + std::process::id() % 90_000)
}

/// How many `sleep <marker>` processes run.
fn sleeps_of(marker: &str) -> usize {
    let out = std::process::Command::new("pgrep").args(["-f", &format!("^sleep {marker}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn stopping_the_agent_stops_what_a_wrapper_script_started() {
    // `sh -c 'sleep ...; true'`: the shell waits on its child. SIGTERM reached the shell alone, and the
    // sleep lived on after the agent.
    let (service, proxy) = (Backend::echo_path(), Proxy::start(&[]));
    let marker = sleep_marker(23);
    let sleeping = || sleeps_of(&marker);
    let (mut agent, _stderr) = agent_as_a_job(&proxy, &service, &format!("sleep {marker}; true"));
    common::wait_until("the wrapped app running", || sleeping() == 1);
    agent.signal(libc::SIGTERM);
    agent.wait_exit();
    common::wait_until("nothing of the app left", || sleeping() == 0);
}

#[test]
fn what_a_crashed_app_left_running_is_stopped_before_it_starts_again() {
    // `sh -c 'server & ...; exit'`, or npm dying while the node server it started lives on: the remnant kept
    // the port, and every restart failed to bind it.
    let (service, proxy) = (Backend::echo_path(), Proxy::start(&[]));
    let marker = sleep_marker(29);
    let sleeping = || sleeps_of(&marker);
    // The remnant ignores SIGTERM, so only the SIGKILL before the next start ends it.
    let app = format!("(trap '' TERM; exec sleep {marker}) & echo app-ran >&2; exit 3");
    let mut agent = Agent::start(&service.arg(), &proxy.gossip(), &["--", "sh", "-c", &app]);
    agent.stderr.wait_count("three runs", 3, |l| l == "app-ran");
    common::wait_until("a run's remnant seen (the count below counts something)", || sleeping() >= 1);
    common::wait_until("the earlier runs' remnants gone", || sleeping() <= 1);
    agent.signal(libc::SIGTERM);
    agent.wait_exit();
    common::wait_until("nothing of the app left", || sleeping() == 0);
}

/// The app's leader ends on SIGTERM but a child of its ignores it: the child is killed once the stop timeout
/// is up (it outlived the agent, reparented, for as long as it liked).
#[test]
fn what_outlives_the_apps_leader_at_the_stop_is_killed_after_the_stop_timeout() {
    let (service, proxy) = (Backend::echo_path(), Proxy::start(&[]));
    let marker = sleep_marker(31);
    let app = format!("(trap '' TERM; exec sleep {marker}) & echo app-ready >&2; wait");
    let mut agent = Agent::start(&service.arg(), &proxy.gossip(), &["--stop-timeout", "500ms", "--", "sh", "-c", &app]);
    agent.stderr.wait_for("the app running", |l| l == "app-ready");
    common::wait_until("the child running", || sleeps_of(&marker) == 1);
    agent.signal(libc::SIGTERM);
    agent.wait_exit();
    common::wait_until("nothing of the app left", || sleeps_of(&marker) == 0);
}

#[test]
fn an_app_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let (service, proxy) = (Backend::echo_path(), Proxy::start(&[]));
    let app = "trap '' TERM; echo app-ready >&2; while :; do sleep 0.1; done";
    let mut agent = Agent::start(&service.arg(), &proxy.gossip(), &["--stop-timeout", "500ms", "--", "sh", "-c", app]);
    agent.stderr.wait_for("the app running", |l| l == "app-ready");
    agent.signal(libc::SIGTERM);
    agent.stderr.wait_for("the kill", |l| l.contains("did not stop within 500ms: killing it"));
    assert_eq!(agent.wait_exit().code(), Some(128 + libc::SIGKILL), "the app's status, as a shell reports it");
}

#[test]
fn without_a_health_check_a_node_is_routed_once_its_app_accepts_connections() {
    // The app listens two seconds after it starts: its node was UP at once, and requests found a closed port.
    let proxy = Proxy::start(&[]);
    let service = common::free_port();
    let app = format!("sleep 2; exec {} webapp --listen {service} --name late", env!("CARGO_BIN_EXE_shoal"));
    let agent = Agent::start(&service.to_string(), &proxy.gossip(), &["--name", "late", "--", "sh", "-c", &app]);
    let (status, _) = proxy.wait_server("late", "listed", |_, _| true);
    assert_eq!(status, "DOWN", "not routed while its app does not listen yet");
    proxy.wait_server("late", "UP once the app listens", |status, _| status == "UP");
    assert!(agent.stderr.all().iter().any(|l| l.contains("accepts connections: ready")));
    assert_eq!(common::get(proxy.addr, "/").status(), 200);
}

#[test]
fn with_a_health_check_a_crashed_app_is_out_at_once_and_back_after_its_first_pass() {
    // With `--check-path`, the node stayed UP after its app died until `--fall` checks had failed (30 s
    // here, 6 s at the defaults), though the agent saw the exit at once.
    let proxy = Proxy::start(&[]);
    let service = common::free_port();
    let app =
        format!("echo app-pid=$$ >&2; exec {} webapp --listen {service} --name crashy", env!("CARGO_BIN_EXE_shoal"));
    let args = ["--name", "crashy", "--check-path", "/", "--check-interval", "1s", "--fall", "30", "--", "sh", "-c"];
    let agent = Agent::start(&service.to_string(), &proxy.gossip(), &[&args[..], &[app.as_str()]].concat());
    proxy.wait_server("crashy", "UP once its check passes", |status, _| status == "UP");
    let pid: i32 =
        agent.stderr.wait_for("the app's pid", |l| l.starts_with("app-pid="))["app-pid=".len()..].parse().unwrap();
    // SAFETY: kill(2) on the app, a process of this test's agent.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    proxy.wait_server("crashy", "DOWN when its app died", |status, _| status == "DOWN");
    agent.stderr.wait_for("said", |l| l.contains("is down with its app"));
    proxy.wait_server("crashy", "UP again after the restart's first pass", |status, _| status == "UP");
    assert_eq!(common::get(proxy.addr, "/").status(), 200);
}

/// The cluster key is the agent's secret: the app does not inherit it, and cannot read it from the agent's
/// `/proc/PID/environ` (the environment it started with) or its memory either, running as the same user with
/// the same capabilities, none of them `CAP_SYS_PTRACE`, as a container's root app runs beside its agent (PID 1)
/// under Docker's defaults. It could read both before.
#[test]
fn the_app_cannot_read_the_key_from_the_agents_environment_or_memory() {
    let app = Backend::echo_path();
    let key = common::keygen();
    let proxy = Proxy::start(&["--cluster-key", &key]);
    // The agent's environment is read (the variable is there, its value gone); its memory is not.
    let script = format!(
        "env=$(tr '\\0' '\\n' </proc/$PPID/environ); \
         echo \"$env\" | grep -q '^SHOAL_CLUSTER_KEY=' && echo agent-environ-read >&2; \
         echo \"$env\" | grep -qF '{key}' && echo key-in-agent-environ >&2; \
         cat /proc/$PPID/mem 2>&1 | grep -q 'Permission denied' && echo agent-memory-denied >&2; \
         env | grep -q SHOAL_CLUSTER_KEY && echo key-inherited >&2; echo checked >&2; sleep 30"
    );
    let docker_like = ["setpriv", "--bounding-set=-sys_ptrace", "--"];
    let app_command = ["--", "sh", "-c", &script];
    let env = [("SHOAL_CLUSTER_KEY", key.as_str())];
    let agent = Agent::start_wrapped(&docker_like, &app.arg(), &proxy.gossip(), &app_command, &env);
    agent.stderr.wait_for("the app's checks", |l| l == "checked");
    let lines: Vec<String> = agent.stderr.all().into_iter().filter(|l| !l.contains(" INFO ")).collect();
    // Mainline kernels close a non-dumpable process's environ too; this one shows it, wiped.
    let expected: &[&[&str]] =
        &[&["agent-environ-read", "agent-memory-denied", "checked"], &["agent-memory-denied", "checked"]];
    assert!(expected.contains(&lines.iter().map(String::as_str).collect::<Vec<_>>().as_slice()), "{lines:?}");
    proxy.stderr.wait_for("the agent joined with the key", |l| l.contains("member up: ") && !l.contains("(Proxy)"));
}

/// `--app-user` runs the app as another user, as s6-setuidgid does: its user, group and supplementary groups
/// are the ones given (root's are dropped), it cannot read the agent's key file (which the agent could, as
/// root), and the parent-death signal, which a change of user clears, still stops it when the agent is killed.
#[test]
fn the_app_runs_as_the_app_user_and_cannot_read_the_agents_key_file() {
    let app = Backend::echo_path();
    let key = common::keygen();
    let proxy = Proxy::start(&["--cluster-key", &key]);
    let key_file = common::TempFile::new("app-user-key", &key);
    std::fs::set_permissions(&key_file.0, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let script = format!(
        "echo \"ids $(id -u) $(id -g) $(id -G)\" >&2; \
         cat '{}' >/dev/null 2>&1 && echo key-read >&2 || echo key-denied >&2; \
         trap 'echo app-got-term >&2; exit 0' TERM; echo ready >&2; while :; do sleep 0.05; done",
        key_file.0.display()
    );
    let args = ["--cluster-key-file", key_file.arg(), "--app-user", "65534:65534", "--", "sh", "-c", &script];
    let mut agent = Agent::start(&app.arg(), &proxy.gossip(), &args);
    agent.stderr.wait_for("the app ready", |l| l == "ready");
    let lines = agent.stderr.all();
    assert!(lines.iter().any(|l| l == "ids 65534 65534 65534"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "key-denied"), "{lines:?}");
    proxy
        .stderr
        .wait_for("the agent joined with the key file", |l| l.contains("member up: ") && !l.contains("(Proxy)"));
    agent.child.kill().unwrap();
    let _ = agent.child.wait();
    agent.stderr.wait_for("the orphaned app told to stop", |l| l == "app-got-term");
}
