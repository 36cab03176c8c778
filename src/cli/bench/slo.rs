//! `bench --slo p99=2ms`: the highest rate a server takes before a latency percentile
//! breaks its bound, and how sure that answer is.
//!
//! # The search
//!
//! Open-loop steps, each on fresh connections: a warm-up, then a measured window of
//! `--step-duration`. The offered rate doubles from `--rate` (1k/s by default) until a
//! step fails, then the gap between the best rate that passed and the lowest that failed
//! is halved until it is within 2% of the failed one, or `--max-steps` are spent (a step
//! with too few samples to bound the percentile decides nothing: the ramp goes on). The
//! answer is the best rate that passed: every figure is one a step proved, never an
//! interpolation. (tcpkali ramps ×4 and mutilate bisects; doubling costs one or two steps
//! more and never overshoots a knee by more than the rate itself.)
//!
//! # When a step passes
//!
//! All four must hold, and the verdict names the first that did not:
//! 1. **The percentile is bounded, under the bound:** its 95% confidence interval (from
//!    order statistics, as every report gives it) lies wholly at or under the bound. A
//!    step with too few samples to bound it proves nothing, so it fails.
//! 2. **The server kept up:** the rate achieved (echoes completed in the window per
//!    second) is within 2% of the rate offered. Less means the excess is queueing
//!    somewhere, and the latency at the end of the window is not the latency at that
//!    rate.
//! 3. **The generator kept up:** it did not fall behind its own schedule (see the
//!    report's `generator_saturated`); otherwise the step measured us.
//! 4. **Latency was not still rising:** the window is cut in two halves, and the step
//!    fails if the second half's *median* is higher than the first's, with their 95%
//!    intervals apart, by more than a tenth of the bound. A queue that is still growing
//!    means the rate is over capacity even if the percentile over the whole window
//!    looks fine, and it lifts every percentile, the median too. The median, not the
//!    objective's percentile, because a tail percentile of half a window jumps with one
//!    stall (a first try with p99 failed steps far below capacity on one 1 ms hiccup);
//!    intervals that do not overlap differ at better than the 5% level without a model
//!    of the distribution; and a tenth of the bound keeps a shift of a few microseconds,
//!    significant with a million samples, from failing a step it does not endanger.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::args::Slo;
use super::ctrl_c::CtrlC;
use super::recorder::Recorder;
use super::run::{Measured, Outputs, measure};
use super::settings::{Load, Settings};
use crate::cli::common::CliError;
use crate::cli::units::format_count;

/// Where the search starts without `--rate`.
pub(super) const DEFAULT_START: f64 = 1000.0;
/// The warm-up of each step when `--warmup` asks for less.
const MIN_WARMUP: Duration = Duration::from_secs(1);
/// The search ends when the gap is this share of the failed rate.
const PRECISION: f64 = 0.02;
/// A step's achieved rate must be at least this share of the offered rate.
const KEPT_UP: f64 = 0.98;

/// One step's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Step {
    pub(super) offered_rate: f64,
    pub(super) achieved_rate: f64,
    /// The percentile over the window, µs.
    pub(super) value_us: f64,
    /// Its 95% confidence interval, µs; `None` with too few samples.
    pub(super) ci95_us: Option<[f64; 2]>,
    pub(super) passed: bool,
    /// Why it failed, or `"within the bound"`.
    pub(super) why: String,
    /// Too few samples to bound the percentile: neither a pass nor a failure at this
    /// rate (a higher rate gives more samples per step).
    #[serde(skip)]
    inconclusive: bool,
}

/// The whole search, as `--json` gives it under `slo`.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Search {
    /// The percentile, in percent (99 for p99).
    pub(super) percentile: f64,
    pub(super) bound_us: f64,
    /// The best rate proven; `None` when even the first step failed.
    pub(super) max_rate: Option<f64>,
    pub(super) steps: Vec<Step>,
    /// Ctrl-C ended the search early.
    pub(super) interrupted: bool,
    /// The round trips of the step at `max_rate`, for a plot.
    #[serde(skip)]
    pub(super) best_rtt: Option<Recorder>,
}

