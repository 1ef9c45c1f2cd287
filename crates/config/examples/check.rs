//! Validate configuration files and print every diagnostic.
//!
//! Usage: `cargo run -p fulcrum-config --example check -- FILE...`
//! (without arguments the embedded default configuration is checked).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let results = if files.is_empty() {
        vec![fulcrum_config::parse(
            fulcrum_config::DEFAULT_CONFIG,
            fulcrum_config::DEFAULT_CONFIG_NAME,
        )]
    } else {
        files
            .iter()
            .map(|f| fulcrum_config::load(Path::new(f)))
            .collect()
    };
    let mut failed = false;
    for result in results {
        match result {
            Ok((_, warnings)) => {
                for w in &warnings {
                    println!("{w}");
                }
                println!("0 errors, {} warning(s): ok", warnings.len());
            }
            Err(diags) => {
                println!("{diags}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(fulcrum_config::EXIT_CONFIG as u8)
    } else {
        ExitCode::SUCCESS
    }
}
