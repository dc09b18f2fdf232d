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

/// A control listener's address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub Option<SocketAddr>);

pub fn optional_listen_addr(s: &str) -> Result<Endpoint, String> {
    match s.trim() {
        "off" | "none" => Ok(Endpoint(None)),
        s => listen_addr(s).map(|a| Endpoint(Some(a))).map_err(|e| format!("{e}, or off")),
    }
}

impl Balance {
    /// The name HAProxy's stats CSV gives the algorithm (`algo`).
    pub fn haproxy_name(&self) -> String {
        match self {
            Balance::RoundRobin => "roundrobin".into(),
            Balance::LeastConn => "leastconn".into(),
            Balance::Random => "random".into(),
            Balance::Source => "source".into(),
            Balance::Uri => "uri".into(),
            Balance::Header(name) => format!("hdr({name})"),
        }
    }
}

/// How a server is chosen for each request (HAProxy's `balance`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// The server with the fewest requests in flight for its weight.
    LeastConn,
    /// The less loaded of two servers drawn at random, by weight (power of two choices).
    Random,
    /// Consistent hashing of the client's address.
    Source,
    /// Consistent hashing of the path (before `?`).
    Uri,
    /// Consistent hashing of a request header's value.
    Header(String),
}

impl Balance {
    /// Whether the algorithm hashes a request key onto a ring.
    pub fn hashes(&self) -> bool {
        matches!(self, Balance::Source | Balance::Uri | Balance::Header(_))
    }
}

pub fn balance(s: &str) -> Result<Balance, String> {
    let s = s.trim();
    if let Some(name) = s.strip_prefix("hdr(").and_then(|r| r.strip_suffix(')')) {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
            return Err(format!("{s:?}: hdr(NAME) needs a header name"));
        }
        return Ok(Balance::Header(name.to_ascii_lowercase()));
    }
    match s {
        "roundrobin" => Ok(Balance::RoundRobin),
        "leastconn" => Ok(Balance::LeastConn),
        "random" => Ok(Balance::Random),
        "source" => Ok(Balance::Source),
        "uri" => Ok(Balance::Uri),
        other => Err(format!(
            "{other:?} is not a balancing algorithm: roundrobin, leastconn, random, source, uri or hdr(NAME)"
        )),
    }
}

/// A backend: `[NAME=]HOST:PORT[,weight=N][,maxconn=N][,maxqueue=N]` (options after commas or spaces). The
/// host may be a name resolved when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Relative share of traffic, as HAProxy's `weight` (100 unless given; 0 keeps it out of rotation).
    pub weight: u16,
    /// Most requests in flight at once (HAProxy's `maxconn`); 0: no limit. More wait in a queue.
    pub maxconn: u32,
    /// Most requests waiting for this server (HAProxy's `maxqueue`; 0 is no limit); beyond, the request is
    /// answered 503.
    pub maxqueue: u32,
}

/// Requests that may wait for a full server unless `maxqueue` says otherwise.
pub const DEFAULT_MAXQUEUE: u32 = 1024;

/// The weight of a static server, and of an agent that does not say.
pub const DEFAULT_WEIGHT: u16 = 100;

pub fn backend(s: &str) -> Result<BackendSpec, String> {
    let s = s.trim();
    let mut words = s.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty());
    let server = words.next().ok_or_else(|| "an empty backend".to_string())?;
    let (mut weight, mut maxconn, mut maxqueue) = (DEFAULT_WEIGHT, 0, DEFAULT_MAXQUEUE);
    for option in words {
        let number = |v: &str, what: &str| v.parse::<u32>().map_err(|_| format!("{s:?}: {what} {v:?} is not a number"));
        match option.split_once('=') {
            Some(("weight", w)) => {
                weight = w.parse().map_err(|_| format!("{s:?}: weight {w:?} is not a number from 0 to 65535"))?
            }
            Some(("maxconn", v)) => maxconn = number(v, "maxconn")?,
            Some(("maxqueue", v)) => maxqueue = number(v, "maxqueue")?,
            _ => return Err(format!("{s:?}: unknown option {option:?} (weight=N, maxconn=N, maxqueue=N)")),
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
        server_name(n)?;
    }
    Ok(BackendSpec { name: name.unwrap_or(addr).to_string(), host: host.to_string(), port, weight, maxconn, maxqueue })
}

