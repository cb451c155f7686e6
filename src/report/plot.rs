//! PNG plots with plotters' bitmap backend. Text uses DejaVu Sans, embedded in the binary
//! (`assets/fonts/`), so plots render the same on a machine without fonts.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 540);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../../assets/fonts/DejaVuSans.ttf"),
        )
        .map_err(|_| anyhow!("the embedded DejaVu Sans font did not load"));
    });
    res
}

fn err<E: std::fmt::Debug>(path: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e:?}", path.display())
}

/// Lines over steps: `series` = (name, [(step, value)]).
pub fn line_plot(path: &Path, title: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    register_font()?;
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(anyhow!("nothing to plot for {}", path.display()));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .label_style((FONT, 14))
        .draw()
        .map_err(err(path))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err(path))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}

/// Grouped bars: one group per label, one bar per model. `values[m][l]` (None = missing).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    labels: &[String],
    models: &[String],
    values: &[Vec<Option<f64>>],
) -> Result<()> {
    register_font()?;
    let top = values.iter().flatten().flatten().fold(0f64, |a, &b| a.max(b)).max(1e-9) * 1.4; // headroom for the legend
    let bottom = values.iter().flatten().flatten().fold(0f64, |a, &b| a.min(b)) * 1.15;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let n = labels.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, bottom..top)
        .map_err(err(path))?;
    let labels_owned = labels.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 && i < labels_owned.len() {
                labels_owned[i].clone()
            } else {
                String::new()
            }
        })
        .label_style((FONT, 11))
        .y_desc("score")
        .draw()
        .map_err(err(path))?;
    let width = 0.8 / models.len().max(1) as f64;
    for (m, name) in models.iter().enumerate() {
        let c = COLORS[m % COLORS.len()];
        let bars = values[m].iter().enumerate().filter_map(|(l, v)| {
            v.map(|v| {
                let x = l as f64 + 0.1 + m as f64 * width;
                Rectangle::new([(x, 0.0), (x + width * 0.95, v)], c.filled())
            })
        });
        chart
            .draw_series(bars)
            .map_err(err(path))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err(path))?;
    root.present().map_err(err(path))?;
    Ok(())
}
