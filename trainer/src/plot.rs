//! The loss curve as a PNG (plotters, bitmap backend). Text needs a TrueType font; none is
//! bundled, so the first of a few common system fonts found is registered, and without one the
//! curve and grid are drawn with no labels rather than failing.

use std::path::Path;
use std::sync::OnceLock;

use lorafleet::{Error, Result};
use plotters::prelude::*;

use crate::log::LogEntry;

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system font as "sans-serif" once; whether text can be drawn.
fn have_font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().any(|p| match std::fs::read(p) {
            // plotters keeps the font for the whole process: leak the bytes once.
            Ok(bytes) => plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice())).is_ok(),
            Err(_) => false,
        })
    })
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("loss plot: {e}"))
}

/// Draws loss against update for `log` into `path` (800 × 480 PNG).
pub fn plot_loss(path: &Path, log: &[LogEntry]) -> Result<()> {
    // Only finite points are drawn: a NaN or infinite loss has no place on an axis (and would
    // make the axis range NaN).
    let log: Vec<&LogEntry> = log.iter().filter(|e| e.loss.is_finite()).collect();
    if log.is_empty() {
        return Ok(());
    }
    let text = have_font();
    let x_max = log.last().map_or(1, |e| e.step).max(2) as f64;
    let (lo, hi) = log.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| (lo.min(e.loss), hi.max(e.loss)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder.caption("training loss", ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(1.0..x_max, (lo - pad).max(0.0)..hi + pad).map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("update").y_desc("loss (completion tokens, mean CE)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(plot_err)?;
    chart.draw_series(LineSeries::new(log.iter().map(|e| (e.step as f64, e.loss)), &BLUE)).map_err(plot_err)?;
    root.present().map_err(plot_err)
}
