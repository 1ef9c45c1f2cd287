//! The `fulcrum` command: run the proxy, check a configuration, or start the demo.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fulcrum_config::{Config, Diagnostic, EXIT_CONFIG};
use fulcrum_proxy::ConfigSource;

/// fulcrum: a Layer-7 load-balancing reverse proxy whose backend weights can be tuned live.
#[derive(Debug, Parser)]
#[command(name = "fulcrum", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file for the default `run` (the embedded default when omitted).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic (the default).
    Run,
    /// Validate a configuration, print every problem, exit 0 (valid) or 78 (invalid).
    Check,
    /// Start local demo backends on the configuration's backend addresses, then the proxy
    /// (the embedded default configuration unless `-c` is given).
    Demo,
}

/// Load the configuration (or the embedded default) and print warnings; errors exit 78.
fn load(path: Option<&PathBuf>) -> Result<(Config, ConfigSource), ExitCode> {
    let result = match path {
        Some(p) => fulcrum_config::load(p).map(|(c, w)| (c, w, ConfigSource::File(p.clone()))),
        None => fulcrum_config::parse(
            fulcrum_config::DEFAULT_CONFIG,
            fulcrum_config::DEFAULT_CONFIG_NAME,
        )
        .map(|(c, w)| (c, w, ConfigSource::Embedded)),
    };
    match result {
        Ok((config, warnings, source)) => {
            print_warnings(&warnings);
            Ok((config, source))
        }
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            if !diagnostics.to_string().ends_with('\n') {
                eprintln!();
            }
            Err(ExitCode::from(EXIT_CONFIG as u8))
        }
    }
}

fn print_warnings(warnings: &[Diagnostic]) {
    for w in warnings {
        eprintln!("{w}");
    }
}

fn run(config: Config, source: ConfigSource) -> ExitCode {
    match fulcrum_proxy::serve(config, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fulcrum: {e}");
            ExitCode::from(1)
        }
    }
}

fn demo(path: Option<&PathBuf>) -> ExitCode {
    let (config, source) = match load(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let mut addrs: Vec<std::net::SocketAddr> = config
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(|b| b.addr))
        .collect();
    addrs.dedup();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let backend_addrs = addrs.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("demo runtime");
        rt.block_on(async move {
            match fulcrum_testbed::serve_forever(&backend_addrs).await {
                Ok(servers) => {
                    let _ = ready_tx.send(Ok(()));
                    std::future::pending::<()>().await;
                    drop(servers);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    });
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("fulcrum demo: cannot start the demo backends on {addrs:?}: {e}");
            return ExitCode::from(1);
        }
        Err(_) => return ExitCode::from(1),
    }
    let listen = config.server.listen[0];
    eprintln!(
        "fulcrum demo: backends on {addrs:?}\n  try:    curl http://{listen}/\n  pools:  curl http://{}/api/pools\n  metrics: curl http://{}/metrics\n  stop:   Ctrl-C",
        config.admin.listen, config.admin.listen
    );
    run(config, source)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => match load(cli.config.as_ref()) {
            Ok((config, source)) => run(config, source),
            Err(code) => code,
        },
        Command::Check => match load(cli.config.as_ref()) {
            Ok((config, _)) => {
                let backends: usize = config.pools.iter().map(|p| p.backends.len()).sum();
                println!(
                    "{}: configuration is valid ({} routes, {} pools, {} backends)",
                    cli.config
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| fulcrum_config::DEFAULT_CONFIG_NAME.to_string()),
                    config.routes.len(),
                    config.pools.len(),
                    backends
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Demo => demo(cli.config.as_ref()),
    }
}