/// Judges a measured step against the objective (see the module docs).
fn judge(slo: Slo, offered: f64, m: &Measured) -> Step {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let bound = us(slo.bound);
    let name = slo.name();
    let value = m.rtt.percentile_us(slo.q);
    let ci = m.rtt.percentile_ci95_us(slo.q);
    let achieved = m.report.msgs_per_sec();
    let fail = |why: String| (false, why);
    let inconclusive =
        ci.is_none() && m.report.generator_note.is_none() && achieved >= KEPT_UP * offered;
    let (passed, why) = if let Some(note) = &m.report.generator_note {
        fail(format!("the generator could not keep up: {note}"))
    } else if achieved < KEPT_UP * offered {
        fail(format!(
            "achieved {}/s, under {:.0}% of the offered rate: over capacity",
            format_count(achieved),
            KEPT_UP * 100.0
        ))
    } else {
        match ci {
            None => fail(format!(
                "too few samples ({}) to bound {name}; use a longer --step-duration",
                m.rtt.len()
            )),
            Some((_, high)) if high > bound => fail(format!(
                "{name} {value:.0} µs, interval up to {high:.0} µs: over the bound"
            )),
            Some(_) => match rising(&m.halves, bound / 10.0) {
                Some(why) => fail(why),
                None => (true, "within the bound".to_owned()),
            },
        }
    };
    Step {
        offered_rate: offered,
        achieved_rate: achieved,
        value_us: value,
        ci95_us: ci.map(|(a, b)| [a, b]),
        passed,
        why,
        inconclusive,
    }
}

/// Says how the median rose, if the window's second half is higher than its first with
/// their intervals apart and by more than `material` µs.
fn rising(halves: &[Recorder; 2], material: f64) -> Option<String> {
    let (a, b) = (
        halves[0].percentile_ci95_us(0.5)?,
        halves[1].percentile_ci95_us(0.5)?,
    );
    let (first, second) = (halves[0].percentile_us(0.5), halves[1].percentile_us(0.5));
    (b.0 > a.1 && second - first > material).then(|| {
        format!(
            "latency rose through the step (median {first:.0} µs in the first half, \
             {second:.0} µs in the second): a queue still growing"
        )
    })
}

/// The settings of a step at `rate`.
fn step_settings(base: &Settings, rate: f64, step: Duration) -> Settings {
    let mut s = base.clone();
    s.load = Load::Open {
        rate,
        interval: s.connections as f64 / rate,
    };
    s.warmup = s.warmup.max(MIN_WARMUP);
    s.duration = step;
    // Ten intervals a step: the halves for the trend, and progress to watch.
    s.interval = (step / 10).max(Duration::from_millis(10));
    s
}

/// Runs the search; prints the steps as they end and the result on stdout (JSON with
/// `json`). Returns it, and whether every echo was right.
pub(super) fn search(
    base: &Settings,
    slo: Slo,
    start: f64,
    step: Duration,
    max_steps: usize,
    json: bool,
    ctrl_c: &CtrlC,
) -> Result<(Search, bool), CliError> {
    let mut result = Search {
        percentile: slo.q * 100.0,
        bound_us: slo.bound.as_secs_f64() * 1e6,
        max_rate: None,
        steps: Vec::new(),
        interrupted: false,
        best_rtt: None,
    };
    let name = slo.name();
    if !json {
        println!(
            "SLO search: {name} <= {}, {} {}, {} connection(s), steps of {} s after a {} s warm-up",
            fmt_us(result.bound_us),
            base.transport.name(),
            base.target_text,
            base.connections,
            step.as_secs_f64(),
            base.warmup.max(MIN_WARMUP).as_secs_f64()
        );
        println!(
            "{:>4}  {:>10}  {:>10}  {:>22}  verdict",
            "step",
            "offered/s",
            "achieved/s",
            format!("{name} (µs) [95% CI]")
        );
    }
    let (mut passed, mut failed): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = start;
    let mut clean = true;
    while result.steps.len() < max_steps {
        if ctrl_c.pressed() {
            result.interrupted = true;
            break;
        }
        let s = Arc::new(step_settings(base, rate, step));
        let Some(m) = measure(&s, Outputs::default(), ctrl_c)? else {
            result.interrupted = true;
            break;
        };
        if m.c.verify_errors > 0 || m.c.wrong_source > 0 {
            clean = false;
        }
        if m.interrupted {
            // A window cut short proves nothing either way.
            result.interrupted = true;
            break;
        }
        let st = judge(slo, rate, &m);
        if !json {
            let ci = st.ci95_us.map_or_else(
                || "[too few samples]".to_owned(),
                |[a, b]| format!("[{a:.0}-{b:.0}]"),
            );
            println!(
                "{:>4}  {:>10}  {:>10}  {:>22}  {}",
                result.steps.len() + 1,
                format_count(st.offered_rate),
                format_count(st.achieved_rate),
                format!("{:.0} {ci}", st.value_us),
                if st.passed {
                    "pass".to_owned()
                } else {
                    format!("fail: {}", st.why)
                }
            );
            let _ = std::io::stdout().flush();
        }
        if st.passed {
            if passed.is_none_or(|p| rate > p) {
                result.best_rtt = Some(m.rtt.clone());
            }
            passed = Some(passed.map_or(rate, |p| p.max(rate)));
        } else if !st.inconclusive {
            failed = Some(failed.map_or(rate, |f| f.min(rate)));
        }
        result.steps.push(st);
        rate = match (passed, failed) {
            (_, None) => rate * 2.0,
            // Even the first step failed: nothing below it was asked for.
            (None, Some(_)) => break,
            (Some(p), Some(f)) => {
                if (f - p) / f <= PRECISION {
                    break;
                }
                (p + f) / 2.0
            }
        };
    }
    result.max_rate = passed;
    Ok((result, clean))
}

