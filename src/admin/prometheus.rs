//! Prometheus text exposition of the same counters.

use std::fmt::Write;

use super::stats::Snapshot;
use crate::balance::counters::Totals;
use crate::balance::timings::{Phase, Phases, PHASES};
use crate::cluster::Refused;

const CODES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// A per-server counter: its name, its help text, and where it is in the totals.
type Counter = (&'static str, &'static str, fn(&Totals) -> u64);

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP shoal_{name} {help}\n# TYPE shoal_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "shoal_{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    // The plain frontend's, as the CSV's FRONTEND row; the TLS frontend's are frontend_tls_*.
    let [(plain_open, _), (tls_open, _)] = s.frontend_connections;
    metric("frontend_connections_total", "counter", "Plain client connections accepted.", one(s.frontend.sessions));
    metric("frontend_current_connections", "gauge", "Plain client connections open.", one(plain_open));
    metric("frontend_requests_total", "counter", "Requests answered or abandoned.", one(s.frontend.requests));
    metric("frontend_refused_total", "counter", "Requests refused as malformed.", one(s.frontend.refused));
    metric(
        "frontend_intercepted_total",
        "counter",
        "Requests answered by a rule (redirected to https).",
        one(s.frontend.intercepted),
    );
    metric("frontend_bytes_in_total", "counter", "Request bytes received from clients.", one(s.frontend.bytes_in));
    metric("frontend_bytes_out_total", "counter", "Bytes sent to clients.", one(s.frontend.bytes_out));
    metric("frontend_responses_total", "counter", "Responses by status class.", by_code("", &s.frontend));
    if let Some(tls) = &s.frontend_tls {
        metric("frontend_tls_connections_total", "counter", "TLS connections established.", one(tls.sessions));
        metric("frontend_tls_current_connections", "gauge", "TLS client connections open.", one(tls_open));
        metric(
            "frontend_tls_handshake_failures_total",
            "counter",
            "TLS handshakes failed or timed out.",
            one(tls.handshake_errors),
        );
        metric("frontend_tls_requests_total", "counter", "Requests over TLS.", one(tls.requests));
        metric("frontend_tls_responses_total", "counter", "Responses over TLS by status class.", by_code("", tls));
    }

    let per_server = |f: &dyn Fn(&super::stats::Server) -> u64| -> Vec<(String, u64)> {
        s.servers.iter().map(|v| (format!("{{server=\"{}\"}}", label(&v.name)), f(v))).collect()
    };
    metric("server_up", "gauge", "1 when the server takes new requests.", per_server(&|v| u64::from(v.in_rotation())));
    metric("server_weight", "gauge", "The server's weight.", per_server(&|v| u64::from(v.weight)));
    metric("server_current_requests", "gauge", "Requests in flight.", per_server(&|v| v.in_flight));
    // The servers' totals, one counter each; and the backend's, the same sums with the servers that are gone
    // (a reload removed them, their retention ended) still in them, so that a sum never goes down.
    let counters: [Counter; 9] = [
        ("requests_total", "Requests sent to the server.", |t| t.sessions),
        ("bytes_in_total", "Request bytes sent on to it.", |t| t.bytes_in),
        ("bytes_out_total", "Bytes relayed to clients.", |t| t.bytes_out),
        ("connect_errors_total", "Failed connects.", |t| t.connect_errors),
        ("response_errors_total", "Responses missing, late or malformed.", |t| t.response_errors),
        ("retries_total", "Requests retried on this server.", |t| t.retries),
        ("redispatches_total", "Requests retried on another server after failing here.", |t| t.redispatches),
        ("connects_total", "Connections attempted.", |t| t.connects),
        ("reuses_total", "Pooled connections used again.", |t| t.reuses),
    ];
    for (name, help, count) in counters {
        metric(&format!("server_{name}"), "counter", help, per_server(&|v| count(&v.totals)));
    }
    let codes = s.servers.iter().flat_map(|v| by_code(&format!("server=\"{}\",", label(&v.name)), &v.totals));
    metric("server_responses_total", "counter", "Responses by status class.", codes.collect());
    // The backend's are its servers', those gone included, and its own: requests no server took (none to
    // try, a queue that timed out), answered by the proxy, as HAProxy counts every request routed to a
    // backend. Its requests are all those routed to it, so that responses never outnumber them.
    for (name, help, count) in counters {
        let (value, help) = match name {
            "requests_total" => (s.backend.requests, "Requests routed to the backend, those no server took included."),
            _ => (count(&s.backend), help),
        };
        let help = format!("{help} Every server's, those gone included, and the backend's own.");
        metric(&format!("backend_{name}"), "counter", &help, one(value));
    }
    metric(
        "backend_responses_total",
        "counter",
        "Responses by status class: every server's, and the proxy's own to requests no server took.",
        by_code("", &s.backend),
    );

    let g = &s.gossip;
    metric("gossip_members", "gauge", "Live cluster members besides this proxy.", one(g.members));
    metric("gossip_packets_accepted_total", "counter", "Sealed gossip packets opened and handled.", one(g.accepted));
    let refused = Refused::ALL.iter().map(|r| (format!("{{reason=\"{}\"}}", r.as_str()), g.refused[r.index()]));
    metric("gossip_packets_refused_total", "counter", "Gossip packets dropped, by reason.", refused.collect());
    metric("gossip_members_refused_total", "counter", "Members ignored over --max-members.", one(g.members_refused));
    metric("gossip_rejoins_total", "counter", "Times this proxy was declared down and rejoined.", one(g.rejoins));
    let lost = s.log_lost.iter().map(|(log, cause, n)| (format!("{{log=\"{log}\",cause=\"{cause}\"}}"), *n));
    metric(
        "log_lines_lost_total",
        "counter",
        "Log lines lost: dropped (the sink was too slow) or failed (writing failed, e.g. a closed pipe).",
        lost.collect(),
    );
    let frontends = std::iter::once(("http", &s.frontend_timings))
        .chain(s.frontend_tls_timings.as_ref().map(|t| ("https", t)))
        .map(|(name, t)| (format!("frontend=\"{name}\""), &**t));
    histograms(&mut out, "frontend", &[Phase::Total], frontends.collect());
    histograms(&mut out, "backend", &PHASES, vec![(String::new(), &*s.backend_timings)]);
    let servers = s.servers.iter().map(|v| (format!("server=\"{}\"", label(&v.name)), &*v.timings));
    histograms(&mut out, "server", &PHASES, servers.collect());
    out
}

