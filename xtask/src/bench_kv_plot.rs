//! The pictures of `cargo xtask bench kv`: one SVG per system of latency (p50, p99, p99.9,
//! log scale) against the puts answered per second in the open-loop rows, with the other
//! system's p99 in grey for comparison; both pictures share their axes.

use std::path::{Path, PathBuf};

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

/// Size of a picture, pixels.
const SIZE: (u32, u32) = (760, 460);

/// One open-loop row of one system.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// Puts asked per second (the row's rate), written beside its p50 point.
    pub asked: f64,
    /// Puts answered per second.
    pub ops_per_sec: f64,
    /// Latency at p50, p99 and p99.9, ms.
    pub ms: [f64; 3],
}

/// A system's open-loop rows.
pub struct Series {
    pub name: &'static str,
    pub points: Vec<Point>,
}

/// Why a picture could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot create {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("drawing {0}: {1}")]
    Draw(
        PathBuf,
        plotters::drawing::DrawingAreaErrorKind<std::io::Error>,
    ),
}

/// Writes `kv-open-loop-NAME.svg` in `dir` for each series with points; returns the paths.
pub fn write(dir: &Path, all: &[Series]) -> Result<Vec<PathBuf>, PlotError> {
    let points = || all.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.ops_per_sec).fold(0.0, f64::max) * 1.1;
    let ms = || points().flat_map(|p| p.ms).filter(|m| *m > 0.0);
    // Whole decades, so that the log axis is labelled at 1, 10, 100 ...
    let y_min = 10f64.powf(ms().fold(f64::INFINITY, f64::min).log10().floor());
    let y_max = 10f64
        .powf(ms().fold(0.0, f64::max).log10().ceil())
        .max(y_min * 10.0);
    if x_max <= 0.0 || y_min.is_infinite() || y_max <= y_min {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|e| PlotError::Dir(dir.to_path_buf(), e))?;
    let mut written = Vec::new();
    for s in all.iter().filter(|s| !s.points.is_empty()) {
        let path = dir.join(format!("kv-open-loop-{}.svg", s.name));
        let others: Vec<&Series> = all.iter().filter(|o| o.name != s.name).collect();
        draw(&path, s, &others, (x_max, y_min, y_max))
            .map_err(|e| PlotError::Draw(path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}

type DrawResult = Result<(), plotters::drawing::DrawingAreaErrorKind<std::io::Error>>;

/// One picture: `s`'s three percentiles, the others' p99 in grey.
fn draw(
    path: &Path,
    s: &Series,
    others: &[&Series],
    (x_max, y_min, y_max): (f64, f64, f64),
) -> DrawResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: open-loop puts, latency vs throughput", s.name),
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("puts answered per second (3 members, 1000 clients, 100 connections)")
        .y_desc("latency from due time, ms (log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(RGBColor(240, 240, 240))
        .y_label_formatter(&|v| {
            format!("{v:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    let lines = [("p50", 0, BLUE), ("p99", 1, RED), ("p99.9", 2, MAGENTA)];
    for (label, i, colour) in lines {
        let at = move |p: &Point| (p.ops_per_sec, p.ms[i]);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(at),
                colour.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(
            s.points
                .iter()
                .map(|p| Circle::new(at(p), 3, colour.filled())),
        )?;
    }
    // Each point's asked rate beside its p50, so that a row past saturation (fewer puts
    // answered than asked) can be told from its neighbours.
    chart.draw_series(s.points.iter().map(|p| {
        Text::new(
            format!("{:.0}/s asked", p.asked),
            (p.ops_per_sec, p.ms[0]),
            ("sans-serif", 12).into_font().color(&BLACK),
        )
    }))?;
    for o in others {
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(LineSeries::new(
                o.points.iter().map(|p| (p.ops_per_sec, p.ms[1])),
                grey.stroke_width(2),
            ))?
            .label(format!("{} p99", o.name))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()
}

#[cfg(test)]
mod tests {
    use super::{write, Point, Series};

    #[test]
    fn one_picture_per_system_with_points() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let point = |x: f64, ms: f64| Point {
            asked: x,
            ops_per_sec: x,
            ms: [ms, ms * 2.0, ms * 3.0],
        };
        let series = [
            Series {
                name: "a",
                points: vec![point(1000.0, 1.0), point(5000.0, 4.0)],
            },
            Series {
                name: "b",
                points: vec![],
            },
        ];
        let written = write(dir.path(), &series).map_err(|e| e.to_string());
        assert_eq!(written, Ok(vec![dir.path().join("kv-open-loop-a.svg")]));
        let svg =
            std::fs::read_to_string(dir.path().join("kv-open-loop-a.svg")).unwrap_or_default();
        assert!(svg.contains("<svg") && svg.contains("p99.9"));
        assert!(!dir.path().join("kv-open-loop-b.svg").exists());
    }
}
