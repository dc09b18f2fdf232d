//! The proxy's own view of its servers' health, on a thread of its own away from the data plane and the gossip
//! loop:
//!
//! - Ejected servers (a failed connect, a request their host never acknowledged) are probed with a TCP
//!   connect every 500 ms and readmitted when one succeeds, unless membership said so first.
//! - Static servers (`--backend`) get HTTP checks with `--backend-check-path`, HAProxy's `check` with `inter`,
//!   `rise` and `fall` (gossip members are checked by their own agents).
//! - While a server ramps up under `--slowstart`, its weight is republished as the clock moves.
//! - Response-time averages fade, so a server shunned for being slow is tried again once it may be fast.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Backend, Publisher, ResolveError, SharedBackends};
use crate::agent::health::{self, CheckConfig, Verdicts};

/// How often ejected servers are probed, and ramping weights republished.
const EVERY: Duration = Duration::from_millis(500);

/// Starts the thread. Each probe may take `connect_limit`.
pub fn start(
    backends: SharedBackends,
    publisher: Arc<Mutex<Publisher>>,
    checks: Option<CheckConfig>,
    connect_limit: Duration,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("shoal-health".into()).spawn(move || {
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            if let Some(config) = checks {
                tokio::task::spawn_local(check_statics(publisher.clone(), config));
            }
            loop {
                tokio::time::sleep(EVERY).await;
                publisher.lock().tick();
                let set = backends.load_full();
                for backend in &set.servers {
                    backend.fade_latency();
                }
                let mut probes = JoinSet::new();
                for backend in set.servers.iter().filter(|b| b.is_ejected()) {
                    probes.spawn_local(probe(backend.clone(), connect_limit));
                }
                while probes.join_next().await.is_some() {}
            }
        });
    })?;
    Ok(())
}

/// Connects to an ejected server within `limit`; its name is looked up again meanwhile (it may have come
/// back elsewhere), for the next probe: a slow resolver must not keep out a server whose address works.
async fn probe(backend: Arc<Backend>, limit: Duration) {
    let deadline = Instant::now() + limit;
    backend.address.refresh();
    let Ok(addr) = backend.address.resolve(deadline).await else { return };
    if let Ok(Ok(_)) = tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        if backend.readmit() {
            tracing::info!("server {} ({addr}) accepts connections again: back in rotation", backend.name());
        }
    }
}

/// Checks every static server each interval; a verdict that changes is published.
async fn check_statics(publisher: Arc<Mutex<Publisher>>, config: CheckConfig) {
    let mut verdicts: HashMap<usize, Verdicts> = HashMap::new();
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        next += config.interval;
        let statics = publisher.lock().statics();
        // A reload may have replaced them: forget the verdicts of servers that are gone.
        verdicts.retain(|key, _| statics.iter().any(|b| Arc::as_ptr(b) as usize == *key));
        let mut checks = JoinSet::new();
        for backend in statics {
            let config = config.clone();
            checks.spawn_local(async move {
                // The lookup gets at most an interval too: one name the resolver never answers for must not
                // hold back the verdicts of the others.
                let report = match backend.address.resolve(Instant::now() + config.interval).await {
                    Ok(addr) => health::check_report(addr, &config).await,
                    Err(e) => health::CheckReport {
                        status: if matches!(e, ResolveError::TimedOut(_)) { "L4TOUT" } else { "L4CON" },
                        code: None,
                        duration: Duration::ZERO,
                        error: Some(e.to_string()),
                    },
                };
                (backend, report)
            });
        }
        while let Some(Ok((backend, report))) = checks.join_next().await {
            let verdict = verdicts
                .entry(Arc::as_ptr(&backend) as usize)
                .or_insert_with(|| Verdicts::starting_up(config.rise, config.fall));
            let changed = verdict.record(report.passed());
            if changed.is_some() {
                match &report.error {
                    None => tracing::info!("server {} is UP: its check passes", backend.name()),
                    Some(why) => tracing::warn!("server {} is DOWN: check failed: {why}", backend.name()),
                }
            }
            backend.checked(report);
            if let Some(healthy) = changed {
                publisher.lock().set_static_health(&backend.name(), healthy);
            }
        }
    }
}
