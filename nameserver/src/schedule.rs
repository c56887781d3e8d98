//! Snapshots on a schedule, so binlogs do not grow without bound: every partition gets a
//! MakeSnapshot op each interval, or once a day at a given hour (UTC).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::state::Nameserver;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSchedule {
    Off,
    Every(Duration),
    /// Once a day, during this hour (UTC, 0–23).
    DailyAt(u32),
}

/// (day number, hour) now, in UTC.
fn utc_day_and_hour() -> (u64, u32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400, ((secs / 3_600) % 24) as u32)
}

pub async fn run_snapshot_schedule(
    ns: Arc<Nameserver>,
    schedule: SnapshotSchedule,
    mut stop: watch::Receiver<bool>,
) {
    if schedule == SnapshotSchedule::Off {
        return;
    }
    let check = match schedule {
        SnapshotSchedule::Every(interval) => interval.min(Duration::from_secs(60)),
        _ => Duration::from_secs(60),
    };
    let mut last_run = Instant::now();
    let mut last_day = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = stop.changed() => return,
        }
        if !ns.is_leader() {
            continue;
        }
        let (day, hour) = utc_day_and_hour();
        let due = match schedule {
            SnapshotSchedule::Every(interval) => last_run.elapsed() >= interval,
            SnapshotSchedule::DailyAt(at) => hour == at && last_day != Some(day),
            SnapshotSchedule::Off => false,
        };
        if !due {
            continue;
        }
        match ns.snapshot_everything().await {
            Ok(started) => info!(started, "scheduled snapshots started"),
            Err(e) => warn!(error = %e, "scheduled snapshots failed to start"),
        }
        last_run = Instant::now();
        last_day = Some(day);
    }
}
