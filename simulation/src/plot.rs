//! `gantry-sim scale --plots DIR`: the run's data as CSV and as SVG charts (plotters, SVG
//! backend only — no font or image libraries; the viewer draws the text).
//!
//! - `placements.csv` / `placements.svg`: running allocations over time, one colour per
//!   phase (the initial placement, then each failure scenario).
//! - `utilisation.csv` / `utilisation.svg`: requested / allocatable CPU and memory of every
//!   ready node after the initial placement, sorted (a binpacker's curve is a high plateau
//!   then a drop to zero; a spreader's is flat).

use plotters::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PlotError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// One sample of the placement timeline: phase, milliseconds since the start, placements
/// made in the phase so far, allocations running in total.
pub type TimelineRow = (&'static str, u128, u64, u64);

const COLOURS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

fn write_csv(
    path: &Path,
    header: &str,
    rows: impl Iterator<Item = String>,
) -> Result<(), PlotError> {
    let f = std::fs::File::create(path).map_err(|e| err(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    writeln!(w, "{header}").map_err(|e| err(path, e))?;
    for r in rows {
        writeln!(w, "{r}").map_err(|e| err(path, e))?;
    }
    w.flush().map_err(|e| err(path, e))
}

/// The placement timeline as CSV and SVG.
pub fn placements(dir: &Path, rows: &[TimelineRow]) -> Result<(), PlotError> {
    write_csv(
        &dir.join("placements.csv"),
        "phase,t_ms,placements_in_phase,running_total",
        rows.iter().map(|(p, t, n, r)| format!("{p},{t},{n},{r}")),
    )?;
    let path = dir.join("placements.svg");
    let t_max = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1) as f64 / 1000.0;
    let y_max = rows.iter().map(|r| r.3).max().unwrap_or(1).max(1) as f64 * 1.05;
    let root = SVGBackend::new(&path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("allocations running over time", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(|e| err(&path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("running allocations")
        .draw()
        .map_err(|e| err(&path, e))?;
    let mut phases: Vec<&'static str> = Vec::new();
    for r in rows {
        if !phases.contains(&r.0) {
            phases.push(r.0);
        }
    }
    for (i, phase) in phases.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.0 == *phase)
            .map(|r| (r.1 as f64 / 1000.0, r.3 as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(|e| err(&path, e))?
            .label(*phase)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&path, e))?;
    root.present().map_err(|e| err(&path, e))
}

/// Per-node utilisation (sorted, highest first) as CSV and SVG.
pub fn utilisation(dir: &Path, per_node: &[(f64, f64)]) -> Result<(), PlotError> {
    write_csv(
        &dir.join("utilisation.csv"),
        "rank,cpu,memory",
        per_node
            .iter()
            .enumerate()
            .map(|(i, (c, m))| format!("{i},{c:.4},{m:.4}")),
    )?;
    let path = dir.join("utilisation.svg");
    let n = per_node.len().max(1) as f64;
    let root = SVGBackend::new(&path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "utilisation per node after the initial placement (sorted)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, 0f64..1.05f64)
        .map_err(|e| err(&path, e))?;
    chart
        .configure_mesh()
        .x_desc("nodes, most used first")
        .y_desc("requested / allocatable")
        .draw()
        .map_err(|e| err(&path, e))?;
    for (label, colour, pick) in [("cpu", BLUE, 0usize), ("memory", RED, 1usize)] {
        let pts = per_node
            .iter()
            .enumerate()
            .map(move |(i, v)| (i as f64, if pick == 0 { v.0 } else { v.1 }));
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(|e| err(&path, e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&path, e))?;
    root.present().map_err(|e| err(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_csv_and_svg_with_every_phase() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<TimelineRow> = vec![
            ("place", 0, 0, 0),
            ("place", 500, 50, 40),
            ("node-fail", 900, 10, 50),
        ];
        placements(dir.path(), &rows).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("placements.csv")).unwrap();
        assert_eq!(csv.lines().count(), 4);
        assert!(csv.contains("node-fail,900,10,50"), "{csv}");
        let svg = std::fs::read_to_string(dir.path().join("placements.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("node-fail") && svg.contains("place"));
        assert!(svg.matches("<polyline").count() >= 2, "one line per phase");

        utilisation(dir.path(), &[(0.9, 0.5), (0.4, 0.2), (0.0, 0.0)]).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("utilisation.csv")).unwrap();
        assert!(csv.contains("0,0.9000,0.5000"), "{csv}");
        let svg = std::fs::read_to_string(dir.path().join("utilisation.svg")).unwrap();
        assert!(svg.contains("memory") && svg.contains("cpu"));
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let e = placements(Path::new("/proc/no-such-dir"), &[]).unwrap_err();
        assert!(
            e.to_string().contains("/proc/no-such-dir/placements.csv"),
            "{e}"
        );
    }
}
