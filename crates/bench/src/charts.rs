//! SVG charts beside results.md: ack latency against offered rate (bare handler and relay), RSS and
//! CPU over the steady run, and the end-to-end lag distribution. Each is drawn from the same
//! `Results` the tables come from, so a chart can never show a figure the tables do not.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Results, Search, Steady, StepReport};

/// File names, also used by results.md to link them.
pub const ACK_LATENCY: &str = "ack-latency.svg";
pub const STEADY: &str = "steady-rss-cpu.svg";
pub const LAG: &str = "lag.svg";

const SIZE: (u32, u32) = (900, 520);
const FONT: &str = "sans-serif";
const BARE: RGBColor = RGBColor(31, 119, 180);
const RELAY: RGBColor = RGBColor(214, 39, 40);
const CPU: RGBColor = RGBColor(44, 160, 44);
const GUIDE: RGBColor = RGBColor(80, 80, 80);

#[derive(Debug, thiserror::Error)]
#[error("chart {file}: {reason}")]
pub struct ChartError {
    file: &'static str,
    reason: String,
}

/// Writes every chart the results have data for; returns the files written.
pub fn write_all(results: &Results, dir: &Path) -> Result<Vec<PathBuf>, ChartError> {
    let mut written = Vec::new();
    let bare = results
        .ceiling
        .as_ref()
        .and_then(|c| c.bare_handler.as_ref());
    let relay = results.ingest.as_ref().map(|i| &i.search);
    if bare.is_some() || relay.is_some() {
        let path = dir.join(ACK_LATENCY);
        draw(ACK_LATENCY, &path, |area| ack_latency(area, bare, relay))?;
        written.push(path);
    }
    if let Some(steady) = results.steady.as_ref().filter(|s| s.series.len() >= 2) {
        let path = dir.join(STEADY);
        draw(STEADY, &path, |area| steady_run(area, steady))?;
        written.push(path);
    }
    if let Some(e2e) = results.end_to_end.as_ref().filter(|e| e.lag_cdf.len() >= 2) {
        let path = dir.join(LAG);
        let title = format!(
            "End-to-end lag at {:.0} req/s (callback received → record consumed), {} samples",
            e2e.rate, e2e.lag_samples
        );
        let budget = (results.setup.max_wait_ms + 300) as f64;
        draw(LAG, &path, |area| lag(area, &title, &e2e.lag_cdf, budget))?;
        written.push(path);
    }
    Ok(written)
}

/// Which figure of a step a curve draws.
type Pick = fn(&StepReport) -> f64;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), String>;

