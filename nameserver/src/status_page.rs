//! The status page at `/` on the nameserver's own port: tablets and their health, every
//! table's partitions with their replicas, offsets, lag and alive state, running and
//! recent ops, `auto_failover`, and a warning banner while a partition has no leader.
//! Plain server-rendered HTML that reloads itself every few seconds; a standby answers
//! with a page pointing at the leader.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt::Write;

use tessera_proto::nameserver::{OpInfo, ShowTableRow, TableInfo};

use crate::state::{Leadership, Nameserver};

/// How often the page reloads itself, in seconds.
const REFRESH_SECS: u32 = 2;
/// Ended ops shown under the running ones.
const RECENT_OPS: usize = 20;

/// `&`, `<`, `>`, `"` and `'` as entities: names are restricted, but reasons and notes
/// are free text.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left;font-size:90%}\
th{background:#eee}.ok{color:#176f2c}.bad{color:#b00020;font-weight:bold}\
.warn{color:#8a5a00}.banner{background:#b00020;color:#fff;padding:.6em 1em;\
font-weight:bold;margin-bottom:1em}.muted{color:#777}";

fn page(title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh {
        format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">")
    } else {
        String::new()
    };
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">{refresh}<title>{}</title>\
         <style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

/// What a standby (or a suspended leader) shows: where the leader is.
fn elsewhere(ns: &Nameserver, why: &str, leader: Option<&str>) -> String {
    let link = match leader {
        Some(leader) => format!(
            "<p>The leader is <a id=\"leader\" href=\"http://{0}/\">{0}</a>.</p>",
            escape(leader)
        ),
        None => "<p class=\"bad\">No nameserver leads at the moment.</p>".to_string(),
    };
    page(
        "Tessera: not the leader",
        true,
        &format!(
            "<h1>Tessera nameserver {}</h1><p>{}</p>{link}",
            escape(&ns.endpoint),
            escape(why)
        ),
    )
}

/// The last page rendered and when: every open browser reloads it every few seconds,
/// and each rendering asks every tablet, so pages share one rendering per interval.
static LAST_PAGE: tokio::sync::Mutex<Option<(std::time::Instant, String)>> =
    tokio::sync::Mutex::const_new(None);

/// The page, as this nameserver can give it now (at most one second old).
pub async fn render(ns: &Nameserver) -> String {
    let mut last = LAST_PAGE.lock().await;
    if let Some((at, page)) = last.as_ref() {
        if at.elapsed() < std::time::Duration::from_secs(1) {
            return page.clone();
        }
    }
    let page = render_now(ns).await;
    *last = Some((std::time::Instant::now(), page.clone()));
    page
}

async fn render_now(ns: &Nameserver) -> String {
    match ns.leadership() {
        Leadership::Leading => {}
        Leadership::Suspended => {
            return elsewhere(ns, "This nameserver lost touch with ZooKeeper.", None)
        }
        Leadership::Standby => {
            let leader = ns
                .nameservers()
                .await
                .ok()
                .and_then(|list| list.into_iter().find(|(_, leads)| *leads))
                .map(|(endpoint, _)| endpoint);
            return elsewhere(ns, "This nameserver is a standby.", leader.as_deref());
        }
    }
    // The nameserver's copy: the page refreshes itself, and must not read all metadata
    // from ZooKeeper on each refresh.
    let tables = ns.cached_tables().await;
    let ops = ns.ops().await;
    let auto_failover = ns.auto_failover().await;
    let reports = ns.tablet_reports().await;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Tessera cluster</h1><p>Nameserver leader <b>{}</b> · auto_failover \
         <b id=\"auto-failover\">{}</b> · refreshed every {REFRESH_SECS} s</p>",
        escape(&ns.endpoint),
        match auto_failover {
            Ok(true) => "on".to_string(),
            Ok(false) => "<span class=\"warn\">off</span>".to_string(),
            Err(e) => format!(
                "<span class=\"bad\">unknown: {}</span>",
                escape(&e.to_string())
            ),
        }
    );
    let tables = match tables {
        Ok(tables) => tables,
        Err(e) => {
            let _ = write!(
                body,
                "<div class=\"banner\">The metadata cannot be read: {}</div>",
                escape(&e.to_string())
            );
            return page("Tessera cluster", true, &body);
        }
    };
    let leaderless = leaderless(&tables);
    if !leaderless.is_empty() {
        let _ = write!(
            body,
            "<div class=\"banner\" id=\"leaderless\">{} partition(s) without a leader: {}</div>",
            leaderless.len(),
            escape(&leaderless.join(", "))
        );
    }
    tablets_section(ns, &mut body);
    let rows = crate::state::replica_rows(&tables, &reports);
    tables_section(&tables, &rows, &mut body);
    match ops {
        Ok(ops) => ops_section(&ops, &mut body),
        Err(e) => {
            let _ = write!(
                body,
                "<h2>Ops</h2><p class=\"bad\">The ops cannot be read: {}</p>",
                escape(&e.to_string())
            );
        }
    }
    page("Tessera cluster", true, &body)
}

/// `db.table pid N` of every partition with no alive leader.
pub(crate) fn leaderless<T: Borrow<TableInfo>>(tables: &[T]) -> Vec<String> {
    tables
        .iter()
        .map(Borrow::borrow)
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| !p.replicas.iter().any(|r| r.is_leader && r.is_alive))
                .map(move |p| format!("{}.{} pid {}", t.db, t.name, p.pid))
        })
        .collect()
}

