//! Reading a scenario file: every problem is reported at once, located and explained like the
//! proxy configuration's diagnostics, and `count` is expanded into named copies.

use std::ops::Range;
use std::path::Path;

use toml::de::DeValue;

use fulcrum_diagnostics::reader::{
    as_int, as_str, as_table, number, type_error, Ctx, Table, Value,
};
use fulcrum_diagnostics::{load_with, suggest, Diagnostic, Diagnostics};

use crate::format::{
    Autoscale, BackendEvent, Burst, Diurnal, Load, Scenario, ScenarioBackend, Slo,
};

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "seed",
    "duration_s",
    "warmup_s",
    "load",
    "backends",
    "autoscale",
    "slo",
];
const LOAD_KEYS: &[&str] = &[
    "rate_rps",
    "steps",
    "non_idempotent_fraction",
    "diurnal",
    "bursts",
    "trace",
    "trace_scale",
];
const DIURNAL_KEYS: &[&str] = &["period_s", "amplitude"];
const AUTOSCALE_KEYS: &[&str] = &[
    "backend",
    "min_backends",
    "max_backends",
    "provision_s",
    "target_utilization",
];
const SLO_KEYS: &[&str] = &["p99_ms", "window_s"];
const BACKEND_KEYS: &[&str] = &[
    "name",
    "count",
    "concurrency",
    "service_ms",
    "service_jitter",
    "error_rate",
    "error_ms",
    "weight",
    "events",
];
const EVENT_KEYS: &[&str] = &["at_s", "until_s", "only", "slowdown", "error_rate", "down"];

/// Parse and validate a scenario; Ok carries warnings.
///
/// `file_name` is only used to label diagnostics. On failure every error found is
/// returned, along with any warnings.
pub fn parse_scenario(
    source: &str,
    file_name: &str,
) -> Result<(Scenario, Vec<Diagnostic>), Diagnostics> {
    let mut ctx = Ctx::new(source, file_name);
    let Some(doc) = ctx.parse_document(source) else {
        return Err(ctx.finish());
    };
    let root = Table::new(doc.get_ref(), String::new(), None);
    root.check_keys(&mut ctx, TOP_KEYS);

    let name = match root.get("name") {
        None => {
            ctx.error(
                None,
                "name",
                "missing required key `name`: a short identifier used in reports, e.g. name = \"one-slow-backend\"",
            );
            String::new()
        }
        Some(v) => identifier(&mut ctx, v, "name", "scenario name").unwrap_or_default(),
    };
    let description = match root.get("description") {
        None => String::new(),
        Some(v) => as_str(&mut ctx, v, "description")
            .unwrap_or_default()
            .to_string(),
    };
    let seed = match root.get("seed") {
        None => 1,
        Some(v) => match as_int(&mut ctx, v, "seed") {
            Some(n) if (0..=i128::from(u64::MAX)).contains(&n) => n as u64,
            Some(n) => {
                ctx.error(
                    Some(&v.span()),
                    "seed",
                    format!("seed must be a non-negative integer, got {n}"),
                );
                1
            }
            None => 1,
        },
    };
    let duration = match root.get("duration_s") {
        None => {
            ctx.error(
                None,
                "duration_s",
                "missing required key `duration_s`: the total length in seconds, warm-up included, e.g. duration_s = 120",
            );
            None
        }
        Some(v) => limited(&mut ctx, v, "duration_s", Limits::POSITIVE),
    };
    let warmup_s = match root.get("warmup_s") {
        None => 0.0,
        Some(v) => {
            let lim = match duration {
                Some(d) => Limits::below(d, "duration_s"),
                None => Limits::NON_NEGATIVE,
            };
            limited(&mut ctx, v, "warmup_s", lim).unwrap_or(0.0)
        }
    };
    let base = Path::new(file_name).parent().unwrap_or(Path::new(""));
    let (load, rate_spans) = read_load(&mut ctx, &root, duration, base);
    let drafts = read_backends(&mut ctx, &root, duration);
    let autoscale = read_autoscale(&mut ctx, &root, &drafts);
    let slo = read_slo(&mut ctx, &root, duration);
    let backends = expand(&mut ctx, drafts);

    let diags = ctx.finish();
    if !diags.errors.is_empty() {
        return Err(diags);
    }
    let scenario = Scenario {
        name,
        description,
        seed,
        duration_s: duration.unwrap_or_default(),
        warmup_s,
        load,
        backends,
        autoscale,
        slo,
    };
    let mut ctx = Ctx::new(source, file_name);
    ctx.warnings = diags.warnings;
    load_warnings(&mut ctx, &scenario, &rate_spans);
    Ok((scenario, ctx.finish().warnings))
}

