//! The admin side on threads of its own, away from the data plane: HAProxy's stats page (`/`), its CSV
//! (`/;csv`, what HAProxy exporters and scripts read) and Prometheus metrics (`/metrics`), all from the
//! per-thread counters summed at read time; and the runtime API ([`runtime`]).
//!
//! Both listeners are bounded so that no client of theirs can starve the data plane: a few connections at a
//! time (more wait in the kernel's accept queue, holding no descriptor of ours), a deadline on every read and
//! write, a cap on what one request may make us buffer.

mod csv;
pub mod history;
pub mod members;
mod page;
mod prometheus;
pub mod runtime;
mod stats;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http::request::parse_request;
use crate::http::HeadLimits;
use crate::proxy::Shared;

const READ_LIMIT: usize = 8 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once (a scraper and a few browsers).
const ADMIN_CONNECTIONS: usize = 32;

/// Serves the admin endpoints on `listener` (bound by the caller, so a bad address fails the start).
pub fn start(listener: std::net::TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    let auth = shared.config.load().admin_auth.as_ref().map(|s| Arc::<str>::from(basic_credentials(&s.0)));
    tracing::info!(
        "admin on {}{}",
        listener.local_addr()?,
        if auth.is_some() { " (basic authentication)" } else { "" }
    );
    serve_listener("shoal-admin", listener, shared.clone(), ADMIN_CONNECTIONS, move |stream| {
        serve(stream, shared.clone(), auth.clone())
    })
}

/// The `Authorization` value that `USER:PASS` gives.
pub(crate) fn basic_credentials(user_pass: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
}

/// Accepts on `listener` on a thread of its own, running `handle` for each connection, at most `max` at once,
/// until shutdown.
fn serve_listener<F, Fut>(
    name: &str,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    max: usize,
    handle: F,
) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!("admin: {e}"),
            };
            let mut shutdown = shared.shutdown.clone();
            // Shared also holds the access log's sender: this thread lets go of it at shutdown (by returning,
            // which drops the handler and every connection still served), so the log thread can end.
            drop(shared);
            loop {
                // No slot, no accept: the connection waits in the kernel's queue, costing no descriptor.
                let accepted = tokio::select! {
                    accepted = async {
                        let slot = slots.clone().acquire_owned().await;
                        (slot, listener.accept().await)
                    } => accepted,
                    _ = shutdown.wait_for(|stopping| *stopping) => return,
                };
                match accepted {
                    (Ok(slot), Ok((stream, _))) => {
                        let served = handle(stream);
                        tokio::task::spawn_local(async move {
                            served.await;
                            drop(slot);
                        });
                    }
                    (_, Err(e)) => {
                        tracing::warn!("admin accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    (Err(_), _) => return,
                }
            }
        });
    })?;
    Ok(())
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>, auth: Option<Arc<str>>) {
    let Ok(Some((target, credentials))) = tokio::time::timeout(CLIENT_TIMEOUT, read_target(&mut stream)).await else {
        return;
    };
    let allowed = match &auth {
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
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await
    })
    .await;
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request target and the `Authorization` value, once a whole head has arrived; `None` for anything else.
async fn read_target(stream: &mut TcpStream) -> Option<(String, Option<String>)> {
    let limits = HeadLimits { max_head_bytes: READ_LIMIT, max_headers: 64 };
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Ok(Some(req)) = parse_request(&buf, &limits) {
            let auth = req.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("authorization"));
            let auth = auth.map(|(_, value)| String::from_utf8_lossy(value).trim().to_string());
            return Some((req.target.to_string(), auth));
        }
        if buf.len() >= READ_LIMIT || stream.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Routes like HAProxy's `stats uri /`: options follow a `;` (`/;csv`, `/;csv;norefresh`), or `?stats;csv`.
fn respond(target: &str, shared: &Shared) -> (&'static str, &'static str, String) {
    let (path, options) = target.split_once(';').unwrap_or((target, ""));
    let path = path.strip_suffix("?stats").unwrap_or(path);
    let snapshot = stats::Snapshot::read(shared);
    match path {
        "/" if options.split(';').any(|o| o == "csv") => {
            ("200 OK", "text/plain; charset=utf-8", csv::render(&snapshot))
        }
        "/" => ("200 OK", "text/html; charset=utf-8", page::render(&snapshot, &shared.roster.rows())),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", prometheus::render(&snapshot)),
        "/members" => {
            let rows = shared.roster.rows();
            ("200 OK", "application/json", serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()) + "\n")
        }
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the stats are at / (;csv for CSV), /metrics and /members\n".into(),
        ),
    }
}
