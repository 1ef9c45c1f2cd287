//! An autoscaled pool's request-rate series on disk, so a restart or a binary upgrade does not
//! start its forecast from nothing: the season is only found once the ring holds two of its
//! cycles (two days for a daily one), and until then the recommendation has no season to plan
//! by.
//!
//! The file is CSV, `t_s,rps`, one row per step: `t_s` the Unix time at the end of the step,
//! `rps` the rate that arrived in it (what the ring records), the format `fulcrum forecast
//! --input` reads. Every step appends its row; once the file holds more than twice the ring,
//! it is rewritten with the ring alone (a new file renamed over the old), as it is at start
//! once read back, on the new process's steps. At start the rows are
//! read back ([`assemble`]): rows closer than half a step are one step counted by two processes
//! (the old and the new one during an upgrade) and are added up; the steps nobody counted (the
//! process was down) are filled with the rate one season earlier when the history has a
//! season, else with the last rate before them; a history at another step length, or one
//! that ended longer ago than the ring reaches, is not used.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use fulcrum_forecast::season::detect_season;

/// A history file larger than this is not read (the longest ring, rewritten at twice its
/// length, takes about 1 MB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The header row of a history file.
pub const HEADER: &str = "t_s,rps";

/// Rows read from a history file: `(t_s, rps)` in file order, and the lines that were not rows.
pub fn parse(text: &str) -> (Vec<(f64, f64)>, usize) {
    let mut rows = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line == HEADER {
            continue;
        }
        let row = line.split_once(',').and_then(|(t, r)| {
            let (t, r) = (t.trim().parse::<f64>().ok()?, r.trim().parse::<f64>().ok()?);
            (t.is_finite() && r.is_finite() && r >= 0.0).then_some((t, r))
        });
        match row {
            Some(r) => rows.push(r),
            None => bad += 1,
        }
    }
    (rows, bad)
}

/// A series rebuilt from a history file.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    /// The rates, oldest first, one per step, the last one the step before now.
    pub rates: Vec<f64>,
    /// Of those, steps read from the file.
    pub read: usize,
    /// Of those, steps nobody counted, filled.
    pub filled: usize,
    /// Season (steps) the filled steps were filled by, if one was found.
    pub season_steps: Option<usize>,
}

/// Rebuild the series of steps of `step_s` seconds that ends at `now_s` (Unix time) from a
/// history file's rows, keeping at most `capacity` steps. `Err` says why the rows are not used.
pub fn assemble(
    rows: &[(f64, f64)],
    step_s: f64,
    now_s: f64,
    capacity: usize,
) -> Result<Assembled, String> {
    let mut rows: Vec<(f64, f64)> = rows.to_vec();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Two processes counting during an upgrade: one step, split between them.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(rows.len());
    for (t, r) in rows {
        match merged.last_mut() {
            Some(last) if t - last.0 < 0.5 * step_s => last.1 += r,
            _ => merged.push((t, r)),
        }
    }
    let Some(&(last_t, _)) = merged.last() else {
        return Err("it holds no row".into());
    };
    if merged.len() >= 3 {
        let mut gaps: Vec<f64> = merged.windows(2).map(|w| w[1].0 - w[0].0).collect();
        gaps.sort_by(f64::total_cmp);
        let typical = gaps[(gaps.len() - 1) / 2];
        if (typical / step_s - 1.0).abs() > 0.25 {
            return Err(format!(
                "its steps are {typical:.3} s apart, the pool's step_s is {step_s} s"
            ));
        }
    }
    let reach_s = capacity as f64 * step_s;
    if now_s - last_t > reach_s {
        return Err(format!(
            "it ends {:.0} s ago, beyond the {reach_s:.0} s the series keeps",
            now_s - last_t
        ));
    }
    if last_t > now_s + step_s {
        return Err(format!(
            "it ends {:.0} s in the future (the clock went back?)",
            last_t - now_s
        ));
    }
    // Steps that ended after the last row and by now nobody counted; then each row's place,
    // counted back from now.
    let missing_end = ((now_s - last_t) / step_s + 1e-9).floor().max(0.0) as usize;
    let ago = |t: f64| missing_end + ((last_t - t) / step_s).round().max(0.0) as usize;
    let span = (ago(merged[0].0) + 1).min(capacity.max(1));
    let mut slots: Vec<Option<f64>> = vec![None; span];
    for &(t, r) in &merged {
        let a = ago(t);
        if a < span {
            *slots[span - 1 - a].get_or_insert(0.0) += r;
        }
    }
    let read = slots.iter().flatten().count();
    if read == 0 {
        return Err(format!(
            "none of its rows falls within the {reach_s:.0} s the series keeps"
        ));
    }
    // The first slot is always a row (the span starts at the oldest kept one) unless the
    // oldest rows fell out of `capacity`; the fill starts at the first known step.
    let first = slots.iter().position(Option::is_some).unwrap_or(0);
    let slots = &slots[first..];
    let mut carried: Vec<f64> = Vec::with_capacity(slots.len());
    for s in slots {
        let v = s.unwrap_or_else(|| carried.last().copied().unwrap_or(0.0));
        carried.push(v);
    }
    let season = (read < slots.len())
        .then(|| detect_season(&carried))
        .flatten();
    let mut rates = carried.clone();
    if let Some(m) = season {
        for i in 0..rates.len() {
            if slots[i].is_none() && i >= m {
                rates[i] = rates[i - m];
            }
        }
    }
    Ok(Assembled {
        filled: rates.len() - read,
        rates,
        read,
        season_steps: season,
    })
}

