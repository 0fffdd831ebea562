//! The picture: one panel per container over time, drawn with plotters. Upper: the kernel's
//! counts (memory.events oom and oom_kill, pids.events max) as steps, the probes' fork
//! denials, each OOM kill as a cross (the first few named; throttled events are in the
//! caption: thousands of them would flatten every other line); the agent's named stretches
//! (selftest waves) shaded. Lower: memcg reclaim stall per time bucket. Losses, if
//! any, on every panel.
use std::path::Path;

use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{
    TimelineError,
    data::{Point, Timeline, Track},
};

const WIDTH: u32 = 1400;
const PANEL_HEIGHT: u32 = 420;
const TITLE_HEIGHT: u32 = 40;
const FONT: &str = "sans-serif";
/// OOM kills named on the picture; the rest are crosses only.
const KILLS_NAMED: usize = 3;

/// Where a TrueType font is looked for (plotters renders text with the font it is given; no
/// system font library is linked). `GUARD_FONT` comes first.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn load_font() -> Result<(), TimelineError> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let mut candidates: Vec<String> = std::env::var("GUARD_FONT").into_iter().collect();
        candidates.extend(FONT_PATHS.iter().map(|path| path.to_string()));
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no TrueType font found (tried {}): install fonts-dejavu-core or set GUARD_FONT to \
             a .ttf file",
            candidates.join(", ")
        ))
    });
    loaded.clone().map_err(TimelineError::Font)
}

/// Draws `timeline` into `out`: SVG or PNG by its extension.
pub fn draw(timeline: &Timeline, out: &Path, title: &str) -> Result<(), TimelineError> {
    load_font()?;
    let panels = timeline.containers.len().max(1) as u32;
    let size = (WIDTH, TITLE_HEIGHT + panels * PANEL_HEIGHT);
    let extension = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let drawn = match extension.as_deref() {
        Some("svg") => paint(
            SVGBackend::new(out, size).into_drawing_area(),
            timeline,
            title,
        ),
        Some("png") => paint(
            BitMapBackend::new(out, size).into_drawing_area(),
            timeline,
            title,
        ),
        _ => {
            return Err(TimelineError::Format {
                path: out.to_path_buf(),
            });
        }
    };
    drawn.map_err(|why| TimelineError::Draw {
        path: out.to_path_buf(),
        why,
    })
}

/// A step series: the value holds until the next point, and to the end.
fn steps(points: &[Point], end: f64) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0)];
    for point in points {
        let last = out.last().map_or(0.0, |p| p.1);
        out.push((point.t, last));
        out.push((point.t, point.value));
    }
    let last = out.last().map_or(0.0, |p| p.1);
    out.push((end, last));
    out
}

fn paint<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    timeline: &Timeline,
    title: &str,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(TITLE_HEIGHT);
    head.draw_text(title, &(FONT, 22).into_font().color(&BLACK), (12, 10))
        .map_err(err)?;
    if timeline.containers.is_empty() {
        body.draw_text(
            "no container records in this log",
            &(FONT, 18).into_font().color(&BLACK),
            (12, 20),
        )
        .map_err(err)?;
    }
    let areas = body.split_evenly((timeline.containers.len().max(1), 1));
    for ((id, track), area) in timeline.containers.iter().zip(areas.iter()) {
        panel(area, id, track, timeline).map_err(err)?;
    }
    root.present().map_err(err)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    id: &str,
    track: &Track,
    timeline: &Timeline,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let end = timeline.duration_s.max(0.001);
    let (upper, lower) = area.split_vertically(PANEL_HEIGHT * 62 / 100);
    let count_series: Vec<(&str, RGBColor, &[Point])> = vec![
        (
            "memory.events oom_kill",
            RED,
            track
                .memory_events
                .get("oom_kill")
                .map_or(&[][..], Vec::as_slice),
        ),
        (
            "memory.events oom",
            RGBColor(150, 0, 150),
            track
                .memory_events
                .get("oom")
                .map_or(&[][..], Vec::as_slice),
        ),
        ("pids.events max", BLUE, track.pids_max.as_slice()),
        (
            "fork denials (streamed)",
            RGBColor(0, 150, 200),
            track.fork_denials.as_slice(),
        ),
        ("lost events", BLACK, timeline.lost.as_slice()),
    ];
    let top = count_series
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|p| p.value))
        .chain(track.oom_kills_streamed.last().map(|p| p.value))
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            format!(
                "container {id}: OOM kills {} (probes), memory.events oom_kill {}, pids.events \
                 max {}, {} events throttled (counted, not streamed)",
                track.oom_kills_streamed.last().map_or(0.0, |p| p.value),
                track
                    .memory_events
                    .get("oom_kill")
                    .and_then(|s| s.last())
                    .map_or(0.0, |p| p.value),
                track.pids_max.last().map_or(0.0, |p| p.value),
                track.throttled.last().map_or(0.0, |p| p.value)
            ),
            (FONT, 16),
        )
        .margin(8)
        .x_label_area_size(20)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("count (cumulative)")
        .label_style((FONT, 12))
        .draw()?;
    for (i, span) in track.spans.iter().chain(&timeline.spans).enumerate() {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(span.start, 0.0), (span.end, top)],
            RGBColor(225, 232, 250).filled(),
        )))?;
        // Alternate heights: short stretches side by side keep their names readable.
        let height = if i % 2 == 0 { 0.97 } else { 0.90 };
        chart.draw_series(std::iter::once(Text::new(
            span.label.clone(),
            (span.start, top * height),
            (FONT, 12),
        )))?;
    }
    let mut any_series = false;
    for (label, color, points) in &count_series {
        if points.is_empty() {
            continue;
        }
        let color = *color;
        any_series = true;
        chart
            .draw_series(LineSeries::new(steps(points, end), color.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    if !track.oom_kills.is_empty() {
        any_series = true;
        chart
            .draw_series(
                track
                    .oom_kills
                    .iter()
                    .map(|kill| Cross::new((kill.t, kill.n as f64), 4, RED.filled())),
            )?
            .label("OOM kill (probes)")
            .legend(|(x, y)| Cross::new((x + 8, y), 4, RED.filled()));
        chart.draw_series(track.oom_kills.iter().take(KILLS_NAMED).map(|kill| {
            Text::new(
                format!("{} {}", kill.comm, kill.pid),
                (kill.t, kill.n as f64 + top * 0.04),
                (FONT, 11),
            )
        }))?;
    }
    if any_series {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }

    let stall_top = track
        .reclaim_stall_ms
        .iter()
        .map(|p| p.value)
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut stall = ChartBuilder::on(&lower)
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..stall_top)?;
    stall
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("seconds since the log's first record")
        .y_desc(format!("reclaim ms / {:.2} s", timeline.bucket_s))
        .label_style((FONT, 12))
        .draw()?;
    stall.draw_series(track.reclaim_stall_ms.iter().map(|p| {
        Rectangle::new(
            [(p.t, 0.0), (p.t + timeline.bucket_s, p.value)],
            RGBColor(230, 140, 20).filled(),
        )
    }))?;
    Ok(())
}
