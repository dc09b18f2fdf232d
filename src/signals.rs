//! SIGTERM/SIGINT handling that is installed before a command starts its work and awaited later: a signal that
//! arrives in between must start a graceful stop, not take the default action and kill the process.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers. Needs a tokio runtime context (any runtime may await them later).
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the first SIGTERM or SIGINT since `install`.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Installs the handlers on a small runtime of its own and returns a blocking waiter, for commands whose
/// main thread has no runtime.
pub struct BlockingStop {
    runtime: tokio::runtime::Runtime,
    signals: StopSignals,
}

impl BlockingStop {
    pub fn install() -> std::io::Result<BlockingStop> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let signals = runtime.block_on(async { StopSignals::install() })?;
        Ok(BlockingStop { runtime, signals })
    }

    /// Blocks until SIGTERM or SIGINT.
    pub fn wait(mut self) {
        let BlockingStop { runtime, signals } = &mut self;
        runtime.block_on(signals.recv());
    }
}
