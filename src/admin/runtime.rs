//! HAProxy's runtime API (its `stats socket`) over TCP, as the lab drove it with `socat - tcp:ha:9999`: one
//! line of commands per connection (`;` separates several), or an interactive session after `prompt`. Every
//! answer ends with an empty line. Server changes go through the [`Publisher`], which republishes the set.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::csv;
use super::sessions::{serve_listener, Heard};
use super::stats::{Snapshot, BACKEND};
use crate::balance::{Publisher, ServerState};
use crate::proxy::Shared;

/// How long an interactive session may stay silent.
const IDLE: Duration = Duration::from_secs(60);
/// How long a client may take to send its line, or to read an answer.
const WRITE: Duration = Duration::from_secs(5);
const LINE_LIMIT: usize = 4096;
/// Sessions at once, as HAProxy's TCP stats socket default (`maxconn 10`).
const SESSIONS: usize = 10;
/// Most output one line of commands may produce; the rest of the line is refused.
const OUTPUT_LIMIT: usize = 4 << 20;
/// Answers are written once this much has gathered, so that a line of many commands is computed only as fast
/// as its client reads, as HAProxy's applets do: one that stops reading, or is gone, costs a buffer's worth.
const FLUSH_AT: usize = 64 << 10;

const HELP: &str = "The following commands are valid at this level:
  help                                    : this message
  prompt                                  : toggle interactive mode with prompt
  quit                                    : disconnect
  show info                               : report information about the running process
  show stat [{<iid>|<proxy>} <type> <sid>] [up|no-maint] : counters of each proxy and server (CSV)
  show servers state [<backend>]          : dump volatile server information
  set server <bk>/<srv> state <state>     : set a server's state (ready, drain, maint)
  set server <bk>/<srv> weight <weight>[%] : change a server's weight (% of its initial weight)
  set weight <bk>/<srv> <weight>[%]       : change a server's weight (deprecated)
  get weight <bk>/<srv>                   : report a server's current and initial weight
  disable server <bk>/<srv>               : put a server in maintenance
  enable server <bk>/<srv>                : take a server out of maintenance
";

/// Serves the runtime API on `listener` (bound by the caller).
pub fn start(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    publisher: Arc<Mutex<Publisher>>,
) -> std::io::Result<()> {
    tracing::info!("runtime API on {}", listener.local_addr()?);
    serve_listener("shoal-runtime", listener, shared.clone(), SESSIONS, move |stream, heard| {
        session(stream, heard, shared.clone(), publisher.clone())
    })
}

async fn session(stream: TcpStream, heard: Heard, shared: Arc<Shared>, publisher: Arc<Mutex<Publisher>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut interactive = false;
    loop {
        let mut bytes = Vec::new();
        let wait = if interactive { IDLE } else { WRITE };
        let mut limited = (&mut reader).take(LINE_LIMIT as u64);
        let Ok(Ok(n)) = tokio::time::timeout(wait, limited.read_until(b'\n', &mut bytes)).await else { return };
        if n == 0 {
            return;
        }
        heard.now();
        // Not UTF-8 (a stray byte, a character cut at the limit): answered like any line, its bad bytes shown
        // as U+FFFD, rather than by a silent close a script could take for success.
        let line = String::from_utf8_lossy(&bytes);
        if !line.ends_with('\n') && n >= LINE_LIMIT {
            // Its tail would otherwise be read as a command of its own.
            let _ = tokio::time::timeout(WRITE, write.write_all(b"Line too long.\n\n")).await;
            return close(write, reader, &heard).await;
        }
        let mut out = String::new();
        let mut sent = 0;
        let mut quit = false;
        for command in line.trim().split(';').map(str::trim).filter(|c| !c.is_empty()) {
            match command {
                "quit" => {
                    quit = true;
                    break;
                }
                // An answer of its own, empty, as HAProxy gives it: `prompt` alone is answered "\n> ".
                "prompt" => {
                    interactive = !interactive;
                    out.push('\n');
                }
                _ if sent + out.len() > OUTPUT_LIMIT => {
                    out.push_str("Output limit reached: the rest of the line is ignored.\n\n");
                    break;
                }
                _ => {
                    out.push_str(&answer(command, &shared, &publisher));
                    out.push('\n');
                }
            }
            if out.len() >= FLUSH_AT {
                if !send(&mut write, &out).await {
                    return;
                }
                // A client reading a long answer is not quiet, though it sends nothing.
                heard.now();
                sent += out.len();
                out.clear();
            }
        }
        if interactive && !quit {
            out.push_str("> ");
        }
        if !send(&mut write, &out).await {
            return;
        }
        // Outside prompt mode a session ends with its line, unless more came with it: HAProxy runs what its
        // buffer holds (`printf 'cmd1\ncmd2\n' | socat`) rather than dropping it unanswered. Here, what is
        // buffered or has reached the socket (asked of the kernel: the reactor may not have seen it yet).
        let pipelined = !reader.buffer().is_empty() || readable_now(reader.get_ref());
        if quit || !(interactive || pipelined) {
            return close(write, reader, &heard).await;
        }
    }
}

