//! Reading the cluster: tables and their replicas, tablets, nameservers, ops, schemas,
//! databases and configuration. Every one prints a table, or JSON with `--format=json`.

use serde_json::Value;
use tessera_proto::nameserver::*;
use tessera_proto::tablet::ReplicationMode;

use super::{Call, Command, Flag, Reply, SHOW};
use crate::format::{self, known, size, timestamp, Format, Rows};
use crate::shell::Shell;

pub const COMMANDS: &[Command] = &[
    Command::new(
        "showtable",
        "showtable [name]",
        "replicas of a table (or of every table of the database)",
        (0, 1),
        showtable,
    )
    .flags(&[Flag::Format, Flag::Raw])
    .details(
        "One row per replica: its role, the TTL of the first index, whether the metadata \
         counts it alive, its offset, rows and memory (KiB/MiB/GiB; bytes with --raw or in \
         JSON). Notes under the table say which partitions cannot take writes and which \
         replicas differ from the metadata.",
    ),
    Command::new(
        "showtablet",
        "showtablet",
        "tablets and their state",
        (0, 0),
        showtablet,
    )
    .flags(SHOW),
    Command::new(
        "showsdkendpoint",
        "showsdkendpoint",
        "the endpoints clients reach each tablet at",
        (0, 0),
        showsdkendpoint,
    )
    .flags(SHOW),
    Command::new(
        "showns",
        "showns",
        "nameservers and which one leads",
        (0, 0),
        showns,
    )
    .flags(SHOW),
    Command::new(
        "showopstatus",
        "showopstatus [name [pid]]",
        "ops of the pipeline and their progress",
        (0, 2),
        showopstatus,
    )
    .flags(SHOW)
    .details(
        "execute_time is how long an op ran, or for one still running how long it has \
         been running: the column to watch for a stuck op.",
    ),
    Command::new(
        "showschema",
        "showschema name",
        "columns and indexes of a table",
        (1, 1),
        showschema,
    )
    .flags(SHOW),
    Command::new(
        "info",
        "info name",
        "a table in full: schema, indexes and TTLs, partitions and their leaders, mode",
        (1, 1),
        info,
    )
    .flags(SHOW),
    Command::new(
        "gettablepartition",
        "gettablepartition name pid",
        "one partition's metadata: term, replicas, roles, alive",
        (2, 2),
        gettablepartition,
    )
    .flags(SHOW),
    Command::new("showdb", "showdb", "the databases", (0, 0), showdb).flags(SHOW),
    Command::new(
        "confget",
        "confget [key]",
        "configuration of the cluster",
        (0, 1),
        confget,
    )
    .flags(SHOW),
];

fn showtable(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = ShowTableRequest {
            db: shell.db.clone(),
            name: call.arg(0).to_string(),
        };
        let rows = shell
            .ns(request, |mut c, r| async move { c.show_table(r).await })
            .await?
            .rows;
        let bytes = call.raw || call.format == Format::Json;
        let mut out = Rows::new(&[
            "name",
            "tid",
            "pid",
            "endpoint",
            "role",
            "ttl",
            "is_alive",
            "offset",
            "record_cnt",
            "memused",
            "mode",
        ]);
        for r in &rows {
            let mode = if r.mode == ReplicationMode::Async as i32 {
                "async"
            } else {
                "quorum"
            };
            out.push(vec![
                r.name.clone().into(),
                r.tid.into(),
                r.pid.into(),
                r.endpoint.clone().into(),
                r.role.clone().into(),
                r.ttl
                    .as_ref()
                    .map_or(Value::Null, |t| format::ttl(t).into()),
                if r.is_alive { "yes" } else { "no" }.into(),
                known(r.offset),
                known(r.record_cnt),
                size(r.memused, bytes),
                mode.into(),
            ]);
        }
        let mut noted = Vec::new();
        for r in rows.iter().filter(|r| !r.note.is_empty()) {
            if !noted.contains(&(&r.name, r.pid)) {
                noted.push((&r.name, r.pid));
                out.note(format!(
                    "{} pid {} cannot take writes: {}",
                    r.name, r.pid, r.note
                ));
            }
        }
        let drifted: Vec<_> = rows.iter().filter(|r| !r.drift.is_empty()).collect();
        for r in &drifted {
            out.note(format!(
                "{} pid {} on {} differs from the metadata: {}",
                r.name, r.pid, r.endpoint, r.drift
            ));
        }
        if !drifted.is_empty() {
            out.note(
                "(with auto_failover on the nameserver repairs these; with it off, use \
                 changeleader or recovertable)"
                    .into(),
            );
        }
        Ok(out.render(call.format))
    })
}

