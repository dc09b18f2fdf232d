//! `--agent-check`: the app tells its agent its capacity, in HAProxy's agent-check grammar, and the agent
//! gossips it, so the proxies weigh and admit the node accordingly within a second. HAProxy reads the line from
//! a TCP port of the server's; here it comes from an `http://` URL (the first line of the answer's body) or a
//! shell command (the first line it prints), so no extra port is opened anywhere.
//!
//! Words, separated by spaces, tabs or commas: `N%` scales the configured weight; `drain` stops new requests
//! (sticky sessions keep going) and `maint` takes the node out until `ready`; `down`, `failed` and `stopped`
//! (with an optional `#` and a description after them) mark it down until `up`. As in HAProxy, what a line
//! does not mention stays as the last line left it. `maxconn:N` is accepted and ignored.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::http::chunked::{ChunkedDecoder, Emit};

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

impl Report {
    /// This report where it says something, `earlier` where it does not.
    pub fn over(self, earlier: Report) -> Report {
        Report {
            percent: self.percent.or(earlier.percent),
            admin: self.admin.or(earlier.admin),
            up: self.up.or(earlier.up),
        }
    }
}

/// Parses one agent-check line; what follows a `#` is a description for people (`down # disk full`).
pub fn parse(line: &str) -> Result<Report, String> {
    let mut report = Report::default();
    let line = line.split('#').next().unwrap_or_default();
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

/// GET http://HOST:PORT/PATH; the first line of the body of a 2xx answer, as soon as it is there (a server
/// that keeps the connection open despite `Connection: close` is not waited for).
async fn http_line(rest: &str) -> Result<String, String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        response.extend_from_slice(&chunk[..n]);
        let ended = n == 0 || response.len() >= 64 * 1024;
        if let Some(line) = first_body_line(&response, ended)? {
            return Ok(line);
        }
        if ended {
            return Err("no HTTP answer".into());
        }
    }
}

/// The first line of a 2xx answer's body once it is whole (`ended`: nothing more will come), chunked framing
/// undone: an HTTP/1.1 server may send its line chunked (Node's `res.write` then `res.end` does).
fn first_body_line(response: &[u8], ended: bool) -> Result<Option<String>, String> {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = String::from_utf8_lossy(&response[..end]);
    if !head.starts_with("HTTP/1.1 2") && !head.starts_with("HTTP/1.0 2") {
        return Err(format!("status line {:?}", head.lines().next().unwrap_or_default()));
    }
    let chunked = head.lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let length = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    let mut body = response[end + 4..].to_vec();
    if let (false, Some(length)) = (chunked, length) {
        if body.len() >= length {
            body.truncate(length);
            return Ok(Some(String::from_utf8_lossy(&body).lines().next().unwrap_or_default().to_string()));
        }
    }
    if chunked {
        let mut payload = Vec::new();
        let mut decoder = ChunkedDecoder::new(Emit::Payload, 4096);
        decoder.feed(&body, &mut payload).map_err(|e| format!("chunked body: {e}"))?;
        let whole = decoder.is_done();
        body = payload;
        if whole && !body.contains(&b'\n') {
            return Ok(Some(String::from_utf8_lossy(&body).into_owned()));
        }
    }
    match body.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(String::from_utf8_lossy(&body[..i]).trim_end_matches('\r').to_string())),
        None if ended => Ok(Some(String::from_utf8_lossy(&body).into_owned())),
        None => Ok(None),
    }
}

/// Most of a command's output read: the line is the first.
const OUTPUT_LIMIT: u64 = 64 * 1024;

/// Runs `command` with /bin/sh in a process group of its own; the first line it prints. Whatever it started
/// goes with it, once it exits or its time is up: `curl -s app/agent | head -1` stuck on a hung app would
/// otherwise leave a curl and a head behind every `--agent-inter`.
async fn command_line(command: &str) -> Result<String, String> {
    let mut shell = tokio::process::Command::new("/bin/sh");
    for secret in crate::config::SECRET_VARS {
        shell.env_remove(secret);
    }
    let mut child = shell
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let _group = Group(child.id());
    let mut output = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        (&mut stdout).take(OUTPUT_LIMIT).read_to_end(&mut output).await.map_err(|e| format!("read: {e}"))?;
        // Up to 1 MiB more is read and thrown away: a closed pipe would kill a chatty command (SIGPIPE, a
        // failure); one that never stops (`yes`) must not keep the agent's thread busy until its timeout.
        let _ = tokio::io::copy(&mut (&mut stdout).take(1 << 20), &mut tokio::io::sink()).await;
    }
    let status = child.wait().await.map_err(|e| format!("wait: {e}"))?;
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    Ok(String::from_utf8_lossy(&output).lines().next().unwrap_or_default().to_string())
}

/// Kills a command's process group when dropped: after it answered, or when its time ran out.
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            crate::signals::kill_group(pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_answer_s_first_line_is_read_as_soon_as_it_is_there() {
        let line = |raw: &[u8], ended| first_body_line(raw, ended).unwrap();
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n50%\n\r\n0\r\n\r\n";
        assert_eq!(line(chunked, false).as_deref(), Some("50%"));
        let unterminated = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\ndrain\r\n0\r\n\r\n";
        assert_eq!(line(unterminated, false).as_deref(), Some("drain"), "a whole chunked body, no newline");
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n75%";
        assert_eq!(line(sized, false).as_deref(), Some("75%"), "kept alive: the length says it is whole");
        assert_eq!(line(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n7", false), None, "more to come");
        assert_eq!(line(b"HTTP/1.0 200 OK\r\n\r\nup\r\nmore", false).as_deref(), Some("up"));
        assert_eq!(line(b"HTTP/1.0 200 OK\r\n\r\nup", true).as_deref(), Some("up"), "until close");
        assert!(first_body_line(b"HTTP/1.1 503 No\r\n\r\n", false).is_err());
    }

    #[test]
    fn reads_haproxys_grammar() {
        assert_eq!(parse("75%").unwrap(), Report { percent: Some(75), ..Report::default() });
        assert_eq!(parse("up 50%").unwrap(), Report { percent: Some(50), up: Some(true), admin: None });
        assert_eq!(parse("drain").unwrap().admin, Some(Admin::Drain));
        assert_eq!(parse("MAINT, maxconn:30").unwrap().admin, Some(Admin::Maint));
        assert_eq!(parse("ready 100%").unwrap().admin, Some(Admin::Ready));
        assert_eq!(parse("down").unwrap().up, Some(false));
        assert_eq!(parse("down # disk full").unwrap().up, Some(false), "a description after #");
        assert_eq!(parse("stopped#maintenance window").unwrap().up, Some(false));
        assert!(parse("# nothing but a description").is_err());
        assert!(parse("").is_err());
        assert!(parse("fast").is_err());
        assert!(parse("x%").is_err());
    }
}