/// Writes `out`; false if the client did not take it in time (a client that does not read is let go) or is gone.
async fn send(write: &mut tokio::net::tcp::OwnedWriteHalf, out: &str) -> bool {
    matches!(tokio::time::timeout(WRITE, write.write_all(out.as_bytes())).await, Ok(Ok(())))
}

/// Ends a session: the answers are all written; what the client still sends is read, briefly, before the
/// socket closes, since unread bytes would make the close a reset that can destroy the answers before the
/// client reads them.
async fn close(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    heard: &Heard,
) {
    heard.closing();
    let _ = write.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), (&mut reader).take(1 << 20).read_to_end(&mut sink)).await;
}

/// Whether bytes wait unread in the socket: a peek that does not wait.
fn readable_now(stream: &tokio::net::tcp::OwnedReadHalf) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv(2) into one byte we own, on a descriptor the stream keeps open; MSG_PEEK leaves the data.
    let n = unsafe {
        libc::recv(stream.as_ref().as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    n > 0
}

/// The answer to one command, without the closing empty line.
fn answer(command: &str, shared: &Shared, publisher: &Mutex<Publisher>) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["help"] => HELP.to_string(),
        ["show", "stat", args @ ..] => match csv::Filter::parse(args) {
            Ok(filter) if !filter.proxy_exists() => "No such proxy.\n".into(),
            Ok(filter) => csv::render_filtered(&Snapshot::read(shared), &filter),
            Err(e) => e,
        },
        ["show", "info"] => info(shared),
        ["show", "servers", "state"] => servers_state(shared),
        ["show", "servers", "state", backend] if *backend == BACKEND => servers_state(shared),
        ["show", "servers", "state", _] => "Can't find backend.\n".into(),
        // A value left out gets the command's own usage line, as HAProxy answers it.
        ["set", "server", target, "state", state @ ..] => set_state(publisher, target, state.first().unwrap_or(&"")),
        ["set", "server", target, "weight", weight @ ..] | ["set", "weight", target, weight @ ..] => {
            set_weight(shared, publisher, target, weight.first().unwrap_or(&""))
        }
        ["get", "weight", target] => get_weight(shared, target),
        // HAProxy reads no further than the server.
        ["disable", "server", target, ..] => set_state(publisher, target, "maint"),
        ["enable", "server", target, ..] => set_state(publisher, target, "ready"),
        _ => format!("Unknown command: '{command}'\n{HELP}"),
    }
}

/// `nodes/s1` -> `s1`, or the error to print.
fn server_name(target: &str) -> Result<&str, String> {
    match target.split_once('/') {
        Some((backend, server)) if backend == BACKEND && !server.is_empty() => Ok(server),
        Some((backend, _)) if backend != BACKEND => Err("No such backend.\n".into()),
        _ => Err("Require 'backend/server'.\n".into()),
    }
}

/// The server named by `target` (`nodes/s1`), or the error to print: HAProxy looks the server up before it
/// reads the rest of the command.
fn known_server<'a>(publisher: &Mutex<Publisher>, target: &'a str) -> Result<&'a str, String> {
    let name = server_name(target)?;
    match publisher.lock().knows(name) {
        true => Ok(name),
        false => Err("No such server.\n".into()),
    }
}

fn set_state(publisher: &Mutex<Publisher>, target: &str, state: &str) -> String {
    let name = match known_server(publisher, target) {
        Ok(name) => name,
        Err(e) => return e,
    };
    let state = match state {
        "ready" => None,
        "drain" => Some(ServerState::Drain),
        "maint" => Some(ServerState::Maint),
        _ => return "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n".into(),
    };
    match publisher.lock().set(name, |o| o.state = state) {
        Ok(()) => {
            tracing::info!(
                "runtime API: server {BACKEND}/{name} state set to {}",
                state.map_or("READY", |s| s.as_str())
            );
            String::new()
        }
        Err(_) => "No such server.\n".into(),
    }
}

