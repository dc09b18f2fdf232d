//! `--agent-check`: the app tells its agent its capacity, in HAProxy's agent-check grammar, and the agent
//! gossips it, so the proxies weigh and admit the node accordingly within a second. HAProxy reads the line from
//! a TCP port of the server's; here it comes from an `http://` URL (the first line of the answer's body) or a
//! shell command (the first line it prints), so no extra port is opened anywhere.
//!
//! Words, separated by spaces or commas: `N%` scales the configured weight; `ready` and `up` put the node
//! back; `drain` stops new requests (sticky sessions keep going); `maint` takes it out; `down`, `failed` and
//! `stopped` mark it down. Other words (`maxconn:N`) are accepted and ignored.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// What the app said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Percent of the configured weight.
    pub percent: Option<u32>,
    pub admin: Option<Admin>,
    /// `Some(false)` for down/failed/stopped, `Some(true)` for up.
    pub up: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Ready,
    Drain,
    Maint,
}

/// Parses one agent-check line.
pub fn parse(line: &str) -> Result<Report, String> {
    let mut report = Report::default();
    let words = line.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty());
    let mut understood = false;
    for word in words {
        let word = word.to_ascii_lowercase();
        if let Some(pct) = word.strip_suffix('%') {
            let pct: u32 = pct.parse().map_err(|_| format!("{word:?} is not a percentage"))?;
            report.percent = Some(pct.min(256));
        } else {
            match word.as_str() {
                "ready" => report.admin = Some(Admin::Ready),
                "drain" => report.admin = Some(Admin::Drain),
                "maint" => report.admin = Some(Admin::Maint),
                "up" => report.up = Some(true),
                "down" | "failed" | "fail" | "stopped" => report.up = Some(false),
                w if w.starts_with("maxconn:") => {}
                other => return Err(format!("{other:?} is not an agent-check word")),
            }
        }
        understood = true;
    }
    if !understood {
        return Err("an empty answer".into());
    }
    Ok(report)
}

/// Asks `source` (a URL or a command) for its line, within `limit`.
pub async fn ask(source: &str, limit: Duration) -> Result<String, String> {
    let answer = async {
        match source.strip_prefix("http://") {
            Some(rest) => http_line(rest).await,
            None => command_line(source).await,
        }
    };
    timeout(limit, answer).await.unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// GET http://HOST:PORT/PATH; the first line of the body of a 2xx answer.
async fn http_line(rest: &str) -> Result<String, String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).await.map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    if !head.starts_with("HTTP/1.1 2") && !head.starts_with("HTTP/1.0 2") {
        return Err(format!("status line {:?}", head.lines().next().unwrap_or_default()));
    }
    Ok(body.lines().next().unwrap_or_default().to_string())
}

/// Runs `command` with /bin/sh; the first line it prints.
async fn command_line(command: &str) -> Result<String, String> {
    let out = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!("exited with {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_haproxys_grammar() {
        assert_eq!(parse("75%").unwrap(), Report { percent: Some(75), ..Report::default() });
        assert_eq!(parse("up 50%").unwrap(), Report { percent: Some(50), up: Some(true), admin: None });
        assert_eq!(parse("drain").unwrap().admin, Some(Admin::Drain));
        assert_eq!(parse("MAINT, maxconn:30").unwrap().admin, Some(Admin::Maint));
        assert_eq!(parse("ready 100%").unwrap().admin, Some(Admin::Ready));
        assert_eq!(parse("down").unwrap().up, Some(false));
        assert!(parse("").is_err());
        assert!(parse("fast").is_err());
        assert!(parse("x%").is_err());
    }
}
