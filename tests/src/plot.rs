//! CSV and PNG output of a sweep: throughput against local memory, one line per mode.

use crate::harness::{Mode, RunResult};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// Writes the runs as CSV.
pub fn write_csv(path: &Path, runs: &[RunResult]) -> Result<()> {
    let mut s = String::from(
        "workload,mode,local,budget_bytes,working_set_bytes,throughput,ops,secs,setup_secs,wall_secs,bytes_fetched,bytes_written,peak_rss_bytes,checksum,checksum_ok,skipped\n",
    );
    for r in runs {
        writeln!(
            s,
            "{},{},{},{},{},{:.1},{},{:.4},{:.3},{:.3},{},{},{},{},{},{}",
            r.workload,
            r.mode,
            r.local,
            r.budget_bytes,
            r.working_set_bytes,
            r.throughput,
            r.ops,
            r.secs,
            r.setup_secs,
            r.wall_secs,
            r.bytes_fetched,
            r.bytes_written,
            r.peak_rss_bytes,
            r.checksum,
            r.checksum_ok,
            r.skipped.as_deref().unwrap_or("").replace(',', ";")
        )?;
    }
    std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
}

/// Plots throughput (ops/s, log scale) against the local-memory fraction.
pub fn plot(path: &Path, title: &str, runs: &[RunResult], fracs: &[f64]) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let measured: Vec<&RunResult> = runs.iter().filter(|r| r.skipped.is_none() && r.throughput > 0.0).collect();
    let max = measured.iter().map(|r| r.throughput).fold(1.0, f64::max) * 2.0;
    let min = measured.iter().map(|r| r.throughput).fold(max, f64::min).max(1e-3) / 2.0;
    let (x0, x1) = (fracs.iter().copied().fold(1.0, f64::min), fracs.iter().copied().fold(0.0, f64::max));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d((x0 - 0.02)..(x1 + 0.02), (min..max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("local memory (fraction of working set)")
        .y_desc("throughput (ops/s)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    let colors = [BLACK, BLUE, RED, MAGENTA, GREEN];
    for (mode, color) in Mode::ALL.iter().zip(colors) {
        let mut pts: Vec<(f64, f64)> = if *mode == Mode::Local {
            // Local has no budget: the same run across the axis.
            measured
                .iter()
                .filter(|r| r.mode == "local")
                .flat_map(|r| fracs.iter().map(|&f| (f, r.throughput)))
                .collect()
        } else {
            measured.iter().filter(|r| r.mode == mode.name()).map(|r| (r.local, r.throughput)).collect()
        };
        if pts.is_empty() {
            continue;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(mode.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    // Runs that died (kernel swap's OOM killer): a cross on the axis floor, in the mode's colour.
    for (mode, color) in Mode::ALL.iter().zip(colors) {
        let dead: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.mode == mode.name() && r.skipped.as_deref().is_some_and(|s| s.contains("OOM")))
            .map(|r| (r.local, min * 1.15))
            .collect();
        chart.draw_series(dead.iter().map(|&p| Cross::new(p, 7, color.stroke_width(3))))?;
    }
    if runs.iter().any(|r| r.skipped.as_deref().is_some_and(|s| s.contains("OOM"))) {
        root.draw_text(
            "x on the floor: OOM-killed under kernel swap",
            &("sans-serif", 14).into_font().color(&BLACK),
            (120, 58),
        )?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present().with_context(|| format!("write {}", path.display()))?;
    Ok(())
}
