//! Where log lines leave the process: one writer thread per sink (stdout for the access log, stderr for
//! diagnostics), fed over a bounded queue.
//!
//! A thread that logs never waits on the sink and never dies of it: when the queue is full (a slow log
//! shipper) the lines are dropped and counted; when the sink fails (its reader went away: EPIPE) the writer
//! counts the lost lines and keeps draining, so the process goes on serving with its logs going nowhere, as
//! HAProxy does with a dead syslog. Nothing here panics on a write error, unlike `println!`/`eprintln!`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Batches waiting for the writer; beyond this, lines are dropped.
const QUEUE: usize = 1024;

/// Lines lost on the way out, by cause.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// The queue was full: the sink was slower than the lines came.
    pub dropped: AtomicU64,
    /// Writing failed (a closed pipe, a full disk).
    pub failed: AtomicU64,
}

impl SinkStats {
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

enum Message {
    Lines(Vec<u8>),
    /// Answered once everything queued before it was written (or failed).
    Flush(SyncSender<()>),
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Message>,
    stats: Arc<SinkStats>,
}

impl Sink {
    /// Starts the writer thread; it ends once every clone of the `Sink` is dropped and the queue is drained.
    pub fn start<W: Write + Send + 'static>(name: &str, out: W) -> io::Result<(Sink, JoinHandle<()>)> {
        let (tx, rx) = sync_channel(QUEUE);
        let stats = Arc::new(SinkStats::default());
        let writer_stats = stats.clone();
        let handle = std::thread::Builder::new().name(name.into()).spawn(move || write(rx, out, &writer_stats))?;
        Ok((Sink { tx, stats }, handle))
    }

    /// Queues whole lines (one or many, each ending in `\n`).
    pub fn send(&self, lines: Vec<u8>) {
        if let Err(TrySendError::Full(Message::Lines(lost)) | TrySendError::Disconnected(Message::Lines(lost))) =
            self.tx.try_send(Message::Lines(lines))
        {
            self.stats.dropped.fetch_add(count_lines(&lost), Ordering::Relaxed);
        }
    }

    /// Waits, at most `limit`, until what was queued so far has been written: for the last lines before exit.
    /// Queueing the request is bounded too: a sink nobody reads (a stuck pipe) keeps the queue full.
    pub fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (ack, done) = sync_channel(1);
        let mut marker = Message::Flush(ack);
        loop {
            match self.tx.try_send(marker) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    marker = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }
}

fn write<W: Write>(rx: Receiver<Message>, mut out: W, stats: &SinkStats) {
    for message in rx {
        match message {
            Message::Lines(lines) => {
                if out.write_all(&lines).and_then(|()| out.flush()).is_err() {
                    stats.failed.fetch_add(count_lines(&lines), Ordering::Relaxed);
                }
            }
            Message::Flush(ack) => {
                let _ = out.flush();
                let _ = ack.try_send(());
            }
        }
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count().max(1) as u64
}

/// Diagnostics (`tracing`) on stderr through a [`Sink`]; `SHOAL_LOG` sets the filter, `info` by default.
/// The returned sink flushes the last lines before exit.
pub fn init_diagnostics() -> Option<Sink> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let sink = Sink::start("shoal-diag", io::stderr()).ok().map(|(sink, _thread)| sink);
    let writer = Diagnostics(sink.clone());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        .log_internal_errors(false)
        .init();
    sink
}

/// tracing's writer: each event is one `write_all` of a whole line, handed to the sink as it is.
#[derive(Clone)]
struct Diagnostics(Option<Sink>);

impl Write for Diagnostics {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Some(sink) => sink.send(buf.to_vec()),
            // No writer thread could be started: write in place, errors ignored.
            None => drop(io::stderr().write_all(buf)),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Diagnostics {
    type Writer = Diagnostics;

    fn make_writer(&'a self) -> Diagnostics {
        self.clone()
    }
}

/// `println!` that cannot panic: for the few lines written before (or instead of) the log sinks.
pub fn say(out: &mut dyn Write, text: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(text).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose reader is gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_sink_counts_lost_lines_and_keeps_draining() {
        let (sink, handle) = Sink::start("test-closed", Closed).unwrap();
        sink.send(b"one\ntwo\n".to_vec());
        sink.send(b"three\n".to_vec());
        sink.flush(Duration::from_secs(5));
        assert_eq!(sink.stats().failed(), 3);
        let stats = sink.stats().clone();
        drop(sink);
        handle.join().unwrap();
        assert_eq!(stats.dropped(), 0);
    }

    /// A sink that blocks until told to go on.
    struct Stuck(Receiver<()>, Vec<u8>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_drops_instead_of_blocking() {
        let (go, wait) = sync_channel(0);
        let (sink, _handle) = Sink::start("test-stuck", Stuck(wait, Vec::new())).unwrap();
        for _ in 0..QUEUE + 10 {
            sink.send(b"line\n".to_vec());
        }
        // The writer holds one batch and the queue the next QUEUE: what is beyond is dropped, and `send` never
        // waited (the test would hang otherwise).
        assert!(sink.stats().dropped() >= 9, "dropped {}", sink.stats().dropped());
        drop(go);
    }
}
