//! The `shoal` command: parses the command line and hands over to the library.

use std::fmt::Display;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mimalloc::MiMalloc;
use shoal::config::{AgentConfig, Cli, Command, ProxyConfig};
use shoal::demo::{self, DemoConfig};
use shoal::logging;
use shoal::webapp::{self, WebappConfig};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| refuse(e));
    let unguarded =
        matches!(cli.command, Command::Proxy(_) | Command::Agent(_)).then(shoal::config::guard_secrets).flatten();
    match cli.command {
        Command::Proxy(_) => {
            shoal::signals::ignore_until_handled(&[libc::SIGHUP, libc::SIGUSR2]);
            shoal::memory::tune();
        }
        Command::Agent(_) => {
            shoal::signals::ignore_until_handled(&[libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGQUIT])
        }
        _ => {}
    }
    let diagnostics = logging::init_diagnostics();
    if let Some(why) = unguarded {
        tracing::warn!("{why}");
    }
    let (code, why) = run(cli, diagnostics.clone());
    // The last log lines are written before it exits (unless stderr is stuck), then why it stops.
    if let Some(sink) = diagnostics {
        sink.flush(Duration::from_secs(1));
    }
    if let Some(why) = why {
        logging::say(&mut io::stderr(), format_args!("{why}"));
    }
    code
}

/// Exits on a command-line error. A bad value that came from a `SHOAL_*` variable rather than the command
/// line is reported under the variable's name (clap would name only the flag).
fn refuse(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
            let flag = arg.split_whitespace().next().unwrap_or(arg);
            let on_command_line = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            let var = format!("SHOAL_{}", flag.trim_start_matches('-').to_ascii_uppercase().replace('-', "_"));
            if !on_command_line && std::env::var_os(&var).is_some() {
                let why = std::error::Error::source(&e).map_or_else(|| e.kind().to_string(), |s| s.to_string());
                logging::say(
                    &mut io::stderr(),
                    format_args!("shoal: configuration error: `{var}` (for {flag}): {why}"),
                );
                std::process::exit(2);
            }
        }
    }
    e.exit()
}

/// The exit code, and what to say on stderr last.
type Ended = (ExitCode, Option<String>);

fn run(cli: Cli, diagnostics: Option<logging::Sink>) -> Ended {
    match cli.command {
        Command::Proxy(args) => match ProxyConfig::load(&args) {
            Err(e) => config_error(e),
            Ok(config) if args.check => {
                if !config.tls_listen.is_empty() {
                    if let Err(e) = shoal::proxy::tls::Certificates::load(&config.tls_certs) {
                        return config_error(format!("`tls-cert`: {e}"));
                    }
                }
                logging::say(
                    &mut io::stdout(),
                    format_args!("configuration is valid:\n{}", config.as_flags().trim_end()),
                );
                (ExitCode::SUCCESS, None)
            }
            Ok(config) => {
                let pid_file = args.pid_file.clone();
                let reload: shoal::proxy::Reload =
                    Box::new(move || ProxyConfig::load(&args).map_err(|e| e.to_string()));
                finish(shoal::proxy::run(config, reload, pid_file, diagnostics))
            }
        },
        Command::Webapp(a) => finish(webapp::run(WebappConfig { listen: a.listen, name: a.name, tag: a.tag })),
        Command::Demo(a) => {
            if a.nodes == 0 || a.nodes > 64 {
                return config_error("`nodes`: must be 1 to 64");
            }
            if a.first_port as usize + a.nodes - 1 > u16::MAX as usize {
                return config_error(format!(
                    "`first-port`: {} nodes from port {} go past 65535",
                    a.nodes, a.first_port
                ));
            }
            finish(demo::run(DemoConfig {
                listen: a.listen,
                nodes: a.nodes,
                first_port: a.first_port,
                gossip_port: a.gossip_port,
                admin_port: a.admin_port,
                runtime_api_port: a.runtime_api_port,
            }))
        }
        Command::Members(args) => match shoal::admin::members::run(&args) {
            Ok(text) => {
                logging::say(&mut io::stdout(), format_args!("{}", text.trim_end()));
                (ExitCode::SUCCESS, None)
            }
            Err(e) => (ExitCode::from(1), Some(format!("shoal: {e}"))),
        },
        Command::Runtime(args) => match shoal::admin::runtime_client::run(&args) {
            Ok(answer) => {
                let mut out = io::stdout();
                let _ = out.write_all(&answer).and_then(|()| out.flush());
                (ExitCode::SUCCESS, None)
            }
            Err(e) => (ExitCode::from(1), Some(format!("shoal: {e}"))),
        },
        Command::Check(args) => match shoal::agent::check_once(args.url.0, &args.url.1, args.timeout) {
            Ok(()) => (ExitCode::SUCCESS, None),
            Err(why) => (ExitCode::from(1), Some(format!("shoal: check failed: {why}"))),
        },
        Command::Keygen => match shoal::cluster::seal::generate() {
            Ok(key) => {
                logging::say(&mut io::stdout(), format_args!("{key}"));
                (ExitCode::SUCCESS, None)
            }
            Err(e) => finish::<std::io::Error>(Err(e)),
        },
        Command::Agent(args) => match AgentConfig::load(&args) {
            Err(e) => config_error(e),
            Ok(config) => match shoal::agent::run(config, diagnostics) {
                Ok(code) => (ExitCode::from(code), None),
                Err(e) => finish::<std::io::Error>(Err(e)),
            },
        },
    }
}

fn config_error(e: impl Display) -> Ended {
    (ExitCode::from(2), Some(format!("shoal: configuration error: {e}")))
}

fn finish<E: Display>(result: Result<(), E>) -> Ended {
    match result {
        Ok(()) => (ExitCode::SUCCESS, None),
        Err(e) => (ExitCode::from(1), Some(format!("shoal: {e}"))),
    }
}
