//! Sealed gossip against real attempts: a node reachable from other hosts will not run in the clear unless
//! told to; strangers cannot add servers or take over a member's identity; captured packets played back,
//! packets under an unknown key and floods of junk are dropped and counted; keys rotate in three steps under
//! load with no member and no request lost.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::capture::Capture;
use common::{wait_until, Agent, Backend, Proxy, TempFile};

fn named_backend(name: &'static str) -> Backend {
    Backend::http(move |_| common::ok(name))
}

fn refused(proxy: &Proxy, reason: &str) -> u64 {
    proxy.metric(&format!("shoal_gossip_packets_refused_total{{reason=\"{reason}\"}}"))
}

/// Polls GET / until the body is `body`.
fn wait_routed(proxy: &Proxy, body: &str) {
    wait_until(&format!("traffic to {body}"), || common::get(proxy.addr, "/").body_str() == body);
}

fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

#[test]
fn gossip_reachable_from_other_hosts_needs_a_key_or_an_explicit_insecure_flag() {
    let proxy = common::shoal()
        .args(["proxy", "--listen", "127.0.0.1:0", "--gossip", "0.0.0.0:0", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&proxy.stderr);
    assert_eq!(proxy.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`cluster-key`") && err.contains("shoal keygen") && err.contains("--gossip-insecure"),
        "{err}"
    );

    let agent = common::shoal()
        .args(["agent", "--service", "127.0.0.1:9", "--join", "127.0.0.1:7946", "--gossip", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(agent.status.code(), Some(2), "{}", String::from_utf8_lossy(&agent.stderr));

    let open = Proxy::start(&["--gossip", "0.0.0.0:0", "--gossip-insecure"]);
    open.stderr.wait_for("the warning", |l| l.contains("gossip in the clear") && l.contains("add itself as a backend"));
    let keyed = Proxy::start(&["--gossip", "0.0.0.0:0", "--cluster-key", &common::keygen()]);
    keyed.stderr.wait_for("sealed gossip", |l| l.contains("gossip sealed"));
}

#[test]
fn strangers_cannot_add_servers_or_take_over_a_member() {
    let key = common::keygen();
    // The default shape: gossip on every interface, sealed.
    let proxy = Proxy::start(&["--gossip", "0.0.0.0:0", "--cluster-key", &key, "--threads", "1"]);
    let seed = proxy.gossip();
    let (legit_app, pwned_app) = (named_backend("legit"), named_backend("PWNED"));
    let port = free_udp_port("127.0.0.2");
    let legit_gossip = format!("127.0.0.2:{port}");
    let _legit = Agent::start(&legit_app.arg(), &seed, &["--cluster-key", &key, "--gossip", &legit_gossip]);
    wait_routed(&proxy, "legit");

    let pwned = pwned_app.arg();
    // A stranger announcing a server of its own with the largest weight, in the clear...
    let _impostor = Agent::start(&pwned, &seed, &["--name", "evil", "--weight", "65535"]);
    // ...one under a key of its own...
    let other_key = common::keygen();
    let _wrong_key =
        Agent::start(&pwned, &seed, &["--name", "evil2", "--weight", "65535", "--cluster-key", &other_key]);
    // ...and one advertising the legitimate member's address, as a newer generation of it.
    let taker = format!("127.0.0.3:{port}");
    let _taker = Agent::start(&pwned, &seed, &["--gossip", &taker, "--advertise", "127.0.0.2", "--weight", "65535"]);
    wait_until("every stranger's packets refused", || {
        refused(&proxy, "unknown_key") + refused(&proxy, "malformed") >= 12 && refused(&proxy, "unknown_key") > 0
    });

    let bodies: Vec<String> = (0..200).map(|_| common::get(proxy.addr, "/").body_str()).collect();
    assert!(bodies.iter().all(|b| b == "legit"), "a stranger got traffic: {:?}", bodies.iter().find(|b| *b != "legit"));
    assert_eq!(proxy.metric("shoal_gossip_members"), 1, "only the legitimate member");
    assert!(proxy.stderr.all().iter().all(|l| !l.contains("member up: evil")));
    proxy.stderr.wait_for("the refusals logged", |l| l.contains("dropped") && l.contains("check the cluster key"));
}

#[test]
fn a_captured_packet_played_back_is_dropped_and_counted() {
    let key = common::keygen();
    let proxy = Proxy::start(&["--cluster-key", &key]);
    let (app, other) = (named_backend("captured"), named_backend("other"));
    let _other = Agent::start(&other.arg(), &proxy.gossip(), &["--cluster-key", &key, "--name", "other"]);
    wait_routed(&proxy, "other");
    let port: u16 = proxy.gossip().rsplit(':').next().unwrap().parse().unwrap();
    let capture = Capture::udp_to(port);
    let mut agent = Agent::start(&app.arg(), &proxy.gossip(), &["--cluster-key", &key, "--name", "captured"]);
    wait_routed(&proxy, "captured");
    // The member dies; everything it said to the proxy was captured.
    agent.child.kill().unwrap();
    let _ = agent.child.wait();
    proxy.stderr.wait_for("the member down", |l| l.contains("member down: captured "));
    let packets = capture.finish();
    assert!(!packets.is_empty(), "nothing captured");
    let before = refused(&proxy, "replayed") + refused(&proxy, "duplicate");

    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = proxy.gossip();
    for p in &packets {
        attacker.send_to(p, &target).unwrap();
    }
    // Every packet of the dead member's was already received once: all are refused, none brings it back.
    wait_until("the replays counted", || {
        refused(&proxy, "replayed") + refused(&proxy, "duplicate") >= before + packets.len() as u64
    });
    assert!(refused(&proxy, "replayed") > 0);
    proxy.stderr.wait_for("the replays logged", |l| l.contains("already received (a replay)"));
    for _ in 0..20 {
        assert_eq!(common::get(proxy.addr, "/").body_str(), "other", "a replay brought the dead member back");
    }
    let ups = proxy.stderr.all().iter().filter(|l| l.contains("member up: captured ")).count();
    assert_eq!(ups, 1, "the dead member came back up");
}

#[test]
fn a_packet_under_an_unknown_key_is_dropped_and_counted() {
    let proxy = Proxy::start(&["--cluster-key", &common::keygen()]);
    let app = named_backend("stranger");
    let _stranger = Agent::start(&app.arg(), &proxy.gossip(), &["--cluster-key", &common::keygen()]);
    wait_until("packets under the stranger's key counted", || refused(&proxy, "unknown_key") > 0);
    proxy.stderr.wait_for("the refusal logged", |l| l.contains("sealed under a key this node does not hold"));
    assert_eq!(common::get(proxy.addr, "/").status(), 503);
}

/// A key file as an operator writes it: a comment, then one key per line, the sealing key first.
fn key_file(keys: &[&str]) -> String {
    format!("# cluster keys, sealing key first\n{}\n", keys.join("\n"))
}

#[test]
fn keys_rotate_in_three_steps_under_load_losing_nothing() {
    let (old, new) = (common::keygen(), common::keygen());
    let files = ["proxy", "a", "b"].map(|name| TempFile::new(name, &key_file(&[&old])));
    let proxy = Proxy::start(&["--cluster-key-file", files[0].arg(), "--access-log", "off"]);
    let (app_a, app_b) = (named_backend("a"), named_backend("b"));
    let a = Agent::start(&app_a.arg(), &proxy.gossip(), &["--cluster-key-file", files[1].arg(), "--name", "a"]);
    let b = Agent::start(&app_b.arg(), &proxy.gossip(), &["--cluster-key-file", files[2].arg(), "--name", "b"]);
    wait_routed(&proxy, "a");
    wait_routed(&proxy, "b");
    let logs = [&proxy.stderr, &a.stderr, &b.stderr];

    let (ok, failed, stop) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let r = common::get(proxy.addr, "/");
                let counter = if r.status() == 200 { &ok } else { &failed };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        // install, use, remove: each step on every node in turn, waiting for each to reload.
        for (step, keys) in [[&old, &new][..].to_vec(), vec![&new, &old], vec![&new]].iter().enumerate() {
            let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
            for (file, log) in files.iter().zip(logs) {
                file.write(&key_file(&keys));
                log.wait_count("the keys reloaded", step + 1, |l| l.contains("cluster keys reloaded"));
            }
        }
        let served = ok.load(Ordering::SeqCst);
        wait_until("load after the rotation", || ok.load(Ordering::SeqCst) > served + 50);
        stop.store(true, Ordering::SeqCst);
    });
    eprintln!("rotation under load: {} answered, {} failed", ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during the rotation");
    assert!(proxy.stderr.all().iter().all(|l| !l.contains("member down")), "a member was lost");
    assert_eq!(refused(&proxy, "unknown_key"), 0, "a node sealed with a key another did not hold yet");
    assert_eq!(proxy.metric("shoal_gossip_members"), 2);
    // A node that still has only the old key is now a stranger.
    let late = named_backend("late");
    let _late = Agent::start(&late.arg(), &proxy.gossip(), &["--cluster-key", &old, "--name", "late"]);
    wait_until("the old key refused", || refused(&proxy, "unknown_key") > 0);
    assert!((0..10).all(|_| common::get(proxy.addr, "/").body_str() != "late"));
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CPU used by `pid` over two seconds of doing nothing in particular, in ticks.
fn idle_cpu(pid: u32) -> u64 {
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    cpu_ticks(pid) - before
}

#[test]
fn a_hundred_thousand_junk_datagrams_change_nothing() {
    for keyed in [true, false] {
        let key = common::keygen();
        let key_args: Vec<&str> = if keyed { vec!["--cluster-key", &key] } else { vec![] };
        let proxy = Proxy::start(&[&key_args[..], &["--access-log", "off"]].concat());
        let app = named_backend("steady");
        let _agent = Agent::start(&app.arg(), &proxy.gossip(), &[&key_args[..], &["--name", "steady"]].concat());
        wait_routed(&proxy, "steady");
        let pid = proxy.pid();
        let (rss_before, idle_before) = (common::rss_kib(pid), idle_cpu(pid));
        let cpu_before = cpu_ticks(pid);

        // Random bytes of every length, packets with a sealed header and a broken tag, and authentic packets
        // carrying garbage (as a member with the key could send).
        let mut sealer = keyed.then(|| {
            shoal::cluster::seal::Sealer::new(shoal::cluster::seal::Keyring::parse(&[&key]).unwrap()).unwrap()
        });
        let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = proxy.gossip();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let mut sealed = Vec::new();
        for i in 0..100_000usize {
            let len = (i * 7919) % 1400;
            let packet = match (&mut sealer, i % 3) {
                (Some(s), 1) => {
                    s.seal(&random(len), shoal::cluster::unix_ms(), false, &mut sealed);
                    let last = sealed.len() - 1;
                    sealed[last] ^= 1;
                    sealed.clone()
                }
                (Some(s), 2) => {
                    s.seal(&random(len), shoal::cluster::unix_ms(), false, &mut sealed);
                    sealed.clone()
                }
                _ => random(len),
            };
            let _ = junk.send_to(&packet, &target);
            if i % 100 == 99 {
                // Paced a little, so the receive buffer holds what is sent: the point is to process it all.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Still the same member, still routed, once the flood is processed.
        wait_routed(&proxy, "steady");
        let flood_cpu = cpu_ticks(pid) - cpu_before;
        let (rss_after, idle_after) = (common::rss_kib(pid), idle_cpu(pid));
        eprintln!(
            "keyed {keyed}: 100,000 junk datagrams cost {flood_cpu} ticks of CPU; idle CPU {idle_before} -> \
             {idle_after} ticks per 2 s; RSS {rss_before} -> {rss_after} KiB"
        );
        assert!(rss_after < rss_before + 8 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
        assert!(idle_after <= idle_before + 5, "CPU stayed up after the flood: {idle_before} -> {idle_after} ticks/2s");
        assert_eq!(proxy.metric("shoal_gossip_members"), 1);
        assert!(proxy.stderr.all().iter().all(|l| !l.contains("member down")), "membership changed");
        if keyed {
            let counted: u64 = ["malformed", "unknown_key", "forged"].iter().map(|r| refused(&proxy, r)).sum();
            assert!(counted > 50_000, "junk counted: {counted}");
        }
    }
}

#[test]
fn every_copy_whose_original_arrived_is_recognised_as_a_duplicate() {
    // Each gossip packet goes out twice, the copy 10 ms later, and a receiver drops a copy whose original it
    // has by the counter just before the copy's. With three nodes a sender's packets interleave between
    // destinations: a copy sealed when it was sent carried a counter whose predecessor had gone elsewhere, and
    // passed as a new message. On loopback nothing is lost, so nearly every copy must be refused as a duplicate.
    let key = common::keygen();
    let proxy = Proxy::start(&["--cluster-key", &key]);
    let (one, two) = (Backend::echo_path(), Backend::echo_path());
    let _a = Agent::start(&one.arg(), &proxy.gossip(), &["--cluster-key", &key, "--name", "a"]);
    let _b = Agent::start(&two.arg(), &proxy.gossip(), &["--cluster-key", &key, "--name", "b"]);
    proxy.wait_server("a", "UP", |s, _| s == "UP");
    proxy.wait_server("b", "UP", |s, _| s == "UP");
    let counts = || {
        let duplicates = proxy.metric("shoal_gossip_packets_refused_total{reason=\"duplicate\"}");
        (proxy.metric("shoal_gossip_packets_accepted_total"), duplicates)
    };
    let start = counts();
    let since = || {
        let now = counts();
        (now.0 - start.0, now.1 - start.1)
    };
    // The last copy may be on its way when the packets are counted: at most one in ten may be missing.
    common::wait_until("a dozen packets, nearly each with its copy refused", || {
        let (accepted, duplicates) = since();
        eprintln!("{accepted} packets accepted, {duplicates} copies refused as duplicates");
        accepted >= 12 && duplicates * 10 >= accepted * 9
    });
}
