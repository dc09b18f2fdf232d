//! `shoal agent`: runs beside a backend's app, joins the cluster and advertises the app's address so the
//! proxies route to it; optionally supervises the app (`-- CMD ARGS`). On SIGTERM/SIGINT it leaves the
//! cluster, then stops the app, and exits with the app's status.

mod capacity;
pub mod health;
mod orphans;
mod supervise;
pub mod user;

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cluster::{self, Announce, Member, Membership, NodeState, Role};
use crate::config::AgentConfig;
use crate::signals::StopSignals;
use capacity::{Admin, Report};
use health::Verdicts;
use orphans::Orphans;
use supervise::{Event, Supervisor};

/// An agent needs nothing from membership but a debug line.
struct Quiet;

impl Membership for Quiet {
    fn changed(&mut self, members: &[Member]) {
        tracing::debug!("{} other members", members.len());
    }
}

/// Runs until told to stop; returns the process exit code.
/// The signals an agent handles, installed before anything starts: until then a SIGHUP or SIGTERM would take
/// the default action and kill the agent (and, through PR_SET_PDEATHSIG, its app).
struct Signals {
    stop: StopSignals,
    /// SIGQUIT stops the agent as SIGTERM does: an image whose `STOPSIGNAL` is SIGQUIT (nginx's) is stopped
    /// gracefully, rather than ignored by a PID 1 without a handler until Docker's SIGKILL.
    quit: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            stop: StopSignals::install()?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// `diagnostics`: the log's writer, flushed before the app is stopped, so that what the agent said (the node
/// left) comes before what the app says as it stops when both share a stderr (a container's log).
pub fn run(config: AgentConfig, diagnostics: Option<crate::logging::Sink>) -> std::io::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut signals = runtime.block_on(async { Signals::install() })?;
    let node = cluster::start(
        &config.cluster,
        Announce {
            role: Role::Backend,
            service: Some(config.service),
            weight: config.weight,
            // Not routed before a state says healthy: a health check's, or the supervised app's port accepting.
            checked: config.check.is_some() || !config.command.is_empty(),
            name: config.name.clone(),
            tags: config.tags.clone(),
        },
        Box::new(Quiet),
        cluster::Takeover::default(),
    )?;
    tracing::info!("agent for {} running", config.service);
    let mut child = (!config.command.is_empty())
        .then(|| runtime.block_on(async { Supervisor::start(config.command.clone(), config.app_user) }));
    // A local set: the check tasks are not Send, and go when the loop ends (their commands killed with them).
    // The signal that stopped the agent stops the app: SIGQUIT is nginx's graceful stop, SIGTERM its fast one.
    let stop_signal = tokio::task::LocalSet::new().block_on(&runtime, async {
        let mut verdicts = config.check.as_ref().map(|c| Verdicts::new(c.rise, c.fall));
        let mut next_check = tokio::time::Instant::now();
        let mut next_agent_check = tokio::time::Instant::now();
        // Without a health check, a supervised app is ready once its port accepts a connection (HAProxy's
        // plain `check`), probed after every start, and not ready from its exit on.
        let follow_app = config.check.is_none() && child.is_some();
        let mut said =
            Said { healthy: config.check.is_none(), ready: !follow_app, report: Report::default(), failing: false };
        let (mut next_ready_probe, mut ready_probing) = (tokio::time::Instant::now(), false);
        // Checks run as tasks of their own and report here: one whose app hangs takes up to its interval,
        // and the loop must meanwhile answer signals and the app's exit (a SIGTERM waited up to 2 s a check).
        let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel::<Checked>();
        let (mut checking, mut agent_checking) = (false, false);
        let mut orphans = Orphans::default();
        let mut orphan_scan = tokio::time::interval(orphans::SCAN_EVERY);
        // Scans missed while a check held the loop are not made up back to back: a zombie must have been one
        // for a whole interval before it is reaped.
        orphan_scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = signals.stop.recv() => break libc::SIGTERM,
                _ = signals.quit.recv() => break libc::SIGQUIT,
                _ = signals.hup.recv() => forward(&child, libc::SIGHUP),
                _ = signals.usr1.recv() => forward(&child, libc::SIGUSR1),
                _ = signals.usr2.recv() => forward(&child, libc::SIGUSR2),
                event = supervised(&mut child) => {
                    if let Some(c) = child.as_mut() {
                        match event {
                            Event::Exited(status) => c.exited_with(status),
                            Event::Due => c.restart(),
                        }
                        let before = said.state(&config);
                        if c.pid().is_none() {
                            // The app is down: out of rotation now, not when the checks notice (`fall` intervals
                            // later); with a health check, back after its first pass once the app runs again.
                            if follow_app {
                                said.ready = false;
                            }
                            if let (Some(check), Some(v)) = (&config.check, verdicts.as_mut()) {
                                *v = Verdicts::new(check.rise, check.fall);
                                said.healthy = false;
                            }
                        }
                        if said.state(&config) != before {
                            tracing::info!("service {} is down with its app: out of rotation", config.service);
                            node.set_state(said.state(&config));
                        }
                    }
                }
                _ = orphan_scan.tick(), if Orphans::needed() => {
                    let reaped = orphans.reap(child.as_ref().and_then(Supervisor::pid));
                    if reaped > 0 {
                        tracing::debug!("reaped {reaped} orphaned processes");
                    }
                }
                _ = tokio::time::sleep_until(next_check), if config.check.is_some() && !checking => {
                    let check = config.check.clone().expect("guarded");
                    next_check += check.interval;
                    let (service, reports) = (config.service, reports.clone());
                    checking = true;
                    tokio::task::spawn_local(async move {
                        let _ = reports.send(Checked::Health(health::check(service, &check).await));
                    });
                }
                _ = tokio::time::sleep_until(next_agent_check), if config.agent_check.is_some() && !agent_checking => {
                    next_agent_check += config.agent_inter;
                    let (source, limit) = (config.agent_check.clone().expect("guarded"), config.agent_inter);
                    let reports = reports.clone();
                    agent_checking = true;
                    tokio::task::spawn_local(async move {
                        let answer = capacity::ask(&source, limit).await.and_then(|line| capacity::parse(&line));
                        let _ = reports.send(Checked::Agent(answer));
                    });
                }
                _ = tokio::time::sleep_until(next_ready_probe),
                    if follow_app && !said.ready && !ready_probing && child.as_ref().is_some_and(|c| c.pid().is_some()) =>
                {
                    next_ready_probe = tokio::time::Instant::now() + READY_PROBE_EVERY;
                    let (service, reports) = (config.service, reports.clone());
                    ready_probing = true;
                    tokio::task::spawn_local(async move {
                        let connect = tokio::net::TcpStream::connect(service);
                        let accepted = matches!(tokio::time::timeout(READY_PROBE_EVERY, connect).await, Ok(Ok(_)));
                        let _ = reports.send(Checked::Ready(accepted));
                    });
                }
                Some(checked) = reported.recv() => {
                    let changed = match checked {
                        Checked::Health(result) => {
                            checking = false;
                            // Begun while the app ran, or answered by something else on its port: not this run's.
                            let stopped = child.as_ref().is_some_and(|c| c.pid().is_none());
                            let result = if stopped { Err("the app is not running".into()) } else { result };
                            let verdicts = verdicts.as_mut().expect("with check");
                            verdict(&config, result, verdicts).map(|healthy| said.healthy = healthy).is_some()
                        }
                        Checked::Agent(answer) => {
                            agent_checking = false;
                            said.agent_check(config.agent_check.as_deref().unwrap_or_default(), answer)
                        }
                        Checked::Ready(accepted) => {
                            ready_probing = false;
                            // Not if it exited meanwhile: whatever accepted was not this run of the app.
                            let running = child.as_ref().is_some_and(|c| c.pid().is_some());
                            if accepted && running {
                                tracing::info!("service {} accepts connections: ready", config.service);
                            }
                            let was = said.ready;
                            said.ready = accepted && running;
                            was != said.ready
                        }
                    };
                    if changed {
                        node.set_state(said.state(&config));
                    }
                }
            }
        }
    });
    tracing::info!("stopping: draining before leaving the cluster");
    let drained = node.drain(config.drain_timeout);
    let _ = runtime.block_on(drained);
    node.leave(Duration::from_secs(2));
    if let Some(log) = &diagnostics {
        log.flush(Duration::from_secs(1));
    }
    let status = match child.as_mut() {
        Some(c) => runtime.block_on(c.stop(config.stop_timeout, stop_signal)),
        None => None,
    };
    Ok(status.map_or(0, supervise::exit_code))
}

