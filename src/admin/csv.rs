//! HAProxy's stats CSV (`show stat`, `/;csv`): the same header and the same column order for the columns
//! up to `srv_abrt`, one FRONTEND row, one row per server, one BACKEND row. Columns shoal has no value for
//! are empty, as HAProxy leaves columns that do not apply.

use std::fmt::Write;

use super::stats::{Snapshot, BACKEND, FRONTEND, FRONTEND_TLS};
use crate::balance::counters::Totals;

const HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,\
status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,\
rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,\
hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,";

/// One row's values; `None` prints as an empty field.
struct Row<'a> {
    pxname: &'a str,
    svname: &'a str,
    /// Requests queued (servers and the backend); `None` for frontends.
    qcur: Option<u64>,
    scur: u64,
    slim: Option<u64>,
    totals: &'a Totals,
    status: &'a str,
    weight: Option<u64>,
    act: Option<u64>,
    iid: u64,
    sid: u64,
    /// 0 frontend, 1 backend, 2 server.
    kind: u8,
}

pub fn render(s: &Snapshot) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    let mut row = |r: Row| write_row(&mut out, &r);
    row(Row {
        pxname: FRONTEND,
        svname: "FRONTEND",
        qcur: None,
        scur: s.connections,
        slim: Some(s.max_connections),
        totals: &s.frontend,
        status: "OPEN",
        weight: None,
        act: None,
        iid: 1,
        sid: 0,
        kind: 0,
    });
    if let Some(tls) = &s.frontend_tls {
        row(Row {
            pxname: FRONTEND_TLS,
            svname: "FRONTEND",
            qcur: None,
            scur: 0,
            slim: Some(s.max_connections),
            totals: tls,
            status: "OPEN",
            weight: None,
            act: None,
            iid: 3,
            sid: 0,
            kind: 0,
        });
    }
    for (i, server) in s.servers.iter().enumerate() {
        row(Row {
            pxname: BACKEND,
            svname: &server.name,
            qcur: Some(server.queued),
            scur: server.in_flight,
            slim: server.maxconn,
            totals: &server.totals,
            status: server.status,
            weight: Some(u64::from(server.weight)),
            act: Some(1),
            iid: 2,
            sid: i as u64 + 1,
            kind: 2,
        });
    }
    // As HAProxy: the backend's weight and active count are those of its usable servers.
    let usable = || s.servers.iter().filter(|v| v.in_rotation());
    row(Row {
        pxname: BACKEND,
        svname: "BACKEND",
        qcur: Some(s.servers.iter().map(|v| v.queued).sum()),
        scur: s.servers.iter().map(|v| v.in_flight).sum(),
        slim: None,
        totals: &s.backend,
        status: s.backend_status(),
        weight: Some(usable().map(|v| u64::from(v.weight)).sum()),
        act: Some(usable().count() as u64),
        iid: 2,
        sid: 0,
        kind: 1,
    });
    out
}

fn write_row(out: &mut String, r: &Row) {
    let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    let t = r.totals;
    let frontend = r.kind == 0;
    let sessions = if r.kind == 1 { t.requests } else { t.sessions };
    let (ereq, econ, eresp, wretr) = if frontend {
        (t.refused.to_string(), String::new(), String::new(), String::new())
    } else {
        (String::new(), t.connect_errors.to_string(), t.response_errors.to_string(), t.retries.to_string())
    };
    let lbtot = if frontend { String::new() } else { t.sessions.to_string() };
    let _ = write!(
        out,
        "{},{},{},{},{},,{},{},,{},,,{ereq},{econ},{eresp},{wretr},,{},{},{},{},,,,,,1,{},{},,{lbtot},,{},,,,,,,",
        r.pxname,
        r.svname,
        opt(r.qcur),
        if frontend { "" } else { "0" },
        r.scur,
        opt(r.slim),
        sessions,
        t.bytes_out,
        r.status,
        opt(r.weight),
        opt(r.act),
        if frontend { "" } else { "0" },
        r.iid,
        r.sid,
        r.kind,
    );
    for n in t.responses {
        let _ = write!(out, "{n},");
    }
    let _ = writeln!(out, ",,,{},,,", t.requests);
}