fn draw(
    file: &'static str,
    path: &Path,
    paint: impl FnOnce(&Area<'_>) -> Drawn,
) -> Result<(), ChartError> {
    let fail = |reason: String| ChartError { file, reason };
    let area = SVGBackend::new(path, SIZE).into_drawing_area();
    area.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    paint(&area).map_err(fail)?;
    area.present().map_err(|e| fail(e.to_string()))
}

/// Every step of both searches, latency on a log axis: where the relay's curve leaves the bare
/// handler's is what the pipeline costs at the edge.
fn ack_latency(area: &Area<'_>, bare: Option<&Search>, relay: Option<&Search>) -> Drawn {
    let curves: Vec<(&str, RGBColor, Vec<&StepReport>)> =
        [("bare handler", BARE, bare), ("relay", RELAY, relay)]
            .into_iter()
            .filter_map(|(name, color, search)| search.map(|s| (name, color, sorted_steps(s))))
            .collect();
    let steps = || curves.iter().flat_map(|(_, _, steps)| steps.iter());
    let max_rate = steps().map(|s| s.rate).fold(1.0, f64::max) * 1.05;
    let max_ms = steps().map(|s| s.ack.p999_ms).fold(10.0, f64::max) * 1.5;
    let min_ms = steps()
        .map(|s| s.ack.p50_ms)
        .filter(|m| *m > 0.0)
        .fold(max_ms, f64::min)
        .clamp(0.1, 1.0);
    let mut chart = frame(area, "Ack latency (due → success) against offered rate", 20)
        .build_cartesian_2d(0.0..max_rate, (min_ms..max_ms).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("offered rate (req/s)")
        .y_desc("ack latency (ms, log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, color, steps) in &curves {
        let percentiles: [(&str, Pick, u32); 3] = [
            ("p50", |s| s.ack.p50_ms, 1),
            ("p99", |s| s.ack.p99_ms, 2),
            ("p99.9", |s| s.ack.p999_ms, 3),
        ];
        for (label, pick, width) in percentiles {
            let points: Vec<(f64, f64)> = steps
                .iter()
                .map(|s| (s.rate, pick(s).max(min_ms)))
                .collect();
            let style = color.stroke_width(width);
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(|e| e.to_string())?
                .label(format!("{name} {label}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            // A failed step is a hollow mark: the rate was offered but not sustained.
            chart
                .draw_series(steps.iter().zip(points).map(|(step, point)| {
                    let fill = if step.passed {
                        color.filled()
                    } else {
                        color.stroke_width(1)
                    };
                    Circle::new(point, 3, fill)
                }))
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// Caption, margin and axis label areas every chart shares.
fn frame<'a, 'b>(
    area: &'a Area<'b>,
    title: &str,
    size: u32,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (FONT, size))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64);
    builder
}

fn sorted_steps(search: &Search) -> Vec<&StepReport> {
    let mut steps: Vec<&StepReport> = search.steps.iter().collect();
    steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    steps
}

/// RSS on the left axis, CPU cores (from the CPU-seconds between samples) on the right; the warm-up
/// ends at the vertical line, and growth is judged from there.
fn steady_run(area: &Area<'_>, steady: &Steady) -> Drawn {
    let series = &steady.series;
    let end_s = series.last().map_or(1.0, |p| p.t_s).max(1.0);
    let rss: Vec<(f64, f64)> = series
        .iter()
        .map(|p| (p.t_s, p.rss_kb as f64 / 1024.0))
        .collect();
    let cores: Vec<(f64, f64)> = series
        .windows(2)
        .filter_map(|pair| match pair {
            [a, b] if b.t_s > a.t_s => Some((b.t_s, (b.cpu_s - a.cpu_s) / (b.t_s - a.t_s))),
            _ => None,
        })
        .collect();
    let max_mb = rss.iter().map(|p| p.1).fold(1.0, f64::max) * 1.25;
    let max_cores = cores.iter().map(|p| p.1).fold(0.1, f64::max) * 1.25;
    let title = format!(
        "Relay RSS and CPU over the steady run at {:.0} req/s",
        steady.rate
    );
    let mut chart = frame(area, &title, 20)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0.0..end_s, 0.0..max_mb)
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0.0..end_s, 0.0..max_cores);
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("RSS (MB)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .configure_secondary_axes()
        .y_desc("CPU (cores)")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            [(steady.warmup_s, 0.0), (steady.warmup_s, max_mb)],
            GUIDE.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label("end of warm-up")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GUIDE));
    chart
        .draw_series(LineSeries::new(rss, RELAY.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("RSS (left)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RELAY.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(cores, CPU.stroke_width(1)))
        .map_err(|e| e.to_string())?
        .label("CPU (right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CPU));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// The cumulative distribution: the fraction of records consumed within x ms of their first event.
fn lag(area: &Area<'_>, title: &str, cdf: &[(f64, f64)], budget_ms: f64) -> Drawn {
    let max_ms = cdf.iter().map(|p| p.0).fold(budget_ms, f64::max) * 1.05;
    let mut chart = frame(area, title, 18)
        .build_cartesian_2d(0.0..max_ms, 0.0..100.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("lag (ms)")
        .y_desc("records within (%)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            [(budget_ms, 0.0), (budget_ms, 100.0)],
            GUIDE.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label(format!("target p99: max_wait_ms + 300 = {budget_ms:.0} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GUIDE));
    chart
        .draw_series(LineSeries::new(
            cdf.iter().map(|(ms, fraction)| (*ms, fraction * 100.0)),
            RELAY.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label("relay")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RELAY.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}
