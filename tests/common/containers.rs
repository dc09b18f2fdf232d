//! Helpers for the tests that drive Docker: commands that must succeed, the image `docker/build.sh` makes,
//! and plain HTTP to published ports (written apart from the crate's parser, like the rest of the harness).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`, which must succeed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn stdout(out: Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds the FROM-scratch image as `tag` with `docker/build.sh`.
pub fn build_image(tag: &str) {
    let built = run(Command::new(root().join("docker/build.sh")).env("SHOAL_IMAGE", tag));
    assert_eq!(stdout(built), tag);
}

/// One GET / on a new connection within `budget`: the answering webapp's host name, or why not.
pub fn get_host(addr: SocketAddr, budget: Duration) -> Result<String, String> {
    let body = super::http_get(addr, "/", budget)?;
    let host = body.split("\"host\":\"").nth(1).and_then(|rest| rest.split('"').next());
    host.map(str::to_string).ok_or_else(|| format!("no host in {body}"))
}
