//! The status page's charts, drawn on the server as inline SVG: readable
//! without JavaScript, and styled with presentation attributes only, which
//! the shop's content security policy allows.
//!
//! Each chart spans the history's window, oldest bucket on the left: the
//! latency (p50 and p99, on a log scale from 0.1 ms to 10 s) on top, counts
//! as bars below, and for an instance its breaker's state as a band.

use std::fmt::Write as _;

use crate::history::{BUCKETS, InstanceHistory, PagePoint};

const WIDTH: f64 = 600.0;
const LEFT: f64 = 46.0;
const RIGHT: f64 = 8.0;
const PLOT: f64 = WIDTH - LEFT - RIGHT;
/// The latency panel.
const LATENCY_TOP: f64 = 6.0;
const LATENCY_HEIGHT: f64 = 60.0;
/// The bars.
const BARS_TOP: f64 = 72.0;
const BARS_HEIGHT: f64 = 24.0;
/// The breaker's band.
const BAND_TOP: f64 = 100.0;
const BAND_HEIGHT: f64 = 10.0;

const P50: &str = "#2b6cb0";
const P99: &str = "#dd6b20";
const CALLS: &str = "#a0aec0";
const FAILURES: &str = "#e53e3e";
const HITS: &str = "#4299e1";
const FALLBACKS: &str = "#d69e2e";
const GRID: &str = "#e2e8f0";
const TEXT: &str = "#4a5568";

/// The colour of a breaker state on the band.
fn state_colour(state: Option<&str>) -> &'static str {
    match state {
        Some("closed") => "#38a169",
        Some("half-open") => "#d69e2e",
        Some("open") => "#e53e3e",
        _ => "#edf2f7",
    }
}

/// Escapes text for an SVG text node or attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn x_of(i: usize) -> f64 {
    LEFT + PLOT * i as f64 / BUCKETS as f64
}

fn bucket_width() -> f64 {
    PLOT / BUCKETS as f64
}

/// The height of a latency on the log scale, 0.1 ms at the bottom, 10 s at
/// the top (clamped).
fn y_of_ms(ms: f64) -> f64 {
    let decades = (ms.max(0.1).log10() + 1.0).clamp(0.0, 5.0);
    LATENCY_TOP + LATENCY_HEIGHT * (1.0 - decades / 5.0)
}

fn open(svg: &mut String, height: f64, label: &str) {
    let label = escape(label);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{label}"><title>{label}</title>"#
    );
}

/// The latency panel's grid, and the p50 and p99 lines.
fn latency(svg: &mut String, p50: &[Option<f64>], p99: &[Option<f64>]) {
    for (ms, label) in [
        (1.0, "1 ms"),
        (10.0, "10 ms"),
        (100.0, "100 ms"),
        (1000.0, "1 s"),
    ] {
        let y = y_of_ms(ms);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{GRID}" stroke-width="1"/><text x="{}" y="{:.1}" font-size="9" text-anchor="end" fill="{TEXT}">{label}</text>"#,
            WIDTH - RIGHT,
            LEFT - 4.0,
            y + 3.0
        );
    }
    for (values, colour, name) in [(p99, P99, "p99"), (p50, P50, "p50")] {
        // One line per run of buckets with calls; a dot for each bucket.
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, svg: &mut String| {
            if run.len() > 1 {
                let _ = write!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
                    run.join(" ")
                );
            }
            run.clear();
        };
        for (i, value) in values.iter().enumerate() {
            match value {
                Some(ms) => {
                    let (x, y) = (x_of(i) + bucket_width() / 2.0, y_of_ms(*ms));
                    run.push(format!("{x:.1},{y:.1}"));
                    let _ = write!(
                        svg,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="2" fill="{colour}" data-series="{name}"><title>{name} {ms} ms</title></circle>"#
                    );
                }
                None => flush(&mut run, svg),
            }
        }
        flush(&mut run, svg);
    }
}

/// Two series of counts as bars from the same baseline, the second over
/// the first.
fn bars(svg: &mut String, under: (&[u64], &str, &str), over: (&[u64], &str, &str)) {
    let most = under.0.iter().chain(over.0).copied().max().unwrap_or(0);
    if most == 0 {
        return;
    }
    // The scale: the tallest bar's count.
    let _ = write!(
        svg,
        r#"<text x="{}" y="{:.1}" font-size="9" text-anchor="end" fill="{TEXT}">{most}</text>"#,
        LEFT - 4.0,
        BARS_TOP + 8.0
    );
    for (values, colour, name) in [under, over] {
        for (i, n) in values.iter().enumerate().filter(|(_, n)| **n > 0) {
            let height = BARS_HEIGHT * *n as f64 / most as f64;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{height:.1}" fill="{colour}" data-series="{name}"><title>{n} {name}</title></rect>"#,
                x_of(i) + 1.0,
                BARS_TOP + BARS_HEIGHT - height,
                bucket_width() - 2.0
            );
        }
    }
}

