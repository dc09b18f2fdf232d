//! Command-line flags. Every flag can also come from `SHOAL_<FLAG>` so a compose file can set it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::value::{self, BackendSpec};

#[derive(Debug, Parser)]
#[command(name = "shoal", version, about = "HTTP load balancer with built-in gossip membership")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer.
    Proxy(Box<ProxyArgs>),
    /// Run beside a backend's app: join the cluster and advertise the app's address.
    Agent(Box<AgentArgs>),
    /// A demo backend standing in for the lab's Node webapp.
    Webapp(WebappArgs),
    /// A proxy and three webapp nodes joining it by gossip, on this machine.
    Demo(DemoArgs),
    /// Print a fresh random cluster key (for --cluster-key, SHOAL_CLUSTER_KEY or a key file).
    Keygen,
    /// List the cluster's members as a proxy sees them, as `serf members` does.
    Members(MembersArgs),
    /// Send one line of runtime API commands to a proxy and print its answer, as `socat - tcp:ADDR` did (the
    /// image has no socat): `docker exec ha /shoal runtime show stat`.
    Runtime(RuntimeArgs),
    /// One HTTP check of an app, for a container's HEALTHCHECK (the image has no curl): exits 0 on a 2xx or
    /// 3xx answer within the timeout, 1 otherwise, saying why on stderr.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// What to ask: `http://IP:PORT/PATH`.
    #[arg(value_name = "URL", value_parser = value::check_url)]
    pub url: (SocketAddr, String),
    /// How long the answer may take.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = value::duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    /// A proxy's admin address, where `/members` is served.
    #[arg(long, env = "SHOAL_ADMIN", value_name = "ADDR", default_value = "127.0.0.1:1936")]
    pub admin: String,
    /// The admin side's USER:PASS, when it asks for one.
    #[arg(long, env = "SHOAL_ADMIN_AUTH", value_name = "USER:PASS", hide_env_values = true)]
    pub admin_auth: Option<String>,
    /// Only members with this status.
    #[arg(long, value_parser = ["alive", "joining", "unhealthy", "draining", "maint", "left", "failed"])]
    pub status: Option<String>,
    /// Only members with this tag, `K=V` (repeatable: all must match).
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
    /// `table` or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// A proxy's runtime API address (its own `--runtime-api` setting will do: `0.0.0.0` means loopback).
    #[arg(long, env = "SHOAL_RUNTIME_API", value_name = "ADDR", default_value = "127.0.0.1:9999")]
    pub api: String,
    /// The commands, `;` between several: `show stat`, `set server nodes/s1 state drain`, `help`.
    #[arg(value_name = "COMMAND", trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WebappArgs {
    /// Address to serve on.
    #[arg(long, env = "SHOAL_LISTEN", value_name = "ADDR", default_value = "0.0.0.0:3000", value_parser = value::listen_addr)]
    pub listen: SocketAddr,
    /// Reported as `host` [default: the host name].
    #[arg(long, env = "SHOAL_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// Reported as `tag` when set.
    #[arg(long, env = "SHOAL_TAG", value_name = "TAG")]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo's proxy accepts clients.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = value::listen_addr)]
    pub listen: SocketAddr,
    /// How many webapp nodes to start.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub nodes: usize,
    /// Port of the first node's webapp (the others follow); 0 picks free ports.
    #[arg(long, value_name = "PORT", default_value_t = 3001)]
    pub first_port: u16,
    /// The proxy's gossip port, on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 7946)]
    pub gossip_port: u16,
    /// The proxy's stats page, CSV and metrics port, on 127.0.0.1; 0 picks a free port.
    #[arg(long, value_name = "PORT", default_value_t = 1936)]
    pub admin_port: u16,
    /// The proxy's runtime API port, on 127.0.0.1; 0 picks a free port.
    #[arg(long, value_name = "PORT", default_value_t = 9999)]
    pub runtime_api_port: u16,
}

