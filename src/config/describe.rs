//! The effective configuration as the flags that would give it, one per line: what `--check` prints, so an
//! operator reads what runs (defaults, file and environment merged) in the words they configure it with.
//! Secrets are shown as `<secret>`.

use std::fmt::Write;
use std::time::Duration;

use super::ProxyConfig;
use crate::cluster::KeySource;

impl ProxyConfig {
    pub fn as_flags(&self) -> String {
        let mut out = String::new();
        let mut flag = |name: &str, value: &dyn std::fmt::Display| {
            let value = value.to_string();
            let _ = match value.is_empty() {
                true => writeln!(out, "--{name}"),
                false => writeln!(out, "--{name} {value}"),
            };
        };
        let on = |b: bool| if b { "on" } else { "off" };
        let or_off = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        for l in &self.listen {
            flag("listen", l);
        }
        for l in &self.tls_listen {
            flag("tls-listen", l);
        }
        for c in &self.tls_certs {
            flag("tls-cert", &c.display());
        }
        flag("redirect-https", &on(self.redirect_https));
        for b in &self.backends {
            // An IPv6 host in brackets, and the name left out where it is the address (the default), so the
            // line reads back as given.
            let host = if b.host.contains(':') { format!("[{}]", b.host) } else { b.host.clone() };
            let addr = format!("{host}:{}", b.port);
            let mut spec = match b.name == addr {
                true => format!("{addr},weight={}", b.weight),
                false => format!("{}={addr},weight={}", b.name, b.weight),
            };
            if b.maxconn > 0 {
                let _ = write!(spec, ",maxconn={},maxqueue={}", b.maxconn, b.maxqueue);
            }
            flag("backend", &spec);
        }
        flag("admin", &or_off(self.admin));
        if self.admin_auth.is_some() {
            flag("admin-auth", &"<secret>");
        }
        flag("runtime-api", &or_off(self.runtime_api));
        let balance = self.balance.haproxy_name();
        flag("balance", &balance);
        flag("hash-balance-factor", &self.hash_balance_factor);
        flag("latency-aware", &on(self.latency_aware));
        if let Some(name) = &self.sticky_cookie {
            flag("sticky-cookie", name);
        }
        flag("slowstart", &duration(self.slowstart));
        if let Some(c) = &self.backend_check {
            flag("backend-check-path", &c.path);
            flag("backend-check-interval", &duration(c.interval));
            flag("backend-rise", &c.rise);
            flag("backend-fall", &c.fall);
            flag("backend-check-status", &format!("{}-{}", c.expect.0, c.expect.1));
        }
        let c = &self.cluster;
        flag("gossip", &c.bind);
        if let Some(ip) = c.advertise {
            flag("advertise", &ip);
        }
        for seed in &c.join {
            flag("join", seed);
        }
        match &c.keys {
            KeySource::None => {}
            KeySource::Keys(keys) => {
                for _ in keys {
                    flag("cluster-key", &"<secret>");
                }
            }
            KeySource::File(path) => flag("cluster-key-file", &path.display()),
        }
        if c.insecure {
            flag("gossip-insecure", &"");
        }
        flag("max-members", &c.max_members);
        flag("probe-period", &duration(c.probe_period));
        flag("probe-rtt", &duration(c.probe_rtt));
        flag("suspect-timeout", &duration(c.suspect_timeout));
        if let Some(cmd) = &c.on_event {
            flag("on-event", cmd);
            flag("on-event-timeout", &duration(c.on_event_timeout));
        }
        flag("threads", &self.threads);
        flag("pin-cpus", &on(self.pin_cpus));
        let t = &self.timeouts;
        for (name, d) in [
            ("timeout-head", t.head),
            ("timeout-idle", t.idle),
            ("timeout-client", t.client),
            ("timeout-queue", t.queue),
            ("timeout-connect", t.connect),
            ("timeout-attempt", t.attempt),
            ("timeout-server", t.server),
            ("timeout-tunnel", t.tunnel),
            ("timeout-pool", t.pool),
            ("timeout-handshake", t.handshake),
            ("grace", t.grace),
        ] {
            flag(name, &duration(d));
        }
        let l = &self.limits;
        flag("max-header-bytes", &l.max_header_bytes);
        flag("max-headers", &l.max_headers);
        flag("max-connections", &l.max_connections);
        if !self.strict_limits {
            flag("strict-limits", &"off");
        }
        flag("pool-max-idle", &l.pool_max_idle);
        flag("splice-min", &l.splice_min);
        flag("access-log", &on(self.access_log));
        out
    }
}

/// `1h`, `50s`, `250ms`, as the flags take them.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}
