//! A suite's chart: panels side by side, each a grouped bar chart (one group per
//! category, one bar per series) with its own value axis, drawn as SVG by plotters.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontTransform;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::harness::Result;

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

/// Width of one panel, its value axis included.
const PANEL_WIDTH: u32 = 450;
/// Height of the plotting area of a panel.
const PLOT_HEIGHT: u32 = 240;
/// Room for the chart's title and legend above the panels.
const HEADER: u32 = 52;
/// Room for a panel's title above its plotting area.
const CAPTION: u32 = 28;
/// Width of the value axis's labels.
const Y_LABELS: u32 = 64;
/// Room below the axis for horizontal category labels.
const X_LABELS: u32 = 28;
/// Gap right of each plotting area.
const MARGIN_RIGHT: u32 = 20;
/// Value ticks each panel aims at.
const TICKS: usize = 5;
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xb0, 0x7a, 0xa1),
];
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const AXIS: RGBColor = RGBColor(0x33, 0x33, 0x33);

/// Approximate width of one character of the 12 px labels.
const CHAR_WIDTH: u32 = 7;

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

/// An axis value with thousands separators and no more decimals (up to 3) than it
/// needs: `15,000`, `0.2`, `2.5`.
fn tick_label(value: f64) -> String {
    let decimals = (0..3)
        .find(|&d| {
            let scaled = value * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(3);
    thousands(value, decimals as usize)
}

/// A round step (1, 2 or 5 times a power of ten) giving about [`TICKS`] ticks up to
/// `max`: the axis ends at the first multiple of it at or above the tallest bar.
fn tick_step(max: f64) -> f64 {
    let raw = (max / TICKS as f64).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power)
}

/// Whether `panel`'s category labels must stand upright to fit their groups.
fn upright(panel: &Panel) -> bool {
    let plot_width = PANEL_WIDTH - Y_LABELS - MARGIN_RIGHT;
    let group_width = plot_width as f64 / panel.categories.len().max(1) as f64;
    panel
        .categories
        .iter()
        .any(|c| (c.chars().count() as u32 * CHAR_WIDTH) as f64 > group_width * 0.95)
}

/// The room `panel`'s category labels take below its axis.
fn label_depth(panel: &Panel) -> u32 {
    if !upright(panel) {
        return X_LABELS;
    }
    let longest = panel.categories.iter().map(|c| c.chars().count());
    longest.max().unwrap_or(0) as u32 * CHAR_WIDTH + 12
}

/// A sans-serif font of `px` pixels (plotters' SVG writes sizes divided by 1.24).
fn font(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * 1.24).into_font().into()
}

/// [`font`] in bold.
fn bold(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * 1.24, FontStyle::Bold)
        .into_font()
        .into()
}

/// The series' names in order of first appearance: one legend for all panels.
fn series_names(chart: &Chart) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for series in chart.panels.iter().flat_map(|p| &p.series) {
        if !names.contains(&series.name.as_str()) {
            names.push(&series.name);
        }
    }
    names
}

