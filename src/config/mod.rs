//! One typed, validated configuration, whatever its sources: flags, then `SHOAL_*` env, then the TOML file,
//! then defaults.

mod cli;
mod describe;
pub mod descriptors;
mod file;
pub mod value;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::cluster::{ClusterConfig, KeySource, Secret};
use toml::Spanned;

/// The environment variables that carry secrets: the cluster key and the admin password are shoal's, not the
/// business of the app, an event handler or an agent-check command it starts.
pub const SECRET_VARS: [&str; 2] = ["SHOAL_CLUSTER_KEY", "SHOAL_ADMIN_AUTH"];

/// Keeps the secrets this process was given out of its children's reach. Not inheriting the variables is not
/// enough when they run as the same user, as a container's app runs as root beside its agent (PID 1):
/// `/proc/1/environ` shows the environment the process started with, whatever `unsetenv` did since, so the
/// values there are overwritten with zeros (the process keeps a copy in its own environment, for an upgrade's
/// successor and its own reads); and a process that is not dumpable lets only holders of `CAP_SYS_PTRACE`
/// (which Docker does not grant) read its memory through `/proc/PID/mem`, as HAProxy is once it has changed
/// user. Children are dumpable again: the flag does not pass through `execve`. Call it first, while no other
/// thread reads the environment. Returns what could not be done.
pub fn guard_secrets() -> Option<String> {
    extern "C" {
        static mut environ: *const *mut libc::c_char;
    }
    for name in SECRET_VARS {
        let Ok(value) = std::env::var(name) else { continue };
        let prefix = format!("{name}=");
        // SAFETY: `environ` is the NULL-terminated array of NUL-terminated strings the process started with
        // (none set since: this runs first, on the only thread); every entry of the secret, duplicates
        // included, has its value zeroed within its own length. Only then does set_var give the environment a
        // fresh copy, which the array entries no longer are.
        unsafe {
            let mut entry = std::ptr::addr_of!(environ).read();
            while !entry.is_null() && !(*entry).is_null() {
                let text = std::ffi::CStr::from_ptr(*entry).to_bytes();
                if text.starts_with(prefix.as_bytes()) {
                    std::ptr::write_bytes((*entry).add(prefix.len()), 0, text.len() - prefix.len());
                }
                entry = entry.add(1);
            }
        }
        std::env::set_var(name, &value);
    }
    // SAFETY: PR_SET_DUMPABLE takes an integer and changes only this process's flag.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) } != 0 {
        return Some(format!("cannot make the process undumpable: {}", std::io::Error::last_os_error()));
    }
    None
}

pub use cli::{AgentArgs, Cli, ClusterArgs, Command, DemoArgs, MembersArgs, ProxyArgs, RuntimeArgs, WebappArgs};
use file::{DurationText, FileConfig, KeyList};
pub use value::BackendSpec;

/// Timeouts, named as HAProxy users know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `timeout http-request`.
    pub head: Duration,
    /// `timeout http-keep-alive`.
    pub idle: Duration,
    /// `timeout client`.
    pub client: Duration,
    /// `timeout queue`: a request waiting for a full server.
    pub queue: Duration,
    /// `timeout connect`.
    pub connect: Duration,
    /// How long one attempt may go unanswered (a connect, or a sent request's TCP acknowledgement) before it
    /// is given up for another server, when there is one; `connect` still bounds all attempts together.
    pub attempt: Duration,
    /// `timeout server`.
    pub server: Duration,
    /// `timeout tunnel`.
    pub tunnel: Duration,
    /// Idle pooled backend connection lifetime.
    pub pool: Duration,
    /// Graceful-shutdown budget.
    pub grace: Duration,
    /// A TLS handshake.
    pub handshake: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub pool_max_idle: usize,
    /// Smallest Content-Length body moved with splice(2); 0 = never.
    pub splice_min: u64,
}

