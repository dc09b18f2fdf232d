//! The TOML configuration file: the same settings as the flags, by the same names.

use serde::Deserialize;
use toml::Spanned;

/// A duration written as `"5s"` or as a number of milliseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DurationText {
    Text(String),
    Millis(u64),
}

/// `cluster-key = "..."` or `cluster-key = ["new", "old"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum KeyList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub listen: Option<Spanned<Vec<String>>>,
    pub backend: Option<Spanned<Vec<String>>>,
    pub tls_listen: Option<Spanned<Vec<String>>>,
    pub tls_cert: Option<Spanned<Vec<String>>>,
    pub redirect_https: Option<Spanned<bool>>,
    pub timeout_handshake: Option<Spanned<DurationText>>,
    pub admin: Option<Spanned<String>>,
    pub runtime_api: Option<Spanned<String>>,
    pub admin_auth: Option<Spanned<String>>,
    pub balance: Option<Spanned<String>>,
    pub hash_balance_factor: Option<Spanned<i64>>,
    pub latency_aware: Option<Spanned<bool>>,
    pub sticky_cookie: Option<Spanned<String>>,
    pub slowstart: Option<Spanned<DurationText>>,
    pub backend_check_path: Option<Spanned<String>>,
    pub backend_check_interval: Option<Spanned<DurationText>>,
    pub backend_rise: Option<Spanned<i64>>,
    pub backend_fall: Option<Spanned<i64>>,
    pub backend_check_status: Option<Spanned<String>>,
    pub timeout_queue: Option<Spanned<DurationText>>,
    pub gossip: Option<Spanned<String>>,
    pub join: Option<Spanned<Vec<String>>>,
    pub advertise: Option<Spanned<String>>,
    pub cluster_key: Option<Spanned<KeyList>>,
    pub cluster_key_file: Option<Spanned<String>>,
    pub gossip_insecure: Option<Spanned<bool>>,
    pub max_members: Option<Spanned<i64>>,
    pub probe_period: Option<Spanned<DurationText>>,
    pub probe_rtt: Option<Spanned<DurationText>>,
    pub suspect_timeout: Option<Spanned<DurationText>>,
    pub on_event: Option<Spanned<String>>,
    pub on_event_timeout: Option<Spanned<DurationText>>,
    pub threads: Option<Spanned<i64>>,
    pub pin_cpus: Option<Spanned<bool>>,
    pub timeout_head: Option<Spanned<DurationText>>,
    pub timeout_idle: Option<Spanned<DurationText>>,
    pub timeout_client: Option<Spanned<DurationText>>,
    pub timeout_connect: Option<Spanned<DurationText>>,
    pub timeout_attempt: Option<Spanned<DurationText>>,
    pub timeout_server: Option<Spanned<DurationText>>,
    pub timeout_tunnel: Option<Spanned<DurationText>>,
    pub timeout_pool: Option<Spanned<DurationText>>,
    pub grace: Option<Spanned<DurationText>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub strict_limits: Option<Spanned<bool>>,
    pub pool_max_idle: Option<Spanned<i64>>,
    pub splice_min: Option<Spanned<i64>>,
    pub access_log: Option<Spanned<bool>>,
}
