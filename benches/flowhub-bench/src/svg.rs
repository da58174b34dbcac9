//! A small SVG line-chart writer for the report's plots: axes with round ticks, one polyline
//! per series, a legend. Plain text, no fonts beyond the viewer's sans-serif, no dependencies.

use std::fmt::Write;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart panel. The x values are plotted as given: for a logarithmic or "nines" axis the
/// caller maps them and names the ticks in `x_ticks`.
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Ticks on the x axis (position, label); empty: round numbers over the range.
    pub x_ticks: Vec<(f64, String)>,
    /// The y axis starts at zero (else at the smallest value).
    pub y_from_zero: bool,
    /// A logarithmic y axis (ticks at powers of ten; values ≤ 0 are left out).
    pub y_log: bool,
}

impl Chart {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Chart {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            x_ticks: Vec::new(),
            y_from_zero: true,
            y_log: false,
        }
    }

    pub fn series(mut self, name: &str, points: Vec<(f64, f64)>) -> Chart {
        let points = points
            .into_iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        self.series.push(Series {
            name: name.into(),
            points,
        });
        self
    }

    /// The panel as SVG elements, drawn in the box (`x`, `y`, `w`, `h`).
    fn panel(&self, out: &mut String, x: f64, y: f64, w: f64, h: f64) {
        let (left, right, top, bottom) = (x + 70.0, x + w - 20.0, y + 34.0, y + h - 46.0);
        // On a log axis the values are plotted as their logarithms.
        let series: Vec<(&str, Vec<(f64, f64)>)> = self
            .series
            .iter()
            .map(|s| {
                let pts = s
                    .points
                    .iter()
                    .filter(|p| !self.y_log || p.1 > 0.0)
                    .map(|p| (p.0, if self.y_log { p.1.log10() } else { p.1 }))
                    .collect();
                (s.name.as_str(), pts)
            })
            .collect();
        let all = || series.iter().flat_map(|s| s.1.iter());
        let (mut x0, mut x1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
        let (mut y0, mut y1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
        for (t, _) in &self.x_ticks {
            x0 = x0.min(*t);
            x1 = x1.max(*t);
        }
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if self.y_from_zero && !self.y_log {
            y0 = y0.min(0.0);
        }
        if self.y_log {
            y0 = y0.floor();
            y1 = y1.ceil();
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        let y_ticks = if self.y_log {
            (y0 as i32..=y1 as i32).map(f64::from).collect()
        } else {
            nice_ticks(y0, y1)
        };
        y0 = y0.min(y_ticks[0]);
        y1 = y1.max(*y_ticks.last().unwrap_or(&y1));
        let sx = |v: f64| left + (v - x0) / (x1 - x0) * (right - left);
        let sy = |v: f64| bottom - (v - y0) / (y1 - y0) * (bottom - top);
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
            (left + right) / 2.0,
            y + 20.0,
            esc(&self.title)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            right - left,
            bottom - top
        );
        for t in &y_ticks {
            let py = sy(*t);
            let _ = writeln!(
                out,
                r##"<line x1="{left:.1}" y1="{py:.1}" x2="{right:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                left - 5.0,
                py + 4.0,
                if self.y_log {
                    label(10f64.powf(*t))
                } else {
                    label(*t)
                }
            );
        }
        let x_ticks: Vec<(f64, String)> = if self.x_ticks.is_empty() {
            nice_ticks(x0, x1)
                .into_iter()
                .filter(|t| *t >= x0 && *t <= x1)
                .map(|t| (t, label(t)))
                .collect()
        } else {
            self.x_ticks.clone()
        };
        for (t, l) in &x_ticks {
            let px = sx(*t);
            let _ = writeln!(
                out,
                r##"<line x1="{px:.1}" y1="{top:.1}" x2="{px:.1}" y2="{bottom:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                bottom + 15.0,
                esc(l)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            (left + right) / 2.0,
            bottom + 34.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
            x + 16.0,
            (top + bottom) / 2.0,
            x + 16.0,
            (top + bottom) / 2.0,
            esc(&self.y_label)
        );
        for (i, (name, points)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<String> = points
                .iter()
                .map(|(px, py)| format!("{:.1},{:.1}", sx(*px), sy(*py)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
            if points.len() <= 40 {
                for (px, py) in points {
                    let _ = writeln!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                        sx(*px),
                        sy(*py)
                    );
                }
            }
            let ly = top + 16.0 + 16.0 * i as f64;
            let _ = writeln!(
                out,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
                left + 10.0,
                ly - 4.0,
                left + 30.0,
                ly - 4.0,
                left + 36.0,
                ly,
                esc(name)
            );
        }
    }
}

/// One SVG document with the panels stacked top to bottom, each `w` × `h`.
pub fn document(panels: &[&Chart], w: f64, h: f64) -> String {
    let total = h * panels.len() as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{total:.0}" viewBox="0 0 {w:.0} {total:.0}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    for (i, c) in panels.iter().enumerate() {
        c.panel(&mut out, 0.0, h * i as f64, w, h);
    }
    out.push_str("</svg>\n");
    out
}

/// About five round ticks (1, 2 or 5 times a power of ten) covering `lo..=hi`.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| raw <= *s)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let mut ticks = Vec::new();
    let mut t = first;
    while t <= hi + step * 0.999 && ticks.len() < 20 {
        ticks.push(t);
        t += step;
    }
    ticks
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(0.0, 73.0);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().expect("ticks") >= 73.0);
    }

    #[test]
    fn a_document_is_one_svg_with_every_series_and_escaped_text() {
        let c = Chart::new("a <b> & c", "x", "y")
            .series("one", vec![(0.0, 1.0), (1.0, 2.0)])
            .series("two", vec![(0.0, 2.0), (1.0, f64::NAN)]);
        let svg = document(&[&c, &c], 600.0, 300.0);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn a_log_axis_has_decade_ticks() {
        let mut c = Chart::new("t", "x", "µs").series("a", vec![(0.0, 15.0), (1.0, 2500.0)]);
        c.y_log = true;
        let svg = document(&[&c], 600.0, 300.0);
        for t in [">10<", ">100<", ">1000<", ">10000<"] {
            assert!(svg.contains(t), "{t} in {svg}");
        }
    }
}
