//! Access log lines in HAProxy's `option httplog` shape.
//!
//! Each data-plane thread formats into its own buffer and hands whole batches to a [`crate::logging::Sink`] on
//! stdout, so the request path never takes a lock shared with other threads and never blocks on a slow or
//! closed stdout.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BACKEND_NAME, FRONTEND_NAME};

/// What one log line says.
pub struct Record<'a> {
    pub client: SocketAddr,
    /// The client connected over TLS: `%ft` is `shoal~`, as HAProxy marks SSL frontends.
    pub tls: bool,
    pub accepted: SystemTime,
    pub server: Option<&'a str>,
    /// `%TR/%Tw/%Tc/%Tr/%Ta` in milliseconds; -1 where a phase was not reached.
    pub timers: [i64; 5],
    pub status: u16,
    pub bytes: u64,
    /// `%tsc`: who ended the session and in which phase.
    pub termination: [u8; 2],
    pub active: usize,
    /// `%bc` and `%sc`: requests in flight to the backend's servers, and to this one.
    pub backend_conns: usize,
    pub server_conns: usize,
    pub retries: u32,
    /// The request line, or `None` for `<BADREQ>`.
    pub line: Option<&'a str>,
}

/// Appends one line: `%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc
/// %sq/%bq %{+Q}r`.
pub fn format(r: &Record<'_>, out: &mut Vec<u8>) {
    let (backend, server) = match r.server {
        Some(s) => (BACKEND_NAME, s),
        None => (FRONTEND_NAME, "<NOSRV>"),
    };
    let tls = if r.tls { "~" } else { "" };
    let [tr, tw, tc, tr2, ta] = r.timers;
    let _ = write!(out, "{}:{} [", r.client.ip().to_canonical(), r.client.port());
    write_date(r.accepted, out);
    let _ = write!(
        out,
        "] {FRONTEND_NAME}{tls} {backend}/{server} {tr}/{tw}/{tc}/{tr2}/{ta} {} {} - - {}{}-- {}/{}/{}/{}/{} 0/0 \"",
        r.status,
        r.bytes,
        r.termination[0] as char,
        r.termination[1] as char,
        r.active,
        r.active,
        r.backend_conns,
        r.server_conns,
        r.retries
    );
    match r.line {
        Some(line) => {
            for &b in line.as_bytes().iter().take(1024) {
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

/// `27/Nov/2026:21:05:48.123` in UTC.
fn write_date(t: SystemTime, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{d:02}/{}/{y}:{:02}:{:02}:{:02}.{:03}",
        MONTHS[(m - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
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
            server: Some("s1"),
            timers: [0, 0, 1, 2, 3],
            status: 200,
            bytes: 512,
            termination: *b"--",
            active: 1,
            backend_conns: 0,
            server_conns: 0,
            retries: 0,
            line: Some("GET /\"x\" HTTP/1.1"),
        };
        format(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1:5000 [27/Nov/2025:21:05:48.123] shoal nodes/s1 0/0/1/2/3 200 512 - - ---- 1/1/0/0/0 0/0 \
             \"GET /\\\"x\\\" HTTP/1.1\"\n"
        );
    }
}
