//! `shoal agent`: runs beside a backend's app, joins the cluster and advertises the app's address so the
//! proxies route to it; optionally supervises the app (`-- CMD ARGS`). On SIGTERM/SIGINT it leaves the
//! cluster, then stops the app, and exits with the app's status.

pub mod health;
mod supervise;

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cluster::{self, Announce, Cluster, Member, Membership, NodeState, Role};
use crate::config::AgentConfig;
use crate::signals::StopSignals;
use health::{CheckConfig, Verdicts};
use supervise::Supervisor;

/// An agent needs nothing from membership but a debug line.
struct Quiet;

impl Membership for Quiet {
    fn changed(&mut self, members: &[Member]) {
        tracing::debug!("{} other members", members.len());
    }
}

/// How long the app gets to stop after SIGTERM before it is killed.
const CHILD_GRACE: Duration = Duration::from_secs(10);

/// Runs until told to stop; returns the process exit code.
/// The signals an agent handles, installed before anything starts: until then a SIGHUP or SIGTERM would take
/// the default action and kill the agent (and, through PR_SET_PDEATHSIG, its app).
struct Signals {
    stop: StopSignals,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            stop: StopSignals::install()?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

pub fn run(config: AgentConfig) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut signals = runtime.block_on(async { Signals::install() })?;
    let node = cluster::start(
        &config.cluster,
        Announce {
            role: Role::Backend,
            service: Some(config.service),
            weight: config.weight,
            checked: config.check.is_some(),
            name: config.name.clone(),
            tags: config.tags.clone(),
        },
        Box::new(Quiet),
        cluster::Takeover::default(),
    )?;
    tracing::info!("agent for {} running", config.service);
    let mut child =
        (!config.command.is_empty()).then(|| runtime.block_on(async { Supervisor::start(config.command.clone()) }));
    runtime.block_on(async {
        let mut verdicts = config.check.as_ref().map(|c| Verdicts::new(c.rise, c.fall));
        let mut next_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = signals.stop.recv() => break,
                _ = signals.hup.recv() => forward(&child, libc::SIGHUP),
                _ = signals.usr1.recv() => forward(&child, libc::SIGUSR1),
                _ = signals.usr2.recv() => forward(&child, libc::SIGUSR2),
                status = exited(&mut child) => {
                    if let Some(c) = child.as_mut() {
                        c.restart(status).await;
                    }
                }
                _ = tokio::time::sleep_until(next_check), if config.check.is_some() => {
                    let check = config.check.as_ref().expect("guarded");
                    next_check += check.interval;
                    run_check(&config, check, verdicts.as_mut().expect("with check"), &node).await;
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    tracing::info!("stopping: draining before leaving the cluster");
    let drained = node.drain(config.drain_timeout);
    let _ = runtime.block_on(drained);
    node.leave(Duration::from_secs(2));
    let status = match child.as_mut() {
        Some(c) => runtime.block_on(c.stop(CHILD_GRACE)),
        None => None,
    };
    Ok(status.map_or(0, supervise::exit_code))
}

async fn run_check(config: &AgentConfig, check: &CheckConfig, verdicts: &mut Verdicts, node: &Cluster) {
    let result = health::check(config.service, check).await;
    if let Err(reason) = &result {
        tracing::debug!("health check of {} failed: {reason}", config.service);
    }
    if let Some(healthy) = verdicts.record(result.is_ok()) {
        match &result {
            Ok(()) => tracing::info!("service {} is healthy", config.service),
            Err(reason) => tracing::warn!("service {} is unhealthy: {reason}", config.service),
        }
        node.set_state(NodeState { healthy, draining: false, weight: config.weight, tags: config.tags.clone() });
    }
}

fn forward(child: &Option<Supervisor>, sig: i32) {
    if let Some(c) = child {
        c.signal(sig);
    }
}

async fn exited(child: &mut Option<Supervisor>) -> std::process::ExitStatus {
    match child {
        Some(c) => c.exited().await,
        None => std::future::pending().await,
    }
}
