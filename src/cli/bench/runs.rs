//! `bench --runs N`: the whole run N times, on new connections each time, and each
//! figure's median and range over the runs.
//!
//! One run's figures carry the run's luck: a neighbour's burst on a shared machine, the
//! connections' hash into the server's queues. Repeating the run and giving the median
//! with the lowest and highest says how far one run's answer can be trusted; the range,
//! not a standard deviation, because a handful of runs is too few to assume a shape.

use std::fmt;

use serde::Serialize;

use super::report::Report;

/// One figure over the runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Spread {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    /// `None` when no run has the figure.
    fn of(values: impl Iterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        // The middle value, or the mean of the two middle ones.
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The figures that summarise the runs, by name, in the order printed.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Summary {
    pub(super) runs: usize,
    pub(super) figures: Vec<(String, Spread)>,
}

/// Each figure of `reports` as median and range.
pub(super) fn summarise(reports: &[Report]) -> Summary {
    type Get = fn(&Report) -> Option<f64>;
    let figures: [(&str, Get); 10] = [
        ("msgs_per_sec", |r| Some(r.msgs_per_sec())),
        ("latency_p50_us", |r| Some(r.latency.p50_us)),
        ("latency_p90_us", |r| Some(r.latency.p90_us)),
        ("latency_p99_us", |r| Some(r.latency.p99_us)),
        ("latency_p99_9_us", |r| Some(r.latency.p999_us)),
        ("latency_p99_99_us", |r| Some(r.latency.p9999_us)),
        ("latency_max_us", |r| Some(r.latency.max_us)),
        ("generator_cpu_us_per_msg", |r| r.generator_cpu_us_per_msg),
        ("server_cpu_us_per_msg", |r| r.server_cpu_us_per_msg),
        ("server_peak_rss_kib", |r| {
            r.server_peak_rss_kib.map(|k| k as f64)
        }),
    ];
    Summary {
        runs: reports.len(),
        figures: figures
            .iter()
            .filter_map(|(name, get)| {
                Spread::of(reports.iter().filter_map(get)).map(|s| ((*name).to_owned(), s))
            })
            .collect(),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "over {} runs: median (lowest-highest)", self.runs)?;
        for (name, s) in &self.figures {
            let v = |x: f64| {
                if x.abs() < 100.0 {
                    format!("{x:.2}")
                } else {
                    format!("{x:.0}")
                }
            };
            writeln!(f, "  {name:<26}{} ({}-{})", v(s.median), v(s.min), v(s.max))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn median_and_range() {
        let s = Spread::of([3.0, 1.0, 2.0].into_iter()).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of([4.0, 1.0, 2.0, 3.0].into_iter()).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of([f64::NAN].into_iter()), None);
        assert_eq!(Spread::of(std::iter::empty()), None);
    }
}
