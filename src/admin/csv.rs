//! HAProxy's stats CSV (`show stat`, `/;csv`): HAProxy 2.6's header byte for byte (all 128 columns, in
//! order; `tests/data/haproxy-2.6-show-stat-header.txt` was captured from Debian's haproxy 2.6.12), one
//! FRONTEND row, one row per server, one BACKEND row. Columns shoal has no value for are empty, as HAProxy
//! leaves columns that do not apply.

use std::fmt::Write;

use super::stats::{Snapshot, BACKEND, FRONTEND, FRONTEND_TLS};
use crate::balance::counters::Totals;

const HEADER: &str =
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,\
weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,\
rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,\
hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,\
lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,\
agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,\
conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,\
srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,\
need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,\
ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,\
h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,\
h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,\
h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,\
h1_spliced_bytes_in,h1_spliced_bytes_out,";

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
    /// `addr`, `cookie` (servers) and `algo` (the backend).
    addr: Option<&'a str>,
    cookie: Option<&'a str>,
    algo: Option<&'a str>,
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
        addr: None,
        cookie: None,
        algo: None,
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
            addr: None,
            cookie: None,
            algo: None,
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
            addr: Some(&server.address),
            cookie: server.cookie.as_deref(),
            algo: None,
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
        addr: None,
        cookie: None,
        algo: Some(&s.algo),
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
    let _ = write!(out, ",,,{},,,", t.requests);
    // The columns after `srv_abrt`.
    for column in HEADER.split(',').skip_while(|c| *c != "srv_abrt").skip(1).filter(|c| !c.is_empty()) {
        let value = match column {
            "addr" => r.addr.unwrap_or(""),
            "cookie" => r.cookie.unwrap_or(""),
            "mode" => "http",
            "algo" => r.algo.unwrap_or(""),
            _ => "",
        };
        out.push_str(value);
        out.push(',');
    }
    out.push('\n');
}
