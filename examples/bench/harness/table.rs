//! The tables the suites print, and write to the results page as Markdown.

/// A table of text cells, printed by a run and written to the results page.
#[derive(Debug, Clone)]
pub struct Table {
    /// The column names.
    pub headers: Vec<String>,
    /// One row of cells per line.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with columns `headers` and `rows`.
    pub fn new(headers: &[&str], rows: Vec<Vec<String>>) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows,
        }
    }

    /// As text with right-aligned columns after the first.
    pub fn text(&self) -> String {
        let headers: Vec<&str> = self.headers.iter().map(String::as_str).collect();
        table(&headers, &self.rows)
    }

    /// As a Markdown table.
    pub fn markdown(&self) -> String {
        let headers: Vec<&str> = self.headers.iter().map(String::as_str).collect();
        markdown_table(&headers, &self.rows)
    }
}

/// A Markdown table.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: &[&str]| format!("| {} |\n", cells.join(" | "));
    let mut out = line(headers);
    out.push_str(&line(&vec!["---"; headers.len()]));
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    out
}

/// A text table with right-aligned columns after the first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([headers[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(c, cell)| match c {
                0 => format!("{cell:<w$}", w = widths[c]),
                _ => format!("{cell:>w$}", w = widths[c]),
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = vec![
        line(headers.to_vec()),
        line(rule.iter().map(String::as_str).collect()),
    ];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// Microseconds as milliseconds with three decimals.
pub fn ms(micros: f64) -> String {
    format!("{:.3}", micros / 1000.0)
}