/// Gossip flags shared by `proxy` and `agent`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Gossip (UDP) address [default: 0.0.0.0:7946].
    #[arg(long, env = "SHOAL_GOSSIP", value_name = "ADDR", value_parser = value::listen_addr)]
    pub gossip: Option<SocketAddr>,
    /// A member to join through, `HOST:PORT` (repeatable); retried with backoff until it answers.
    #[arg(long, env = "SHOAL_JOIN", value_name = "HOST:PORT", value_delimiter = ',')]
    pub join: Vec<String>,
    /// The IP other members reach this node at [default: the bound IP, or the first non-loopback one].
    #[arg(long, env = "SHOAL_ADVERTISE", value_name = "IP")]
    pub advertise: Option<std::net::IpAddr>,
    /// Cluster key sealing every gossip packet (Serf's -encrypt): 32 bytes in base64, as `shoal keygen`
    /// prints. Repeatable: the first seals, every one opens (key rotation). Required unless gossip stays on
    /// loopback or --gossip-insecure is given.
    #[arg(long, env = "SHOAL_CLUSTER_KEY", value_name = "KEY", value_delimiter = ',', hide_env_values = true)]
    pub cluster_key: Vec<String>,
    /// A file of cluster keys, one per line, the first sealing; re-read when it changes, so keys rotate
    /// without a restart.
    #[arg(long, env = "SHOAL_CLUSTER_KEY_FILE", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Gossip in the clear on a non-loopback address: any host that reaches it can add itself as a backend.
    #[arg(long, env = "SHOAL_GOSSIP_INSECURE", value_name = "on|off", num_args = 0..=1, default_missing_value = "on", value_parser = value::switch)]
    pub gossip_insecure: Option<bool>,
    /// Most cluster members tracked; more are ignored, with a log line [default: 1000].
    #[arg(long, env = "SHOAL_MAX_MEMBERS", value_name = "N")]
    pub max_members: Option<usize>,
    /// How often a random member is probed [default: 400ms].
    #[arg(long, env = "SHOAL_PROBE_PERIOD", value_name = "DURATION", value_parser = value::duration)]
    pub probe_period: Option<Duration>,
    /// How long a direct probe may take before indirect probes start [default: 120ms].
    #[arg(long, env = "SHOAL_PROBE_RTT", value_name = "DURATION", value_parser = value::duration)]
    pub probe_rtt: Option<Duration>,
    /// How long a suspect member has to refute before it is declared down [default: 800ms].
    #[arg(long, env = "SHOAL_SUSPECT_TIMEOUT", value_name = "DURATION", value_parser = value::duration)]
    pub suspect_timeout: Option<Duration>,
    /// Shell command run on member-join/-leave/-failed/-update, with SHOAL_EVENT set and one
    /// `name<TAB>address<TAB>role<TAB>tags` line per member on stdin, as Serf handlers receive.
    #[arg(long, env = "SHOAL_ON_EVENT", value_name = "CMD")]
    pub on_event: Option<String>,
    /// Longest an --on-event handler may run; then it and its process group are killed, so one hung handler
    /// cannot hold back every later event [default: 30s].
    #[arg(long, env = "SHOAL_ON_EVENT_TIMEOUT", value_name = "DURATION", value_parser = value::duration)]
    pub on_event_timeout: Option<Duration>,
}