/// Everything `shoal proxy` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    /// TLS listeners, with the certificate files (or directories) they serve.
    pub tls_listen: Vec<SocketAddr>,
    pub tls_certs: Vec<PathBuf>,
    /// Plain requests are answered with a redirect to https.
    pub redirect_https: bool,
    pub backends: Vec<BackendSpec>,
    /// Where the stats page, CSV and metrics are served; `None`: nowhere.
    pub admin: Option<SocketAddr>,
    /// `USER:PASS` the admin endpoints ask for, when set.
    pub admin_auth: Option<Secret>,
    /// Where the runtime API (HAProxy's stats socket commands) listens; `None`: nowhere.
    pub runtime_api: Option<SocketAddr>,
    pub balance: value::Balance,
    /// `--hash-balance-factor` (percent; 0: off).
    pub hash_balance_factor: u32,
    pub latency_aware: bool,
    /// Sticky sessions: the cookie's name.
    pub sticky_cookie: Option<String>,
    /// How long a server new to rotation ramps its weight up; zero: no ramp.
    pub slowstart: Duration,
    /// HTTP checks of the static servers, if asked for.
    pub backend_check: Option<crate::agent::health::CheckConfig>,
    pub cluster: ClusterConfig,
    pub threads: usize,
    pub pin_cpus: bool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub access_log: bool,
    /// `--strict-limits`: a `max-connections` the descriptor limit cannot hold is refused (else kept, warned).
    pub strict_limits: bool,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}:{line}: field `{field}`: {message}")]
    FileField { path: PathBuf, line: usize, field: &'static str, message: String },
    #[error("`{field}`: {message}")]
    Field { field: &'static str, message: String },
}

/// A loaded config file: its parsed values and what is needed to point at a line.
struct Source {
    path: PathBuf,
    text: String,
    values: FileConfig,
}

impl Source {
    fn load(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let values = toml::from_str(&text)
            .map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string().trim_end().to_string() })?;
        Ok(Source { path: path.into(), text, values })
    }

    fn error(&self, field: &'static str, span: std::ops::Range<usize>, message: String) -> ConfigError {
        let line = self.text[..span.start.min(self.text.len())].matches('\n').count() + 1;
        ConfigError::FileField { path: self.path.clone(), line, field, message }
    }

    /// Converts a file value with `parse`, attributing a failure to its field and line.
    fn get<R, T>(
        &self,
        field: &'static str,
        value: &Option<Spanned<R>>,
        parse: impl Fn(&R) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match value {
            None => Ok(None),
            Some(v) => parse(v.get_ref()).map(Some).map_err(|m| self.error(field, v.span(), m)),
        }
    }
}

fn file_duration(v: &DurationText) -> Result<Duration, String> {
    match v {
        DurationText::Text(s) => value::duration(s),
        DurationText::Millis(ms) => Ok(Duration::from_millis(*ms)),
    }
}

fn file_count(v: &i64) -> Result<usize, String> {
    usize::try_from(*v).map_err(|_| format!("{v} is not a positive number"))
}

fn file_list<T>(v: &[String], parse: fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    v.iter().map(|s| parse(s)).collect()
}

fn in_range(field: &'static str, v: usize, lo: usize, hi: usize) -> Result<usize, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Field { field, message: format!("{v} is outside {lo}..={hi}") })
    }
}

/// A `rise` or `fall`: at least one check, and at most a thousand in a row.
fn checks_in_a_row(field: &'static str, n: usize) -> Result<u32, ConfigError> {
    Ok(in_range(field, n, 1, 1000)? as u32)
}

fn default_gossip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7946)
}

