//! The bench's one picture: every fork-storm round's rate, per observer, so the reader sees
//! the spread the ratios come from (a drift, an outlier round) and not only their summary.
use std::path::Path;

use anyhow::{Context, bail};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

const FONT: &str = "sans-serif";

/// Where a TrueType font is looked for (plotters lays out text with the font it is given).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn load_font() -> anyhow::Result<()> {
    for path in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!(
        "no TrueType font found (tried {}): `cargo xtask setup` installs fonts-dejavu-core",
        FONT_PATHS.join(", ")
    )
}

/// Draws forks per second of each measured round, one series per observer, into the SVG `out`.
pub(super) fn rounds(out: &Path, forks: u64, series: &[(&str, Vec<f64>)]) -> anyhow::Result<()> {
    load_font()?;
    let rates: Vec<(&str, Vec<f64>)> = series
        .iter()
        .map(|(name, walls)| (*name, walls.iter().map(|w| forks as f64 / w).collect()))
        .collect();
    let all = rates.iter().flat_map(|(_, values)| values.iter().copied());
    let (low, high) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let rounds = rates.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    if rounds == 0 {
        bail!("no rounds to draw");
    }
    let margin = (high - low).max(1.0) * 0.1;
    let root = SVGBackend::new(out, (1000, 520)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Fork storm, {forks} forks a round: rate of each interleaved round"),
                (FONT, 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5f64..rounds as f64 + 0.5, (low - margin)..(high + margin))?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("forks per second")
            .label_style((FONT, 14))
            .x_labels(rounds.min(25))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        for (index, (name, values)) in rates.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(round, rate)| (round as f64 + 1.0, *rate))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|point| Circle::new(point, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|error| anyhow::anyhow!("{error}"))
        .with_context(|| format!("drawing {}", out.display()))
}
