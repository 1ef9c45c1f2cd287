//! The configuration reader on arbitrary text: it never panics, its diagnostics render, and a
//! configuration it accepts is written back (`Config::to_toml`) as one it reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|source: &str| {
    match fulcrum_config::parse(source, "fuzz.toml") {
        Ok((config, warnings)) => {
            for w in &warnings {
                let _ = w.to_string();
            }
            let written = config.to_toml();
            match fulcrum_config::parse(&written, "written.toml") {
                Ok((again, _)) => assert_eq!(again, config, "written back as:\n{written}"),
                Err(e) => panic!("its own output is refused:\n{e}\n{written}"),
            }
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
