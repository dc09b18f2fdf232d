//! HAProxy's stats CSV (`show stat`, `/;csv`): HAProxy 2.6's header byte for byte (all 128 columns, in
//! order; `tests/data/haproxy-2.6-show-stat-header.txt` was captured from Debian's haproxy 2.6.12), one
//! FRONTEND row, one row per server, one BACKEND row. Columns shoal has no value for are empty, as HAProxy
//! leaves columns that do not apply.

use super::history::{FrontendRates, Seen};
use super::stats::{Snapshot, BACKEND, FRONTEND, FRONTEND_TLS};
use crate::balance::counters::Totals;
use crate::balance::timings::{Phase, Phases, PHASES};
use crate::balance::Checked;

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

/// What a row describes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Frontend = 0,
    Backend = 1,
    Server = 2,
}

/// One row's values; `None` prints as an empty field.
struct Row<'a> {
    pxname: &'a str,
    svname: &'a str,
    kind: Kind,
    /// Requests queued (servers and the backend).
    qcur: Option<u64>,
    qmax: Option<u64>,
    /// Percent of its weight a server ramping up under `--slowstart` has reached (HAProxy's `throttle`).
    throttle: Option<u64>,
    scur: u64,
    smax: Option<u64>,
    slim: Option<u64>,
    qlimit: Option<u64>,
    totals: &'a Totals,
    status: &'a str,
    weight: Option<u64>,
    uweight: Option<u64>,
    act: Option<u64>,
    iid: u64,
    sid: u64,
    /// `addr`, `cookie` (servers) and `algo` (the backend).
    addr: Option<&'a str>,
    cookie: Option<&'a str>,
    algo: Option<&'a str>,
    /// Latencies: servers and the backend (HAProxy leaves them empty for frontends).
    timings: Option<&'a Phases>,
    /// Rate and state changes: servers and the backend.
    seen: Option<Seen>,
    /// Connection and request rates: frontends.
    rates: Option<FrontendRates>,
    /// The last health check, the health and the failed count: servers the proxy checks.
    check: Option<&'a Checked>,
}

impl Row<'_> {
    fn frontend<'a>(
        pxname: &'a str,
        iid: u64,
        (scur, smax): (u64, Option<u64>),
        s: &Snapshot,
        totals: &'a Totals,
        rates: FrontendRates,
    ) -> Row<'a> {
        Row {
            pxname,
            svname: "FRONTEND",
            kind: Kind::Frontend,
            qcur: None,
            qmax: None,
            throttle: None,
            scur,
            smax,
            slim: Some(s.max_connections),
            qlimit: None,
            totals,
            status: "OPEN",
            weight: None,
            uweight: None,
            act: None,
            iid,
            sid: 0,
            addr: None,
            cookie: None,
            algo: None,
            timings: None,
            seen: None,
            rates: Some(rates),
            check: None,
        }
    }
}

/// Which rows `show stat` prints: HAProxy's `[{<iid>|<proxy>} <type> <sid>] [up|no-maint]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// A proxy by name or by `iid`; `None`: every proxy.
    proxy: Option<String>,
    /// A bit mask of row kinds: 1 frontends, 2 backends, 4 servers; `None`: all.
    types: Option<u64>,
    /// A server by `sid`; `None`: every server.
    sid: Option<u64>,
    /// `up`: no server that is DOWN or in maintenance (a draining one is still up); `no-maint`: none in
    /// maintenance.
    up: bool,
    no_maint: bool,
}