/// The chart as a standalone SVG document.
pub fn svg(chart: &Chart) -> Result<String> {
    let panels = chart.panels.len().max(1);
    let depth = chart
        .panels
        .iter()
        .map(label_depth)
        .max()
        .unwrap_or(X_LABELS);
    let size = (
        PANEL_WIDTH * panels as u32,
        HEADER + CAPTION + PLOT_HEIGHT + depth,
    );
    let names = series_names(chart);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)?;
        let centre_top = Pos::new(HPos::Center, VPos::Top);
        root.draw(&Text::new(
            chart.title.clone(),
            (size.0 as i32 / 2, 10),
            bold(15.0).pos(centre_top),
        ))?;
        let mut x = Y_LABELS as i32;
        for (i, name) in names.iter().enumerate() {
            root.draw(&Rectangle::new(
                [(x, 32), (x + 12, 44)],
                COLOURS[i % COLOURS.len()].filled(),
            ))?;
            root.draw(&Text::new(
                name.to_string(),
                (x + 16, 38),
                font(12.0).pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
            x += 24 + (CHAR_WIDTH * name.chars().count() as u32) as i32;
        }
        let (_, body) = root.split_vertically(HEADER);
        for (area, panel) in body.split_evenly((1, panels)).iter().zip(&chart.panels) {
            draw_panel(area, panel, &names, depth)?;
        }
        root.present()?;
    }
    Ok(out)
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Panel,
    names: &[&str],
    depth: u32,
) -> Result<()> {
    let max = panel
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let step = tick_step(if max > 0.0 { max } else { 1.0 });
    let top = (max / step).ceil().max(1.0) * step;
    let groups = panel.categories.len().max(1);
    let mut plot = ChartBuilder::on(area)
        .caption(&panel.title, bold(12.0))
        .margin_right(MARGIN_RIGHT)
        .x_label_area_size(depth)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(0f64..groups as f64, 0f64..top)?;
    plot.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(TICKS + 1)
        .y_label_formatter(&|v| tick_label(*v))
        .label_style(font(12.0))
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .axis_style(AXIS)
        .draw()?;

    let bar_width = 0.8 / panel.series.len().max(1) as f64;
    for (s, series) in panel.series.iter().enumerate() {
        let colour = names
            .iter()
            .position(|n| *n == series.name)
            .map_or(COLOURS[0], |i| COLOURS[i % COLOURS.len()]);
        let bars = series.values.iter().enumerate().filter_map(|(c, value)| {
            let value = value.filter(|v| v.is_finite())?;
            let left = c as f64 + 0.1 + s as f64 * bar_width;
            Some(Rectangle::new(
                [(left, 0.0), (left + bar_width * 0.92, value)],
                colour.filled(),
            ))
        });
        plot.draw_series(bars)?;
    }

    // Category labels under the groups' centres; upright (read from the bottom up,
    // ending at the axis) when they are too long to stand side by side.
    let style = match upright(panel) {
        true => font(12.0)
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Right, VPos::Center)),
        false => font(12.0).pos(Pos::new(HPos::Center, VPos::Top)),
    };
    plot.draw_series(panel.categories.iter().enumerate().map(|(c, name)| {
        EmptyElement::at((c as f64 + 0.5, 0.0)) + Text::new(name.clone(), (0, 8), style.clone())
    }))?;
    Ok(())
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
        assert_eq!(tick_step(12_376.0), 5000.0);
        assert_eq!(tick_step(0.9), 0.2);
        assert_eq!(tick_step(3.0), 1.0);
        assert_eq!(tick_label(15_000.0), "15,000");
        assert_eq!(tick_label(0.2), "0.2");
        assert_eq!(tick_label(2.5), "2.5");
    }

    #[test]
    fn svg_has_a_bar_per_value() -> Result<()> {
        let chart = Chart {
            title: "t <&>".into(),
            panels: vec![Panel {
                title: "calls/s".into(),
                categories: vec!["1 agent".into(), "4 agents".into()],
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
        let svg = svg(&chart)?;
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("t &lt;&amp;&gt;"), "the title, escaped: {svg}");
        let fills = |colour: RGBColor| {
            let RGBColor(r, g, b) = colour;
            svg.matches(&format!(r##"fill="#{r:02X}{g:02X}{b:02X}""##))
                .count()
        };
        assert_eq!(fills(COLOURS[0]), 1 + 1, "a: 1 bar + its legend key");
        assert_eq!(fills(COLOURS[1]), 2 + 1, "b: 2 bars + its legend key");
        for label in ["1 agent", "4 agents", "calls/s", "2,500"] {
            assert!(
                svg.contains(&format!(">\n{label}\n<")),
                "{label} missing: {svg}"
            );
        }
        Ok(())
    }
}
