//! The admin side on threads of its own, away from the data plane: HAProxy's stats page (`/`), its CSV
//! (`/;csv`, what HAProxy exporters and scripts read) and Prometheus metrics (`/metrics`), all from the
//! per-thread counters summed at read time; and the runtime API ([`runtime`]).
//!
//! Both listeners are bounded so that no client of theirs can starve the data plane: a few connections at a
//! time (a newcomer takes the slot of the one quiet longest, see [`sessions`]), a deadline on every read and
//! write, a cap on what one request may make us buffer.

mod csv;
pub mod history;
pub mod members;
mod page;
mod prometheus;
pub mod runtime;
pub mod runtime_client;
mod sessions;
mod stats;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::request::parse_request;
use crate::http::HeadLimits;
use crate::proxy::{close_gracefully, Shared};
use sessions::serve_listener;

const READ_LIMIT: usize = 8 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once (a scraper and a few browsers).
const ADMIN_CONNECTIONS: usize = 32;

/// Serves the admin endpoints on `listener` (bound by the caller, so a bad address fails the start).
pub fn start(listener: std::net::TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    let locked = shared.config.load().admin_auth.is_some();
    tracing::info!("admin on {}{}", listener.local_addr()?, if locked { " (basic authentication)" } else { "" });
    serve_listener("shoal-admin", listener, shared.clone(), ADMIN_CONNECTIONS, move |stream, _| {
        serve(stream, shared.clone())
    })
}

/// The `Authorization` value that `USER:PASS` gives.
pub(crate) fn basic_credentials(user_pass: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let (target, credentials, head_only) = match tokio::time::timeout(CLIENT_TIMEOUT, read_target(&mut stream)).await {
        Ok(Head::Request(target, credentials, head_only)) => (target, credentials, head_only),
        Ok(Head::Malformed) => {
            return answer(&mut stream, "400 Bad Request", "text/plain", Body::Whole("bad request\n".into()), "").await
        }
        Ok(Head::Gone) | Err(_) => return,
    };
    // Read per request, so a reload that sets or changes --admin-auth applies at once.
    let expected = shared.config.load().admin_auth.as_ref().map(|s| basic_credentials(&s.0));
    let allowed = match &expected {
        None => true,
        Some(expected) => credentials.is_some_and(|given| same_secret(given.as_bytes(), expected.as_bytes())),
    };
    let (status, kind, body, extra) = if allowed {
        let (status, kind, body) = respond(&target, &shared);
        (status, kind, body, "")
    } else {
        let body = "authentication required\n".to_string();
        ("401 Unauthorized", "text/plain; charset=utf-8", body, "WWW-Authenticate: Basic realm=\"shoal\"\r\n")
    };
    // A HEAD is answered with the head a GET gets, its Content-Length included, and no body.
    let body = if head_only { Body::HeadOf(body.len()) } else { Body::Whole(body) };
    answer(&mut stream, status, kind, body, extra).await;
}

/// What follows an answer's head.
enum Body {
    Whole(String),
    /// Nothing: the answer to a HEAD, whose GET would have had a body of this length.
    HeadOf(usize),
}

/// Writes one answer (`extra`: more header lines) and closes, reading what the client still sends (a body
/// ignored, the rest of a head too large) so that the close is not a reset that can destroy the answer.
async fn answer(stream: &mut TcpStream, status: &str, kind: &str, body: Body, extra: &str) {
    let (length, body) = match body {
        Body::Whole(body) => (body.len(), body),
        Body::HeadOf(length) => (length, String::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n{extra}Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    );
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await
    })
    .await;
    close_gracefully(stream, CLIENT_TIMEOUT).await;
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What came on an admin connection.
enum Head {
    /// The request target, the `Authorization` value, and whether it is a HEAD.
    Request(String, Option<String>, bool),
    /// A head that is not HTTP/1 (or too large): answered 400.
    Malformed,
    /// The client left, or the read failed, before a whole head.
    Gone,
}

async fn read_target(stream: &mut TcpStream) -> Head {
    let limits = HeadLimits { max_head_bytes: READ_LIMIT, max_headers: 64 };
    let mut buf = Vec::with_capacity(1024);
    loop {
        match parse_request(&buf, &limits) {
            Ok(Some(req)) => {
                let auth = req.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("authorization"));
                let auth = auth.map(|(_, value)| String::from_utf8_lossy(value).trim().to_string());
                return Head::Request(req.target.to_string(), auth, req.method == "HEAD");
            }
            Ok(None) => {}
            Err(_) => return Head::Malformed,
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(_) => {}
        }
    }
}

/// `/metrics` and `/members` are shoal's own; any other path is the stats page, as under HAProxy's `stats uri
/// /`, which matches a prefix (so its default `/haproxy?stats` is served too). Options follow a `;` anywhere
/// after it: `;csv`, `;up` (no server DOWN or in maintenance), `;no-maint`, `;norefresh`.
fn respond(target: &str, shared: &Shared) -> (&'static str, &'static str, String) {
    let path = target.split(['?', ';']).next().unwrap_or_default();
    let option = |name: &str| target.split(';').skip(1).any(|o| o.starts_with(name));
    match path {
        _ if !path.starts_with('/') => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the stats are at / (;csv for CSV), /metrics and /members\n".into(),
        ),
        "/metrics" => {
            let body = prometheus::render(&stats::Snapshot::read(shared));
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        "/members" => {
            let rows = shared.roster.rows();
            ("200 OK", "application/json", serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()) + "\n")
        }
        _ => {
            let snapshot = stats::Snapshot::read(shared);
            let filter = csv::Filter::states(option("up"), option("no-maint"));
            if option("csv") {
                ("200 OK", "text/plain; charset=utf-8", csv::render_filtered(&snapshot, &filter))
            } else {
                let page = page::render(&snapshot, &shared.roster.rows(), &filter, !option("norefresh"));
                ("200 OK", "text/html; charset=utf-8", page)
            }
        }
    }
}