/// Bucket bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// `shoal_{scope}_{phase}_seconds` histograms, one per labelled source.
fn histograms(out: &mut String, scope: &str, phases: &[Phase], sources: Vec<(String, &Phases)>) {
    for &phase in phases {
        let name = format!("shoal_{scope}_{}_seconds", phase.word());
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", help(phase));
        for (labels, timings) in &sources {
            let series = timings.get(phase);
            let sep = if labels.is_empty() { "" } else { "," };
            let counts = series.counts_at_most(&BUCKETS.map(|le| (le * 1e6) as u64));
            for (le, at_most) in BUCKETS.iter().zip(counts) {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {at_most}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", series.count());
            let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
            let _ = writeln!(out, "{name}_sum{braces} {}", series.sum_us() as f64 / 1e6);
            let _ = writeln!(out, "{name}_count{braces} {}", series.count());
        }
    }
}

fn help(phase: Phase) -> &'static str {
    match phase {
        Phase::Queue => "Time requests waited for a slot on a full server (HAProxy's Tw).",
        Phase::Connect => "Time to connect to the server, 0 on a pooled connection (Tc).",
        Phase::Response => "Time from connected to the response head (Tr).",
        Phase::Total => "Time from the request's first byte to the end of its exchange (Tt).",
    }
}

fn by_code(prefix: &str, t: &Totals) -> Vec<(String, u64)> {
    CODES.iter().zip(t.responses).map(|(code, n)| (format!("{{{prefix}code=\"{code}\"}}"), n)).collect()
}

/// A label value as the exposition format requires.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