/// A server's name as `set server nodes/NAME` and the stats name it: no space, `/` or separator of the CSV.
pub fn server_name(n: &str) -> Result<(), String> {
    if n.is_empty() || !n.chars().all(|c| c.is_alphanumeric() || "-_.:".contains(c)) {
        return Err(format!("invalid server name {n:?}: use letters, digits, '-', '_', '.', ':'"));
    }
    Ok(())
}

/// One or more backends separated by commas (`s1=web1:3000,weight=50,s2=web2:3000`): a word that is one of
/// the options (`weight=N`, `maxconn=N`, `maxqueue=N`) belongs to the server before it.
pub fn backends(s: &str) -> Result<Vec<BackendSpec>, String> {
    let is_option = |word: &str| {
        word.split_once('=').is_some_and(|(k, v)| ["weight", "maxconn", "maxqueue"].contains(&k) && !v.contains(':'))
    };
    let mut servers: Vec<String> = Vec::new();
    for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match servers.last_mut() {
            Some(server) if is_option(word) => {
                server.push(' ');
                server.push_str(word);
            }
            _ => servers.push(word.to_string()),
        }
    }
    if servers.is_empty() {
        return Err("an empty backend".into());
    }
    servers.iter().map(|server| backend(server)).collect()
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

/// `http://IP:PORT/PATH` for `shoal check`: the address and the path (`/` when none). An IP, not a name: the
/// check is of the app beside it, and a lookup that hangs would be the check's failure, not the app's.
pub fn check_url(s: &str) -> Result<(std::net::SocketAddr, String), String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| format!("{s:?} does not start with http://"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let addr = authority.parse().map_err(|_| format!("{authority:?} is not IP:PORT"))?;
    Ok((addr, check_path(path)?))
}

/// The path a health check asks for: it goes into the request line as given, so it starts with `/` and holds
/// no space, control character or non-ASCII byte (each would make every check a 400, and the server DOWN).
pub fn check_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /"));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ' || b >= 0x80) {
        return Err(format!(
            "{path:?} is not a path: no spaces, control characters or non-ASCII (percent-encode them)"
        ));
    }
    Ok(path.to_string())
}

/// A health check's method: capital letters, digits, `-` or `_`, as every registered method is spelled
/// (methods are case-sensitive: `get` is not GET, and servers answer it 400 or 405).
pub fn check_method(method: &str) -> Result<String, String> {
    let spelled = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    if method.is_empty() || !method.bytes().all(spelled) {
        return Err(format!("{method:?} is not a method (like HEAD or GET)"));
    }
    Ok(method.to_string())
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

/// A status range `LOW-HIGH` (or one status).
pub fn status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a status range like 200-399");
    let (lo, hi) = s.trim().split_once('-').unwrap_or((s.trim(), s.trim()));
    let (lo, hi): (u16, u16) = (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?);
    if !(100..=599).contains(&lo) || !(lo..=599).contains(&hi) {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// A sticky cookie's name: an HTTP token, as RFC 6265 requires.
pub fn cookie_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"))
    }
}

/// `USER:PASS` for HTTP basic authentication; the error never repeats the value (it is a secret).
pub fn user_pass(s: &str) -> Result<crate::cluster::Secret, String> {
    match s.split_once(':') {
        Some((user, pass)) if !user.is_empty() && !pass.is_empty() => Ok(crate::cluster::Secret(s.to_string())),
        _ => Err("expected USER:PASS, both non-empty".into()),
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
        let b = backend("web:80 maxconn=3 maxqueue=7").unwrap();
        assert_eq!((b.maxconn, b.maxqueue), (3, 7));
        assert_eq!(balance("hdr(X-User)").unwrap(), Balance::Header("x-user".into()));
        assert!(balance("hdr()").is_err() && balance("ring").is_err());
        for bad in ["web", "web:0", "=web:1", "web:x", ":80", "web:80 weight=x", "web:80 slowstart=3"] {
            assert!(backend(bad).is_err(), "{bad}");
        }
        let list = backends("s1=web1:3000,weight=50,maxconn=2, s2=web2:3000,weight=10.0.0.1:80").unwrap();
        let got: Vec<_> = list.iter().map(|b| (b.name.as_str(), b.weight, b.maxconn)).collect();
        assert_eq!(
            got,
            [("s1", 50, 2), ("s2", 100, 0), ("weight", 100, 0)],
            "an option belongs to the server before it"
        );
        assert!(backends("").is_err() && backends("web:1,maxconn=x").is_err());
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
