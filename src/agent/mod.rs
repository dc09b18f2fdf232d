//! `shoal agent`: runs beside a backend's app, joins the cluster and advertises the app's address, so the
//! proxies route to it; on SIGTERM/SIGINT it leaves the cluster before exiting.

use std::time::Duration;

use crate::cluster::{self, Announce, Role};
use crate::config::AgentConfig;

pub fn run(config: AgentConfig) -> std::io::Result<()> {
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
    crate::proxy::wait_for_stop_signal()?;
    node.leave(Duration::from_secs(2));
    Ok(())
}