/// The gossip settings from flags over the file over defaults.
fn cluster_config(args: &ClusterArgs, s: &Source, f: &FileConfig) -> Result<ClusterConfig, ConfigError> {
    let dur =
        |flag: Option<Duration>, field, v: &Option<Spanned<DurationText>>, default| -> Result<Duration, ConfigError> {
            Ok(flag.or(s.get(field, v, file_duration)?).unwrap_or(default))
        };
    let config = ClusterConfig {
        bind: args.gossip.or(s.get("gossip", &f.gossip, |v| value::listen_addr(v))?).unwrap_or_else(default_gossip),
        advertise: match args.advertise {
            Some(ip) => Some(ip),
            None => {
                s.get("advertise", &f.advertise, |v| v.parse().map_err(|_| format!("{v:?} is not an IP address")))?
            }
        },
        // `SHOAL_JOIN="ha:7946, web:7946"`: the space is no part of the host, which would never resolve.
        join: if args.join.is_empty() {
            s.get("join", &f.join, |v| Ok(v.clone()))?.unwrap_or_default()
        } else {
            args.join.clone()
        }
        .into_iter()
        .map(|j| j.trim().to_string())
        .collect(),
        keys: key_source(args, s, f)?,
        insecure: args.gossip_insecure.or(f.gossip_insecure.as_ref().map(|v| *v.get_ref())).unwrap_or(false),
        max_members: in_range(
            "max-members",
            args.max_members.or(s.get("max-members", &f.max_members, file_count)?).unwrap_or(1000),
            1,
            1 << 20,
        )?,
        probe_period: dur(args.probe_period, "probe-period", &f.probe_period, Duration::from_millis(400))?,
        probe_rtt: dur(args.probe_rtt, "probe-rtt", &f.probe_rtt, Duration::from_millis(120))?,
        suspect_timeout: dur(args.suspect_timeout, "suspect-timeout", &f.suspect_timeout, Duration::from_millis(800))?,
        on_event: args.on_event.clone().or(s.get("on-event", &f.on_event, |v| Ok(v.clone()))?),
        on_event_timeout: dur(args.on_event_timeout, "on-event-timeout", &f.on_event_timeout, Duration::from_secs(30))?,
    };
    check_cluster(&config)?;
    Ok(config)
}

/// The cluster keys from flags (or env) over the file; checked here so a bad key fails the start by name.
fn key_source(args: &ClusterArgs, s: &Source, f: &FileConfig) -> Result<KeySource, ConfigError> {
    let keys = || KeySource::Keys(args.cluster_key.iter().map(|k| Secret(k.clone())).collect());
    let source = if let (false, Some(path)) = (args.cluster_key.is_empty(), &args.cluster_key_file) {
        // Both: a flag beats the environment (compose may set SHOAL_CLUSTER_KEY while an operator rotates
        // keys with --cluster-key-file); two flags, or two variables, contradict each other.
        let env_keys = std::env::var("SHOAL_CLUSTER_KEY").ok();
        let keys_from_env = env_keys.is_some_and(|v| v.split(',').eq(args.cluster_key.iter().map(String::as_str)));
        let file_from_env = std::env::var_os("SHOAL_CLUSTER_KEY_FILE").is_some_and(|v| path.as_os_str() == v);
        match (keys_from_env, file_from_env) {
            (true, false) => KeySource::File(path.clone()),
            (false, true) => keys(),
            _ => {
                return Err(ConfigError::Field {
                    field: "cluster-key-file",
                    message: "given with cluster-key at the same level (both flags, or both SHOAL_CLUSTER_KEY and \
                              SHOAL_CLUSTER_KEY_FILE): keep one"
                        .into(),
                })
            }
        }
    } else if !args.cluster_key.is_empty() {
        keys()
    } else if let Some(path) = &args.cluster_key_file {
        KeySource::File(path.clone())
    } else if f.cluster_key.is_some() && f.cluster_key_file.is_some() {
        return Err(ConfigError::Field {
            field: "cluster-key-file",
            message: "given with cluster-key in the same file: keep one (a key written inline is never re-read)".into(),
        });
    } else if let Some(keys) = s.get("cluster-key", &f.cluster_key, |v| {
        let list = match v {
            KeyList::One(k) => vec![k.clone()],
            KeyList::Many(ks) => ks.clone(),
        };
        let source = KeySource::Keys(list.into_iter().map(Secret).collect());
        source.load().map(|_| source)
    })? {
        keys
    } else if let Some(path) = s.get("cluster-key-file", &f.cluster_key_file, |v| Ok(PathBuf::from(v)))? {
        KeySource::File(path)
    } else {
        KeySource::None
    };
    let field = if matches!(source, KeySource::File(_)) { "cluster-key-file" } else { "cluster-key" };
    source.load().map_err(|message| ConfigError::Field { field, message })?;
    Ok(source)
}