async fn tablets(shell: &mut Shell) -> Result<Vec<TabletInfo>, String> {
    Ok(shell
        .ns(ShowTabletRequest {}, |mut c, r| async move {
            c.show_tablet(r).await
        })
        .await?
        .tablets)
}

fn showtablet(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let mut out = Rows::new(&["endpoint", "state", "age"]);
        for t in tablets(shell).await? {
            out.push(vec![
                t.endpoint.into(),
                t.state.into(),
                format::duration(t.age_ms).into(),
            ]);
        }
        Ok(out.render(call.format))
    })
}

fn showsdkendpoint(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        // Clients reach a tablet where it registered: the same endpoint.
        let mut out = Rows::new(&["endpoint", "sdk_endpoint", "state"]);
        for t in tablets(shell).await? {
            out.push(vec![
                t.endpoint.clone().into(),
                t.endpoint.into(),
                t.state.into(),
            ]);
        }
        Ok(out.render(call.format))
    })
}

fn showns(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let list = shell
            .ns(
                ShowNsRequest {},
                |mut c, r| async move { c.show_ns(r).await },
            )
            .await?
            .nameservers;
        let mut out = Rows::new(&["endpoint", "role"]);
        for n in list {
            out.push(vec![n.endpoint.into(), n.role.into()]);
        }
        Ok(out.render(call.format))
    })
}

fn showopstatus(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let pid = if call.args.len() > 1 {
            Some(call.pid(1)?)
        } else {
            None
        };
        let request = ShowOpStatusRequest {
            db: shell.db.clone(),
            name: call.arg(0).to_string(),
            pid,
        };
        let ops = shell
            .ns(request, |mut c, r| async move { c.show_op_status(r).await })
            .await?
            .ops;
        Ok(ops_rows(ops, now_ms()).render(call.format))
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `showopstatus` table: `execute_time` is the run time of an ended op, and the time
/// so far (as of `now_ms`, this machine's clock) of one still running.
pub fn ops_rows(ops: Vec<OpInfo>, now_ms: u64) -> Rows {
    let mut out = Rows::new(&[
        "op_id",
        "op_type",
        "name",
        "pid",
        "status",
        "start_time",
        "execute_time",
        "end_time",
        "cur_task",
    ]);
    for op in ops {
        let ended = tessera_ns_client::nameserver::op_ended(&op);
        let execute = match (ended, op.end_time_ms, op.start_time_ms) {
            (_, _, 0) => Value::Null,
            (true, 0, _) => Value::Null,
            (true, end, start) => format::duration(end.saturating_sub(start)).into(),
            (false, _, start) => format!(
                "{} (running)",
                format::duration(now_ms.saturating_sub(start))
            )
            .into(),
        };
        let cur_task = op
            .tasks
            .get(op.task_index as usize)
            .cloned()
            .map_or(Value::Null, Value::String);
        out.push(vec![
            op.op_id.into(),
            op.op_type.into(),
            op.name.into(),
            op.pid.into(),
            op.status.into(),
            timestamp(op.start_time_ms).into(),
            execute,
            timestamp(op.end_time_ms).into(),
            cur_task,
        ]);
    }
    out
}

/// The `showopstatus` table, as text.
pub fn ops_table(ops: Vec<OpInfo>) -> String {
    ops_rows(ops, now_ms()).render(Format::Table)
}

async fn table_info(shell: &mut Shell, name: &str) -> Result<TableInfo, String> {
    let request = ShowSchemaRequest {
        db: shell.db.clone(),
        name: name.to_string(),
    };
    Ok(shell
        .ns(request, |mut c, r| async move { c.show_schema(r).await })
        .await?
        .table
        .unwrap_or_default())
}

fn column_rows(info: &TableInfo) -> Rows {
    let schema = info.schema.clone().unwrap_or_default();
    let mut columns = Rows::titled("columns", &["#", "Field", "Type", "Null"]);
    for (i, c) in schema.columns.iter().enumerate() {
        let ty = tessera_proto::common::ColumnType::try_from(c.r#type)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("COLUMN_TYPE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| "?".into());
        columns.push(vec![
            (i + 1).into(),
            c.name.clone().into(),
            ty.into(),
            if c.nullable { "YES" } else { "NO" }.into(),
        ]);
    }
    columns
}

fn index_rows(info: &TableInfo) -> Rows {
    let schema = info.schema.clone().unwrap_or_default();
    let mut indexes = Rows::titled("indexes", &["#", "name", "keys", "ts", "ttl", "ttl_type"]);
    for (i, ix) in schema.indexes.iter().filter(|ix| !ix.deleted).enumerate() {
        let ttl = ix.ttl.unwrap_or_default();
        indexes.push(vec![
            (i + 1).into(),
            ix.name.clone().into(),
            ix.key_columns.join("|").into(),
            if ix.ts_column.is_empty() {
                Value::Null
            } else {
                ix.ts_column.clone().into()
            },
            format::ttl_value(&ttl).into(),
            format::ttl_type(&ttl).into(),
        ]);
    }
    indexes
}

fn showschema(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let info = table_info(shell, call.arg(0)).await?;
        Ok(format::render_all(
            &[column_rows(&info), index_rows(&info)],
            call.format,
        ))
    })
}