/// `set weight`: an absolute weight, or a percentage of the initial one (HAProxy's `<weight%>`).
fn set_weight(shared: &Shared, publisher: &Mutex<Publisher>, target: &str, weight: &str) -> String {
    const USAGE: &str =
        "Require <weight> or <weight%>: an integer from 0 to 65535, or a percentage of the initial weight.\n";
    let name = match known_server(publisher, target) {
        Ok(name) => name,
        Err(e) => return e,
    };
    let weight = match weight.strip_suffix('%') {
        None => weight.parse::<u16>().ok(),
        Some(percent) => percent.parse::<u64>().ok().and_then(|percent| {
            let (_, initial) = weights(shared, name)?;
            Some((u64::from(initial).saturating_mul(percent) / 100).min(u64::from(u16::MAX)) as u16)
        }),
    };
    let Some(weight) = weight else { return USAGE.into() };
    match publisher.lock().set(name, |o| o.weight = Some(weight)) {
        Ok(()) => {
            tracing::info!("runtime API: server {BACKEND}/{name} weight set to {weight}");
            String::new()
        }
        Err(_) => "No such server.\n".into(),
    }
}

/// `get weight`: the weight in force and the initial one, as HAProxy prints them.
fn get_weight(shared: &Shared, target: &str) -> String {
    let name = match server_name(target) {
        Ok(name) => name,
        Err(e) => return e,
    };
    match weights(shared, name) {
        Some((current, initial)) => format!("{current} (initial {initial})\n"),
        None => "No such server.\n".into(),
    }
}

/// Server `name`'s weight in force (before `--slowstart` scales it) and its initial one, from the backend set
/// alone (a stats snapshot adds up every server's counters).
fn weights(shared: &Shared, name: &str) -> Option<(u16, u16)> {
    let set = shared.backends.load();
    let i = set.servers.iter().position(|b| *b.name() == name)?;
    Some((*set.user_weights.get(i)?, *set.initial_weights.get(i)?))
}

fn info(shared: &Shared) -> String {
    let s = Snapshot::read(shared);
    // HAProxy's process-wide totals: every frontend's, the TLS one's too (CurrConns already counts both).
    let tls = s.frontend_tls.as_ref();
    let sessions = s.frontend.sessions + tls.map_or(0, |t| t.sessions);
    let requests = s.frontend.requests + tls.map_or(0, |t| t.requests);
    format!(
        "Name: shoal\nVersion: {}\nNbthread: {}\nUptime_sec: {}\nMaxconn: {}\nCurrConns: {}\nCumConns: {}\nCumReq: {}\n",
        env!("CARGO_PKG_VERSION"),
        shared.config.load().threads,
        s.uptime_s,
        s.max_connections,
        s.connections,
        sessions,
        requests
    )
}

/// HAProxy's `show servers state`, version 1: its 25 columns in its order, so that tools reading them by
/// position (and HAProxy's `server-state-file`) find each where they expect it. Columns shoal has no value
/// for carry HAProxy's own placeholders (`-`, 0).
fn servers_state(shared: &Shared) -> String {
    let s = Snapshot::read(shared);
    let mut out = String::from(
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state \
bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr \
srv_agent_addr srv_agent_port\n",
    );
    for server in &s.servers {
        // srv_op_state: 2 running, 1 starting (ramping up under slowstart), 0 stopped. srv_admin_state: 0x01
        // maintenance, 0x08 draining.
        let op = match server.status {
            "UP" if server.weight < server.user_weight => 1,
            "UP" | "DRAIN" => 2,
            _ => 0,
        };
        let admin = match server.status {
            "MAINT" => 1,
            "DRAIN" => 8,
            _ => 0,
        };
        let addr = server.resolved.map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        let fqdn = if server.host.parse::<std::net::IpAddr>().is_ok() { "-" } else { server.host.as_str() };
        let since = server.seen.map_or(0, |seen| seen.since_change_s());
        let check = check_columns(server);
        let _ = writeln!(
            out,
            "2 {BACKEND} {} {} {addr} {op} {admin} {} {} {since} {check} 0 0 {fqdn} {} - 0 0 - - 0",
            server.id,
            server.name,
            // srv_uweight: the weight in force, not the one --slowstart ramps (the CSV's uweight); srv_iweight:
            // the one configured or announced.
            server.user_weight,
            server.initial_weight,
            server.port,
        );
    }
    out
}

/// `srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state`, with HAProxy 2.6's
/// codes: for a server the proxy checks, its last check's status and result and its health; for the others,
/// HAProxy's for a server without checks.
fn check_columns(server: &super::stats::Server) -> String {
    let Some(checked) = &server.check else {
        return "1 0 2 0 0".into();
    };
    let status = match checked.report.status {
        "SOCKERR" => 5,
        "L4TOUT" => 7,
        "L4CON" => 8,
        "L7TOUT" => 12,
        "L7RSP" => 13,
        "L7OK" => 15,
        "L7STS" => 17,
        _ => 0,
    };
    let result = if checked.report.passed() { 3 } else { 2 };
    let health = checked.health.health;
    // CHK_ST_CONFIGURED | CHK_ST_ENABLED.
    format!("{status} {result} {health} 6 0")
}