impl Filter {
    /// Parses what follows `show stat`; the error says what is wrong, in HAProxy's words where it has them.
    pub fn parse(args: &[&str]) -> Result<Filter, String> {
        let mut filter = Filter::default();
        let mut rest = args;
        if let [proxy, kinds, sid, tail @ ..] = rest {
            if !["up", "no-maint", "typed", "json", "desc"].contains(proxy) {
                let number = |what: &str, v: &str| -> Result<Option<u64>, String> {
                    match v.parse::<i64>() {
                        Ok(-1) => Ok(None),
                        Ok(n) if n >= 0 => Ok(Some(n as u64)),
                        _ => Err(format!("show stat: {what} must be -1 or a number, not '{v}'.\n")),
                    }
                };
                filter.proxy = (*proxy != "-1").then(|| proxy.to_string());
                filter.types = number("<type>", kinds)?;
                filter.sid = number("<sid>", sid)?;
                rest = tail;
            }
        }
        for word in rest {
            match *word {
                "up" => filter.up = true,
                "no-maint" => filter.no_maint = true,
                "typed" | "json" | "desc" => {
                    return Err(format!("show stat: shoal prints the CSV only ('{word}' is not supported).\n"))
                }
                _ => {
                    return Err(format!(
                    "show stat: unexpected '{word}'; usage: show stat [{{<iid>|<proxy>}} <type> <sid>] [up|no-maint]\n"
                ))
                }
            }
        }
        Ok(filter)
    }

    /// Whether the proxy asked for, if any, is one of shoal's: `shoal` (1), `nodes` (2), `shoal-tls` (3).
    pub fn proxy_exists(&self) -> bool {
        self.proxy.as_deref().is_none_or(|p| [FRONTEND, BACKEND, FRONTEND_TLS, "1", "2", "3"].contains(&p))
    }

    fn accepts(&self, r: &Row) -> bool {
        let bit = match r.kind {
            Kind::Frontend => 1,
            Kind::Backend => 2,
            Kind::Server => 4,
        };
        let server = r.kind == Kind::Server;
        self.proxy.as_deref().is_none_or(|p| p == r.pxname || p == r.iid.to_string())
            && self.types.is_none_or(|t| t & bit != 0)
            && (!server || self.sid.is_none_or(|sid| sid == r.sid))
            && (!server || self.shows(r.status))
    }

    /// The stats page's `;up` and `;no-maint` options.
    pub fn states(up: bool, no_maint: bool) -> Filter {
        Filter { up, no_maint, ..Filter::default() }
    }

    /// Whether a server of this status is listed.
    pub fn shows(&self, status: &str) -> bool {
        let hidden = match status {
            "MAINT" => self.up || self.no_maint,
            "DOWN" => self.up,
            _ => false,
        };
        !hidden
    }
}

pub fn render_filtered(s: &Snapshot, filter: &Filter) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    let columns: Vec<&str> = HEADER.trim_start_matches("# ").split(',').filter(|c| !c.is_empty()).collect();
    let mut row = |r: Row| {
        if filter.accepts(&r) {
            write_row(&mut out, &columns, &r)
        }
    };
    let [(plain, plain_peak), (tls_open, tls_peak)] = s.frontend_connections;
    row(Row::frontend(FRONTEND, 1, (plain, Some(plain_peak)), s, &s.frontend, s.frontend_rates[0]));
    if let Some(tls) = &s.frontend_tls {
        row(Row::frontend(FRONTEND_TLS, 3, (tls_open, Some(tls_peak)), s, tls, s.frontend_rates[1]));
    }
    for server in &s.servers {
        row(Row {
            pxname: BACKEND,
            svname: &server.name,
            kind: Kind::Server,
            qcur: Some(server.queued),
            qmax: Some(server.peak_queued),
            throttle: (server.weight < server.user_weight)
                .then(|| u64::from(server.weight) * 100 / u64::from(server.user_weight)),
            scur: server.in_flight,
            smax: Some(server.peak_in_flight),
            slim: server.maxconn,
            qlimit: server.maxqueue,
            totals: &server.totals,
            status: server.status,
            weight: Some(u64::from(server.weight)),
            uweight: Some(u64::from(server.user_weight)),
            act: Some(1),
            iid: 2,
            sid: server.id,
            addr: Some(&server.address),
            cookie: server.cookie.as_deref(),
            algo: None,
            timings: Some(&server.timings),
            seen: server.seen,
            rates: None,
            check: server.check.as_ref(),
        });
    }
    // As HAProxy: the backend's weight and active count are those of its usable servers.
    let usable = || s.servers.iter().filter(|v| v.in_rotation());
    row(Row {
        pxname: BACKEND,
        svname: "BACKEND",
        kind: Kind::Backend,
        qcur: Some(s.servers.iter().map(|v| v.queued).sum()),
        qmax: Some(s.backend_peak_queued),
        throttle: None,
        scur: s.backend_current,
        smax: Some(s.backend_peak),
        slim: None,
        qlimit: None,
        totals: &s.backend,
        status: s.backend_status(),
        weight: Some(usable().map(|v| u64::from(v.weight)).sum()),
        uweight: Some(usable().map(|v| u64::from(v.user_weight)).sum()),
        act: Some(usable().count() as u64),
        iid: 2,
        sid: 0,
        addr: None,
        cookie: None,
        algo: Some(&s.algo),
        timings: Some(&s.backend_timings),
        seen: s.backend_seen,
        rates: None,
        check: None,
    });
    out
}

