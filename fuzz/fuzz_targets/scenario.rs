//! The scenario reader on arbitrary text: it never panics and its diagnostics render.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|source: &str| {
    match fulcrum_scenario::parse_scenario(source, "fuzz.toml") {
        Ok((scenario, warnings)) => {
            for w in &warnings {
                let _ = w.to_string();
            }
            let _ = format!("{scenario:?}");
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
