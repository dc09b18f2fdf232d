//! `shoal agent`: runs beside a backend's app, joins the cluster and advertises the app's address so the
//! proxies route to it; optionally supervises the app (`-- CMD ARGS`). On SIGTERM/SIGINT it leaves the
//! cluster, then stops the app, and exits with the app's status.

mod supervise;

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::cluster::{self, Announce, Role};
use crate::config::AgentConfig;
use supervise::Supervisor;

/// How long the app gets to stop after SIGTERM before it is killed.
const CHILD_GRACE: Duration = Duration::from_secs(10);

/// Runs until told to stop; returns the process exit code.
pub fn run(config: AgentConfig) -> std::io::Result<u8> {
    let node = cluster::start(
        &config.cluster,
        Announce {
            role: Role::Backend,
            service: Some(config.service),
            weight: config.weight,
            name: config.name.clone(),
        },
        Box::new(|members| tracing::debug!("{} other members", members.len())),
    )?;
    tracing::info!("agent for {} running", config.service);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut child =
        (!config.command.is_empty()).then(|| runtime.block_on(async { Supervisor::start(config.command.clone()) }));
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => forward(&child, libc::SIGHUP),
                _ = usr1.recv() => forward(&child, libc::SIGUSR1),
                _ = usr2.recv() => forward(&child, libc::SIGUSR2),
                status = exited(&mut child) => {
                    if let Some(c) = child.as_mut() {
                        c.restart(status).await;
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    tracing::info!("stopping: leaving the cluster");
    node.leave(Duration::from_secs(2));
    let status = match child.as_mut() {
        Some(c) => runtime.block_on(c.stop(CHILD_GRACE)),
        None => None,
    };
    Ok(status.map_or(0, supervise::exit_code))
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
