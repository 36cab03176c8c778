//! Latency as pictures (`bench --plot`, `bench plot`): SVG files drawn with `plotters`.
//!
//! * The distribution: latency against percentile on a "nines" axis, as HdrHistogram's
//!   plotter draws it. The x axis is `-log10(1 - q)`, so 90%, 99%, 99.9%, 99.99% sit one
//!   step apart and the tail, where latency problems live, gets as much room as the
//!   median. Latency is on a log axis too. Open loop draws the corrected and uncorrected
//!   series; an SLO's bound is a horizontal line.
//! * An SLO search: the percentile at each offered rate, the bound, and the knee (the
//!   best rate that passed) marked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::args::PlotArgs;
use super::recorder::Recorder;
use super::report::Report;
use crate::cli::common::CliError;

/// The largest report `bench plot` reads: far more than any run writes.
const MAX_INPUT: u64 = 256 << 20;

/// The report in `path`: its last line that is a JSON object (a `--json-lines` file
/// ends with the report), with its round-trip histogram.
fn read_report(path: &PathBuf) -> Result<Recorder, CliError> {
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{name}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_INPUT {
        return Err(format!("{name}: not a report (a regular file of at most 256 MiB)").into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("{name}: no JSON report in it (write one with bench --json)"))?;
    let report = Report::from_json(line).map_err(|e| format!("{name}: not a bench report: {e}"))?;
    let hist = report
        .histograms
        .ok_or_else(|| format!("{name}: the report carries no histogram"))?;
    Recorder::decode(&hist.rtt).map_err(|e| format!("{name}: {e}").into())
}

/// `echoloop bench plot A.json B.json … -o FILE.svg [--label NAME]…`.
pub(super) fn run(args: &PlotArgs) -> Result<ExitCode, CliError> {
    if args.label.len() > args.files.len() {
        return Err(format!(
            "{} labels for {} reports: give at most one --label per report",
            args.label.len(),
            args.files.len()
        )
        .into());
    }
    let recorders = args
        .files
        .iter()
        .map(read_report)
        .collect::<Result<Vec<_>, _>>()?;
    let series: Vec<Series<'_>> = recorders
        .iter()
        .zip(&args.files)
        .enumerate()
        .map(|(i, (rtt, path))| Series {
            label: args.label.get(i).cloned().unwrap_or_else(|| {
                path.file_stem().map_or_else(
                    || path.display().to_string(),
                    |s| s.to_string_lossy().into(),
                )
            }),
            rtt,
        })
        .collect();
    distribution(&args.output, "latency by percentile", &series, None)?;
    Ok(ExitCode::SUCCESS)
}

/// Both plots' axes: a linear x, latency on a log scale.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, LogCoord<f64>>>;

/// Draws the legend (upper left, over a pale box) and writes the file.
fn finish<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    root: &DrawingArea<SVGBackend<'b>, Shift>,
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
}

/// One line on a distribution plot.
pub(super) struct Series<'a> {
    pub(super) label: String,
    pub(super) rtt: &'a Recorder,
}

/// `90%`, `99.9%` for a position on the nines axis.
fn nines_label(x: f64) -> String {
    let pct = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{pct:.6}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Writes the latency distributions of `series` to `path`, with `bound_us` as a line.
pub(super) fn distribution(
    path: &Path,
    title: &str,
    series: &[Series<'_>],
    bound_us: Option<f64>,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("--plot {}: {e}", path.display());
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| (s.label.clone(), s.rtt.quantile_points()))
        .filter(|(_, points)| !points.is_empty())
        .collect();
    if curves.is_empty() {
        return Err(fail(&"no latency samples to plot"));
    }
    let all = curves.iter().flat_map(|(_, p)| p.iter());
    let max_x = all.clone().map(|p| p.0).fold(1.0, f64::max).ceil();
    let (mut lo, mut hi) = all.fold((f64::MAX, 0.0_f64), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    if let Some(b) = bound_us {
        (lo, hi) = (lo.min(b), hi.max(b));
    }
    let (lo, hi) = ((lo * 0.8).max(0.001), hi * 1.25);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..max_x, (lo..hi).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(max_x as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, (label, points)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if let Some(b) = bound_us {
        chart
            .draw_series(LineSeries::new(vec![(0.0, b), (max_x, b)], BLACK))
            .map_err(|e| fail(&e))?
            .label(format!("bound {b:.0} µs"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    finish(&mut chart, &root).map_err(|e| fail(&e))
}

/// One step of a search for the rate plot: offered rate, the percentile, passed.
pub(super) type RatePoint = (f64, f64, bool);

/// Writes the percentile against offered rate of an SLO search to `path`: every step, the
/// bound, and the knee (`max_rate`) marked.
pub(super) fn search(
    path: &Path,
    name: &str,
    steps: &[RatePoint],
    bound_us: f64,
    max_rate: Option<f64>,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("--plot {}: {e}", path.display());
    if steps.is_empty() {
        return Err(fail(&"no step to plot"));
    }
    let mut points: Vec<(f64, f64)> = steps.iter().map(|s| (s.0, s.1.max(0.001))).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_rate_axis = points.iter().map(|p| p.0).fold(0.0, f64::max) * 1.1;
    let (lo, hi) = points.iter().fold((bound_us, bound_us), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{name} by offered rate"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            0.0..max_rate_axis,
            ((lo * 0.8).max(0.001)..hi * 1.25).log_scale(),
        )
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (msgs/s)")
        .y_desc(format!("{name} latency (µs)"))
        .draw()
        .map_err(|e| fail(&e))?;
    let line = Palette99::pick(0).to_rgba();
    chart
        .draw_series(LineSeries::new(points.clone(), line.stroke_width(2)))
        .map_err(|e| fail(&e))?
        .label(name.to_owned())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
    // Passed steps filled, failed ones hollow.
    chart
        .draw_series(steps.iter().map(|&(rate, value, passed)| {
            let style = if passed {
                line.filled()
            } else {
                RED.stroke_width(2)
            };
            Circle::new((rate, value.max(0.001)), 5, style)
        }))
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, bound_us), (max_rate_axis, bound_us)],
            BLACK,
        ))
        .map_err(|e| fail(&e))?
        .label(format!("bound {bound_us:.0} µs"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    if let Some(knee) = max_rate {
        let green = GREEN.mix(0.9);
        chart
            .draw_series(LineSeries::new(
                vec![(knee, lo * 0.8), (knee, hi * 1.25)],
                green.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(format!("max rate {knee:.0}/s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green));
    }
    finish(&mut chart, &root).map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::nines_label;

    #[test]
    fn the_nines_axis() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(4.0), "99.99%");
    }
}
