//! Sums up the runs of `scripts/chaos.sh`: per schedule its faults, operations and
//! anomalies, then per fault kind how long the cluster took to take writes again.
//!
//!   chaos-report <run folder>…   (each holding result.json and faults.jsonl)

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_tests::chaos::record::{read_faults, summary, RunSummary};

fn main() -> ExitCode {
    let folders: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if folders.is_empty() {
        eprintln!("usage: chaos-report <run folder>… (as written by scripts/chaos.sh)");
        return ExitCode::from(2);
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(vec![
        "seed",
        "faults",
        "operations",
        "anomalies",
        "problems",
    ]);
    let mut faults = Vec::new();
    let mut failed = 0;
    let mut totals = RunSummary::default();
    for folder in &folders {
        let result: Option<RunSummary> = std::fs::read_to_string(folder.join("result.json"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let Some(result) = result else {
            table.add_row(vec![
                folder.display().to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "no result.json (the run did not finish)".into(),
            ]);
            failed += 1;
            continue;
        };
        faults.extend(read_faults(&folder.join("faults.jsonl")).unwrap_or_default());
        if !result.passed() {
            failed += 1;
        }
        totals.faults += result.faults;
        totals.operations += result.operations;
        totals.anomalies += result.anomalies;
        table.add_row(vec![
            result.seed.to_string(),
            result.faults.to_string(),
            result.operations.to_string(),
            result.anomalies.to_string(),
            result.problems.len().to_string(),
        ]);
    }
    println!("{table}\n");
    println!(
        "{} schedules, {} faults, {} operations, {} anomalies, {failed} failed\n",
        folders.len(),
        totals.faults,
        totals.operations,
        totals.anomalies
    );
    println!("{}", summary(&faults));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
