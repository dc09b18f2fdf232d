//! The stats as third-party tools read them: Debian's `prometheus-haproxy-exporter` scraping shoal's CSV as it
//! would HAProxy's, and a headless browser (Debian's chromium) rendering the page.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Process, Proxy, WAIT};

/// A proxy in front of a server slow to answer, a fast one, and one that refuses connections; every request
/// sent until the dead one is DOWN.
fn proxy_with_slow_fast_and_dead(extra: &[&str]) -> (Proxy, Vec<Backend>, common::RefusedPort) {
    let slow = Backend::http(|_| {
        std::thread::sleep(Duration::from_millis(150));
        common::ok("slow")
    });
    let fast = Backend::http(|_| common::ok("fast"));
    let dead = common::refused_port();
    let mut args = vec![
        "--backend".to_string(),
        format!("slow={}", slow.addr),
        "--backend".to_string(),
        format!("fast={}", fast.addr),
        "--backend".to_string(),
        format!("dead={}", dead.addr),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proxy = Proxy::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let start = Instant::now();
    while proxy.servers()["dead"].0 != "DOWN" {
        assert_eq!(common::get(proxy.addr, "/").status(), 200, "retried past the dead server");
        assert!(start.elapsed() < WAIT, "the dead server never went DOWN");
    }
    for _ in 0..6 {
        assert_eq!(common::get(proxy.addr, "/").status(), 200);
    }
    (proxy, vec![slow, fast], dead)
}

/// Waits until a TCP port accepts connections.
fn wait_listening(addr: SocketAddr, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < WAIT, "{what} never listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn prometheus_haproxy_exporter_reports_every_server_with_its_status_and_latency() {
    let (proxy, _backends, _dead) = proxy_with_slow_fast_and_dead(&[]);
    let listen = common::free_port();
    let exporter = Command::new("prometheus-haproxy-exporter")
        .arg(format!("--haproxy.scrape-uri=http://{}/;csv", proxy.admin()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-haproxy-exporter (Debian's package) on PATH");
    let _exporter = Process(exporter);
    wait_listening(listen, "the exporter");
    // Latencies are published a moment after the requests: scrape until the slow server's average is in.
    let start = Instant::now();
    let value = |metrics: &str, series: &str| -> Option<f64> {
        let line = metrics.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?;
        line.rsplit(' ').next()?.parse().ok()
    };
    let slow_rtime = "haproxy_server_http_response_time_average_seconds{backend=\"nodes\",server=\"slow\"}";
    let metrics = loop {
        let metrics = common::get(listen, "/metrics").body_str();
        if value(&metrics, slow_rtime).is_some_and(|v| v > 0.0) {
            break metrics;
        }
        assert!(start.elapsed() < WAIT, "no response time for the slow server:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let get = |series: &str| value(&metrics, series).unwrap_or_else(|| panic!("{series} in\n{metrics}"));
    assert_eq!(get("haproxy_up"), 1.0, "the exporter read the CSV");
    assert_eq!(get("haproxy_exporter_csv_parse_failures_total"), 0.0);
    for (server, up) in [("slow", 1.0), ("fast", 1.0), ("dead", 0.0)] {
        assert_eq!(get(&format!("haproxy_server_up{{backend=\"nodes\",server=\"{server}\"}}")), up, "{server}");
    }
    assert!(get(slow_rtime) >= 0.15, "the slow server's 150 ms");
    let fast = get("haproxy_server_http_response_time_average_seconds{backend=\"nodes\",server=\"fast\"}");
    assert!(fast < get(slow_rtime));
    assert!(get("haproxy_server_http_total_time_average_seconds{backend=\"nodes\",server=\"slow\"}") >= 0.15);
    // The dead server's refused connects were retried on another: redispatches, as HAProxy counts them.
    assert!(get("haproxy_server_redispatch_warnings_total{backend=\"nodes\",server=\"dead\"}") >= 1.0);
    assert_eq!(get("haproxy_server_connection_errors_total{backend=\"nodes\",server=\"dead\"}"), 0.0);
    assert_eq!(get("haproxy_backend_up{backend=\"nodes\"}"), 1.0);
}

/// Pixels of the screenshot at `path` whose colour is within 2 of `rgb` in each channel.
fn pixels_of(path: &std::path::Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "an RGB screenshot");
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| p[..3].iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= 2))
        .count()
}

#[test]
fn a_headless_browser_shows_up_down_drain_and_maint_servers_in_haproxy_s_colours() {
    let drained = Backend::http(|_| common::ok("drained"));
    let maint = Backend::http(|_| common::ok("maint"));
    let (proxy, _backends, _dead) = proxy_with_slow_fast_and_dead(&[
        "--backend",
        &format!("drained={}", drained.addr),
        "--backend",
        &format!("maint={}", maint.addr),
        "--backend-check-path",
        "/",
    ]);
    assert_eq!(proxy.runtime("set server nodes/drained state drain"), "\n");
    assert_eq!(proxy.runtime("set server nodes/maint state maint"), "\n");
    // The page's last-check column has something to show once the proxy has checked every server.
    let start = Instant::now();
    while proxy.server_rows().values().any(|row| row["check_status"].is_empty()) {
        assert!(start.elapsed() < WAIT, "servers never checked");
        std::thread::sleep(Duration::from_millis(50));
    }
    let states: Vec<String> =
        ["fast", "dead", "drained", "maint"].iter().map(|n| proxy.servers()[*n].0.clone()).collect();
    assert_eq!(states, ["UP", "DOWN", "DRAIN", "MAINT"]);
    let shot = std::env::temp_dir().join(format!("shoal-stats-{}.png", std::process::id()));
    let out = Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .args(["--force-device-scale-factor=1", "--window-size=1800,420", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("http://{}/", proxy.admin()))
        .output()
        .expect("chromium (Debian's package) on PATH");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && shot.exists(), "chromium failed: {log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged to the console: {console:?}");
    // HAProxy's light theme: UP, DOWN, DRAIN, MAINT.
    for (state, rgb) in [
        ("UP", [0xc0, 0xff, 0xc0]),
        ("DOWN", [0xff, 0x90, 0x90]),
        ("DRAIN", [0x20, 0xa0, 0xff]),
        ("MAINT", [0xc0, 0x78, 0x20]),
    ] {
        let n = pixels_of(&shot, rgb);
        assert!(n > 1000, "{state}'s colour #{:02x}{:02x}{:02x} covers {n} pixels", rgb[0], rgb[1], rgb[2]);
    }
    // The picture in the README comes from this run: `SHOAL_SCREENSHOT=path cargo test ...` keeps it.
    match std::env::var_os("SHOAL_SCREENSHOT") {
        Some(keep) => std::fs::rename(&shot, keep).unwrap(),
        None => std::fs::remove_file(&shot).unwrap(),
    }
}