fn time_axis(svg: &mut String, y: f64) {
    let minutes = BUCKETS as u64 * crate::history::BUCKET.as_secs() / 60;
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="{y}" font-size="9" fill="{TEXT}">−{minutes} min</text><text x="{}" y="{y}" font-size="9" text-anchor="end" fill="{TEXT}">now</text>"#,
        WIDTH - RIGHT
    );
}

/// An instance's chart: latency, calls and failures, and its breaker band.
pub(crate) fn instance(history: &InstanceHistory) -> String {
    let height = BAND_TOP + BAND_HEIGHT + 12.0;
    let mut svg = String::with_capacity(8 * 1024);
    open(
        &mut svg,
        height,
        &format!(
            "{} at {}: latency, calls and breaker state over the last minutes",
            history.instance, history.address
        ),
    );
    let p50: Vec<_> = history.points.iter().map(|p| p.p50_ms).collect();
    let p99: Vec<_> = history.points.iter().map(|p| p.p99_ms).collect();
    latency(&mut svg, &p50, &p99);
    let calls: Vec<_> = history.points.iter().map(|p| p.calls).collect();
    let failures: Vec<_> = history.points.iter().map(|p| p.failures).collect();
    bars(
        &mut svg,
        (&calls, CALLS, "calls"),
        (&failures, FAILURES, "failures"),
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="{:.1}" font-size="9" text-anchor="end" fill="{TEXT}">breaker</text>"#,
        LEFT - 4.0,
        BAND_TOP + 8.0
    );
    for (i, point) in history.points.iter().enumerate() {
        let state = point.breaker.unwrap_or("not seen");
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{BAND_TOP}" width="{:.1}" height="{BAND_HEIGHT}" fill="{}" class="band" data-state="{state}"><title>{state}</title></rect>"#,
            x_of(i),
            bucket_width() + 0.2,
            state_colour(point.breaker)
        );
    }
    time_axis(&mut svg, height - 1.0);
    svg.push_str("</svg>");
    svg
}

/// The page's chart: its latency, and ratings from the cache.
pub(crate) fn page(points: &[PagePoint]) -> String {
    let height = BARS_TOP + BARS_HEIGHT + 14.0;
    let mut svg = String::with_capacity(8 * 1024);
    open(
        &mut svg,
        height,
        "The shop page: latency, cache hits and fallbacks over the last minutes",
    );
    let p50: Vec<_> = points.iter().map(|p| p.p50_ms).collect();
    let p99: Vec<_> = points.iter().map(|p| p.p99_ms).collect();
    latency(&mut svg, &p50, &p99);
    let hits: Vec<_> = points.iter().map(|p| p.cache_hits).collect();
    let fallbacks: Vec<_> = points.iter().map(|p| p.fallbacks).collect();
    bars(
        &mut svg,
        (&hits, HITS, "cache hits"),
        (&fallbacks, FALLBACKS, "fallbacks"),
    );
    time_axis(&mut svg, height - 1.0);
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::InstancePoint;

    fn point(i: usize, breaker: Option<&'static str>, p99: Option<f64>) -> InstancePoint {
        InstancePoint {
            ago_s: (BUCKETS - 1 - i) as u64 * 10,
            calls: 10,
            failures: u64::from(breaker == Some("open")),
            p50_ms: p99.map(|ms| ms / 2.0),
            p99_ms: p99,
            breaker,
        }
    }

    #[test]
    fn an_instance_chart_has_a_band_rect_per_bucket_with_its_state() {
        let points = (0..BUCKETS)
            .map(|i| match i {
                10 => point(i, Some("open"), Some(1000.0)),
                11 => point(i, Some("half-open"), None),
                _ => point(i, Some("closed"), Some(0.5)),
            })
            .collect();
        let svg = instance(&InstanceHistory {
            service: "ratings",
            instance: "ratings-<1>".to_owned(),
            address: "http://127.0.0.1:8001".to_owned(),
            points,
        });
        assert_eq!(svg.matches(r#"class="band""#).count(), BUCKETS);
        assert_eq!(svg.matches(r#"data-state="open""#).count(), 1);
        assert_eq!(svg.matches(r#"data-state="half-open""#).count(), 1);
        assert!(svg.contains("ratings-&lt;1&gt;"), "names are escaped");
        assert!(
            !svg.contains("style="),
            "no inline style: the CSP forbids it"
        );
        // The spike: the open bucket's p99 is drawn near the 1 s line.
        assert!(svg.contains("p99 1000 ms"));
    }

    #[test]
    fn the_log_scale_puts_slower_higher() {
        assert!(y_of_ms(1000.0) < y_of_ms(1.0));
        assert_eq!(y_of_ms(0.01), y_of_ms(0.1));
        assert_eq!(y_of_ms(1e9), LATENCY_TOP);
    }
}
