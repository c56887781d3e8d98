//! How the shell prints: tables with the columns operators know (comfy-table), or JSON
//! for scripts (`--format=json`), from the same rows; and the units it prints in.

use comfy_table::{presets, Table};
use serde_json::{Map, Value};

/// How a show command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        match text.to_ascii_lowercase().as_str() {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown format `{other}` (table or json)")),
        }
    }
}

/// A table to print: named columns, rows of cells, and notes under it. A cell is a JSON
/// value, so that JSON output keeps numbers as numbers; `null` prints as `-`.
pub struct Rows {
    /// Names the table when a command prints several (JSON: its key).
    title: &'static str,
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    notes: Vec<String>,
}

impl Rows {
    pub fn new(columns: &[&str]) -> Rows {
        Rows::titled("", columns)
    }

    pub fn titled(title: &'static str, columns: &[&str]) -> Rows {
        Rows {
            title,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// A line printed under the table (JSON: in `notes`).
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.table(),
            Format::Json => {
                serde_json::to_string_pretty(&self.json()).expect("JSON of plain values")
            }
        }
    }

    fn table(&self) -> String {
        let mut out = table(&self.columns);
        for row in &self.rows {
            out.add_row(row.iter().map(cell_text).collect::<Vec<_>>());
        }
        let mut text = out.to_string();
        for note in &self.notes {
            text.push('\n');
            text.push_str(note);
        }
        text
    }

    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                Value::Object(
                    self.columns
                        .iter()
                        .cloned()
                        .zip(row.iter().cloned())
                        .collect::<Map<_, _>>(),
                )
            })
            .collect();
        let mut object = Map::new();
        object.insert("rows".into(), Value::Array(rows));
        if !self.notes.is_empty() {
            object.insert(
                "notes".into(),
                Value::Array(self.notes.iter().cloned().map(Value::String).collect()),
            );
        }
        Value::Object(object)
    }
}

/// Several tables printed one after another (JSON: one object keyed by their titles).
pub fn render_all(sections: &[Rows], format: Format) -> String {
    match format {
        Format::Table => sections
            .iter()
            .map(|s| s.table())
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Json => {
            let object: Map<String, Value> = sections
                .iter()
                .map(|s| (s.title.to_string(), s.json()))
                .collect();
            serde_json::to_string_pretty(&Value::Object(object)).expect("JSON of plain values")
        }
    }
}

fn cell_text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn table<S: ToString>(header: &[S]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::ASCII_FULL_CONDENSED)
        .set_header(header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    table
}

/// A count the server reports as -1 when it does not know it: `null`.
pub fn known(n: i64) -> Value {
    if n < 0 {
        Value::Null
    } else {
        Value::from(n)
    }
}

/// A size: human units (`1.5 MiB`), or bytes with `raw` (and always in JSON, where
/// the caller passes `raw`); -1 (unknown) is `null`.
pub fn size(bytes: i64, raw: bool) -> Value {
    if bytes < 0 {
        Value::Null
    } else if raw {
        Value::from(bytes)
    } else {
        Value::String(human_bytes(bytes as u64))
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of milliseconds since the epoch; `-` for 0.
pub fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A duration in its largest whole unit: `850ms`, `12s`, `5m`, `3h`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}s", ms / 1000),
        60_000..=3_599_999 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

/// Minutes in the largest unit that divides them: `0m`, `90m`, `2h`, `7d`.
pub fn minutes(n: u64) -> String {
    if n > 0 && n.is_multiple_of(1440) {
        format!("{}d", n / 1440)
    } else if n > 0 && n.is_multiple_of(60) {
        format!("{}h", n / 60)
    } else {
        format!("{n}m")
    }
}

/// An index's TTL type as `create table` names it: `absolute`, `latest`, `absandlat`,
/// `absorlat`.
pub fn ttl_type(ttl: &tessera_proto::common::TtlDesc) -> &'static str {
    use tessera_proto::common::TtlType;
    match TtlType::try_from(ttl.ttl_type) {
        Ok(TtlType::Absolute) => "absolute",
        Ok(TtlType::Latest) => "latest",
        Ok(TtlType::AbsAndLat) => "absandlat",
        Ok(TtlType::AbsOrLat) => "absorlat",
        Err(_) => "?",
    }
}

/// An index's TTL value as `create table` writes it: `7d` (absolute), `10` (latest),
/// `1h,10` (both); 0 means kept forever.
pub fn ttl_value(ttl: &tessera_proto::common::TtlDesc) -> String {
    match ttl_type(ttl) {
        "absolute" => minutes(ttl.abs_ttl_minutes),
        "latest" => ttl.lat_ttl.to_string(),
        _ => format!("{},{}", minutes(ttl.abs_ttl_minutes), ttl.lat_ttl),
    }
}

/// Type and value: `absolute 7d`, `latest 10`, `absorlat 1h,10`.
pub fn ttl(ttl: &tessera_proto::common::TtlDesc) -> String {
    format!("{} {}", ttl_type(ttl), ttl_value(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sizes_and_ttls() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(86_400_000), "1970-01-02 00:00:00");
        // A leap day.
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(
            timestamp(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03"
        );
        assert_eq!(duration(1500), "1s");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(size(-1, false), Value::Null);
        assert_eq!(size(2048, true), Value::from(2048));
        assert_eq!(minutes(0), "0m");
        assert_eq!(minutes(90), "90m");
        assert_eq!(minutes(120), "2h");
        assert_eq!(minutes(10_080), "7d");
    }

    #[test]
    fn rows_print_as_a_table_or_as_json() {
        let mut rows = Rows::new(&["name", "offset"]);
        rows.push(vec![Value::from("t1"), known(7)]);
        rows.push(vec![Value::from("t2"), known(-1)]);
        rows.note("t2 pid 0 cannot take writes".into());
        let text = rows.render(Format::Table);
        assert!(text.contains("t1") && text.contains('7') && text.contains(" - "));
        assert!(text.ends_with("t2 pid 0 cannot take writes"), "{text}");
        let json: Value = serde_json::from_str(&rows.render(Format::Json)).unwrap();
        assert_eq!(json["rows"][0]["offset"], 7);
        assert_eq!(json["rows"][1]["offset"], Value::Null);
        assert_eq!(json["notes"][0], "t2 pid 0 cannot take writes");
    }
}