fn mode_name(mode: i32) -> &'static str {
    if mode == ReplicationMode::Async as i32 {
        "async"
    } else {
        "quorum"
    }
}

fn leader_of(partition: &PartitionMeta) -> Value {
    partition
        .replicas
        .iter()
        .find(|r| r.is_leader)
        .map_or(Value::Null, |r| r.endpoint.clone().into())
}

fn info(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let info = table_info(shell, call.arg(0)).await?;
        let mut table = Rows::titled("table", &["field", "value"]);
        for (field, value) in [
            ("db", Value::from(info.db.clone())),
            ("name", info.name.clone().into()),
            ("tid", info.tid.into()),
            ("partitionnum", info.partition_num.into()),
            ("replicanum", info.replica_num.into()),
            ("replication", mode_name(info.mode).into()),
        ] {
            table.push(vec![field.into(), value]);
        }
        let mut partitions = Rows::titled(
            "partitions",
            &["pid", "leader", "followers", "term", "available"],
        );
        for p in &info.partitions {
            let followers: Vec<&str> = p
                .replicas
                .iter()
                .filter(|r| !r.is_leader)
                .map(|r| r.endpoint.as_str())
                .collect();
            partitions.push(vec![
                p.pid.into(),
                leader_of(p),
                followers.join(",").into(),
                p.term.into(),
                if p.unavailable_reason.is_empty() {
                    "yes".into()
                } else {
                    format!("no: {}", p.unavailable_reason).into()
                },
            ]);
        }
        Ok(format::render_all(
            &[table, column_rows(&info), index_rows(&info), partitions],
            call.format,
        ))
    })
}

fn gettablepartition(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let pid = call.pid(1)?;
        let info = table_info(shell, call.arg(0)).await?;
        let partition = info
            .partitions
            .iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| {
                format!(
                    "table `{}` has no partition {pid} (it has {})",
                    info.name, info.partition_num
                )
            })?;
        let mut out = Rows::new(&["pid", "term", "endpoint", "role", "is_alive", "state"]);
        for r in &partition.replicas {
            let state = if r.joining {
                "joining"
            } else if r.leaving {
                "leaving"
            } else {
                "member"
            };
            out.push(vec![
                pid.into(),
                partition.term.into(),
                r.endpoint.clone().into(),
                if r.is_leader { "leader" } else { "follower" }.into(),
                if r.is_alive { "yes" } else { "no" }.into(),
                state.into(),
            ]);
        }
        if !partition.unavailable_reason.is_empty() {
            out.note(format!(
                "pid {pid} cannot take writes: {}",
                partition.unavailable_reason
            ));
        }
        Ok(out.render(call.format))
    })
}

fn showdb(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let mut out = Rows::new(&["db"]);
        for db in shell.databases().await? {
            out.push(vec![db.into()]);
        }
        Ok(out.render(call.format))
    })
}

fn confget(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = ConfGetRequest {
            key: call.arg(0).to_string(),
        };
        let entries = shell
            .ns(request, |mut c, r| async move { c.conf_get(r).await })
            .await?
            .entries;
        let mut out = Rows::new(&["key", "value"]);
        for e in entries {
            out.push(vec![e.key.into(), e.value.into()]);
        }
        Ok(out.render(call.format))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_op_shows_how_long_it_has_run() {
        let op = |status: &str, start: u64, end: u64| OpInfo {
            op_id: 1,
            op_type: "kChangeLeader".into(),
            status: status.into(),
            start_time_ms: start,
            end_time_ms: end,
            ..Default::default()
        };
        let rows = ops_rows(
            vec![op("kDoing", 1_000, 0), op("kDone", 1_000, 3_500)],
            76_000,
        );
        let json: Value = serde_json::from_str(&rows.render(Format::Json)).unwrap();
        assert_eq!(json["rows"][0]["execute_time"], "1m (running)");
        assert_eq!(json["rows"][1]["execute_time"], "2s");
    }
}
