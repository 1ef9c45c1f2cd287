//! Open-loop latency at a fixed offered rate, for `benches/open-loop.sh`: the lab's generator
//! ([`fulcrum_lab::loadgen`]: Poisson arrivals, each sent at its scheduled instant, latency
//! measured from that instant) pointed at any HTTP/1.1 server, on a single-threaded runtime so
//! it can be pinned to one core.
//!
//! Usage: openloop TARGET_ADDR RATE_RPS DURATION_S [WARMUP_S] [SEED]
//!
//! Connections are opened on demand, one for every request that finds none idle, unless
//! `OPENLOOP_CONNECTIONS=N` caps them (requests beyond wait for one, their latency still counted
//! from their scheduled instant, as in wrk2).
//!
//! With `OPENLOOP_RECORDS=FILE` in the environment it also writes every request's scheduled
//! send time, latency and outcome to FILE as CSV.
//!
//! Prints one line of `key=value` pairs: the offered rate, requests sent and measured (arrivals
//! after warm-up), the achieved rate (measured requests over the time from the end of warm-up
//! to the last answer), errors, and the p50 / p99 / p99.9 / max latency in microseconds.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_lab::loadgen::{self, LoadGenConfig, LoadStats};
use fulcrum_report::PolicyResult;
use fulcrum_testbed::scenario::LabClock;

/// After the last arrival, outstanding requests get this long before they count as errors.
const DRAIN: Duration = Duration::from_secs(5);

fn usage() -> ExitCode {
    eprintln!("usage: openloop TARGET_ADDR RATE_RPS DURATION_S [WARMUP_S] [SEED]");
    ExitCode::from(2)
}

/// The offered load as the scenario parser builds it, so every `[load]` default applies.
fn load(rate: f64, duration_s: f64) -> anyhow::Result<fulcrum_scenario::Load> {
    let source = format!(
        "name = \"openloop\"\nduration_s = {duration_s:?}\n[load]\nrate_rps = {rate:?}\n\
         [[backends]]\nname = \"target\"\nconcurrency = 1\nservice_ms = 1.0\n"
    );
    match fulcrum_scenario::parse_scenario(&source, "openloop") {
        Ok((scenario, _)) => Ok(scenario.load),
        Err(d) => anyhow::bail!("invalid rate or duration: {d}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(3..=5).contains(&args.len()) {
        return usage();
    }
    let (Ok(target), Ok(rate), Ok(duration_s)) = (
        args[0].parse::<SocketAddr>(),
        args[1].parse::<f64>(),
        args[2].parse::<f64>(),
    ) else {
        return usage();
    };
    let warmup_s = match args.get(3).map(|s| s.parse::<f64>()) {
        None => 0.0,
        Some(Ok(w)) if (0.0..duration_s).contains(&w) => w,
        Some(_) => return usage(),
    };
    let seed = match args.get(4).map(|s| s.parse::<u64>()) {
        None => 1,
        Some(Ok(s)) => s,
        Some(Err(_)) => return usage(),
    };
    let load = match load(rate, duration_s) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("openloop: {e:#}");
            return ExitCode::from(2);
        }
    };
    let max_connections = match std::env::var("OPENLOOP_CONNECTIONS") {
        Err(_) => None,
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!(
                    "openloop: OPENLOOP_CONNECTIONS must be a whole number above 0, got {v:?}"
                );
                return ExitCode::from(2);
            }
        },
    };
    // The generator's timer thread inherits this thread's timer slack: lower it from the
    // default 50 µs, so sends leave closer to their scheduled instants (best effort).
    let _ = std::fs::write("/proc/self/timerslack_ns", "1");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("openloop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let records = runtime.block_on(async {
        let cfg = LoadGenConfig {
            target,
            load,
            duration_s,
            clock: LabClock::new(1.0),
            backend_names: Vec::new(),
            seed,
            drain_timeout: DRAIN,
            max_connections,
        };
        loadgen::run(&cfg, Arc::new(LoadStats::default())).await
    });
    let result = PolicyResult::from_records("openloop", &records, &[], warmup_s, duration_s);
    let last_answer_s = records
        .iter()
        .filter(|r| r.arrival_s >= warmup_s)
        .map(|r| r.arrival_s + r.latency_ms / 1000.0)
        .fold(warmup_s, f64::max);
    let max_ms = records
        .iter()
        .filter(|r| r.arrival_s >= warmup_s)
        .map(|r| r.latency_ms)
        .fold(0.0, f64::max);
    if let Some(path) = std::env::var_os("OPENLOOP_RECORDS") {
        // Every request's scheduled send and latency, to see when the slow ones happened.
        let mut out = String::from("arrival_s,latency_ms,ok\n");
        for r in &records {
            out.push_str(&format!(
                "{:.6},{:.3},{}\n",
                r.arrival_s, r.latency_ms, r.ok
            ));
        }
        if let Err(e) = std::fs::write(&path, out) {
            eprintln!("openloop: cannot write {}: {e}", path.to_string_lossy());
        }
    }
    let achieved = result.requests as f64 / (last_answer_s - warmup_s).max(f64::EPSILON);
    println!(
        "offered_rps={rate} sent={} measured={} achieved_rps={achieved:.0} errors={} \
         p50_us={:.0} p99_us={:.0} p999_us={:.0} max_us={:.0}",
        records.len(),
        result.requests,
        result.errors,
        result.p50_ms * 1000.0,
        result.p99_ms * 1000.0,
        result.p999_ms * 1000.0,
        max_ms * 1000.0,
    );
    ExitCode::SUCCESS
}