fn check_cluster(c: &ClusterConfig) -> Result<(), ConfigError> {
    if c.keys.is_none() && !c.insecure && !c.bind.ip().is_loopback() {
        return Err(ConfigError::Field {
            field: "cluster-key",
            message: format!(
                "gossip on {} is reachable from other hosts, and without a cluster key any of them could add itself \
                 as a backend. Make a key with `shoal keygen` and give it to every node (--cluster-key or \
                 SHOAL_CLUSTER_KEY), keep gossip on loopback (--gossip 127.0.0.1:7946), or pass --gossip-insecure",
                c.bind
            ),
        });
    }
    if c.probe_rtt.is_zero() || c.probe_rtt >= c.probe_period {
        return Err(ConfigError::Field {
            field: "probe-rtt",
            message: "must be above 0 and below probe-period".into(),
        });
    }
    if c.suspect_timeout.is_zero() {
        return Err(ConfigError::Field { field: "suspect-timeout", message: "must be more than 0".into() });
    }
    if c.on_event_timeout.is_zero() {
        return Err(ConfigError::Field { field: "on-event-timeout", message: "must be more than 0".into() });
    }
    if c.on_event.as_ref().is_some_and(|cmd| cmd.trim().is_empty()) {
        return Err(ConfigError::Field { field: "on-event", message: "empty command".into() });
    }
    if let Some(bad) =
        c.join.iter().find(|j| j.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
    {
        return Err(ConfigError::Field { field: "join", message: format!("{bad:?} is not HOST:PORT") });
    }
    Ok(())
}

/// Everything `shoal agent` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub service: SocketAddr,
    pub name: String,
    pub weight: u16,
    pub tags: Vec<(String, String)>,
    pub check: Option<crate::agent::health::CheckConfig>,
    /// `--agent-check`: where the node's capacity is read (a URL or a shell command), and how often.
    pub agent_check: Option<String>,
    pub agent_inter: Duration,
    pub drain_timeout: Duration,
    /// `--stop-timeout`: the app's time to exit after SIGTERM.
    pub stop_timeout: Duration,
    pub cluster: ClusterConfig,
    /// The app to supervise, if any.
    pub command: Vec<String>,
    /// `--app-user`: who the app runs as.
    pub app_user: Option<crate::agent::user::AppUser>,
}