/// The result line: `max rate 41.2k msgs/s with p99 <= 2 ms (p99 there 1.71 ms, 95% CI
/// 1.62-1.80)`.
pub(super) fn summary(slo: Slo, r: &Search) -> String {
    let name = slo.name();
    let bound = fmt_us(r.bound_us);
    let Some(best) = r.max_rate else {
        return format!("no rate tried met {name} <= {bound}");
    };
    let at = r.steps.iter().find(|s| s.passed && s.offered_rate == best);
    let there = match at {
        Some(Step {
            value_us,
            ci95_us: Some([a, b]),
            ..
        }) => {
            // One unit for the interval, the value's.
            let ci = if *value_us >= 1000.0 {
                format!("{:.2}-{:.2} ms", a / 1000.0, b / 1000.0)
            } else {
                format!("{a:.0}-{b:.0} µs")
            };
            format!(" ({name} there {}, 95% CI {ci})", fmt_us(*value_us))
        }
        _ => String::new(),
    };
    // The step that failed just above: if the generator failed it, the server's limit
    // is still unknown.
    let above = r
        .steps
        .iter()
        .filter(|s| !s.passed && s.offered_rate > best)
        .min_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    let limit = match above {
        Some(s) if s.why.starts_with("the generator") => {
            "; the generator, not the server, failed the step above (use more --threads)"
        }
        _ => "",
    };
    format!(
        "max rate {} msgs/s with {name} <= {bound}{there}{limit}",
        format_count(best)
    )
}

/// Microseconds as a person reads them: `850 µs`, `1.71 ms`.
fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::{Recorder, rising};
    use std::time::Duration;

    fn flat(us: u64, n: u64) -> Recorder {
        let mut r = Recorder::new();
        for i in 0..n {
            r.record(Duration::from_micros(us + i % 10));
        }
        r
    }

    #[test]
    fn a_rising_second_half_is_told_and_a_flat_one_is_not() {
        assert!(rising(&[flat(100, 5000), flat(100, 5000)], 50.0).is_none());
        let why = rising(&[flat(100, 5000), flat(400, 5000)], 50.0).expect("rising");
        assert!(why.contains("queue still growing"), "{why}");
        // Apart, but by less than what matters against the bound.
        assert!(rising(&[flat(100, 5000), flat(120, 5000)], 50.0).is_none());
        // Lower in the second half is no reason to fail.
        assert!(rising(&[flat(400, 5000), flat(100, 5000)], 50.0).is_none());
        // Too few samples to tell: not a reason either.
        assert!(rising(&[flat(100, 1), flat(400, 1)], 50.0).is_none());
    }
}
