//! How the commands print what they found: readings one register a line, and
//! rows as an aligned table, CSV or JSON.

use crate::cli::FormatArgs;
use crate::reading::PollReport;

/// Prints one poll's readings, one register a line.
pub(super) fn print_readings(report: &PollReport, indent: &str) {
    for r in &report.readings {
        let reg = report.register(r);
        let unit = reg
            .unit
            .as_deref()
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        let detail = r
            .detail
            .as_deref()
            .map(|d| format!("  {d}"))
            .unwrap_or_default();
        println!(
            "{indent}{:<16} {:>6} {:>14}{unit:<6} {:<9}{detail}",
            reg.name,
            reg.address.0,
            r.value.for_people(),
            r.quality.as_str()
        );
    }
}

/// A number in a table, as people read it (see [`crate::reading::Value::for_people`]).
pub(super) fn number(n: f64) -> String {
    crate::reading::Value::Number(n).for_people()
}

pub(super) fn json_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows as JSON (their serde form), CSV (the serde field names as the
/// header) or an aligned table with the given columns.
pub(super) fn print_rows<T: serde::Serialize>(
    rows: &[T],
    format: FormatArgs,
    columns: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if format.json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else if format.csv {
        print_csv(rows, columns)?;
    } else {
        print_table(rows, columns, cells);
    }
    Ok(())
}

fn print_csv<T: serde::Serialize>(rows: &[T], columns: &[&str]) -> anyhow::Result<()> {
    let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
        .iter()
        .map(|r| match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => anyhow::bail!("a row is not an object"),
            Err(e) => Err(e.into()),
        })
        .collect::<anyhow::Result<_>>()?;
    let header: Vec<String> = match objects.first() {
        Some(first) => first.keys().cloned().collect(),
        None => columns.iter().map(|c| c.to_lowercase()).collect(),
    };
    println!("{}", csv_line(header.iter().map(String::as_str)));
    for o in &objects {
        let cells: Vec<String> = header
            .iter()
            .map(|k| o.get(k).map(json_cell).unwrap_or_default())
            .collect();
        println!("{}", csv_line(cells.iter().map(String::as_str)));
    }
    Ok(())
}

fn print_table<T>(rows: &[T], columns: &[&str], cells: impl Fn(&T) -> Vec<String>) {
    print_aligned(columns, &rows.iter().map(&cells).collect::<Vec<_>>());
    if rows.is_empty() {
        eprintln!("no readings in that range");
    }
}

/// Prints `table` under `columns`, each column as wide as its widest cell.
pub(super) fn print_aligned(columns: &[&str], table: &[Vec<String>]) {
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .chain([columns[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.to_vec());
    for r in table {
        line(r.iter().map(String::as_str).collect());
    }
}

/// One CSV record (RFC 4180): fields with a comma, quote or line break are
/// quoted, quotes doubled.
fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    fields
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Fails, after the readings were printed, when any value could not be
/// read: `read` and `check --probe` exit 1 then, so a script can tell, with
/// the first failure's detail on stderr.
pub(super) fn fail_if_bad(bad: usize, total: usize, detail: &str) -> anyhow::Result<()> {
    if bad > 0 {
        anyhow::bail!(
            "{bad} of {total} values could not be read: {detail}; check the address, the unit id and the register kind"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::csv_line;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(
            csv_line(["a", "b,c", "say \"hi\"", "x\ny"].into_iter()),
            "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\""
        );
    }
}