fn tablets_section(ns: &Nameserver, body: &mut String) {
    let mut tablets = ns.tablets();
    tablets.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    body.push_str(
        "<h2>Tablets</h2><table id=\"tablets\"><tr><th>endpoint</th><th>state</th>\
         <th>for</th></tr>",
    );
    for t in &tablets {
        let class = if t.state == "kTabletHealthy" {
            "ok"
        } else {
            "bad"
        };
        let _ = write!(
            body,
            "<tr data-endpoint=\"{0}\"><td>{0}</td><td class=\"{class}\">{1}</td>\
             <td>{2}</td></tr>",
            escape(&t.endpoint),
            escape(&t.state),
            age(t.age_ms)
        );
    }
    body.push_str("</table>");
}

fn age(ms: u64) -> String {
    match ms {
        0..=59_999 => format!("{} s", ms / 1000),
        60_000..=3_599_999 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

fn tables_section<T: Borrow<TableInfo>>(tables: &[T], rows: &[ShowTableRow], body: &mut String) {
    body.push_str("<h2>Tables</h2>");
    if tables.is_empty() {
        body.push_str("<p class=\"muted\">No tables.</p>");
    }
    // The rows of each partition, in the metadata's order.
    let mut by_partition: BTreeMap<(u32, u32), Vec<&ShowTableRow>> = BTreeMap::new();
    for row in rows {
        by_partition
            .entry((row.tid, row.pid))
            .or_default()
            .push(row);
    }
    for table in tables {
        let table: &TableInfo = table.borrow();
        let _ = write!(
            body,
            "<h3>{}.{} <span class=\"muted\">tid {}, {} partition(s), {} replica(s)</span></h3>\
             <table class=\"partitions\"><tr><th>pid</th><th>endpoint</th><th>role</th>\
             <th>alive</th><th>offset</th><th>lag</th><th>rows</th><th>note</th></tr>",
            escape(&table.db),
            escape(&table.name),
            table.tid,
            table.partition_num,
            table.replica_num
        );
        for partition in &table.partitions {
            let replicas = by_partition
                .get(&(table.tid, partition.pid))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let leader_offset = replicas
                .iter()
                .find(|r| r.role == "leader" && r.offset >= 0)
                .map(|r| r.offset);
            for r in replicas {
                let lag = match (leader_offset, r.role.as_str(), r.offset) {
                    (Some(leader), "follower", offset) if offset >= 0 => {
                        (leader - offset).max(0).to_string()
                    }
                    _ => "-".into(),
                };
                let note = [r.note.as_str(), r.drift.as_str()]
                    .iter()
                    .filter(|n| !n.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("; ");
                let _ = write!(
                    body,
                    "<tr data-pid=\"{pid}\" data-endpoint=\"{endpoint}\"><td>{pid}</td>\
                     <td>{endpoint}</td><td>{role}</td><td class=\"{alive_class}\">{alive}</td>\
                     <td>{offset}</td><td>{lag}</td><td>{records}</td><td>{note}</td></tr>",
                    pid = partition.pid,
                    endpoint = escape(&r.endpoint),
                    role = escape(&r.role),
                    alive_class = if r.is_alive { "ok" } else { "bad" },
                    alive = if r.is_alive { "yes" } else { "no" },
                    offset = known(r.offset),
                    records = known(r.record_cnt),
                    note = escape(&note),
                );
            }
        }
        body.push_str("</table>");
    }
}

fn known(n: i64) -> String {
    if n < 0 {
        "-".into()
    } else {
        n.to_string()
    }
}

fn ops_section(ops: &[OpInfo], body: &mut String) {
    let now = crate::ops::now_ms();
    let ended = |op: &OpInfo| matches!(op.status.as_str(), "kDone" | "kFailed" | "kCanceled");
    let running: Vec<&OpInfo> = ops.iter().filter(|op| !ended(op)).collect();
    let mut recent: Vec<&OpInfo> = ops.iter().filter(|op| ended(op)).collect();
    recent.sort_by_key(|op| std::cmp::Reverse(op.op_id));
    recent.truncate(RECENT_OPS);
    for (title, id, list) in [
        ("Running ops", "running-ops", running),
        ("Recent ops", "recent-ops", recent),
    ] {
        let _ = write!(body, "<h2>{title}</h2>");
        if list.is_empty() {
            body.push_str("<p class=\"muted\">None.</p>");
            continue;
        }
        let _ = write!(
            body,
            "<table id=\"{id}\"><tr><th>op</th><th>type</th><th>table</th><th>pid</th>\
             <th>endpoint</th><th>status</th><th>task</th><th>time</th><th>reason</th></tr>"
        );
        for op in list {
            let elapsed = if op.start_time_ms == 0 {
                "-".to_string()
            } else if op.end_time_ms > 0 {
                format!("{} ms", op.end_time_ms.saturating_sub(op.start_time_ms))
            } else {
                format!("{} ms so far", now.saturating_sub(op.start_time_ms))
            };
            let status_class = match op.status.as_str() {
                "kFailed" => "bad",
                "kDone" => "ok",
                _ => "warn",
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}.{}</td><td>{}</td><td>{}</td>\
                 <td class=\"{status_class}\">{}</td><td>{}</td><td>{elapsed}</td><td>{}</td></tr>",
                op.op_id,
                escape(&op.op_type),
                escape(&op.db),
                escape(&op.name),
                op.pid,
                escape(&op.endpoint),
                escape(&op.status),
                escape(
                    op.tasks
                        .get(op.task_index as usize)
                        .map_or("-", String::as_str)
                ),
                escape(&op.reason),
            );
        }
        body.push_str("</table>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_is_escaped() {
        assert_eq!(
            escape("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn partitions_without_an_alive_leader_are_named() {
        use tessera_proto::nameserver::{PartitionMeta, ReplicaMeta};
        let replica = |endpoint: &str, is_leader, is_alive| ReplicaMeta {
            endpoint: endpoint.into(),
            is_leader,
            is_alive,
            ..Default::default()
        };
        let table = TableInfo {
            db: "db".into(),
            name: "t".into(),
            partitions: vec![
                PartitionMeta {
                    pid: 0,
                    replicas: vec![replica("a", true, true), replica("b", false, true)],
                    ..Default::default()
                },
                PartitionMeta {
                    pid: 1,
                    replicas: vec![replica("a", true, false), replica("b", false, true)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(leaderless(&[table]), vec!["db.t pid 1"]);
    }
}