impl AgentConfig {
    pub fn load(args: &AgentArgs) -> Result<AgentConfig, ConfigError> {
        let nowhere = Source { path: PathBuf::new(), text: String::new(), values: FileConfig::default() };
        let service = std::net::ToSocketAddrs::to_socket_addrs(args.service.as_str())
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ConfigError::Field {
            field: "service",
            message: format!("{:?} is not a reachable HOST:PORT", args.service),
        })?;
        // Each is a loop's step or a check's timeout (0 spins), or a count of checks in a row (0 means none).
        for (field, zero) in [
            ("check-interval", args.check_interval.is_zero()),
            ("agent-inter", args.agent_inter.is_zero()),
            ("rise", args.rise == 0),
            ("fall", args.fall == 0),
        ] {
            if zero {
                return Err(ConfigError::Field { field, message: "must be more than 0".into() });
            }
        }
        if args.agent_check.as_ref().is_some_and(|c| c.trim().is_empty()) {
            return Err(ConfigError::Field { field: "agent-check", message: "empty URL or command".into() });
        }
        let app_user = match &args.app_user {
            None => None,
            Some(_) if args.command.is_empty() => {
                return Err(ConfigError::Field {
                    field: "app-user",
                    message: "there is no app (nothing after --)".into(),
                })
            }
            Some(text) => {
                let user = crate::agent::user::AppUser::parse(text)
                    .map_err(|message| ConfigError::Field { field: "app-user", message })?;
                // Changing user, and signalling the app's processes once they are another user's.
                let missing = crate::agent::user::missing_capabilities();
                if !missing.is_empty() {
                    return Err(ConfigError::Field {
                        field: "app-user",
                        message: format!(
                            "running the app as another user needs the agent to hold {} (root's, unless dropped)",
                            missing.join(", ")
                        ),
                    });
                }
                Some(user)
            }
        };
        Ok(AgentConfig {
            service,
            name: node_name(&args.name)?,
            weight: args.weight,
            tags: args.tags.clone(),
            check: args.check_path.as_ref().map(|path| crate::agent::health::CheckConfig {
                method: args.check_method.clone(),
                path: path.clone(),
                interval: args.check_interval,
                rise: args.rise,
                fall: args.fall,
                expect: (200, 399),
            }),
            agent_check: args.agent_check.clone(),
            agent_inter: args.agent_inter,
            drain_timeout: args.drain_timeout,
            stop_timeout: args.stop_timeout,
            cluster: cluster_config(&args.cluster, &nowhere, &nowhere.values)?,
            command: args.command.clone(),
            app_user,
        })
        .inspect(|c| {
            if c.service.ip().is_loopback() && !c.cluster.bind.ip().is_loopback() {
                tracing::warn!(
                    "service {} is a loopback address: proxies on other hosts would connect to themselves; give \
                     the address they reach this app at (or 0.0.0.0:{}, the gossip address's)",
                    c.service,
                    c.service.port()
                );
            }
        })
    }
}

/// `--name`, or the host's name: at most `MAX_NAME` bytes, the room a member's identity gives it. A name given
/// longer is refused (`set server nodes/NAME` would not find it); a host name keeps its end, with a warning:
/// replicas' names differ there (`web-7d9f8b6c5-x2x9z`).
fn node_name(given: &str) -> Result<String, ConfigError> {
    use crate::cluster::MAX_NAME;
    if given.len() > MAX_NAME {
        return Err(ConfigError::Field {
            field: "name",
            message: format!("{given:?} is {} bytes long; a node name holds at most {MAX_NAME}", given.len()),
        });
    }
    if !given.is_empty() {
        value::server_name(given).map_err(|message| ConfigError::Field { field: "name", message })?;
        return Ok(given.to_string());
    }
    let host = crate::host::name().unwrap_or_default();
    let cut = (host.len().saturating_sub(MAX_NAME)..host.len()).find(|&i| host.is_char_boundary(i)).unwrap_or(0);
    let name = host[cut..].to_string();
    if name != host {
        tracing::warn!("the host name {host:?} is longer than {MAX_NAME} bytes: this node is named {name:?} (--name)");
    }
    Ok(name)
}

impl ProxyConfig {
    /// The settings every thread's algorithm shares.
    pub fn balance_options(&self) -> crate::balance::Options {
        crate::balance::Options { hash_factor: self.hash_balance_factor, latency: self.latency_aware }
    }