/// Flags of `shoal agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The app's HTTP address, `HOST:PORT`; `0.0.0.0:PORT` advertises the node's own IP.
    #[arg(long, env = "SHOAL_SERVICE", value_name = "HOST:PORT")]
    pub service: String,
    /// Node name shown in logs, stats and the runtime API (`nodes/NAME`) [default: the host name].
    #[arg(long, env = "SHOAL_NAME", value_name = "NAME", default_value = "")]
    pub name: String,
    /// Relative share of traffic.
    #[arg(long, env = "SHOAL_WEIGHT", value_name = "W", default_value_t = 100)]
    pub weight: u16,
    /// A `KEY=VALUE` tag gossiped with this node (repeatable), as Serf's `-tag`.
    #[arg(long = "tag", env = "SHOAL_TAG", value_name = "K=V", value_delimiter = ',', value_parser = value::tag)]
    pub tags: Vec<(String, String)>,
    /// Health-check the service with an HTTP request to this path; traffic only while it passes.
    #[arg(long, env = "SHOAL_CHECK_PATH", value_name = "PATH", value_parser = value::check_path)]
    pub check_path: Option<String>,
    /// Method of the health check (HAProxy's `option httpchk` uses HEAD).
    #[arg(long, env = "SHOAL_CHECK_METHOD", value_name = "METHOD", default_value = "HEAD", value_parser = value::check_method)]
    pub check_method: String,
    /// Time between health checks (also each check's timeout).
    #[arg(long, env = "SHOAL_CHECK_INTERVAL", value_name = "DURATION", default_value = "2s", value_parser = value::duration)]
    pub check_interval: Duration,
    /// Consecutive passes to become healthy again.
    #[arg(long, env = "SHOAL_RISE", value_name = "N", default_value_t = 2)]
    pub rise: u32,
    /// Consecutive failures to become unhealthy.
    #[arg(long, env = "SHOAL_FALL", value_name = "N", default_value_t = 3)]
    pub fall: u32,
    /// Learn this node's capacity at run time, as HAProxy's agent-check: an http:// URL whose answer's first
    /// body line, or a shell command whose first output line, says `75%`, `ready`, `drain`, `maint` or
    /// `down`; gossiped to the proxies.
    #[arg(long, env = "SHOAL_AGENT_CHECK", value_name = "URL|CMD")]
    pub agent_check: Option<String>,
    /// Time between agent checks.
    #[arg(long, env = "SHOAL_AGENT_INTER", value_name = "DURATION", default_value = "2s", value_parser = value::duration)]
    pub agent_inter: Duration,
    /// On SIGTERM, longest wait for the proxies to stop sending requests before leaving anyway.
    #[arg(long, env = "SHOAL_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = value::duration)]
    pub drain_timeout: Duration,
    /// How long the app has to exit after its SIGTERM (sent once the node has left) before it is killed;
    /// keep drain, leave (2 s) and this under the container's stop grace period.
    #[arg(long, env = "SHOAL_STOP_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = value::duration)]
    pub stop_timeout: Duration,
    /// Run the app as this user, `USER[:GROUP]` (numbers, or names in /etc/passwd and /etc/group), as
    /// s6-setuidgid does: it cannot read the agent's key file or its /proc files then. Needs CAP_SETUID,
    /// CAP_SETGID and CAP_KILL (root's).
    #[arg(long, env = "SHOAL_APP_USER", value_name = "USER[:GROUP]")]
    pub app_user: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The app to supervise: started, restarted when it exits, stopped last (everything after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of `shoal proxy`. Unset flags fall back to the config file, then to defaults.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// TOML file holding any of these settings (flags and env override it).
    #[arg(long, env = "SHOAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check: bool,
    /// Write the serving process's pid here (after a SIGUSR2 upgrade, the new process's).
    #[arg(long, env = "SHOAL_PID_FILE", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Address to accept clients on (repeatable) [default: 0.0.0.0:80].
    #[arg(long, env = "SHOAL_LISTEN", value_name = "ADDR", value_delimiter = ',', value_parser = value::listen_addr)]
    pub listen: Vec<SocketAddr>,
    /// Address to accept TLS clients on (repeatable); needs --tls-cert.
    #[arg(long, env = "SHOAL_TLS_LISTEN", value_name = "ADDR", value_delimiter = ',', value_parser = value::listen_addr)]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM file holding a certificate chain and its key, or a directory of such files (repeatable); SNI picks
    /// the certificate whose names match, the first is the default.
    #[arg(long, env = "SHOAL_TLS_CERT", value_name = "PEM", value_delimiter = ',')]
    pub tls_cert: Vec<PathBuf>,
    /// Answer requests on the plain listeners with a 301 to https (the first --tls-listen's port).
    #[arg(long, env = "SHOAL_REDIRECT_HTTPS", value_name = "on|off", num_args = 0..=1, default_missing_value = "on", value_parser = value::switch)]
    pub redirect_https: Option<bool>,
    /// Longest TLS handshake [default: 5s].
    #[arg(long, env = "SHOAL_TIMEOUT_HANDSHAKE", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_handshake: Option<Duration>,
    /// Static backend `[NAME=]HOST:PORT[,weight=N][,maxconn=N][,maxqueue=N]` (repeatable, or several
    /// separated by commas); host names are looked up when first needed and after a failed connect, within
    /// --timeout-connect.
    #[arg(long, env = "SHOAL_BACKEND", value_name = "BACKEND", value_parser = value::backends)]
    pub backend: Vec<Vec<BackendSpec>>,
    /// Admin and stats listener, or off [default: 0.0.0.0:1936].
    #[arg(long, env = "SHOAL_ADMIN", value_name = "ADDR", value_parser = value::optional_listen_addr)]
    pub admin: Option<value::Endpoint>,
    /// Protects the stats page, CSV and metrics with HTTP basic authentication (HAProxy's `stats auth`).
    // Checked when the configuration is loaded, not by clap, whose message would repeat the secret.
    #[arg(long, env = "SHOAL_ADMIN_AUTH", value_name = "USER:PASS", hide_env_values = true)]
    pub admin_auth: Option<String>,
    /// Runtime API listener, HAProxy's `stats socket` commands over TCP, or off. It changes routing, so it
    /// stays on loopback unless told otherwise [default: 127.0.0.1:9999].
    #[arg(long, env = "SHOAL_RUNTIME_API", value_name = "ADDR", value_parser = value::optional_listen_addr)]
    pub runtime_api: Option<value::Endpoint>,
    /// How servers are chosen: roundrobin (weighted), leastconn, random (two choices), or consistent hashing
    /// of the client address (source), the path (uri) or a header (hdr(NAME)) [default: roundrobin].
    #[arg(long, env = "SHOAL_BALANCE", value_name = "ALGORITHM", value_parser = value::balance)]
    pub balance: Option<value::Balance>,
    /// With a hashing algorithm, a server above this percent of the average load passes keys on to the next
    /// (HAProxy's hash-balance-factor); 0: off [default: 0].
    #[arg(long, env = "SHOAL_HASH_BALANCE_FACTOR", value_name = "PERCENT")]
    pub hash_balance_factor: Option<u32>,
    /// leastconn and random also weigh servers by their recent response times: on or off [default: off].
    #[arg(long, env = "SHOAL_LATENCY_AWARE", value_name = "on|off", value_parser = value::switch)]
    pub latency_aware: Option<bool>,
    /// Sticky sessions: insert this cookie naming the server (HAProxy's `cookie NAME insert indirect nocache`).
    #[arg(long, env = "SHOAL_STICKY_COOKIE", value_name = "NAME")]
    pub sticky_cookie: Option<String>,
    /// A server new to rotation, or back in it, ramps its weight up over this long; 0: off [default: 0].
    #[arg(long, env = "SHOAL_SLOWSTART", value_name = "DURATION", value_parser = value::duration)]
    pub slowstart: Option<Duration>,
    /// Health-check static servers (--backend) with an HTTP request to this path, as HAProxy's `check`.
    #[arg(long, env = "SHOAL_BACKEND_CHECK_PATH", value_name = "PATH", value_parser = value::check_path)]
    pub backend_check_path: Option<String>,
    /// Time between checks of static servers (also each check's timeout) [default: 2s].
    #[arg(long, env = "SHOAL_BACKEND_CHECK_INTERVAL", value_name = "DURATION", value_parser = value::duration)]
    pub backend_check_interval: Option<Duration>,
    /// Consecutive passes for a static server to be UP again [default: 2].
    #[arg(long, env = "SHOAL_BACKEND_RISE", value_name = "N")]
    pub backend_rise: Option<u32>,
    /// Consecutive failures for a static server to be DOWN [default: 3].
    #[arg(long, env = "SHOAL_BACKEND_FALL", value_name = "N")]
    pub backend_fall: Option<u32>,
    /// Statuses a check accepts, LOW-HIGH [default: 200-399].
    #[arg(long, env = "SHOAL_BACKEND_CHECK_STATUS", value_name = "LOW-HIGH", value_parser = value::status_range)]
    pub backend_check_status: Option<(u16, u16)>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Data-plane threads, one accept loop each [default: the number of cores].
    #[arg(long, env = "SHOAL_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Pin data-plane thread N to CPU N (modulo the CPUs this process may use): on or off [default: off].
    #[arg(long, env = "SHOAL_PIN_CPUS", value_name = "on|off", value_parser = value::switch)]
    pub pin_cpus: Option<bool>,
    /// Longest time to receive a whole request head (slowloris guard) [default: 10s].
    #[arg(long, env = "SHOAL_TIMEOUT_HEAD", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_head: Option<Duration>,
    /// Longest wait for the next request on a keep-alive client connection [default: 50s].
    #[arg(long, env = "SHOAL_TIMEOUT_IDLE", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_idle: Option<Duration>,
    /// Client inactivity while a body is being sent or received [default: 50s].
    #[arg(long, env = "SHOAL_TIMEOUT_CLIENT", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_client: Option<Duration>,
    /// Longest wait in a full server's queue (servers with maxconn) before a 503 [default: 5s].
    #[arg(long, env = "SHOAL_TIMEOUT_QUEUE", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_queue: Option<Duration>,
    /// Longest time to connect to a backend, looking its name up included [default: 5s].
    #[arg(long, env = "SHOAL_TIMEOUT_CONNECT", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_connect: Option<Duration>,
    /// How long a connect, or the TCP acknowledgement of a sent idempotent request, may take before the
    /// attempt is abandoned for another server (when there is one): a host that went dark costs this, not
    /// the connect timeout. Raise it for backends more than ~50 ms away [default: 250ms].
    #[arg(long, env = "SHOAL_TIMEOUT_ATTEMPT", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_attempt: Option<Duration>,
    /// Backend inactivity: waiting for a response head or body bytes [default: 50s].
    #[arg(long, env = "SHOAL_TIMEOUT_SERVER", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_server: Option<Duration>,
    /// Inactivity in both directions of an upgraded (WebSocket) tunnel [default: 1h].
    #[arg(long, env = "SHOAL_TIMEOUT_TUNNEL", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_tunnel: Option<Duration>,
    /// How long an idle pooled backend connection is kept [default: 10s].
    #[arg(long, env = "SHOAL_TIMEOUT_POOL", value_name = "DURATION", value_parser = value::duration)]
    pub timeout_pool: Option<Duration>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take before exit [default: 8s].
    #[arg(long, env = "SHOAL_GRACE", value_name = "DURATION", value_parser = value::duration)]
    pub grace: Option<Duration>,
    /// Largest request or response head in bytes [default: 16384].
    #[arg(long, env = "SHOAL_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most header fields in one head [default: 100].
    #[arg(long, env = "SHOAL_MAX_HEADERS", value_name = "N")]
    pub max_headers: Option<usize>,
    /// Most client connections at once; more wait in the listen queue [default: 10000].
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Refuse to start with a --max-connections the descriptor limit cannot hold; off only warns, as
    /// HAProxy's `no strict-limits` [default: on].
    #[arg(long, env = "SHOAL_STRICT_LIMITS", value_name = "on|off", value_parser = value::switch)]
    pub strict_limits: Option<bool>,
    /// Content-Length bodies at least this large, and each tunnel direction once it has carried this many
    /// bytes, are moved with splice(2), without a copy; 0 disables it. From 256 KiB it costs a quarter to a
    /// third less CPU than copying (little under BBR without the fq qdisc), but 1 MiB responses measured a
    /// higher p99 latency (bench/README.md) [default: 0].
    #[arg(long, env = "SHOAL_SPLICE_MIN", value_name = "BYTES")]
    pub splice_min: Option<u64>,
    /// Idle connections kept per backend on each thread [default: 64].
    #[arg(long, env = "SHOAL_POOL_MAX_IDLE", value_name = "N")]
    pub pool_max_idle: Option<usize>,
    /// Access log on stdout in HAProxy's httplog shape: on or off [default: on].
    #[arg(long, env = "SHOAL_ACCESS_LOG", value_name = "on|off", value_parser = value::switch)]
    pub access_log: Option<bool>,
}
