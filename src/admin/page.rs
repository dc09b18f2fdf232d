//! The human stats page as HAProxy users read it: one row per server, coloured by state with HAProxy's own
//! colours (UP green, DOWN red, DRAIN blue, MAINT brown, the shades for going up or down), sessions, rates,
//! bytes, responses, errors, latency percentiles and state changes; then the gossip cluster. Plain HTML and
//! CSS, refreshed by the browser every few seconds.

use std::fmt::Write;

use super::history::Seen;
use super::stats::{Snapshot, BACKEND, FRONTEND};
use crate::balance::counters::Totals;
use crate::balance::timings::{Phase, Phases};
use crate::cluster::roster::Row;

/// HAProxy 2.6's stats page colours (its light theme), by the row classes it uses.
const STYLE: &str = "body{font-family:arial,helvetica,sans-serif;font-size:12px}h1{font-size:x-large}\
h2{font-size:large;color:#6020a0}table{border-collapse:collapse;margin-bottom:1em}\
td,th{border:1px solid gray;padding:2px 4px;font-size:11px;white-space:nowrap;text-align:right}\
th{background:#20d0d0}th.pxname{background:#b00040;color:#ffff40;text-align:left}td:first-child{text-align:left}\
.frontend,.backend{background:#e8e8d0}.active_up,.alive{background:#c0ffc0}.active_down,.failed,.unhealthy{background:#ff9090}\
.active_going_up,.joining{background:#ffd020}.active_going_down{background:#ffffa0}\
.active_draining,.active_nolb,.draining{background:#20a0ff}.maintain,.maint{background:#c07820}\
.left{background:#e0e0e0}";

/// What a row shows.
struct Line<'a> {
    class: &'a str,
    name: &'a str,
    status: &'a str,
    seen: Option<&'a Seen>,
    weight: String,
    queued: Option<u64>,
    current: u64,
    /// The most at once.
    peak: Option<u64>,
    limit: Option<u64>,
    /// The last health check, as HAProxy's page writes it: `L7OK/200 in 1ms`.
    check: String,
    /// The per-second rate and its maximum, when sampled.
    rate: Option<(u64, u64)>,
    totals: &'a Totals,
    timings: &'a Phases,
}

/// The page, listing the servers `filter` shows, reloading itself every 5 s if `refresh`.
pub fn render(s: &Snapshot, members: &[Row], filter: &super::csv::Filter, refresh: bool) -> String {
    let refresh = if refresh { "<meta http-equiv=\"refresh\" content=\"5\">" } else { "" };
    let mut out = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}\