/// `shoal check`: one check of `service` as the agent makes it (GET `path`, a 2xx or 3xx within `limit`).
pub fn check_once(service: std::net::SocketAddr, path: &str, limit: Duration) -> Result<(), String> {
    let config = health::CheckConfig {
        method: "GET".into(),
        path: path.into(),
        interval: limit,
        rise: 1,
        fall: 1,
        expect: (200, 399),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(health::check(service, &config))
}

/// What a check task reports.
enum Checked {
    Health(Result<(), String>),
    Agent(Result<Report, String>),
    /// Whether the supervised app's port accepted a connection.
    Ready(bool),
}

/// How often a supervised app's port is tried after a start, when there is no health check.
const READY_PROBE_EVERY: Duration = Duration::from_millis(200);

/// Records a health check's result; the new verdict when it changes.
fn verdict(config: &AgentConfig, result: Result<(), String>, verdicts: &mut Verdicts) -> Option<bool> {
    if let Err(reason) = &result {
        tracing::debug!("health check of {} failed: {reason}", config.service);
    }
    let healthy = verdicts.record(result.is_ok())?;
    match &result {
        Ok(()) => tracing::info!("service {} is healthy", config.service),
        Err(reason) => tracing::warn!("service {} is unhealthy: {reason}", config.service),
    }
    Some(healthy)
}

/// What the agent says of its node: the health check's verdict and the agent check's report together.
struct Said {
    healthy: bool,
    /// The supervised app runs and its port accepts connections (or there is no app, or a health check says
    /// more).
    ready: bool,
    report: Report,
    /// The agent check fails: the report is set aside (logged once per failing spell).
    failing: bool,
}

impl Said {
    fn state(&self, config: &AgentConfig) -> NodeState {
        let percent = u64::from(self.report.percent.unwrap_or(100));
        NodeState {
            healthy: self.healthy && self.ready && self.report.up != Some(false),
            draining: self.report.admin == Some(Admin::Drain),
            maint: self.report.admin == Some(Admin::Maint),
            weight: (u64::from(config.weight) * percent / 100).min(u64::from(u16::MAX)) as u16,
            tags: config.tags.clone(),
        }
    }

    /// Takes what the app answered `source`; true when what it says changed. A failing check falls back to
    /// the configured weight and state, with a log line.
    fn agent_check(&mut self, source: &str, answer: Result<Report, String>) -> bool {
        let report = match answer {
            Ok(report) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("agent check answers again");
                }
                report.over(self.report)
            }
            Err(why) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!("agent check {source:?} failed ({why}): back to the configured weight and state");
                }
                Report::default()
            }
        };
        if report == self.report {
            return false;
        }
        tracing::info!("agent check: {report:?}");
        self.report = report;
        true
    }
}

fn forward(child: &Option<Supervisor>, sig: i32) {
    if let Some(c) = child {
        c.signal(sig);
    }
}

async fn supervised(child: &mut Option<Supervisor>) -> Event {
    match child {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