    /// Checks `--max-connections` against the descriptor limit (raised to the hard one first). A value given
    /// that cannot fit is refused (with `--strict-limits off`, kept with a warning, for connections that
    /// will not all hold a backend connection); the default is lowered to what fits, with a log line.
    fn fit_descriptors(&mut self, given: bool, strict: bool) -> Result<(), ConfigError> {
        let limit = descriptors::raise_limit();
        let reserve = descriptors::reserve(self.threads, self.listen.len() + self.tls_listen.len());
        let fits = descriptors::connections_within(limit, reserve);
        let wanted = self.limits.max_connections;
        if wanted <= fits {
            return Ok(());
        }
        if given && !strict {
            tracing::warn!(
                "max-connections {wanted} may need up to {} descriptors and {limit} are allowed (ulimit -n): \
                 kept, as --strict-limits off asks",
                wanted * 2 + reserve
            );
            return Ok(());
        }
        if given || fits == 0 {
            return Err(ConfigError::Field {
                field: "max-connections",
                message: format!(
                    "{wanted} client connections need up to {} descriptors (each may hold a backend connection, \
                     plus {reserve} for listeners, pools and the admin side), and this process may open {limit} \
                     (ulimit -n): lower it to {fits} or raise the limit",
                    wanted * 2 + reserve
                ),
            });
        }
        tracing::info!("max-connections {fits}: what {limit} descriptors hold (ulimit -n); the default is {wanted}");
        self.limits.max_connections = fits;
        Ok(())
    }

