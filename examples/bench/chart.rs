//! A small SVG chart of a suite's main numbers: panels side by side, each a grouped bar
//! chart (one group per category, one bar per series) with its own value axis.

use std::fmt::Write;

/// What a suite plots.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The line above the panels.
    pub title: String,
    /// The panels, left to right.
    pub panels: Vec<Panel>,
}

/// One grouped bar chart.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The panel's title, with the unit of its values.
    pub title: String,
    /// The groups along the horizontal axis.
    pub categories: Vec<String>,
    /// The bars of each group; `values[i]` belongs to `categories[i]` (`None`: not
    /// measured, no bar).
    pub series: Vec<Series>,
}

/// One named set of bars, the same colour in every panel.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend's label.
    pub name: String,
    /// One value per category.
    pub values: Vec<Option<f64>>,
}

const PANEL_WIDTH: f64 = 360.0;
const PANEL_HEIGHT: f64 = 240.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const TOP: f64 = 84.0;
const BOTTOM: f64 = 40.0;
const TICKS: usize = 5;
const COLOURS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

/// `n` with thousands separators and `decimals` decimals: `12,345.6`.
pub fn thousands(n: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, n.abs());
    let (whole, fraction) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(w, f)| (w, Some(f)));
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if n < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    match fraction {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// A round step (1, 2 or 5 times a power of ten) giving about [`TICKS`] ticks up to
/// `max`, and the decimals it needs.
fn tick_step(max: f64) -> (f64, usize) {
    let raw = (max / TICKS as f64).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10() - 1e-9).ceil() as usize
    };
    (step, decimals)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Approximate width of one character of the 12 px labels.
const CHAR_WIDTH: f64 = 7.0;
/// The slant of category labels too long to stand side by side, in degrees.
const SLANT: f64 = 35.0;

/// Whether `panel`'s category labels must slant to fit their groups.
fn slanted(panel: &Panel) -> bool {
    let group_width = PANEL_WIDTH / panel.categories.len().max(1) as f64;
    panel
        .categories
        .iter()
        .any(|c| c.chars().count() as f64 * CHAR_WIDTH > group_width * 0.95)
}

/// The height slanted labels of `panel` take below the axis.
fn label_depth(panel: &Panel) -> f64 {
    if !slanted(panel) {
        return 0.0;
    }
    let longest = panel
        .categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0);
    longest as f64 * CHAR_WIDTH * SLANT.to_radians().sin()
}

/// How far slanted labels of `panel` reach left of its first group's centre.
fn label_reach(panel: &Panel) -> f64 {
    if !slanted(panel) {
        return 0.0;
    }
    let first = panel.categories.first().map_or(0, |c| c.chars().count());
    let group_width = PANEL_WIDTH / panel.categories.len().max(1) as f64;
    first as f64 * CHAR_WIDTH * SLANT.to_radians().cos() - group_width / 2.0
}

