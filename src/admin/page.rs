//! The human stats page: one table in HAProxy's spirit, refreshed by the browser every few seconds.

use std::fmt::Write;

use super::stats::{Snapshot, BACKEND, FRONTEND};
use crate::balance::counters::Totals;
use crate::cluster::roster::Row;

pub fn render(s: &Snapshot, members: &[Row]) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<title>shoal statistics</title><style>body{font-family:sans-serif}table{border-collapse:collapse}\
td,th{border:1px solid #999;padding:2px 8px;text-align:right}td:first-child{text-align:left}\
.UP,.alive{background:#c0ffc0}.DOWN,.failed,.unhealthy{background:#ffa0a0}.OPEN{background:#e0e0ff}\
.DRAIN,.draining{background:#a0c0ff}.MAINT,.maint{background:#c0a070}.left,.joining{background:#e0e0e0}\
</style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>shoal statistics</h1><p>up {} s; {} client connections of {}; CSV at <a href=\"/;csv\">/;csv</a>, \
metrics at <a href=\"/metrics\">/metrics</a></p><table><tr><th>{FRONTEND} / {BACKEND}</th><th>status</th>\
<th>weight</th><th>current</th><th>total</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>bytes out</th>\
<th>connect errors</th><th>response errors</th><th>retries</th></tr>",
        s.uptime_s, s.connections, s.max_connections
    );
    row(&mut out, "FRONTEND", "OPEN", "", s.connections, &s.frontend);
    if let Some(tls) = &s.frontend_tls {
        let name = format!("FRONTEND (TLS; {} failed handshakes)", tls.handshake_errors);
        row(&mut out, &name, "OPEN", "", 0, tls);
    }
    for server in &s.servers {
        let name = format!("{} ({})", escape(&server.name), escape(&server.address));
        row(&mut out, &name, server.status, &server.weight.to_string(), server.in_flight, &server.totals);
    }
    let weight: u64 = s.servers.iter().map(|v| u64::from(v.weight)).sum();
    let current = s.servers.iter().map(|v| v.in_flight).sum();
    row(&mut out, "BACKEND", s.backend_status(), &weight.to_string(), current, &s.backend);
    out.push_str(
        "</table><h2>cluster</h2><table><tr><th>member</th><th>address</th><th>status</th><th>role</th>\
<th>service</th><th>tags</th><th>generation</th><th>last change</th></tr>",
    );
    for m in members {
        let tags = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{} s ago</td></tr>",
            escape(&m.name),
            escape(&m.address),
            escape(&m.status),
            escape(&m.status),
            escape(&m.role),
            escape(m.service.as_deref().unwrap_or("")),
            escape(&tags),
            m.generation,
            m.since_change_s
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

fn row(out: &mut String, name: &str, status: &str, weight: &str, current: u64, t: &Totals) {
    let _ = write!(
        out,
        "<tr><td>{name}</td><td class=\"{status}\">{status}</td><td>{weight}</td><td>{current}</td><td>{}</td>\
<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        t.requests,
        t.responses[1],
        t.responses[2],
        t.responses[3],
        t.responses[4],
        t.bytes_out,
        t.connect_errors,
        t.response_errors,
        t.retries
    );
}

/// Node names come from gossip: never trusted as markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