/// What reading a pool's history file at start found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryStatus {
    /// The file.
    pub file: String,
    /// Steps read back from it at start (0 when there was none or it was not used).
    pub restored_steps: usize,
    /// Of the series at start, steps the process was not running, filled.
    pub filled_steps: usize,
    /// Why rows were not used at start, or why the last write failed.
    pub error: Option<String>,
}

/// A pool's history file: rows appended every step, rewritten from the ring when it has grown
/// to twice the ring.
#[derive(Debug)]
pub struct HistoryFile {
    path: PathBuf,
    rows: usize,
    capacity: usize,
    /// The status reported; `error` is set while writing fails.
    pub status: HistoryStatus,
}

impl HistoryFile {
    /// The history of pool `pool` in `dir`.
    pub fn path_for(dir: &Path, pool: &str) -> PathBuf {
        dir.join(format!("{pool}.csv"))
    }

    /// Open the file of a series kept at `capacity` steps of `step_s`, and read back what it
    /// holds as the series ending at `now_s`. A file that cannot be used is renamed to
    /// `NAME.csv.unused` (the reason is in the status) so its rows are not lost.
    pub fn open(
        path: PathBuf,
        step_s: f64,
        capacity: usize,
        now_s: f64,
    ) -> (Self, Option<Assembled>) {
        let mut status = HistoryStatus {
            file: path.display().to_string(),
            restored_steps: 0,
            filled_steps: 0,
            error: None,
        };
        let mut assembled = None;
        let mut kept_rows = 0;
        let text = match fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE_BYTES => Err(std::io::Error::other(format!(
                "{} bytes, more than the {MAX_FILE_BYTES} a history of the longest ring takes \
                 many times over",
                m.len()
            ))),
            _ => fs::read_to_string(&path),
        };
        match text {
            Ok(text) => {
                let (rows, bad) = parse(&text);
                kept_rows = rows.len();
                match assemble(&rows, step_s, now_s, capacity) {
                    Ok(a) => {
                        status.restored_steps = a.read;
                        status.filled_steps = a.filled;
                        if bad > 0 {
                            status.error = Some(format!("lines that are not rows skipped: {bad}"));
                        }
                        assembled = Some(a);
                    }
                    // An empty file: nothing to keep.
                    Err(_) if rows.is_empty() && bad == 0 => {}
                    Err(why) => {
                        let aside = path.with_extension("csv.unused");
                        let moved = match fs::rename(&path, &aside) {
                            Ok(()) => {
                                kept_rows = 0;
                                format!("moved to {}", aside.display())
                            }
                            Err(e) => format!("could not be moved aside: {e}"),
                        };
                        status.error = Some(format!("not used ({why}); {moved}"));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => status.error = Some(format!("not read: {e}")),
        }
        let file = HistoryFile {
            path,
            rows: kept_rows,
            capacity,
            status,
        };
        (file, assembled)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the series `rates` (oldest first, the last one ending at `last_s`) as the whole
    /// file: a new file renamed over the old one. `false` when it could not be written.
    pub fn rewrite(&mut self, rates: &[f64], step_s: f64, last_s: f64) -> bool {
        let mut text = String::with_capacity(rates.len() * 24 + 8);
        text.push_str(HEADER);
        text.push('\n');
        let n = rates.len();
        for (i, r) in rates.iter().enumerate() {
            let t = last_s - (n - 1 - i) as f64 * step_s;
            text.push_str(&format!("{t:.3},{r:.3}\n"));
        }
        let tmp = self.path.with_extension("csv.tmp");
        let result = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &self.path));
        self.rows = n;
        self.written(result)
    }

    /// Append the step that ended at `t_s`; `series` is the ring (after this step), written as
    /// the whole file instead once the file has grown to twice it. `false` when it could not
    /// be written.
    pub fn append(&mut self, t_s: f64, rps: f64, series: &[f64], step_s: f64) -> bool {
        if self.rows >= 2 * self.capacity {
            return self.rewrite(series, step_s, t_s);
        }
        let result = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| {
                let header = if f.metadata()?.len() == 0 {
                    format!("{HEADER}\n")
                } else {
                    String::new()
                };
                f.write_all(format!("{header}{t_s:.3},{rps:.3}\n").as_bytes())
            });
        self.rows += 1;
        self.written(result)
    }

