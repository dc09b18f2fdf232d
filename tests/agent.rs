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