<link rel=\"icon\" href=\"data:,\"><title>shoal statistics</title><style>{STYLE}</style></head><body><h1>shoal statistics</h1>\
<p>uptime {}; {} client connections of {}; CSV at <a href=\"/;csv\">/;csv</a>, metrics at \
<a href=\"/metrics\">/metrics</a>, members at <a href=\"/members\">/members</a></p>",
        human_time(s.uptime_s),
        s.connections,
        s.max_connections
    );
    out.push_str(
        "<table><tr><th class=\"pxname\">name</th><th>status</th><th>last change</th><th>last check</th><th>weight</th>\
<th>queue</th><th>cur</th><th>max</th><th>limit</th><th>total</th><th>rate</th><th>rate max</th><th>bytes out</th>\
<th>1xx</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>connect errors</th><th>response errors</th>\
<th>retries / redispatches</th><th>aborts c/s</th><th>time p50</th><th>p90</th><th>p99</th><th>max</th><th>downtime</th></tr>",
    );
    let rates = |r: super::history::Rate| Some((r.now, r.max));
    line(
        &mut out,
        &Line {
            class: "frontend",
            name: FRONTEND,
            status: "OPEN",
            seen: None,
            check: String::new(),
            weight: String::new(),
            queued: None,
            current: s.frontend_connections[0].0,
            peak: Some(s.frontend_connections[0].1),
            limit: Some(s.max_connections),
            rate: rates(s.frontend_rates[0].requests),
            totals: &s.frontend,
            timings: &s.frontend_timings,
        },
    );
    if let (Some(tls), Some(timings)) = (&s.frontend_tls, &s.frontend_tls_timings) {
        let name = format!("{FRONTEND} (TLS; {} failed handshakes)", tls.handshake_errors);
        let l = Line {
            class: "frontend",
            name: &name,
            status: "OPEN",
            seen: None,
            check: String::new(),
            weight: String::new(),
            queued: None,
            current: s.frontend_connections[1].0,
            peak: Some(s.frontend_connections[1].1),
            limit: Some(s.max_connections),
            rate: rates(s.frontend_rates[1].requests),
            totals: tls,
            timings,
        };
        line(&mut out, &l);
    }
    for server in s.servers.iter().filter(|v| filter.shows(v.status)) {
        let name = format!("{} ({})", escape(&server.name), escape(&server.address));
        let joining = members.iter().any(|m| m.name == server.name && m.status == "joining");
        let suspected = server.seen.as_ref().is_some_and(Seen::suspected_lately);
        let status = super::stats::status_text(server.status, server.check.as_ref());
        // Between two check verdicts (`UP 2/3`, `DOWN 1/2`).
        let between = status != server.status;
        let class = match server.status {
            "UP" if suspected || between => "active_going_down",
            "UP" if server.weight == 0 => "active_nolb",
            "UP" => "active_up",
            "DOWN" if joining || between => "active_going_up",
            "DRAIN" => "active_draining",
            "MAINT" => "maintain",
            _ => "active_down",
        };
        line(
            &mut out,
            &Line {
                class,
                name: &name,
                status: &status,
                seen: server.seen.as_ref(),
                check: server.check.as_ref().map_or(String::new(), |checked| {
                    let c = &checked.report;
                    let code = c.code.map_or(String::new(), |code| format!("/{code}"));
                    format!("{}{code} in {}ms", c.status, c.duration.as_millis())
                }),
                weight: server.weight.to_string(),
                queued: Some(server.queued),
                current: server.in_flight,
                peak: Some(server.peak_in_flight),
                limit: server.maxconn,
                rate: server.seen.map(|v| (v.rate.now, v.rate.max)),
                totals: &server.totals,
                timings: &server.timings,
            },
        );
    }
    line(
        &mut out,
        &Line {
            class: "backend",
            name: BACKEND,
            status: s.backend_status(),
            seen: s.backend_seen.as_ref(),
            check: String::new(),
            // As HAProxy: the weight of the servers taking requests.
            weight: s.servers.iter().filter(|v| v.in_rotation()).map(|v| u64::from(v.weight)).sum::<u64>().to_string(),
            queued: Some(s.servers.iter().map(|v| v.queued).sum()),
            current: s.backend_current,
            peak: Some(s.backend_peak),
            limit: None,
            rate: s.backend_seen.map(|v| (v.rate.now, v.rate.max)),
            totals: &s.backend,
            timings: &s.backend_timings,
        },
    );
    out.push_str(
        "</table><h2>cluster</h2><table><tr><th class=\"pxname\">member</th><th>address</th><th>status</th>\
<th>role</th><th>service</th><th>tags</th><th>generation</th><th>last change</th></tr>",
    );
    for m in members {
        let tags = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
        let _ = write!(
            out,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{} ago</td></tr>",
            escape(&m.status),
            escape(&m.name),
            escape(&m.address),
            escape(&m.status),
            escape(&m.status),
            escape(&m.role),
            escape(m.service.as_deref().unwrap_or("")),
            escape(&tags),
            m.generation,
            human_time(m.since_change_s)
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

fn line(out: &mut String, l: &Line) {
    let t = l.totals;
    let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    let _ = write!(
        out,
        "<tr class=\"{}\"><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
        l.class,
        l.name,
        l.status,
        l.status,
        l.seen.map_or(String::new(), |v| human_time(v.since_change_s())),
        l.check,
        l.weight,
        opt(l.queued),
        l.current,
        opt(l.peak),
        opt(l.limit),
        t.requests,
        opt(l.rate.map(|r| r.0)),
        opt(l.rate.map(|r| r.1)),
        t.bytes_out,
    );
    for n in &t.responses[..5] {
        let _ = write!(out, "<td>{n}</td>");
    }
    let _ = write!(
        out,
        "<td>{}</td><td>{}</td><td>{} / {}</td><td>{} / {}</td>",
        t.connect_errors, t.response_errors, t.retries, t.redispatches, t.client_aborts, t.server_aborts
    );
    let total = l.timings.get(Phase::Total);
    for us in [total.quantile_us(0.5), total.quantile_us(0.9), total.quantile_us(0.99), total.max_us()] {
        if total.count() == 0 {
            out.push_str("<td class=\"latency\">-</td>");
        } else {
            let _ = write!(out, "<td class=\"latency\">{} ms</td>", milliseconds(us));
        }
    }
    let _ = write!(out, "<td>{}</td></tr>", l.seen.map_or(String::new(), |v| human_time(v.downtime_s())));
}

/// Milliseconds with a decimal below 10 ms.
fn milliseconds(us: u64) -> String {
    if us < 10_000 {
        format!("{:.1}", us as f64 / 1000.0)
    } else {
        (us / 1000).to_string()
    }
}

/// A duration as HAProxy's page writes it: `42s`, `5m12s`, `3h7m`, `1d2h`.
pub fn human_time(s: u64) -> String {
    let (d, h, m) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{}s", s % 60),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Node names come from gossip: never trusted as markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::human_time;

    #[test]
    fn durations_read_as_on_haproxy_s_page() {
        let cases = [(0, "0s"), (42, "42s"), (312, "5m12s"), (3 * 3600 + 7 * 60 + 5, "3h7m"), (93_600, "1d2h")];
        for (s, text) in cases {
            assert_eq!(human_time(s), text);
        }
    }
}
