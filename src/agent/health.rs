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

    /// Healthy until `fall` checks fail in a row, as HAProxy's servers start UP.
    pub fn starting_up(rise: u32, fall: u32) -> Verdicts {
        Verdicts { healthy: Some(true), ..Verdicts::new(rise, fall) }
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

/// One check: connect, send the request, and pass on a status within the expected range.
pub async fn check(service: SocketAddr, config: &CheckConfig) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(service).await.map_err(|e| format!("connect: {e}"))?;
        let request =
            format!("{} {} HTTP/1.1\r\nHost: {service}\r\nConnection: close\r\n\r\n", config.method, config.path);
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut head = [0u8; 16];
        let mut got = 0;
        while got < 12 {
            match stream.read(&mut head[got..]).await {
                Ok(0) => return Err("closed before a status line".to_string()),
                Ok(n) => got += n,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let status = match &head[..12] {
            [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _, b' ', code @ ..] => {
                std::str::from_utf8(code).ok().and_then(|c| c.parse::<u16>().ok())
            }
            _ => None,
        };
        match status {
            Some(code) if (config.expect.0..=config.expect.1).contains(&code) => Ok(()),
            Some(code) => Err(format!("status {code}")),
            None => Err(format!("not an HTTP status line: {:?}", String::from_utf8_lossy(&head[..12]))),
        }
    };
    timeout(config.interval, attempt).await.unwrap_or_else(|_| Err("timed out".into()))
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