/// The chart as a standalone SVG document.
pub fn svg(chart: &Chart) -> String {
    let panels = chart.panels.len().max(1) as f64;
    let width = panels * (MARGIN_LEFT + PANEL_WIDTH + MARGIN_RIGHT);
    let depth = chart.panels.iter().map(label_depth).fold(0.0, f64::max);
    let height = TOP + PANEL_HEIGHT + BOTTOM + depth;
    // Room on the left for the first panel's slanted labels, past its axis labels.
    let pad = chart
        .panels
        .first()
        .map_or(0.0, |p| (label_reach(p) - MARGIN_LEFT + 10.0).max(0.0));
    let width = width + pad;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"##,
        width / 2.0,
        escape(&chart.title)
    );
    // One legend for all panels: series are the same in each.
    let names: Vec<&str> = chart
        .panels
        .iter()
        .flat_map(|p| p.series.iter().map(|s| s.name.as_str()))
        .fold(Vec::new(), |mut names, name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names
        });
    let mut x = pad + MARGIN_LEFT;
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="34" width="12" height="12" fill="{}"/><text x="{}" y="44">{}</text>"#,
            COLOURS[i % COLOURS.len()],
            x + 16.0,
            escape(name)
        );
        x += 24.0 + CHAR_WIDTH * name.chars().count() as f64;
    }
    for (p, panel) in chart.panels.iter().enumerate() {
        let left = pad + p as f64 * (MARGIN_LEFT + PANEL_WIDTH + MARGIN_RIGHT) + MARGIN_LEFT;
        draw_panel(&mut out, panel, left, &names);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, left: f64, names: &[&str]) {
    let bottom = TOP + PANEL_HEIGHT;
    let max = panel
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (step, decimals) = tick_step(if max > 0.0 { max } else { 1.0 });
    let top_value = (max / step).ceil().max(1.0) * step;
    let y = |v: f64| bottom - v / top_value * PANEL_HEIGHT;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        left + PANEL_WIDTH / 2.0,
        TOP - 8.0,
        escape(&panel.title)
    );
    let mut tick = 0.0;
    while tick <= top_value + step / 2.0 {
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{ty}" y2="{ty}" stroke="#dddddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            left + PANEL_WIDTH,
            left - 6.0,
            y(tick) + 4.0,
            thousands(tick, decimals),
            ty = y(tick),
        );
        tick += step;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{left}" x2="{left}" y1="{TOP}" y2="{bottom}" stroke="#333333"/><line x1="{left}" x2="{}" y1="{bottom}" y2="{bottom}" stroke="#333333"/>"##,
        left + PANEL_WIDTH
    );
    let groups = panel.categories.len().max(1) as f64;
    let group_width = PANEL_WIDTH / groups;
    let bar_width = group_width * 0.8 / panel.series.len().max(1) as f64;
    let slant = slanted(panel);
    for (c, category) in panel.categories.iter().enumerate() {
        let group_left = left + c as f64 * group_width + group_width * 0.1;
        let (x, y_label) = (left + (c as f64 + 0.5) * group_width, bottom + 18.0);
        let _ = if slant {
            writeln!(
                out,
                r#"<text x="{x}" y="{y_label}" text-anchor="end" transform="rotate(-{SLANT} {x} {y_label})">{}</text>"#,
                escape(category)
            )
        } else {
            writeln!(
                out,
                r#"<text x="{x}" y="{y_label}" text-anchor="middle">{}</text>"#,
                escape(category)
            )
        };
        for (s, series) in panel.series.iter().enumerate() {
            let Some(value) = series.values.get(c).copied().flatten() else {
                continue;
            };
            if !value.is_finite() {
                continue;
            }
            let colour = names
                .iter()
                .position(|n| *n == series.name)
                .map_or(COLOURS[0], |i| COLOURS[i % COLOURS.len()]);
            let x = group_left + s as f64 * bar_width;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}: {}</title></rect>"#,
                y(value),
                bar_width * 0.92,
                bottom - y(value),
                escape(&series.name),
                thousands(value, decimals + 1),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0, 0), "0");
        assert_eq!(thousands(999.0, 0), "999");
        assert_eq!(thousands(1000.0, 0), "1,000");
        assert_eq!(thousands(1_234_567.891, 2), "1,234,567.89");
        assert_eq!(thousands(-12_345.0, 0), "-12,345");
        assert_eq!(thousands(0.25, 2), "0.25");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(12_376.0), (5000.0, 0));
        assert_eq!(tick_step(0.9), (0.2, 1));
        assert_eq!(tick_step(3.0), (1.0, 0));
    }

    #[test]
    fn svg_has_a_bar_per_value() {
        let chart = Chart {
            title: "t <&>".into(),
            panels: vec![Panel {
                title: "calls/s".into(),
                categories: vec!["1".into(), "4".into()],
                series: vec![
                    Series {
                        name: "a".into(),
                        values: vec![Some(1500.0), None],
                    },
                    Series {
                        name: "b".into(),
                        values: vec![Some(2500.0), Some(10.0)],
                    },
                ],
            }],
        };
        let svg = svg(&chart);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert_eq!(
            svg.matches("<rect x=").count(),
            3 + 2,
            "3 bars + 2 legend keys"
        );
        assert!(svg.contains(">2,500<") || svg.contains(">3,000<"), "{svg}");
    }
}
