//! `shoal webapp` behaves as the lab's Node app, and `shoal demo` brings up a proxy with three nodes that
//! answer through it, then stops cleanly on Ctrl-C.

mod common;

use std::os::unix::process::CommandExt;

use common::{free_port, shoal, Lines, Process, Wire};
use std::process::Stdio;

#[test]
fn webapp_answers_like_the_lab_app() {
    let mut child = shoal()
        .args(["webapp", "--listen", "127.0.0.1:0", "--name", "w1", "--tag", "blue"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Lines::default();
    let line = {
        let s = stderr.clone();
        s.collect_from(child.stderr.take().unwrap());
        stderr.wait_for("listening", |l| l.contains("webapp listening on "))
    };
    let addr = line.rsplit("listening on ").next().unwrap().trim().parse().unwrap();

    let mut w = Wire::connect(addr);
    w.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let first = w.read_response(false).unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.header("x-backend-ip").as_deref(), Some("127.0.0.1"));
    let body = first.body_str();
    for field in
        ["\"hello\":\"world!\"", "\"ip\":\"127.0.0.1\"", "\"host\":\"w1\"", "\"tag\":\"blue\"", "\"sessionViews\":1"]
    {
        assert!(body.contains(field), "{field} in {body}");
    }
    let cookie = first.header("set-cookie").expect("a session cookie");
    let session = cookie.split(';').next().unwrap().to_string();
    assert!(session.starts_with("NODESESSID="), "{cookie}");

    w.send(format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {session}\r\n\r\n").as_bytes());
    let second = w.read_response(false).unwrap();
    assert!(second.body_str().contains("\"sessionViews\":2"), "{}", second.body_str());
    assert!(second.header("set-cookie").is_none());

    w.send(b"POST /delay HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"delay\": 100}");
    let r = w.read_response(false).unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.body_str().contains("100ms"), "{}", r.body_str());
    w.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(w.read_response(false).unwrap().status(), 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn demo_brings_up_three_nodes_and_stops_on_ctrl_c() {
    let listen = free_port();
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = shoal()
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--first-port",
            "0",
            "--gossip-port",
            &gossip.to_string(),
            "--admin-port",
            "0",
            "--runtime-api-port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, as a shell job: Ctrl-C at a terminal signals the whole group.
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = Lines::default();
    stdout.clone().collect_from(child.stdout.take().unwrap());
    let stderr = Lines::default();
    stderr.clone().collect_from(child.stderr.take().unwrap());
    stdout.wait_for("ready line", |l| l.starts_with("shoal demo ready: 3 nodes"));
    let hosts: std::collections::HashSet<String> = (0..9)
        .map(|_| {
            let body = common::get(listen, "/").body_str();
            body.split("\"host\":\"").nth(1).unwrap().split('"').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(hosts.len(), 3, "round robin over three nodes: {hosts:?}");

    let mut demo = Process(child);
    // SAFETY: kill(2) on the process group of a child we spawned.
    unsafe { libc::kill(-(demo.id() as i32), libc::SIGINT) };
    let status = demo.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(listen).is_err(), "the demo's proxy is gone");
    // In order: no app restarted mid-shutdown, no agent stopping before the proxy let go of it.
    let log = stderr.all().join("\n");
    assert!(!log.contains("restarting in"), "an app was restarted during the stop:\n{log}");
    assert!(!log.contains("WARN"), "the stop was not clean:\n{log}");
}

#[test]
fn a_demo_whose_proxy_cannot_start_says_so_and_fails() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = shoal()
        .args(["demo", "--listen", &taken.local_addr().unwrap().to_string(), "--first-port", "0"])
        .args(["--gossip-port", "0", "--admin-port", "0", "--runtime-api-port", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the proxy could not start") && err.contains("Address already in use"), "{err}");
}