    /// Merges flags (clap has already applied env) over the file over defaults, then validates.
    pub fn load(args: &ProxyArgs) -> Result<ProxyConfig, ConfigError> {
        let src = match &args.config {
            Some(path) => Some(Source::load(path)?),
            None => None,
        };
        let empty = FileConfig::default();
        let f = src.as_ref().map_or(&empty, |s| &s.values);
        // Without a file, `get` never sees a value, so any Source serves as the error context.
        let nowhere = Source { path: PathBuf::new(), text: String::new(), values: FileConfig::default() };
        let s = src.as_ref().unwrap_or(&nowhere);

        let dur = |flag: Option<Duration>,
                   field,
                   v: &Option<Spanned<DurationText>>,
                   default|
         -> Result<Duration, ConfigError> {
            Ok(flag.or(s.get(field, v, file_duration)?).unwrap_or(default))
        };
        let count = |flag: Option<usize>, field, v: &Option<Spanned<i64>>, default| -> Result<usize, ConfigError> {
            Ok(flag.or(s.get(field, v, file_count)?).unwrap_or(default))
        };
        let listen = if args.listen.is_empty() {
            s.get("listen", &f.listen, |v| file_list(v, value::listen_addr))?
                .unwrap_or_else(|| vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80)])
        } else {
            args.listen.clone()
        };
        let tls_listen = if args.tls_listen.is_empty() {
            s.get("tls-listen", &f.tls_listen, |v| file_list(v, value::listen_addr))?.unwrap_or_default()
        } else {
            args.tls_listen.clone()
        };
        let tls_certs = if args.tls_cert.is_empty() {
            s.get("tls-cert", &f.tls_cert, |v| Ok(v.iter().map(PathBuf::from).collect()))?.unwrap_or_default()
        } else {
            args.tls_cert.clone()
        };
        let backends = if args.backend.is_empty() {
            s.get("backend", &f.backend, |v| file_list(v, value::backend))?.unwrap_or_default()
        } else {
            args.backend.concat()
        };
        if let Some(twice) = backends
            .iter()
            .enumerate()
            .find_map(|(i, b)| backends[..i].iter().any(|earlier| earlier.name == b.name).then_some(&b.name))
        {
            // A check's verdict and `set server` go by name: one would decide for both.
            return Err(ConfigError::Field {
                field: "backend",
                message: format!("two servers are named {twice:?}: give each a name of its own (NAME=HOST:PORT)"),
            });
        }
        // The check's settings are read (and refused when wrong) whether or not a path turns checks on.
        let check = crate::agent::health::CheckConfig {
            method: "HEAD".into(),
            path: String::new(),
            interval: dur(
                args.backend_check_interval,
                "backend-check-interval",
                &f.backend_check_interval,
                Duration::from_secs(2),
            )?,
            rise: checks_in_a_row(
                "backend-rise",
                count(args.backend_rise.map(|v| v as usize), "backend-rise", &f.backend_rise, 2)?,
            )?,
            fall: checks_in_a_row(
                "backend-fall",
                count(args.backend_fall.map(|v| v as usize), "backend-fall", &f.backend_fall, 3)?,
            )?,
            expect: match args.backend_check_status {
                Some(range) => range,
                None => s
                    .get("backend-check-status", &f.backend_check_status, |v| value::status_range(v))?
                    .unwrap_or((200, 399)),
            },
        };
        let backend_check_interval = check.interval;
        let backend_check = args
            .backend_check_path
            .clone()
            .or(s.get("backend-check-path", &f.backend_check_path, |v| value::check_path(v))?)
            .map(|path| crate::agent::health::CheckConfig { path, ..check });
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut config = ProxyConfig {
            listen,
            tls_listen,
            tls_certs,
            redirect_https: args.redirect_https.or(f.redirect_https.as_ref().map(|v| *v.get_ref())).unwrap_or(false),
            backends,
            admin: args
                .admin
                .or(s.get("admin", &f.admin, |v| value::optional_listen_addr(v))?)
                .map_or(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 1936)), |e| e.0),
            admin_auth: match &args.admin_auth {
                Some(given) => Some(
                    value::user_pass(given).map_err(|message| ConfigError::Field { field: "admin-auth", message })?,
                ),
                None => s.get("admin-auth", &f.admin_auth, |v| value::user_pass(v))?,
            },
            runtime_api: args
                .runtime_api
                .or(s.get("runtime-api", &f.runtime_api, |v| value::optional_listen_addr(v))?)
                .map_or(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9999)), |e| e.0),
            balance: args.balance.clone().or(s.get("balance", &f.balance, |v| value::balance(v))?).unwrap_or_default(),
            hash_balance_factor: {
                let factor = count(
                    args.hash_balance_factor.map(|v| v as usize),
                    "hash-balance-factor",
                    &f.hash_balance_factor,
                    0,
                )?;
                if factor != 0 && factor < 100 {
                    return Err(ConfigError::Field {
                        field: "hash-balance-factor",
                        message: format!("{factor} is below 100: a server may always carry at least the average"),
                    });
                }
                in_range("hash-balance-factor", factor, 0, 100_000)? as u32
            },
            latency_aware: args.latency_aware.or(f.latency_aware.as_ref().map(|v| *v.get_ref())).unwrap_or(false),
            sticky_cookie: match &args.sticky_cookie {
                Some(name) => Some(
                    value::cookie_name(name)
                        .map_err(|message| ConfigError::Field { field: "sticky-cookie", message })?,
                ),
                None => s.get("sticky-cookie", &f.sticky_cookie, |v| value::cookie_name(v))?,
            },
            slowstart: dur(args.slowstart, "slowstart", &f.slowstart, Duration::ZERO)?,
            backend_check,
            cluster: cluster_config(&args.cluster, s, f)?,
            threads: in_range("threads", count(args.threads, "threads", &f.threads, cores)?, 1, 1024)?,
            pin_cpus: args.pin_cpus.or(f.pin_cpus.as_ref().map(|v| *v.get_ref())).unwrap_or(false),
            timeouts: Timeouts {
                head: dur(args.timeout_head, "timeout-head", &f.timeout_head, Duration::from_secs(10))?,
                idle: dur(args.timeout_idle, "timeout-idle", &f.timeout_idle, Duration::from_secs(50))?,
                client: dur(args.timeout_client, "timeout-client", &f.timeout_client, Duration::from_secs(50))?,
                connect: dur(args.timeout_connect, "timeout-connect", &f.timeout_connect, Duration::from_secs(5))?,
                queue: dur(args.timeout_queue, "timeout-queue", &f.timeout_queue, Duration::from_secs(5))?,
                attempt: dur(args.timeout_attempt, "timeout-attempt", &f.timeout_attempt, Duration::from_millis(250))?,
                server: dur(args.timeout_server, "timeout-server", &f.timeout_server, Duration::from_secs(50))?,
                tunnel: dur(args.timeout_tunnel, "timeout-tunnel", &f.timeout_tunnel, Duration::from_secs(3600))?,
                pool: dur(args.timeout_pool, "timeout-pool", &f.timeout_pool, Duration::from_secs(10))?,
                grace: dur(args.grace, "grace", &f.grace, Duration::from_secs(8))?,
                handshake: dur(
                    args.timeout_handshake,
                    "timeout-handshake",
                    &f.timeout_handshake,
                    Duration::from_secs(5),
                )?,
            },
            limits: Limits {
                max_header_bytes: in_range(
                    "max-header-bytes",
                    count(args.max_header_bytes, "max-header-bytes", &f.max_header_bytes, 16384)?,
                    256,
                    1 << 20,
                )?,
                max_headers: in_range(
                    "max-headers",
                    count(args.max_headers, "max-headers", &f.max_headers, 100)?,
                    1,
                    crate::http::MAX_HEADERS,
                )?,
                max_connections: in_range(
                    "max-connections",
                    count(args.max_connections, "max-connections", &f.max_connections, 10000)?,
                    1,
                    1 << 24,
                )?,
                pool_max_idle: count(args.pool_max_idle, "pool-max-idle", &f.pool_max_idle, 64)?,
                splice_min: count(args.splice_min.map(|v| v as usize), "splice-min", &f.splice_min, 0)? as u64,
            },
            access_log: args.access_log.or(f.access_log.as_ref().map(|v| *v.get_ref())).unwrap_or(true),
            strict_limits: args.strict_limits.or(f.strict_limits.as_ref().map(|v| *v.get_ref())).unwrap_or(true),
        };
        if config.listen.is_empty() && config.tls_listen.is_empty() {
            return Err(ConfigError::Field { field: "listen", message: "at least one address is needed".into() });
        }
        // (Port 0 asks for any free port: two such listeners get two.)
        if let Some(both) = config.tls_listen.iter().find(|a| a.port() != 0 && config.listen.contains(a)) {
            return Err(ConfigError::Field {
                field: "tls-listen",
                message: format!("{both} is also a plain listener: the kernel would hand each client to either"),
            });
        }
        let strict = config.strict_limits;
        config.fit_descriptors(args.max_connections.is_some() || f.max_connections.is_some(), strict)?;
        if config.limits.max_connections < config.threads {
            // Each thread accepts on a listener of its own, which the kernel hands clients to by hash.
            return Err(ConfigError::Field {
                field: "max-connections",
                message: format!(
                    "{} is fewer than the {} threads, which each need a connection of their own: lower --threads",
                    config.limits.max_connections, config.threads
                ),
            });
        }
        if !config.tls_listen.is_empty() && config.tls_certs.is_empty() {
            return Err(ConfigError::Field {
                field: "tls-cert",
                message: "a TLS listener needs a certificate: a PEM file holding the chain and its key".into(),
            });
        }
        if config.tls_listen.is_empty() && (!config.tls_certs.is_empty() || config.redirect_https) {
            return Err(ConfigError::Field {
                field: "tls-listen",
                message: "certificates and redirects to https need a TLS listener".into(),
            });
        }
        for (name, t) in [
            ("timeout-head", config.timeouts.head),
            ("timeout-idle", config.timeouts.idle),
            ("timeout-client", config.timeouts.client),
            ("timeout-connect", config.timeouts.connect),
            ("timeout-attempt", config.timeouts.attempt),
            ("timeout-queue", config.timeouts.queue),
            ("timeout-server", config.timeouts.server),
            ("timeout-tunnel", config.timeouts.tunnel),
            ("timeout-handshake", config.timeouts.handshake),
            ("backend-check-interval", backend_check_interval),
        ] {
            if t.is_zero() {
                return Err(ConfigError::Field { field: name, message: "must be more than 0".into() });
            }
        }
        Ok(config)
    }
}
