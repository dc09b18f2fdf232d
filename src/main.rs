//! The `shoal` command: parses the command line and hands over to the library.

use std::fmt::Display;
use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use shoal::config::{AgentConfig, Cli, Command, ProxyConfig};
use shoal::demo::{self, DemoConfig};
use shoal::webapp::{self, WebappConfig};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_diagnostics();
    match cli.command {
        Command::Proxy(args) => match ProxyConfig::load(&args) {
            Err(e) => config_error(e),
            Ok(config) if args.check => {
                if !config.tls_listen.is_empty() {
                    if let Err(e) = shoal::proxy::tls::Certificates::load(&config.tls_certs) {
                        return config_error(format!("`tls-cert`: {e}"));
                    }
                }
                println!("configuration is valid:\n{config:#?}");
                ExitCode::SUCCESS
            }
            Ok(config) => {
                let pid_file = args.pid_file.clone();
                let reload: shoal::proxy::Reload =
                    Box::new(move || ProxyConfig::load(&args).map_err(|e| e.to_string()));
                finish(shoal::proxy::run(config, reload, pid_file))
            }
        },
        Command::Webapp(a) => finish(webapp::run(WebappConfig { listen: a.listen, name: a.name, tag: a.tag })),
        Command::Demo(a) => {
            if a.nodes == 0 || a.nodes > 64 {
                return config_error("`nodes`: must be 1 to 64");
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
        Command::Keygen => match shoal::cluster::seal::generate() {
            Ok(key) => {
                println!("{key}");
                ExitCode::SUCCESS
            }
            Err(e) => finish::<std::io::Error>(Err(e)),
        },
        Command::Agent(args) => match AgentConfig::load(&args) {
            Err(e) => config_error(e),
            Ok(config) => match shoal::agent::run(config) {
                Ok(code) => ExitCode::from(code),
                Err(e) => finish::<std::io::Error>(Err(e)),
            },
        },
    }
}

fn config_error(e: impl Display) -> ExitCode {
    eprintln!("shoal: configuration error: {e}");
    ExitCode::from(2)
}

fn finish<E: Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e}");
            ExitCode::from(1)
        }
    }
}

/// Diagnostics go to stderr (stdout carries the access log); `SHOAL_LOG` sets the filter, `info` by default.
fn init_diagnostics() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