    fn written(&mut self, result: std::io::Result<()>) -> bool {
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                if self
                    .status
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("write"))
                {
                    log::info!("forecast: history {} written again", self.path.display());
                    self.status.error = None;
                }
            }
            Err(e) => {
                if !self
                    .status
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("write"))
                {
                    log::warn!(
                        "forecast: history {} not written: {e}; the series is kept in memory",
                        self.path.display()
                    );
                }
                self.status.error = Some(format!("write failed: {e}"));
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(start: f64, step: f64, rates: &[f64]) -> Vec<(f64, f64)> {
        rates
            .iter()
            .enumerate()
            .map(|(i, &r)| (start + (i + 1) as f64 * step, r))
            .collect()
    }

    #[test]
    fn a_history_that_ends_now_comes_back_as_it_was() {
        let rates: Vec<f64> = (0..50).map(|i| 100.0 + i as f64).collect();
        // Steps end at 1010 … 1500; now is 1503 (the process restarted 3 s into a step).
        let a = assemble(&rows(1000.0, 10.0, &rates), 10.0, 1503.0, 1000).unwrap();
        assert_eq!(a.rates, rates);
        assert_eq!((a.read, a.filled), (50, 0));
        // Kept to the ring's length, newest last.
        let a = assemble(&rows(1000.0, 10.0, &rates), 10.0, 1503.0, 20).unwrap();
        assert_eq!(a.rates, rates[30..].to_vec());
    }

    #[test]
    fn the_steps_nobody_counted_are_filled_from_one_season_before() {
        // A 12-step cycle, 10 cycles, with steps 100..=105 missing (the process was down) and
        // 5 more steps missing at the end (down until now).
        let cycle = |i: usize| 500.0 + 300.0 * (2.0 * std::f64::consts::PI * i as f64 / 12.0).sin();
        let all: Vec<(f64, f64)> = (0..120)
            .map(|i| (10.0 * (i + 1) as f64, cycle(i)))
            .collect();
        let kept: Vec<(f64, f64)> = all
            .iter()
            .copied()
            .filter(|(t, _)| !(1010.0..=1060.0).contains(t) && *t <= 1150.0)
            .collect();
        let a = assemble(&kept, 10.0, 1200.0, 1000).unwrap();
        assert_eq!(a.season_steps, Some(12));
        assert_eq!(a.rates.len(), 120);
        assert_eq!(a.filled, 6 + 5);
        for (i, r) in a.rates.iter().enumerate() {
            assert!((r - cycle(i)).abs() < 1e-6, "step {i}: {r} vs {}", cycle(i));
        }
        // Without a season the last rate before a gap stands in for it.
        let flat = [(10.0, 5.0), (20.0, 7.0), (50.0, 9.0)];
        let a = assemble(&flat, 10.0, 51.0, 100).unwrap();
        assert_eq!(a.rates, vec![5.0, 7.0, 7.0, 7.0, 9.0]);
        assert_eq!((a.read, a.filled, a.season_steps), (3, 2, None));
    }

    #[test]
    fn one_step_counted_by_two_processes_is_added_up() {
        // The old process's rows end on the tens, the new one's (started during the upgrade)
        // 3 s later; while both ran, each counted its share.
        let mut r = vec![(10.0, 100.0), (20.0, 100.0), (30.0, 60.0), (33.0, 40.0)];
        r.extend([(40.0, 5.0), (43.0, 95.0), (53.0, 100.0)]);
        let a = assemble(&r, 10.0, 55.0, 100).unwrap();
        assert_eq!(a.rates, vec![100.0, 100.0, 100.0, 100.0, 100.0]);
    }

    #[test]
    fn a_history_at_another_step_or_too_old_is_not_used() {
        let r = rows(0.0, 10.0, &[1.0; 30]);
        let e = assemble(&r, 5.0, 305.0, 1000).unwrap_err();
        assert!(
            e.contains("10.000 s apart, the pool's step_s is 5 s"),
            "{e}"
        );
        let e = assemble(&r, 10.0, 300.0 + 10_001.0, 1000).unwrap_err();
        assert!(e.contains("beyond the 10000 s the series keeps"), "{e}");
        let e = assemble(&r, 10.0, 100.0, 1000).unwrap_err();
        assert!(e.contains("in the future"), "{e}");
        // Ending exactly as far back as the series reaches: no row left in it.
        let e = assemble(&r, 10.0, 300.0 + 10_000.0, 1000).unwrap_err();
        assert!(e.contains("none of its rows falls within"), "{e}");
        assert!(assemble(&[], 10.0, 0.0, 10).is_err());
    }

    #[test]
    fn lines_that_are_not_rows_are_counted_and_skipped() {
        let (r, bad) = parse("t_s,rps\n10,5\nnot,a row\n20,-1\n30,NaN\n40,7\n50,8");
        assert_eq!(r, vec![(10.0, 5.0), (40.0, 7.0), (50.0, 8.0)]);
        assert_eq!(bad, 3);
        // A last line cut short by a crash mid-write is one of them.
        let (r, bad) = parse("t_s,rps\n10,5\n20,");
        assert_eq!((r.len(), bad), (1, 1));
    }

    #[test]
    fn appended_steps_are_read_back_and_the_file_is_rewritten_at_twice_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let path = HistoryFile::path_for(dir.path(), "web");
        let (mut h, none) = HistoryFile::open(path.clone(), 10.0, 4, 1000.0);
        assert!(none.is_none());
        assert_eq!(h.status.error, None);
        let mut ring: Vec<f64> = Vec::new();
        for i in 1..=9 {
            let r = 100.0 + i as f64;
            ring.push(r);
            if ring.len() > 4 {
                ring.remove(0);
            }
            h.append(1000.0 + 10.0 * i as f64, r, &ring, 10.0);
        }
        // Eight rows appended, then the ninth step rewrote the file as the ring.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "t_s,rps\n1060.000,106.000\n1070.000,107.000\n1080.000,108.000\n1090.000,109.000\n"
        );
        let (h2, a) = HistoryFile::open(path.clone(), 10.0, 4, 1095.0);
        assert_eq!(a.unwrap().rates, vec![106.0, 107.0, 108.0, 109.0]);
        assert_eq!(
            (h2.status.restored_steps, h2.status.error.as_deref()),
            (4, None)
        );
        // The rows read back count towards the rewrite: four more, then the ring alone.
        let mut h2 = h2;
        for i in 10..=14 {
            let r = 100.0 + i as f64;
            ring.push(r);
            ring.remove(0);
            h2.append(1000.0 + 10.0 * i as f64, r, &ring, 10.0);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("t_s,rps\n1110.000,111.000\n"), "{text}");
        assert_eq!(text.lines().count(), 5);
        // At another step the rows are set aside, not lost.
        let (h3, a) = HistoryFile::open(path.clone(), 1.0, 4, 1145.0);
        assert!(a.is_none());
        let e = h3.status.error.unwrap();
        assert!(
            e.starts_with("not used (its steps are 10.000 s apart"),
            "{e}"
        );
        assert!(!path.exists());
        assert!(fs::read_to_string(dir.path().join("web.csv.unused"))
            .unwrap()
            .contains("1140.000,114.000"));
    }

    #[test]
    fn a_history_that_cannot_be_written_is_reported_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let (mut h, _) = HistoryFile::open(HistoryFile::path_for(&missing, "web"), 10.0, 4, 0.0);
        assert!(!h.append(10.0, 1.0, &[1.0], 10.0));
        let e = h.status.error.clone().unwrap();
        assert!(e.starts_with("write failed:"), "{e}");
        fs::create_dir(&missing).unwrap();
        assert!(h.append(20.0, 2.0, &[1.0, 2.0], 10.0));
        assert_eq!(h.status.error, None);
    }
}
