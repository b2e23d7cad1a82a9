//! SVG charts with plotters' SVG backend (text is SVG text, so no system
//! fonts are needed): latency distributions, throughput against
//! concurrency, and a figure per case (propagation latency against the
//! registry's size).

use std::path::Path;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Chart size in pixels.
const SIZE: (u32, u32) = (820, 480);

/// The colour of series `i`.
fn colour(i: usize) -> RGBColor {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    COLOURS[i % COLOURS.len()]
}

/// Latency (log scale) against percentile, one line per series: x is the
/// number of nines, so 90 %, 99 % and 99.9 % are evenly spaced.
pub(crate) fn latency_distribution(
    path: &Path,
    title: &str,
    series: &[(String, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(label, hist)| {
            let points = (0..=40)
                .map(|step| {
                    // 0 to 4 nines (99.99 %), in tenths of a nine.
                    let nines = f64::from(step) / 10.0;
                    let q = 1.0 - 10f64.powf(-nines);
                    let ms = hist.value_at_quantile(q.min(1.0)) as f64 / 1000.0;
                    (nines, ms.max(0.001))
                })
                .collect();
            (label.clone(), points)
        })
        .collect();
    let max = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.01, f64::max);
    let min = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(max, f64::min);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..4f64, ((min * 0.8)..(max * 1.25)).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .x_labels(5)
        .x_label_formatter(&|nines| match nines.round() as i32 {
            0 => "0%".to_owned(),
            1 => "90%".to_owned(),
            2 => "99%".to_owned(),
            3 => "99.9%".to_owned(),
            _ => "99.99%".to_owned(),
        })
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (label, points)) in curves.into_iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart)?;
    root.present().map_err(|e| anyhow!("{e}"))
}

/// Throughput against concurrency (log scale), one line per series.
pub(crate) fn throughput(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(usize, f64)>)],
) -> anyhow::Result<()> {
    let max_x = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let max_y = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..max_x * 1.1).log_scale(), 0f64..max_y * 1.15)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("concurrency (callers, log scale)")
        .y_desc("calls per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (label, points)) in series.iter().enumerate() {
        let c = colour(i);
        let points: Vec<(f64, f64)> = points.iter().map(|(x, y)| (*x as f64, *y)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    legend(&mut chart)?;
    root.present().map_err(|e| anyhow!("{e}"))
}

/// One value per case and series (e.g. p99 propagation in ms for each
/// registry load, registryd and etcd), as points joined by lines.
pub(crate) fn by_case(
    path: &Path,
    title: &str,
    y_desc: &str,
    cases: &[String],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let max_y = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.001, f64::max);
    let n = cases.len().max(1);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..max_y * 1.15)
        .map_err(|e| anyhow!("{e}"))?;
    let labels = cases.to_vec();
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (label, values)) in series.iter().enumerate() {
        let c = colour(i);
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(x, v)| (x as f64, *v))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 5, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    legend(&mut chart)?;
    root.present().map_err(|e| anyhow!("{e}"))
}

fn legend<'a, DB, X, Y>(chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))
}
