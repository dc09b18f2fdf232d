//! HTTP health checks of the local service, as HAProxy's `option httpchk` does: a request every interval,
//! `rise` consecutive passes to become healthy, `fall` consecutive failures to become unhealthy. The first
//! pass counts at once, so a node that starts healthy takes traffic without waiting `rise` intervals.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub method: String,
    pub path: String,
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Statuses that pass, inclusive.
    pub expect: (u16, u16),
}

/// Rise/fall bookkeeping, separate from the I/O so it can be tested alone.
#[derive(Debug)]
pub struct Verdicts {
    healthy: Option<bool>,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Verdicts {
    pub fn new(rise: u32, fall: u32) -> Verdicts {
        Verdicts { healthy: None, streak: 0, rise: rise.max(1), fall: fall.max(1) }
    }

    /// Records one check; returns the new health when it changes.
    pub fn record(&mut self, passed: bool) -> Option<bool> {
        match self.healthy {
            None => {
                if passed {
                    self.healthy = Some(true);
                    return Some(true);
                }
                None
            }
            Some(current) if current == passed => {
                self.streak = 0;
                None
            }
            Some(_) => {
                self.streak += 1;
                let needed = if passed { self.rise } else { self.fall };
                if self.streak >= needed {
                    self.streak = 0;
                    self.healthy = Some(passed);
                    return Some(passed);
                }
                None
            }
        }
    }
}

/// What one check found, in HAProxy's terms (its stats' `check_status`, `check_code`, `check_duration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// `L7OK`, `L7STS` (a status outside the expected range), `L7RSP` (no HTTP status line), `L4CON` (connect
    /// failed), `L4TOUT` / `L7TOUT` (timed out connecting / waiting for the status), `SOCKERR`.
    pub status: &'static str,
    /// The HTTP status, when one came.
    pub code: Option<u16>,
    pub duration: Duration,
    /// Why it failed, for the log; `None` when it passed.
    pub error: Option<String>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.error.is_none()
    }

    /// HAProxy's `check_desc` for the status.
    pub fn description(&self) -> &'static str {
        match self.status {
            "L7OK" => "Layer7 check passed",
            "L7STS" => "Layer7 wrong status",
            "L7RSP" => "Layer7 invalid response",
            "L4CON" => "Layer4 connection problem",
            "L4TOUT" => "Layer4 timeout",
            "L7TOUT" => "Layer7 timeout",
            _ => "Socket error",
        }
    }
}

/// One check: connect, send the request, and pass on a status within the expected range.
pub async fn check(service: SocketAddr, config: &CheckConfig) -> Result<(), String> {
    let report = check_report(service, config).await;
    match report.error {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

/// [`check`], with what HAProxy's stats say of it.
pub async fn check_report(service: SocketAddr, config: &CheckConfig) -> CheckReport {
    let started = std::time::Instant::now();
    let connected = std::cell::Cell::new(false);
    let attempt = async {
        let mut stream = TcpStream::connect(service).await.map_err(|e| ("L4CON", None, format!("connect: {e}")))?;
        connected.set(true);
        let request =
            format!("{} {} HTTP/1.1\r\nHost: {service}\r\nConnection: close\r\n\r\n", config.method, config.path);
        stream.write_all(request.as_bytes()).await.map_err(|e| ("SOCKERR", None, format!("write: {e}")))?;
        let mut head = [0u8; 16];
        let mut got = 0;
        while got < 12 {
            match stream.read(&mut head[got..]).await {
                Ok(0) => return Err(("L7RSP", None, "closed before a status line".to_string())),
                Ok(n) => got += n,
                Err(e) => return Err(("SOCKERR", None, format!("read: {e}"))),
            }
        }
        let status = match &head[..12] {
            [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _, b' ', code @ ..] => {
                std::str::from_utf8(code).ok().and_then(|c| c.parse::<u16>().ok())
            }
            _ => None,
        };
        match status {
            Some(code) if (config.expect.0..=config.expect.1).contains(&code) => Ok(code),
            Some(code) => Err(("L7STS", Some(code), format!("status {code}"))),
            None => {
                let line = String::from_utf8_lossy(&head[..12]).into_owned();
                Err(("L7RSP", None, format!("not an HTTP status line: {line:?}")))
            }
        }
    };
    let outcome = timeout(config.interval, attempt).await.unwrap_or_else(|_| {
        let status = if connected.get() { "L7TOUT" } else { "L4TOUT" };
        Err((status, None, "timed out".into()))
    });
    let duration = started.elapsed();
    match outcome {
        Ok(code) => CheckReport { status: "L7OK", code: Some(code), duration, error: None },
        Err((status, code, why)) => CheckReport { status, code, duration, error: Some(why) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pass_is_immediate_then_rise_and_fall_apply() {
        let mut v = Verdicts::new(2, 3);
        assert_eq!(v.record(false), None, "unknown stays unknown on failure");
        assert_eq!(v.record(true), Some(true));
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(true), None, "a pass resets the failure streak");
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), Some(false));
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(true), Some(true));
    }
}
