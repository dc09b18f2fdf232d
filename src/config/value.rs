//! Parsers shared by flags, environment variables and the config file, so every source accepts the same text.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A listen address: `IP:PORT`, `[IPv6]:PORT`, `:PORT` or `*:PORT` (all IPv4 interfaces).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':').or_else(|| s.strip_prefix("*:")) {
        let port = port.parse::<u16>().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    s.parse().map_err(|_| format!("{s:?} is not IP:PORT (like 0.0.0.0:80 or [::]:80)"))
}

/// How a server is chosen for each request (HAProxy's `balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// The server with the fewest requests in flight for its weight.
    LeastConn,
}

pub fn balance(s: &str) -> Result<Balance, String> {
    match s.trim() {
        "roundrobin" => Ok(Balance::RoundRobin),
        "leastconn" => Ok(Balance::LeastConn),
        other => Err(format!("{other:?} is not a balancing algorithm: roundrobin or leastconn")),
    }
}

/// A backend: `[NAME=]HOST:PORT[ weight=N]`. The host may be a name resolved when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Relative share of traffic, as HAProxy's `weight` (100 unless given; 0 keeps it out of rotation).
    pub weight: u16,
}

/// The weight of a static server, and of an agent that does not say.
pub const DEFAULT_WEIGHT: u16 = 100;

pub fn backend(s: &str) -> Result<BackendSpec, String> {
    let s = s.trim();
    let mut words = s.split_whitespace();
    let server = words.next().ok_or_else(|| "an empty backend".to_string())?;
    let mut weight = DEFAULT_WEIGHT;
    for option in words {
        match option.split_once('=') {
            Some(("weight", w)) => {
                weight = w.parse().map_err(|_| format!("{s:?}: weight {w:?} is not a number from 0 to 65535"))?
            }
            _ => return Err(format!("{s:?}: unknown option {option:?} (weight=N)")),
        }
    }
    let (name, addr) = match server.split_once('=') {
        Some((n, a)) if !n.is_empty() => (Some(n), a),
        Some(_) => return Err(format!("{s:?}: empty server name before '='")),
        None => (None, server),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{s:?} is not [NAME=]HOST:PORT"))?;
    let port = port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("invalid port in {s:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(format!("invalid host in {s:?}"));
    }
    if let Some(n) = name {
        if !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            return Err(format!("invalid server name {n:?}: use letters, digits, '-', '_', '.'"));
        }
    }
    Ok(BackendSpec { name: name.unwrap_or(addr).to_string(), host: host.to_string(), port, weight })
}

/// A duration: a number with a unit (`ms`, `s`, `m`, `h`, `d`), or a bare number of milliseconds as in HAProxy.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration (like 500ms, 5s, 1m)"))?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("{s:?} is too large"))
}

/// A `KEY=VALUE` tag. Event handlers read tags as `k=v,k=v` in one tab-separated field, so neither part may
/// hold a control character, and the key no `=` or `,`.
pub fn tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v))
            if !k.is_empty()
                && !k.contains(|c: char| c.is_whitespace() || c == ',')
                && !v.contains(char::is_control) =>
        {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("{s:?} is not KEY=VALUE (no spaces or commas in KEY, no control characters)")),
    }
}

/// `on`/`off` and the usual boolean spellings.
pub fn switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(listen_addr(":80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert_eq!(listen_addr("[::1]:8080").unwrap(), "[::1]:8080".parse().unwrap());
        assert!(listen_addr("localhost:80").is_err());
    }

    #[test]
    fn parses_backends() {
        let b = backend("s1=web:3000").unwrap();
        assert_eq!((b.name.as_str(), b.host.as_str(), b.port), ("s1", "web", 3000));
        let b = backend("[::1]:81").unwrap();
        assert_eq!((b.name.as_str(), b.host.as_str()), ("[::1]:81", "::1"));
        assert_eq!(backend("s2=web:3000 weight=50").unwrap().weight, 50);
        assert_eq!(backend("web:3000").unwrap().weight, 100);
        for bad in ["web", "web:0", "=web:1", "web:x", ":80", "web:80 weight=x", "web:80 maxconn=3"] {
            assert!(backend(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_tags() {
        assert_eq!(tag("role=web").unwrap(), ("role".into(), "web".into()));
        assert_eq!(tag("dc=eu=1").unwrap(), ("dc".into(), "eu=1".into()));
        for bad in ["novalue", "=v", "a b=c", "k=v\tw", "k=v\nmember-join"] {
            assert!(tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(duration("1500").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert!(duration("5x").is_err());
        assert!(duration("s").is_err());
    }
}