/// Read the file at `path` and [`parse_scenario`] it; an unreadable file is a single diagnostic.
pub fn load_scenario(path: &Path) -> Result<(Scenario, Vec<Diagnostic>), Diagnostics> {
    load_with(path, "scenario", parse_scenario)
}

/// The accepted range of a number: a lower and an optional upper bound, each inclusive or not.
#[derive(Clone, Copy)]
struct Limits {
    min: f64,
    min_inclusive: bool,
    max: Option<(f64, bool, &'static str)>,
}

impl Limits {
    const POSITIVE: Limits = Limits {
        min: 0.0,
        min_inclusive: false,
        max: None,
    };
    const NON_NEGATIVE: Limits = Limits {
        min: 0.0,
        min_inclusive: true,
        max: None,
    };
    const FRACTION: Limits = Limits {
        min: 0.0,
        min_inclusive: true,
        max: Some((1.0, true, "")),
    };

    /// `0 <= x < bound`, where `bound` is the value of the key `name`.
    fn below(bound: f64, name: &'static str) -> Limits {
        Limits {
            min: 0.0,
            min_inclusive: true,
            max: Some((bound, false, name)),
        }
    }

    /// `0 <= x <= bound`, where `bound` is the value of the key `name`.
    fn up_to(bound: f64, name: &'static str) -> Limits {
        Limits {
            min: 0.0,
            min_inclusive: true,
            max: Some((bound, true, name)),
        }
    }

    fn contains(&self, x: f64) -> bool {
        let low = if self.min_inclusive {
            x >= self.min
        } else {
            x > self.min
        };
        let high = match self.max {
            None => true,
            Some((m, true, _)) => x <= m,
            Some((m, false, _)) => x < m,
        };
        low && high
    }