/// The latency a CSV column reports: its phase, and whether it is the maximum rather than the average.
fn latency(column: &str) -> Option<(Phase, bool)> {
    let (name, max) = match column.strip_suffix("_max") {
        Some(name) => (name, true),
        None => (column, false),
    };
    PHASES.into_iter().find(|p| p.csv_name() == name).map(|p| (p, max))
}

fn write_row(out: &mut String, columns: &[&str], r: &Row) {
    for column in columns {
        if let Some(value) = value(r, column) {
            // Names from gossip and error texts must not break the row.
            out.extend(value.chars().map(|c| if c == ',' || c.is_control() { ' ' } else { c }));
        }
        out.push(',');
    }
    out.push('\n');
}

/// One cell, as HAProxy 2.6 fills it for this kind of row; `None` where it leaves the cell empty or shoal has
/// nothing to say.
fn value(r: &Row, column: &str) -> Option<String> {
    let t = r.totals;
    let frontend = r.kind == Kind::Frontend;
    let proxied = !frontend;
    let n = |v: u64| Some(v.to_string());
    let when = |cond: bool, v: u64| if cond { n(v) } else { None };
    if let Some(code) = column.strip_prefix("hrsp_") {
        let i = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"].iter().position(|c| *c == code)?;
        return n(t.responses[i]);
    }
    if let (Some(timings), Some((phase, max))) = (r.timings, latency(column)) {
        // Milliseconds, as HAProxy prints them: averages over recent requests, and maxima.
        let series = timings.get(phase);
        return n(if max { series.max_us() } else { series.recent_us() } / 1000);
    }
    match column {
        "pxname" => Some(r.pxname.to_string()),
        "svname" => Some(r.svname.to_string()),
        "qcur" => r.qcur.map(|v| v.to_string()),
        "qmax" => r.qmax.map(|v| v.to_string()),
        "throttle" => r.throttle.map(|v| v.to_string()),
        "scur" => n(r.scur),
        "smax" => r.smax.map(|v| v.to_string()),
        "slim" => r.slim.map(|v| v.to_string()),
        "qlimit" => r.qlimit.map(|v| v.to_string()),
        // A backend's sessions are its requests; a frontend's and a server's, connections and requests sent.
        "stot" => n(if r.kind == Kind::Backend { t.requests } else { t.sessions }),
        "bin" => n(t.bytes_in),
        "bout" => n(t.bytes_out),
        "ereq" => when(frontend, t.refused),
        "econ" => when(proxied, t.connect_errors),
        "eresp" => when(proxied, t.response_errors),
        "wretr" => when(proxied, t.retries),
        "wredis" => when(proxied, t.redispatches),
        "status" => Some(super::stats::status_text(r.status, r.check)),
        "weight" => r.weight.map(|v| v.to_string()),
        "uweight" => r.uweight.map(|v| v.to_string()),
        "act" => r.act.map(|v| v.to_string()),
        "bck" => when(proxied, 0),
        "chkdown" => r.seen.map(|s| s.went_down.to_string()),
        "lastchg" => r.seen.map(|s| s.since_change_s().to_string()),
        "downtime" => r.seen.map(|s| s.downtime_s().to_string()),
        "pid" => n(1),
        "iid" => n(r.iid),
        "sid" => n(r.sid),
        "lbtot" => when(proxied, t.sessions),
        "type" => n(r.kind as u64),
        "rate" => r.seen.map(|s| s.rate.now).or(r.rates.map(|f| f.connections.now)).map(|v| v.to_string()),
        "rate_max" => r.seen.map(|s| s.rate.max).or(r.rates.map(|f| f.connections.max)).map(|v| v.to_string()),
        "req_rate" => r.rates.map(|f| f.requests.now.to_string()),
        "req_rate_max" => r.rates.map(|f| f.requests.max.to_string()),
        "req_tot" => n(t.requests),
        "cli_abrt" => when(proxied, t.client_aborts),
        "srv_abrt" => when(proxied, t.server_aborts),
        "lastsess" => r.seen.map(|s| s.since_request_s().map_or(-1, |v| v as i64).to_string()),
        // Header rewrites cannot fail in shoal, and no request is answered for an internal error: HAProxy's
        // counters for those stay 0.
        "wrew" | "eint" => n(0),
        // Nothing is denied, compressed or cached, and no rate limit is set: HAProxy's zeros, where it prints them.
        "dresp" => n(0),
        "dreq" | "comp_in" | "comp_out" | "comp_byp" | "comp_rsp" | "cache_lookups" | "cache_hits" => {
            when(r.kind != Kind::Server, 0)
        }
        "rate_lim" | "dcon" | "dses" => when(frontend, 0),
        "intercepted" => when(frontend, t.intercepted),
        // A TLS client whose handshake failed was a connection, never a session.
        "conn_tot" => when(frontend, t.sessions + t.handshake_errors),
        "conn_rate" => r.rates.map(|f| f.connections.now.to_string()),
        "conn_rate_max" => r.rates.map(|f| f.connections.max.to_string()),
        "connect" => when(proxied, t.connects),
        "reuse" => when(proxied, t.reuses),
        // Only the TLS frontend has TLS sessions (servers are reached in the clear); `ssl_reused_sess` counts
        // those resumed with a ticket.
        "ssl_sess" => n(if r.pxname == FRONTEND_TLS { t.sessions } else { 0 }),
        "ssl_failed_handshake" => n(t.handshake_errors),
        "ssl_reused_sess" => n(if r.pxname == FRONTEND_TLS { t.resumed } else { 0 }),
        "-" => Some("-".to_string()),
        "check_status" => r.check.map(|c| c.report.status.to_string()),
        "check_code" => r.check.and_then(|c| c.report.code).map(|v| v.to_string()),
        "check_duration" => r.check.map(|c| c.report.duration.as_millis().to_string()),
        "check_desc" => r.check.map(|c| c.report.description().to_string()),
        "last_chk" => r.check.map(|c| c.report.error.clone().unwrap_or_else(|| c.report.description().to_string())),
        "chkfail" => r.check.map(|c| c.failed.to_string()),
        "check_rise" => r.check.map(|c| c.health.rise.to_string()),
        "check_fall" => r.check.map(|c| c.health.fall.to_string()),
        "check_health" => r.check.map(|c| c.health.health.to_string()),
        "addr" => r.addr.map(str::to_string),
        "cookie" => r.cookie.map(str::to_string),
        "mode" => Some("http".to_string()),
        "algo" => r.algo.map(str::to_string),
        _ => None,
    }
}
