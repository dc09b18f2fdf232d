//! Access log lines in HAProxy's `option httplog` shape.
//!
//! Each data-plane thread formats into its own buffer and hands whole batches to a [`crate::logging::Sink`] on
//! stdout, so the request path never takes a lock shared with other threads and never blocks on a slow or
//! closed stdout.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BACKEND_NAME, FRONTEND_NAME};
use crate::http::rewrite::{decimal, ip_address};

/// What one log line says.
pub struct Record<'a> {
    pub client: SocketAddr,
    /// The client connected over TLS: `%ft` is `shoal~`, as HAProxy marks SSL frontends.
    pub tls: bool,
    pub accepted: SystemTime,
    /// The request reached the backend (`%b` is `nodes`), rather than being answered by the frontend before
    /// routing (a bad request, a timeout, a redirect: `%b` is the frontend's name).
    pub routed: bool,
    /// The server of the last attempt, connected or not (`<NOSRV>` when none was picked).
    pub server: Option<&'a str>,
    /// `%TR/%Tw/%Tc/%Tr/%Ta` in milliseconds; -1 where a phase was not reached.
    pub timers: [i64; 5],
    pub status: u16,
    pub bytes: u64,
    /// `%tsc`: who ended the session and in which phase.
    pub termination: [u8; 2],
    /// `%ac` and `%fc`: connections open on the process, and on this frontend (plain or TLS).
    pub active: usize,
    pub frontend_conns: usize,
    /// `%bc` and `%sc`: requests in flight to the backend's servers, and to this one.
    pub backend_conns: usize,
    pub server_conns: usize,
    pub retries: u32,
    /// The request ended on another server than its first: `%rc` is `+N`, as HAProxy marks a redispatch.
    pub redispatched: bool,
    /// `%sq`: requests ahead of this one in its server's queue. `%bq` is always 0: a request that finds every
    /// server full waits in one server's queue, never in a queue of the backend's.
    pub server_queue: u32,
    /// The request line, or `None` for `<BADREQ>`.
    pub line: Option<&'a [u8]>,
}

/// Appends one line: `%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc
/// %sq/%bq %{+Q}r`.
pub fn format(r: &Record<'_>, out: &mut Vec<u8>) {
    let backend = if r.routed { BACKEND_NAME } else { FRONTEND_NAME };
    let server = r.server.unwrap_or("<NOSRV>");
    ip_address(out, r.client.ip().to_canonical());
    out.push(b':');
    decimal(out, r.client.port());
    out.extend_from_slice(b" [");
    write_date(r.accepted, out);
    out.extend_from_slice(b"] ");
    out.extend_from_slice(FRONTEND_NAME.as_bytes());
    if r.tls {
        out.push(b'~');
    }
    out.push(b' ');
    out.extend_from_slice(backend.as_bytes());
    out.push(b'/');
    out.extend_from_slice(server.as_bytes());
    out.push(b' ');
    numbers(out, &r.timers);
    out.push(b' ');
    // No status (the client went away before any answer): HAProxy's -1.
    match r.status {
        0 => out.extend_from_slice(b"-1"),
        status => decimal(out, status),
    }
    out.push(b' ');
    decimal(out, r.bytes);
    out.extend_from_slice(b" - - ");
    out.extend_from_slice(&r.termination);
    out.extend_from_slice(b"-- ");
    numbers(out, &[r.active, r.frontend_conns, r.backend_conns, r.server_conns]);
    out.extend_from_slice(if r.redispatched { b"/+" } else { b"/" });
    decimal(out, r.retries);
    out.push(b' ');
    decimal(out, r.server_queue);
    out.extend_from_slice(b"/0 \"");
    match r.line {
        Some(line) => {
            for &b in line.iter().take(1024) {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
        }
        None => out.extend_from_slice(b"<BADREQ>"),
    }
    out.extend_from_slice(b"\"\n");
}

/// `a/b/c...`
fn numbers<I: itoa::Integer + Copy>(out: &mut Vec<u8>, ns: &[I]) {
    for (i, &n) in ns.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        decimal(out, n);
    }
}

/// `n` in `width` digits, zero-padded (n < 10^width).
fn padded(out: &mut Vec<u8>, n: u64, width: u32) {
    let mut unit = 10u64.pow(width - 1);
    while unit > 0 {
        out.push(b'0' + (n / unit % 10) as u8);
        unit /= 10;
    }
}

fn write_date(t: SystemTime, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    padded(out, d.into(), 2);
    out.push(b'/');
    out.extend_from_slice(MONTHS[(m - 1) as usize].as_bytes());
    out.push(b'/');
    decimal(out, y);
    for part in [s / 3600, s / 60 % 60, s % 60] {
        out.push(b':');
        padded(out, part, 2);
    }
    out.push(b'.');
    padded(out, since.subsec_millis().into(), 3);
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn line_shape() {
        let mut out = Vec::new();
        let r = Record {
            client: "10.0.0.1:5000".parse().unwrap(),
            tls: false,
            accepted: UNIX_EPOCH + Duration::from_millis(1_764_277_548_123),
            routed: true,
            server: Some("s1"),
            timers: [0, 0, 1, 2, 3],
            status: 200,
            bytes: 512,
            termination: *b"--",
            active: 3,
            frontend_conns: 1,
            backend_conns: 0,
            server_conns: 0,
            retries: 1,
            redispatched: true,
            server_queue: 4,
            line: Some(b"GET /\"x\" HTTP/1.1"),
        };
        format(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1:5000 [27/Nov/2025:21:05:48.123] shoal nodes/s1 0/0/1/2/3 200 512 - - ---- 3/1/0/0/+1 4/0 \
             \"GET /\\\"x\\\" HTTP/1.1\"\n"
        );
    }

    /// The other shapes: TLS, no server, timers not reached, IPv6, an unparsed request, zero-padded date parts.
    #[test]
    fn line_shape_of_a_refusal() {
        let mut out = Vec::new();
        let r = Record {
            client: "[::1]:443".parse().unwrap(),
            tls: true,
            accepted: UNIX_EPOCH + Duration::from_millis(951_793_445_007),
            routed: false,
            server: None,
            timers: [-1, -1, -1, -1, 7],
            status: 408,
            bytes: 0,
            termination: *b"cR",
            active: 2,
            frontend_conns: 2,
            backend_conns: 0,
            server_conns: 0,
            retries: 0,
            redispatched: false,
            server_queue: 0,
            line: None,
        };
        format(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "::1:443 [29/Feb/2000:03:04:05.007] shoal~ shoal/<NOSRV> -1/-1/-1/-1/7 408 0 - - cR-- 2/2/0/0/0 0/0 \"<BADREQ>\"\n"
        );
    }
}