    fn describe(&self) -> String {
        let bound = |m: f64, name: &str| {
            if name.is_empty() {
                format!("{m}")
            } else {
                format!("{m} ({name})")
            }
        };
        match self.max {
            None if self.min_inclusive => format!(">= {}", self.min),
            None => format!("> {}", self.min),
            Some((m, true, name)) if self.min_inclusive => {
                format!("between {} and {}", self.min, bound(m, name))
            }
            Some((m, inclusive, name)) => format!(
                "{} {} and {} {}",
                if self.min_inclusive { ">=" } else { ">" },
                self.min,
                if inclusive { "<=" } else { "<" },
                bound(m, name)
            ),
        }
    }
}

/// The last segment of a key path, for messages: `backends[0].service_ms` -> `service_ms`.
fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// A number within `lim`; out-of-range values are reported and yield `None`.
fn limited(ctx: &mut Ctx<'_>, v: &Value<'_>, path: &str, lim: Limits) -> Option<f64> {
    let x = number(ctx, v, path)?;
    if lim.contains(x) {
        Some(x)
    } else {
        ctx.error(
            Some(&v.span()),
            path,
            format!("{} must be {}, got {x}", leaf(path), lim.describe()),
        );
        None
    }
}

/// An optional number key of `t` within `lim`, falling back to `default`.
fn opt_number(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, key: &str, default: f64, lim: Limits) -> f64 {
    match t.get(key) {
        None => default,
        Some(v) => limited(ctx, v, &t.child(key), lim).unwrap_or(default),
    }
}

/// A required number key of `t` within `lim`; `hint` completes the "missing" message.
fn req_number(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    key: &str,
    lim: Limits,
    hint: &str,
) -> Option<f64> {
    match t.get(key) {
        None => {
            ctx.error(
                t.span.as_ref(),
                &t.child(key),
                format!("missing required key `{key}`: {hint}"),
            );
            None
        }
        Some(v) => limited(ctx, v, &t.child(key), lim),
    }
}

/// An integer key of `t` bounded to `min..=max`; `None` when absent or invalid.
fn int_key(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, key: &str, min: i128, max: i128) -> Option<u32> {
    let v = t.get(key)?;
    let path = t.child(key);
    match as_int(ctx, v, &path) {
        Some(n) if (min..=max).contains(&n) => Some(n as u32),
        Some(n) => {
            ctx.error(
                Some(&v.span()),
                &path,
                format!("{key} must be between {min} and {max}, got {n}"),
            );
            None
        }
        None => None,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A string made only of letters, digits, '-' and '_'.
fn identifier(ctx: &mut Ctx<'_>, v: &Value<'_>, path: &str, what: &str) -> Option<String> {
    let s = as_str(ctx, v, path)?;
    if valid_name(s) {
        Some(s.to_string())
    } else {
        ctx.error(
            Some(&v.span()),
            path,
            format!("invalid {what} {s:?}: use only letters, digits, '-' and '_'"),
        );
        None
    }
}

/// Each rate of the load profile with where it was written, for warnings about overload.
type RateSpans = Vec<(f64, String, Range<usize>)>;

fn read_load(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    duration: Option<f64>,
    base: &Path,
) -> (Load, RateSpans) {
    let mut load = Load {
        rate_rps: 0.0,
        steps: Vec::new(),
        non_idempotent_fraction: 0.0,
        diurnal: None,
        bursts: Vec::new(),
    };
    let mut spans = Vec::new();
    let rate_hint = "the mean arrival rate in requests per second, e.g. rate_rps = 500";
    let Some(v) = root.get("load") else {
        ctx.error(
            None,
            "load.rate_rps",
            format!("missing required key `rate_rps` in a [load] table: {rate_hint}"),
        );
        return (load, spans);
    };
    let Some(t) = as_table(ctx, v, "load".into(), "a table ([load])") else {
        return (load, spans);
    };
    t.check_keys(ctx, LOAD_KEYS);
    load.non_idempotent_fraction =
        opt_number(ctx, &t, "non_idempotent_fraction", 0.0, Limits::FRACTION);
    load.diurnal = read_diurnal(ctx, &t);
    load.bursts = read_bursts(ctx, &t, duration);
    if t.get("trace").is_some() {
        read_trace(ctx, &t, duration, base, &mut load, &mut spans);
        return (load, spans);
    }
    if let Some(v) = t.get("trace_scale") {
        ctx.error(
            Some(&v.span()),
            "load.trace_scale",
            "trace_scale multiplies the rates of a `trace`, and [load] has none: give trace = \"FILE.csv\" or remove trace_scale",
        );
    }
    if let Some(r) = req_number(ctx, &t, "rate_rps", Limits::POSITIVE, rate_hint) {
        load.rate_rps = r;
        if let Some(v) = t.get("rate_rps") {
            spans.push((r, t.child("rate_rps"), v.span()));
        }
    }
    let Some(v) = t.get("steps") else {
        return (load, spans);
    };
    let shape = "an array of [at_s, rate_rps] pairs, e.g. steps = [[60, 900]]";
    let DeValue::Array(items) = v.get_ref() else {
        type_error(ctx, v, "load.steps", shape);
        return (load, spans);
    };
    if !items.is_empty()
        && items
            .iter()
            .all(|i| !matches!(i.get_ref(), DeValue::Array(_)))
    {
        let msg = format!(
            "expected {shape}, got an array of {} plain value(s)",
            items.len()
        );
        ctx.error(Some(&v.span()), "load.steps", msg);
        return (load, spans);
    }
    let mut previous: Option<(f64, String)> = None;
    for (i, item) in items.iter().enumerate() {
        let path = format!("load.steps[{i}]");
        let pair = match item.get_ref() {
            DeValue::Array(pair) if pair.len() == 2 => pair,
            _ => {
                ctx.error(
                    Some(&item.span()),
                    &path,
                    format!(
                        "expected an [at_s, rate_rps] pair, e.g. [60, 900], got {}",
                        describe_step(item.get_ref())
                    ),
                );
                continue;
            }
        };
        let (at_v, rate_v) = (&pair[0], &pair[1]);
        let at = number(ctx, at_v, &path).and_then(|at| {
            let lim = match duration {
                Some(d) => Limits::below(d, "duration_s"),
                None => Limits::NON_NEGATIVE,
            };
            if lim.contains(at) {
                Some(at)
            } else {
                ctx.error(
                    Some(&at_v.span()),
                    &path,
                    format!("step time at_s must be {}, got {at}", lim.describe()),
                );
                None
            }
        });
        let rate = number(ctx, rate_v, &path).and_then(|r| {
            if r > 0.0 {
                Some(r)
            } else {
                ctx.error(
                    Some(&rate_v.span()),
                    &path,
                    format!("step rate_rps must be > 0, got {r}"),
                );
                None
            }
        });
        if let Some(at) = at {
            if let Some((prev, prev_path)) = &previous {
                if at <= *prev {
                    ctx.error(
                        Some(&at_v.span()),
                        &path,
                        format!(
                            "step at_s {at} must be greater than {prev} of the previous step ({prev_path}); steps must be in strictly increasing time order"
                        ),
                    );
                }
            }
            previous = Some((at, path.clone()));
        }
        if let (Some(at), Some(rate)) = (at, rate) {
            load.steps.push((at, rate));
            spans.push((rate, path, rate_v.span()));
        }
    }
    (load, spans)
}

/// `load.trace = "FILE.csv"` (with `trace_scale`): the rate replayed from a series of rows
/// `t_s,rps` at a fixed step, as `fulcrum forecast --input` reads it and a pool's
/// `history_file` holds it. Each row's rate, times `trace_scale`, is in force from its time
/// (counted from the first row) for one step: the rows become `rate_rps` and `steps`.
fn read_trace(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    duration: Option<f64>,
    base: &Path,
    load: &mut Load,
    spans: &mut RateSpans,
) {
    for key in ["rate_rps", "steps"] {
        if let Some(v) = t.get(key) {
            ctx.error(
                Some(&v.span()),
                &t.child(key),
                format!(
                    "`{key}` cannot be given with `trace`: the trace gives the rate (trace_scale multiplies it)"
                ),
            );
        }
    }
    let scale = opt_number(ctx, t, "trace_scale", 1.0, Limits::POSITIVE);
    let Some(v) = t.get("trace") else {
        return;
    };
    let Some(name) = as_str(ctx, v, "load.trace") else {
        return;
    };
    if name.is_empty() {
        ctx.error(
            Some(&v.span()),
            "load.trace",
            "trace must name a CSV file of rows `t_s,rps`, e.g. trace = \"web-history.csv\"",
        );
        return;
    }
    let path = base.join(name);
    let series = match fulcrum_forecast::series::read_series(&path) {
        Ok(s) => s,
        Err(e) => {
            ctx.error(
                Some(&v.span()),
                "load.trace",
                format!("{e} (a trace is CSV rows `t_s,rps` at a fixed step; a relative path is taken from the scenario's directory)"),
            );
            return;
        }
    };
    let t0 = series.t_s[0];
    let covered = series.t_s[series.t_s.len() - 1] - t0 + series.step_s;
    if let Some(d) = duration {
        if d > covered * (1.0 + 1e-9) {
            ctx.error(
                Some(&v.span()),
                "load.trace",
                format!(
                    "{} covers {covered} s ({} rows of {} s) and duration_s is {d}: shorten duration_s or give a longer trace",
                    path.display(),
                    series.rps.len(),
                    series.step_s
                ),
            );
            return;
        }
    }
    load.rate_rps = series.rps[0] * scale;
    load.steps = series
        .t_s
        .iter()
        .zip(&series.rps)
        .skip(1)
        .map(|(at, r)| (at - t0, r * scale))
        .take_while(|(at, _)| duration.is_none_or(|d| *at < d))
        .collect();
    // One warning for the trace, at its highest rate, not one per row.
    let peak = load.steps.iter().map(|s| s.1).fold(load.rate_rps, f64::max);
    spans.push((peak, "load.trace".to_string(), v.span()));
}

/// `load.diurnal = { period_s, amplitude }`.
fn read_diurnal(ctx: &mut Ctx<'_>, load: &Table<'_, '_>) -> Option<Diurnal> {
    let v = load.get("diurnal")?;
    let t = as_table(
        ctx,
        v,
        load.child("diurnal"),
        "a table, e.g. diurnal = { period_s = 600, amplitude = 0.6 }",
    )?;
    t.check_keys(ctx, DIURNAL_KEYS);
    let period_s = req_number(
        ctx,
        &t,
        "period_s",
        Limits::POSITIVE,
        "the length of one cycle in seconds, e.g. period_s = 600",
    );
    let below_one = Limits {
        min: 0.0,
        min_inclusive: true,
        max: Some((1.0, false, "")),
    };
    let amplitude = req_number(
        ctx,
        &t,
        "amplitude",
        below_one,
        "the relative swing, 0 <= amplitude < 1, e.g. amplitude = 0.6",
    );
    Some(Diurnal {
        period_s: period_s?,
        amplitude: amplitude?,
    })
}

/// `load.bursts = [[at_s, duration_s, factor], ...]`.
fn read_bursts(ctx: &mut Ctx<'_>, load: &Table<'_, '_>, duration: Option<f64>) -> Vec<Burst> {
    let mut bursts = Vec::new();
    let Some(v) = load.get("bursts") else {
        return bursts;
    };
    let shape = "an array of [at_s, duration_s, factor] triples, e.g. bursts = [[300, 30, 1.8]]";
    let DeValue::Array(items) = v.get_ref() else {
        type_error(ctx, v, "load.bursts", shape);
        return bursts;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("load.bursts[{i}]");
        let triple = match item.get_ref() {
            DeValue::Array(t) if t.len() == 3 => t,
            other => {
                ctx.error(
                    Some(&item.span()),
                    &path,
                    format!(
                        "expected an [at_s, duration_s, factor] triple, e.g. [300, 30, 1.8], got {}",
                        describe_step(other)
                    ),
                );
                continue;
            }
        };
        let at_lim = match duration {
            Some(d) => Limits::below(d, "duration_s"),
            None => Limits::NON_NEGATIVE,
        };
        let mut field = |k: usize, what: &str, lim: Limits| {
            let x = number(ctx, &triple[k], &path)?;
            if lim.contains(x) {
                Some(x)
            } else {
                ctx.error(
                    Some(&triple[k].span()),
                    &path,
                    format!("burst {what} must be {}, got {x}", lim.describe()),
                );
                None
            }
        };
        let at = field(0, "at_s", at_lim);
        let len = field(1, "duration_s", Limits::POSITIVE);
        let factor = field(2, "factor", Limits::POSITIVE);
        if let (Some(at_s), Some(duration_s), Some(factor)) = (at, len, factor) {
            bursts.push(Burst {
                at_s,
                duration_s,
                factor,
            });
        }
    }
    bursts.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    bursts
}

/// `[autoscale]`: the backend entry must exist and its `count` lie within the bounds.
fn read_autoscale(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    drafts: &[BackendDraft],
) -> Option<Autoscale> {
    let v = root.get("autoscale")?;
    let t = as_table(ctx, v, "autoscale".into(), "a table ([autoscale])")?;
    t.check_keys(ctx, AUTOSCALE_KEYS);
    let Some(bv) = t.get("backend") else {
        ctx.error(
            t.span.as_ref(),
            "autoscale.backend",
            "missing required key `backend`: the [[backends]] entry whose count is scaled, e.g. backend = \"web\"",
        );
        return None;
    };
    let name = as_str(ctx, bv, "autoscale.backend")?.to_string();
    let mut first = 0usize;
    let mut found = None;
    for d in drafts {
        match &d.name {
            Some((n, _)) if *n == name => {
                found = Some(d.count);
                break;
            }
            _ => first += d.count as usize,
        }
    }
    let Some(initial) = found else {
        let names: Vec<&str> = drafts
            .iter()
            .filter_map(|d| d.name.as_ref().map(|n| n.0.as_str()))
            .collect();
        let mut msg = format!("no [[backends]] entry named {name:?}");
        if let Some(s) = suggest(&name, names.iter().copied()) {
            msg.push_str(&format!(" (did you mean {s:?}?)"));
        } else if !names.is_empty() {
            msg.push_str(&format!("; the backends are {}", names.join(", ")));
        }
        ctx.error(Some(&bv.span()), "autoscale.backend", msg);
        return None;
    };
    let min_backends = int_key(ctx, &t, "min_backends", 1, 1000).unwrap_or(1);
    let max_backends = int_key(ctx, &t, "max_backends", 1, 1000).unwrap_or(100);
    if min_backends > max_backends {
        let span = t.get("min_backends").map(|v| v.span());
        ctx.error(
            span.as_ref(),
            "autoscale.min_backends",
            format!("min_backends ({min_backends}) must not exceed max_backends ({max_backends})"),
        );
    } else if !(min_backends..=max_backends).contains(&initial) {
        ctx.error(
            Some(&bv.span()),
            "autoscale.backend",
            format!(
                "backend {name:?} starts with count = {initial}, outside min_backends..=max_backends ({min_backends}..={max_backends})"
            ),
        );
    }
    let provision_s = opt_number(ctx, &t, "provision_s", 60.0, Limits::NON_NEGATIVE);
    let util = Limits {
        min: 0.0,
        min_inclusive: false,
        max: Some((1.0, true, "")),
    };
    let target_utilization = opt_number(ctx, &t, "target_utilization", 0.7, util);
    Some(Autoscale {
        backend: name,
        first,
        initial,
        min_backends,
        max_backends,
        provision_s,
        target_utilization,
    })
}

/// `[slo]`: `p99_ms` is required, `window_s` defaults to 10.
fn read_slo(ctx: &mut Ctx<'_>, root: &Table<'_, '_>, duration: Option<f64>) -> Option<Slo> {
    let v = root.get("slo")?;
    let t = as_table(ctx, v, "slo".into(), "a table ([slo])")?;
    t.check_keys(ctx, SLO_KEYS);
    let p99_ms = req_number(
        ctx,
        &t,
        "p99_ms",
        Limits::POSITIVE,
        "the p99 latency a window must stay under, in ms, e.g. p99_ms = 120",
    );
    let window = match duration {
        Some(d) => Limits {
            min: 0.0,
            min_inclusive: false,
            max: Some((d, true, "duration_s")),
        },
        None => Limits::POSITIVE,
    };
    let window_s = opt_number(ctx, &t, "window_s", 10.0, window);
    Some(Slo {
        p99_ms: p99_ms?,
        window_s,
    })
}

fn describe_step(v: &DeValue<'_>) -> String {
    match v {
        DeValue::Array(a) => format!("an array of {} element(s)", a.len()),
        DeValue::Table(_) => "a table".to_string(),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::String(s) => format!("string {:?}", s.as_ref()),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
    }
}

/// A backend as written, before `count` expansion.
struct BackendDraft {
    path: String,
    name: Option<(String, Range<usize>)>,
    count: u32,
    template: ScenarioBackend,
    events: Vec<EventDraft>,
}

/// An event as written, with the names in `only` still unresolved.
struct EventDraft {
    event: BackendEvent,
    only: Option<Vec<(String, String, Range<usize>)>>,
}

fn read_backends(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    duration: Option<f64>,
) -> Vec<BackendDraft> {
    let required = "at least one backend is required, e.g. [[backends]] with name = \"b\", concurrency = 4 and service_ms = 10";
    let Some(v) = root.get("backends") else {
        ctx.error(None, "backends", required);
        return Vec::new();
    };
    let DeValue::Array(items) = v.get_ref() else {
        type_error(ctx, v, "backends", "an array of tables ([[backends]])");
        return Vec::new();
    };
    if items.is_empty() {
        ctx.error(Some(&v.span()), "backends", required);
    }
    let mut drafts = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("backends[{i}]");
        let Some(t) = as_table(ctx, item, path.clone(), "a table ([[backends]])") else {
            continue;
        };
        drafts.push(read_backend(ctx, &t, duration));
    }
    drafts
}

fn read_backend(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, duration: Option<f64>) -> BackendDraft {
    t.check_keys(ctx, BACKEND_KEYS);
    let name = match t.get("name") {
        None => {
            ctx.error(
                t.span.as_ref(),
                &t.child("name"),
                "missing required key `name`: the backend's name in reports, e.g. name = \"b\"",
            );
            None
        }
        Some(v) => identifier(ctx, v, &t.child("name"), "backend name").map(|n| (n, v.span())),
    };
    let count = int_key(ctx, t, "count", 1, 1000).unwrap_or(1);
    let concurrency = match t.get("concurrency") {
        None => {
            ctx.error(
                t.span.as_ref(),
                &t.child("concurrency"),
                "missing required key `concurrency`: requests served in parallel, between 1 and 10000, e.g. concurrency = 4",
            );
            1
        }
        Some(_) => int_key(ctx, t, "concurrency", 1, 10_000).unwrap_or(1),
    };
    let service_ms = req_number(
        ctx,
        t,
        "service_ms",
        Limits::POSITIVE,
        "the median service time in milliseconds, > 0, e.g. service_ms = 10.0",
    )
    .unwrap_or(1.0);
    let jitter = Limits {
        min: 0.0,
        min_inclusive: true,
        max: Some((3.0, true, "")),
    };
    let template = ScenarioBackend {
        name: String::new(),
        concurrency,
        service_ms,
        service_jitter: opt_number(ctx, t, "service_jitter", 0.0, jitter),
        error_rate: opt_number(ctx, t, "error_rate", 0.0, Limits::FRACTION),
        error_ms: opt_number(ctx, t, "error_ms", 0.5, Limits::NON_NEGATIVE),
        weight: int_key(ctx, t, "weight", 1, 10_000).unwrap_or(1),
        events: Vec::new(),
    };
    let mut events = Vec::new();
    if let Some(v) = t.get("events") {
        let path = t.child("events");
        match v.get_ref() {
            DeValue::Array(items) => {
                for (j, item) in items.iter().enumerate() {
                    let epath = format!("{path}[{j}]");
                    if let Some(et) = as_table(ctx, item, epath, "a table ([[backends.events]])") {
                        if let Some(e) = read_event(ctx, &et, duration) {
                            events.push(e);
                        }
                    }
                }
            }
            _ => type_error(ctx, v, &path, "an array of tables ([[backends.events]])"),
        }
    }
    BackendDraft {
        path: t.path.clone(),
        name,
        count,
        template,
        events,
    }
}

fn read_event(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, duration: Option<f64>) -> Option<EventDraft> {
    t.check_keys(ctx, EVENT_KEYS);
    let within = match duration {
        Some(d) => Limits::up_to(d, "duration_s"),
        None => Limits::NON_NEGATIVE,
    };
    let at = req_number(
        ctx,
        t,
        "at_s",
        within,
        "when the event starts, in seconds from the start of the run, e.g. at_s = 40",
    );
    let until = match t.get("until_s") {
        None => duration,
        Some(v) => limited(ctx, v, &t.child("until_s"), within),
    };
    if let (Some(a), Some(u)) = (at, until) {
        if a >= u {
            let (key, v) = match t.get("until_s") {
                Some(v) => ("until_s", v),
                None => ("at_s", t.get("at_s")?),
            };
            let end = if t.get("until_s").is_some() {
                "until_s"
            } else {
                "until_s (the end of the scenario, duration_s)"
            };
            ctx.error(
                Some(&v.span()),
                &t.child(key),
                format!("at_s ({a}) must be less than {end} ({u})"),
            );
        }
    }
    let slowdown = opt_number(ctx, t, "slowdown", 1.0, Limits::POSITIVE);
    let error_rate = t
        .get("error_rate")
        .and_then(|v| limited(ctx, v, &t.child("error_rate"), Limits::FRACTION));
    let down = match t.get("down") {
        None => false,
        Some(v) => match v.get_ref() {
            DeValue::Boolean(b) => *b,
            _ => {
                type_error(ctx, v, &t.child("down"), "a boolean (true or false)");
                false
            }
        },
    };
    let only = match t.get("only") {
        None => None,
        Some(v) => {
            let path = t.child("only");
            match v.get_ref() {
                DeValue::Array(items) => {
                    if items.is_empty() {
                        ctx.error(
                            Some(&v.span()),
                            &path,
                            "`only` must name at least one backend; omit it to apply the event to every copy",
                        );
                    }
                    let mut names = Vec::new();
                    for (k, item) in items.iter().enumerate() {
                        let ipath = format!("{path}[{k}]");
                        if let Some(s) = as_str(ctx, item, &ipath) {
                            names.push((s.to_string(), ipath, item.span()));
                        }
                    }
                    Some(names)
                }
                _ => {
                    type_error(
                        ctx,
                        v,
                        &path,
                        "an array of backend names, e.g. only = [\"b-2\"]",
                    );
                    None
                }
            }
        }
    };
    Some(EventDraft {
        event: BackendEvent {
            at_s: at.unwrap_or(0.0),
            until_s: until.unwrap_or(f64::INFINITY),
            slowdown,
            error_rate,
            down,
        },
        only,
    })
}

/// The names a backend written as `name` with `count` copies expands to.
fn expanded_names(name: &str, count: u32) -> Vec<String> {
    if count == 1 {
        vec![name.to_string()]
    } else {
        (1..=count).map(|i| format!("{name}-{i}")).collect()
    }
}

/// Expand `count`, check for duplicate names and resolve each event's `only` list.
fn expand(ctx: &mut Ctx<'_>, drafts: Vec<BackendDraft>) -> Vec<ScenarioBackend> {
    // Every expanded name with the backend that produced it.
    let mut owners: Vec<(String, usize)> = Vec::new();
    let mut copies: Vec<Vec<String>> = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        let Some((name, span)) = &d.name else {
            copies.push(Vec::new());
            continue;
        };
        let names = expanded_names(name, d.count);
        for n in &names {
            if let Some((_, j)) = owners.iter().find(|(o, _)| o == n) {
                let how = if d.count > 1 {
                    format!(" (from count = {})", d.count)
                } else {
                    String::new()
                };
                ctx.error(
                    Some(span),
                    &format!("{}.name", d.path),
                    format!(
                        "duplicate backend name {n:?}{how}: already used by {}; backend names must be unique after count expansion",
                        drafts[*j].path
                    ),
                );
            } else {
                owners.push((n.clone(), i));
            }
        }
        copies.push(names);
    }

    let mut backends = Vec::new();
    for (d, names) in drafts.into_iter().zip(copies) {
        let mut per_copy: Vec<Vec<BackendEvent>> = vec![Vec::new(); names.len()];
        for e in d.events {
            match &e.only {
                None => per_copy.iter_mut().for_each(|v| v.push(e.event.clone())),
                Some(only) => {
                    let mut applied = vec![false; names.len()];
                    for (target, path, span) in only {
                        if let Some(k) = names.iter().position(|n| n == target) {
                            if applied[k] {
                                ctx.warning(
                                    Some(span),
                                    path,
                                    format!("{target:?} is listed more than once in `only`"),
                                );
                            } else {
                                applied[k] = true;
                                per_copy[k].push(e.event.clone());
                            }
                            continue;
                        }
                        if names.is_empty() {
                            // The backend's own name is invalid and already reported.
                            continue;
                        }
                        let mut msg =
                            format!("no backend named {target:?} among the copies of {}", d.path);
                        msg.push_str(&format!(" ({})", describe_copies(&names)));
                        if let Some((_, j)) = owners.iter().find(|(o, _)| o == target) {
                            msg.push_str(&format!(
                                "; {target:?} belongs to backends[{j}], put the event under that backend"
                            ));
                        } else if let Some(s) = suggest(target, names.iter().map(String::as_str)) {
                            msg.push_str(&format!(" (did you mean {s:?}?)"));
                        }
                        ctx.error(Some(span), path, msg);
                    }
                }
            }
        }
        for (name, mut events) in names.into_iter().zip(per_copy) {
            events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
            backends.push(ScenarioBackend {
                name,
                events,
                ..d.template.clone()
            });
        }
    }
    backends
}

fn describe_copies(names: &[String]) -> String {
    match names {
        [one] => format!("named {one:?}"),
        [first, .., last] => format!("expanded to {first} .. {last}"),
        [] => "none".to_string(),
    }
}

/// Warn about load that exceeds the backends' capacity before any events (with the scaled
/// backend at `max_backends`).
fn load_warnings(ctx: &mut Ctx<'_>, s: &Scenario, rates: &RateSpans) {
    let per = |b: &crate::format::ScenarioBackend| {
        f64::from(b.concurrency) * 1000.0 / b.mean_service_ms()
    };
    let mut capacity: f64 = s.backends.iter().map(per).sum();
    if let Some(a) = &s.autoscale {
        if let Some(b) = s.backends.get(a.first) {
            capacity += (f64::from(a.max_backends) - f64::from(a.initial)) * per(b);
        }
    }
    for (rate, path, span) in rates {
        if *rate > capacity {
            ctx.warning(
                Some(span),
                path,
                format!(
                    "offered load {rate} rps is {:.0}% of the backends' capacity of {capacity:.0} rps (concurrency / mean service time); queues grow without bound",
                    rate / capacity * 100.0
                ),
            );
        }
    }
}
