//! `shoal webapp`: a demo backend standing in for the lab's Node/Express app.
//!
//! `GET /` answers `{"hello":"world!","ip":..,"host":..,"tag":..,"sessionViews":..,"id":..}` with an
//! `X-Backend-Ip` header and a `NODESESSID` cookie; views count per session, so they only climb while
//! requests stick to one node. `POST /delay {"delay": ms}` makes later `GET /` answers wait that long.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http::request::{parse_request, RequestBody};
use crate::http::HeadLimits;

const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 16 * 1024, max_headers: 100 };
const MAX_BODY: u64 = 64 * 1024;

pub struct WebappConfig {
    pub listen: SocketAddr,
    pub name: Option<String>,
    pub tag: Option<String>,
}

struct App {
    host: String,
    tag: Option<String>,
    delay_ms: Cell<u64>,
    sessions: RefCell<HashMap<String, u64>>,
}

pub fn run(config: WebappConfig) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut stop = crate::signals::StopSignals::install()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("bind {}: {e}", config.listen)))?;
        tracing::info!("webapp listening on {}", listener.local_addr()?);
        let app = Rc::new(App {
            host: config.name.unwrap_or_else(hostname),
            tag: config.tag,
            delay_ms: Cell::new(0),
            sessions: RefCell::new(HashMap::new()),
        });
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::task::spawn_local(serve(app.clone(), stream));
                    }
                }
                _ = stop.recv() => return Ok(()),
            }
        }
    })
}

async fn serve(app: Rc<App>, mut stream: TcpStream) {
    let ip = stream.local_addr().map(|a| a.ip().to_canonical().to_string()).unwrap_or_default();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let (method, path, cookie, body_len, keep_alive, head_len) = loop {
            match parse_request(&buf, &LIMITS) {
                Ok(Some(req)) => {
                    let cookie = req
                        .headers
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                        .find_map(|(_, v)| session_from_cookie(v));
                    let body_len = match req.body {
                        RequestBody::Length(n) if n <= MAX_BODY => n as usize,
                        RequestBody::None => 0,
                        _ => {
                            respond(&mut stream, 413, "text/plain", &[], b"too large\n", false).await;
                            return;
                        }
                    };
                    break (
                        req.method.to_string(),
                        req.target.to_string(),
                        cookie,
                        body_len,
                        req.keep_alive,
                        req.head_len,
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    respond(&mut stream, e.status(), "text/plain", &[], b"bad request\n", false).await;
                    return;
                }
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        buf.advance(head_len);
        while buf.len() < body_len {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = buf.split_to(body_len);
        let ok = match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/") => hello(&app, &mut stream, &ip, cookie, method == "HEAD", keep_alive).await,
            ("POST", "/delay") => match delay_of(&body) {
                Some(ms) => {
                    app.delay_ms.set(ms);
                    let msg = format!("{{\"message\":\"New timeout of {ms}ms configured.\"}}\n");
                    respond(&mut stream, 200, "application/json", &[], msg.as_bytes(), keep_alive).await;
                    true
                }
                None => {
                    respond(&mut stream, 400, "text/plain", &[], b"expected {\"delay\": ms}\n", keep_alive).await;
                    true
                }
            },
            _ => {
                respond(&mut stream, 404, "text/plain", &[], b"not found\n", keep_alive).await;
                true
            }
        };
        if !ok || !keep_alive {
            return;
        }
    }
}

async fn hello(
    app: &App,
    stream: &mut TcpStream,
    ip: &str,
    cookie: Option<String>,
    head: bool,
    keep_alive: bool,
) -> bool {
    let delay = app.delay_ms.get();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let known = cookie.filter(|id| app.sessions.borrow().contains_key(id));
    let (id, fresh) = match known {
        Some(id) => (id, false),
        None => (new_session_id(), true),
    };
    let views = {
        let mut sessions = app.sessions.borrow_mut();
        let v = sessions.entry(id.clone()).or_insert(0);
        *v += 1;
        *v
    };
    let mut json = format!("{{\"hello\":\"world!\",\"ip\":\"{}\",\"host\":\"{}\"", escape(ip), escape(&app.host));
    if let Some(tag) = &app.tag {
        let _ = write!(json, ",\"tag\":\"{}\"", escape(tag));
    }
    let _ = writeln!(json, ",\"sessionViews\":{views},\"id\":\"{id}\"}}");
    let mut extra = vec![format!("X-Backend-Ip: {ip}")];
    if fresh {
        extra.push(format!("Set-Cookie: NODESESSID={id}; Path=/; HttpOnly"));
    }
    let body = if head { Vec::new() } else { json.clone().into_bytes() };
    respond_with_length(stream, 200, "application/json", &extra, &body, json.len(), keep_alive).await
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    ctype: &str,
    extra: &[String],
    body: &[u8],
    keep_alive: bool,
) -> bool {
    respond_with_length(stream, status, ctype, extra, body, body.len(), keep_alive).await
}

async fn respond_with_length(
    stream: &mut TcpStream,
    status: u16,
    ctype: &str,
    extra: &[String],
    body: &[u8],
    length: usize,
    keep_alive: bool,
) -> bool {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n");
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await.is_ok()
}

fn session_from_cookie(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    text.split(';')
        .find_map(|c| c.trim().strip_prefix("NODESESSID="))
        .map(str::to_string)
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The number after `"delay":` in a small JSON body.
fn delay_of(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let after = text.split("\"delay\"").nth(1)?.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn new_session_id() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

fn hostname() -> String {
    crate::host::name().unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_delay_and_cookies() {
        assert_eq!(delay_of(br#"{"delay": 250}"#), Some(250));
        assert_eq!(delay_of(br#"{"delay":0}"#), Some(0));
        assert_eq!(delay_of(br#"{"other": 1}"#), None);
        assert_eq!(session_from_cookie(b"a=b; NODESESSID=abc123"), Some("abc123".into()));
        assert_eq!(session_from_cookie(b"NODESESSID=../x"), None);
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }
}
