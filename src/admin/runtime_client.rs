//! `shoal runtime COMMAND`: the runtime API's client, for the shoal image, which has no socat: an operator
//! reaches a proxy whose runtime API stays on its loopback with `docker exec ha /shoal runtime show stat`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::members::connect_address;
use crate::config::RuntimeArgs;

/// How long connecting, sending the line and each read of the answer may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// Sends the command line (`;` separates several, as for HAProxy's socket) and returns the whole answer.
pub fn run(args: &RuntimeArgs) -> Result<Vec<u8>, String> {
    let line = args.command.join(" ");
    if line.trim().is_empty() {
        return Err("give a command: `shoal runtime help` lists them".into());
    }
    if line.split(';').any(|c| c.trim() == "prompt") {
        return Err("`prompt` makes an interactive session; use one command line per call".into());
    }
    let addr = connect_address(&args.api, "runtime API", "api")?;
    let fail = |e: std::io::Error| format!("runtime API at {addr}: {e}");
    // Each address the name has, in turn (`localhost` may give ::1 first, the API listening on 127.0.0.1).
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    let mut stream = addr
        .to_socket_addrs()
        .map_err(fail)?
        .find_map(|target| TcpStream::connect_timeout(&target, PATIENCE).map_err(|e| last = e).ok())
        .ok_or_else(|| fail(last))?;
    stream.set_read_timeout(Some(PATIENCE)).map_err(fail)?;
    stream.set_write_timeout(Some(PATIENCE)).map_err(fail)?;
    stream.write_all(format!("{line}\n").as_bytes()).map_err(fail)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(fail)?;
    Ok(answer)
}
