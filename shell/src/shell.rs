//! The `ns_client` commands: parsing, calling the nameserver, and drawing the answers
//! with the columns operators know from OpenMLDB.

use comfy_table::{presets, Table};
use tessera_proto::nameserver::*;
use tessera_proto::tablet::ReplicationMode;

use tessera_ns_client::nameserver::NameserverConnection;

/// One command: its name, how to call it, what it does, and how many arguments it takes.
pub struct CommandSpec {
    pub name: &'static str,
    pub usage: &'static str,
    pub help: &'static str,
    min_args: usize,
    max_args: usize,
}

const fn spec(
    name: &'static str,
    usage: &'static str,
    help: &'static str,
    min_args: usize,
    max_args: usize,
) -> CommandSpec {
    CommandSpec {
        name,
        usage,
        help,
        min_args,
        max_args,
    }
}

pub const COMMANDS: &[CommandSpec] = &[
    spec(
        "help",
        "help [command]",
        "list the commands, or explain one",
        0,
        1,
    ),
    spec(
        "showtable",
        "showtable [name]",
        "replicas of a table (or of every table of the database)",
        0,
        1,
    ),
    spec("showtablet", "showtablet", "tablets and their state", 0, 0),
    spec("showns", "showns", "nameservers and which one leads", 0, 0),
    spec(
        "showopstatus",
        "showopstatus [name [pid]]",
        "ops of the pipeline and their progress",
        0,
        2,
    ),
    spec(
        "showschema",
        "showschema name",
        "columns and indexes of a table",
        1,
        1,
    ),
    spec("showdb", "showdb", "the databases", 0, 0),
    spec("use", "use db", "switch the current database", 1, 1),
    spec(
        "confget",
        "confget [key]",
        "configuration of the cluster",
        0,
        1,
    ),
    spec(
        "confset",
        "confset auto_failover true|false",
        "change the configuration",
        2,
        2,
    ),
    spec(
        "offlineendpoint",
        "offlineendpoint endpoint",
        "take a tablet's replicas offline (new leaders where it led)",
        1,
        1,
    ),
    spec(
        "recoverendpoint",
        "recoverendpoint endpoint",
        "bring a returned tablet's replicas back",
        1,
        1,
    ),
    spec(
        "recovertable",
        "recovertable name pid endpoint",
        "bring one replica back",
        3,
        3,
    ),
    spec(
        "changeleader",
        "changeleader name pid [endpoint|auto] [force]",
        "give a partition a new leader",
        2,
        4,
    ),
    spec(
        "migrate",
        "migrate src_endpoint name pid_group dst_endpoint",
        "move follower replicas to another tablet",
        4,
        4,
    ),
    spec(
        "addreplica",
        "addreplica name pid_group endpoint",
        "add a follower replica",
        3,
        3,
    ),
    spec(
        "delreplica",
        "delreplica name pid_group endpoint",
        "remove a follower replica",
        3,
        3,
    ),
    spec(
        "makesnapshot",
        "makesnapshot name pid",
        "snapshot a partition",
        2,
        2,
    ),
    spec(
        "updatetablealive",
        "updatetablealive name pid|* endpoint yes|no",
        "mark replicas alive or dead in the metadata",
        4,
        4,
    ),
    spec(
        "cancelop",
        "cancelop op_id",
        "cancel an unfinished op",
        1,
        1,
    ),
    spec(
        "drop",
        "drop table name | drop user NAME",
        "drop a table and its replicas, or a user",
        2,
        2,
    ),
    spec("grant", crate::users::GRANT_USAGE, "give a user a privilege (select: read rows, insert: write rows, all: both and administer)", 5, 6),
    spec("revoke", crate::users::REVOKE_USAGE, "take a privilege back", 5, 6),
    spec("alter", crate::users::ALTER_USAGE, "change a user's password (your own, or anyone's as an administrator)", 4, usize::MAX),
    spec("show", "show users", "the users and their privileges", 1, 1),
    spec("put", "put table value…", "write a row (one value per column; NULL for null; quote strings with spaces)", 2, usize::MAX),
    spec("get", "get table key…", "the newest row of a key of the first index", 2, usize::MAX),
    spec("scan", "scan table key… [max_ts [min_ts [limit]]]", "rows of a key, newest first", 2, usize::MAX),
    spec("count", "count table [key…]", "rows of a key, or of the whole table", 1, usize::MAX),
    spec("preview", "preview table [limit]", "the first rows of a table (default 10)", 1, 2),
    spec("delete", "delete table key…", "delete the rows of a key", 2, usize::MAX),
    spec("load", crate::jobs::LOAD_USAGE, "import a CSV file into a table (a taskmanager job)", 1, usize::MAX),
    spec("export", crate::jobs::EXPORT_USAGE, "export a table to a CSV file (a taskmanager job)", 1, usize::MAX),
    spec("showjobs", "showjobs", "the taskmanager's jobs and their progress", 0, 0),
    spec("showjob", "showjob id", "one job in full", 1, 1),
    spec("stopjob", "stopjob id", "stop a job that has not ended", 1, 1),
    spec(
        "create",
        "create table name (col type [not null], …, index(key=col|(cols), ts=col, ttl=N, ttl_type=…)) [options (partitionnum=N, replicanum=N, replication='quorum'|'async')] | create user NAME options (password='…')",
        "create a table, or a user",
        2,
        usize::MAX,
    ),
];

pub fn find(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != b[j]))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// The known command closest to `name`, if any is close.
pub fn nearest(name: &str) -> Option<&'static str> {
    COMMANDS
        .iter()
        .map(|c| (levenshtein(name, c.name), c.name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

/// `0`, `1,3`, `0-3` → the partition ids.
pub fn parse_pid_group(text: &str) -> Result<Vec<u32>, String> {
    let bad = || format!("`{text}` is not a pid group (examples: 0, 1,3, 0-3)");
    let mut pids = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to): (u32, u32) = (
                    from.trim().parse().map_err(|_| bad())?,
                    to.trim().parse().map_err(|_| bad())?,
                );
                if from > to {
                    return Err(bad());
                }
                pids.extend(from..=to);
            }
            None => pids.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    Ok(pids)
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::ASCII_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

fn number(n: i64) -> String {
    if n < 0 {
        "-".into()
    } else {
        n.to_string()
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of milliseconds since the epoch; `-` for 0.
fn timestamp(ms: u64) -> String {
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

/// The `showopstatus` table.
pub fn ops_table(ops: Vec<OpInfo>) -> String {
    let mut out = table(&[
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
        let end = if op.end_time_ms > 0 {
            op.end_time_ms
        } else {
            0
        };
        let execute = if end > 0 {
            end.saturating_sub(op.start_time_ms)
        } else {
            0
        };
        let cur_task = op
            .tasks
            .get(op.task_index as usize)
            .cloned()
            .unwrap_or_else(|| "-".into());
        out.add_row(vec![
            op.op_id.to_string(),
            op.op_type,
            op.name,
            op.pid.to_string(),
            op.status,
            timestamp(op.start_time_ms),
            if end > 0 {
                duration(execute)
            } else {
                "-".into()
            },
            timestamp(end),
            cur_task,
        ]);
    }
    out.to_string()
}

fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}s", ms / 1000),
        60_000..=3_599_999 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

pub struct Shell {
    ns: NameserverConnection,
    /// For the job commands.
    taskmanager: Option<tessera_ns_client::nameserver::TaskManagerConnection>,
    /// For the data commands.
    data: Option<tessera_ns_client::Client>,
    pub db: String,
}

type Outcome = Result<String, String>;

fn status_text(status: tonic::Status) -> String {
    status.message().to_string()
}

impl Shell {
    pub fn new(ns: NameserverConnection) -> Shell {
        Shell {
            ns,
            taskmanager: None,
            data: None,
            db: "default".into(),
        }
    }

    /// Names of the current database's tables (for completion); empty if unreachable.
    pub async fn table_names(&mut self) -> Vec<String> {
        let db = self.db.clone();
        let rows = self
            .ns
            .call(|mut c| {
                let request = ShowTableRequest {
                    db: db.clone(),
                    name: String::new(),
                };
                async move { c.show_table(request).await }
            })
            .await
            .map(|r| r.into_inner().rows)
            .unwrap_or_default();
        let mut names: Vec<String> = rows.into_iter().map(|r| r.name).collect();
        names.dedup();
        names
    }

    /// Enables put, get, scan, count, preview and delete through the SDK.
    pub fn with_data(mut self, client: tessera_ns_client::Client) -> Shell {
        self.data = Some(client);
        self
    }

    /// Enables load, export, showjobs, showjob and stopjob through the taskmanager.
    pub fn with_taskmanager(
        mut self,
        taskmanager: tessera_ns_client::nameserver::TaskManagerConnection,
    ) -> Shell {
        self.taskmanager = Some(taskmanager);
        self
    }

    /// The job commands: submitted to, or read from, the taskmanager leader.
    async fn job_command(&mut self, name: &str, line: &str, args: &[&str]) -> Outcome {
        use tessera_proto::taskmanager::JobIdRequest;
        let request = match name {
            "load" => Some(crate::jobs::parse_load(line, &self.db)?),
            "export" => Some(crate::jobs::parse_export(line, &self.db)?),
            _ => None,
        };
        let Some(tm) = self.taskmanager.as_mut() else {
            return Err("this shell has no taskmanager connection".into());
        };
        if let Some(request) = request {
            let job = tm
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.submit_job(r).await }
                })
                .await
                .map_err(status_text)?
                .into_inner();
            return Ok(format!(
                "job {} submitted: {} of {}.{} ({}); `showjob {}` follows it",
                job.id, job.job_type, job.db, job.table, job.path, job.id
            ));
        }
        let id = |i: usize| -> Result<u64, String> {
            args[i]
                .parse()
                .map_err(|_| format!("`{}` is not a job id", args[i]))
        };
        match name {
            "showjobs" => {
                let jobs = tm
                    .call(|mut c| async move {
                        c.show_jobs(tessera_proto::taskmanager::ShowJobsRequest {})
                            .await
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .jobs;
                let mut out = table(&[
                    "id",
                    "job_type",
                    "state",
                    "table",
                    "progress",
                    "start_time",
                    "end_time",
                    "error",
                ]);
                for job in jobs {
                    out.add_row(vec![
                        job.id.to_string(),
                        job.job_type.clone(),
                        job.state.clone(),
                        if job.table.is_empty() {
                            "-".into()
                        } else {
                            format!("{}.{}", job.db, job.table)
                        },
                        crate::jobs::progress(&job),
                        timestamp(job.start_time_ms),
                        timestamp(job.end_time_ms),
                        job.error.clone(),
                    ]);
                }
                Ok(out.to_string())
            }
            "showjob" => {
                let id = id(0)?;
                let job = tm
                    .call(|mut c| async move { c.show_job(JobIdRequest { id }).await })
                    .await
                    .map_err(status_text)?
                    .into_inner();
                let options = job.options.clone().unwrap_or_default();
                let mut out = table(&["field", "value"]);
                for (field, value) in [
                    ("id", job.id.to_string()),
                    ("job_type", job.job_type.clone()),
                    ("state", job.state.clone()),
                    ("table", format!("{}.{}", job.db, job.table)),
                    ("path", job.path.clone()),
                    (
                        "options",
                        format!(
                            "header={}, delimiter='{}', skip_bad_rows={}",
                            options.header,
                            if options.delimiter.is_empty() {
                                ","
                            } else {
                                &options.delimiter
                            },
                            options.skip_bad_rows
                        ),
                    ),
                    ("progress", crate::jobs::progress(&job)),
                    ("skipped", job.skipped.to_string()),
                    ("start_time", timestamp(job.start_time_ms)),
                    ("end_time", timestamp(job.end_time_ms)),
                    ("taskmanager", job.endpoint.clone()),
                    ("error", job.error.clone()),
                ] {
                    out.add_row(vec![field.to_string(), value]);
                }
                Ok(out.to_string())
            }
            _ => {
                let id = id(0)?;
                let job = tm
                    .call(|mut c| async move { c.stop_job(JobIdRequest { id }).await })
                    .await
                    .map_err(status_text)?
                    .into_inner();
                Ok(format!("job {} {}", job.id, job.state.to_ascii_lowercase()))
            }
        }
    }

    /// Runs one statement; the text to print, or the error to report.
    pub async fn execute(&mut self, line: &str) -> Outcome {
        let line = line.trim().trim_end_matches(';').trim();
        if crate::users::is_user_statement(line) {
            // The password's quotes matter: the raw line.
            return crate::users::run(&mut self.ns, line).await;
        }
        let owned = split_words(line)?;
        let words: Vec<&str> = owned.iter().map(String::as_str).collect();
        let Some((&name, args)) = words.split_first() else {
            return Ok(String::new());
        };
        let name_lower = name.to_ascii_lowercase();
        let Some(command) = find(&name_lower) else {
            return Err(match nearest(&name_lower) {
                Some(near) => {
                    format!("unknown command `{name}`; did you mean `{near}`? (`help` lists them)")
                }
                None => format!("unknown command `{name}` (`help` lists them)"),
            });
        };
        if args.len() < command.min_args || args.len() > command.max_args {
            return Err(format!("usage: {}", command.usage));
        }
        if ["load", "export", "showjobs", "showjob", "stopjob"].contains(&command.name) {
            // load and export parse the raw line: their quotes and punctuation matter.
            return self.job_command(command.name, line, args).await;
        }
        self.run(command, args).await
    }

    async fn run(&mut self, command: &CommandSpec, args: &[&str]) -> Outcome {
        if ["put", "get", "scan", "count", "preview", "delete"].contains(&command.name) {
            return self.data_command(command, args).await;
        }
        if command.name == "create" {
            let statement = format!("create {}", args.join(" "));
            let request = crate::create_table::parse(&statement, &self.db)?;
            let table = self
                .ns
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.create_table(r).await }
                })
                .await
                .map_err(status_text)?
                .into_inner()
                .table
                .unwrap_or_default();
            return Ok(format!(
                "Create table {} ok (tid {}, {} partitions, {} replicas)",
                table.name, table.tid, table.partition_num, table.replica_num
            ));
        }
        let db = self.db.clone();
        let arg = |i: usize| args.get(i).map(|s| s.to_string()).unwrap_or_default();
        let pid_of = |i: usize| -> Result<u32, String> {
            args[i]
                .parse()
                .map_err(|_| format!("`{}` is not a partition id", args[i]))
        };
        match command.name {
            "help" => Ok(help(args.first().copied())),
            "use" => {
                self.db = arg(0);
                Ok(format!("Database changed to {}", self.db))
            }
            "showtable" => {
                let request = ShowTableRequest { db, name: arg(0) };
                let rows = self
                    .ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.show_table(r).await }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .rows;
                let mut out = table(&[
                    "name",
                    "tid",
                    "pid",
                    "endpoint",
                    "role",
                    "is_alive",
                    "offset",
                    "record_cnt",
                    "memused",
                    "mode",
                ]);
                let mut notes = Vec::new();
                for r in &rows {
                    let mode = if r.mode == ReplicationMode::Async as i32 {
                        "async"
                    } else {
                        "quorum"
                    };
                    out.add_row(vec![
                        r.name.clone(),
                        r.tid.to_string(),
                        r.pid.to_string(),
                        r.endpoint.clone(),
                        r.role.clone(),
                        if r.is_alive { "yes" } else { "no" }.to_string(),
                        number(r.offset),
                        number(r.record_cnt),
                        number(r.memused),
                        mode.to_string(),
                    ]);
                    if !r.note.is_empty()
                        && !notes.contains(&(r.name.clone(), r.pid, r.note.clone()))
                    {
                        notes.push((r.name.clone(), r.pid, r.note.clone()));
                    }
                }
                let mut text = out.to_string();
                for (name, pid, note) in notes {
                    text.push_str(&format!("\n{name} pid {pid} cannot take writes: {note}"));
                }
                let drifted: Vec<_> = rows.iter().filter(|r| !r.drift.is_empty()).collect();
                for r in &drifted {
                    text.push_str(&format!(
                        "\n{} pid {} on {} differs from the metadata: {}",
                        r.name, r.pid, r.endpoint, r.drift
                    ));
                }
                if !drifted.is_empty() {
                    text.push_str(
                        "\n(with auto_failover on the nameserver repairs these; with it off, \
                         use changeleader or recovertable)",
                    );
                }
                Ok(text)
            }
            "showdb" => {
                let dbs = self
                    .ns
                    .call(|mut c| async move { c.show_db(ShowDbRequest {}).await })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .dbs;
                let mut out = table(&["db"]);
                for db in dbs {
                    out.add_row(vec![db]);
                }
                Ok(out.to_string())
            }
            "showtablet" => {
                let tablets = self
                    .ns
                    .call(|mut c| async move { c.show_tablet(ShowTabletRequest {}).await })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .tablets;
                let mut out = table(&["endpoint", "state", "age"]);
                for t in tablets {
                    out.add_row(vec![t.endpoint, t.state, duration(t.age_ms)]);
                }
                Ok(out.to_string())
            }
            "showns" => {
                let list = self
                    .ns
                    .call(|mut c| async move { c.show_ns(ShowNsRequest {}).await })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .nameservers;
                let mut out = table(&["endpoint", "role"]);
                for n in list {
                    out.add_row(vec![n.endpoint, n.role]);
                }
                Ok(out.to_string())
            }
            "showopstatus" => {
                let pid = if args.len() > 1 {
                    Some(pid_of(1)?)
                } else {
                    None
                };
                let request = ShowOpStatusRequest {
                    db,
                    name: arg(0),
                    pid,
                };
                let ops = self
                    .ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.show_op_status(r).await }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .ops;
                Ok(ops_table(ops))
            }
            "showschema" => {
                let request = ShowSchemaRequest { db, name: arg(0) };
                let info = self
                    .ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.show_schema(r).await }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .table
                    .unwrap_or_default();
                let schema = info.schema.unwrap_or_default();
                let mut columns = table(&["#", "Field", "Type", "Null"]);
                for (i, c) in schema.columns.iter().enumerate() {
                    let ty = tessera_proto::common::ColumnType::try_from(c.r#type)
                        .map(|t| {
                            t.as_str_name()
                                .trim_start_matches("COLUMN_TYPE_")
                                .to_ascii_lowercase()
                        })
                        .unwrap_or_else(|_| "?".into());
                    columns.add_row(vec![
                        (i + 1).to_string(),
                        c.name.clone(),
                        ty,
                        if c.nullable { "YES" } else { "NO" }.into(),
                    ]);
                }
                let mut indexes = table(&["#", "name", "keys", "ts", "ttl", "ttl_type"]);
                for (i, ix) in schema.indexes.iter().enumerate() {
                    let ttl = ix.ttl.unwrap_or_default();
                    let kind = tessera_proto::common::TtlType::try_from(ttl.ttl_type)
                        .map(|t| {
                            t.as_str_name()
                                .trim_start_matches("TTL_TYPE_")
                                .replace('_', "")
                                .to_ascii_lowercase()
                        })
                        .unwrap_or_else(|_| "?".into());
                    indexes.add_row(vec![
                        (i + 1).to_string(),
                        ix.name.clone(),
                        ix.key_columns.join("|"),
                        if ix.ts_column.is_empty() {
                            "-".into()
                        } else {
                            ix.ts_column.clone()
                        },
                        format!("{}m,{}", ttl.abs_ttl_minutes, ttl.lat_ttl),
                        kind,
                    ]);
                }
                Ok(format!("{columns}\n{indexes}"))
            }
            "confget" => {
                let key = arg(0);
                let entries = self
                    .ns
                    .call(|mut c| {
                        let key = key.clone();
                        async move { c.conf_get(ConfGetRequest { key }).await }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .entries;
                let mut out = table(&["key", "value"]);
                for e in entries {
                    out.add_row(vec![e.key, e.value]);
                }
                Ok(out.to_string())
            }
            "confset" => {
                let (key, value) = (arg(0), arg(1));
                self.ns
                    .call(|mut c| {
                        let request = ConfSetRequest {
                            key: key.clone(),
                            value: value.clone(),
                        };
                        async move { c.conf_set(request).await }
                    })
                    .await
                    .map_err(status_text)?;
                Ok(format!("set {key} ok"))
            }
            "offlineendpoint" | "recoverendpoint" => {
                let endpoint = arg(0);
                let offline = command.name == "offlineendpoint";
                let ops = self
                    .ns
                    .call(|mut c| {
                        let request = EndpointRequest {
                            endpoint: endpoint.clone(),
                        };
                        async move {
                            if offline {
                                c.offline_endpoint(request).await
                            } else {
                                c.recover_endpoint(request).await
                            }
                        }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .ops;
                Ok(started(&ops))
            }
            "recovertable" => {
                let request = RecoverTableRequest {
                    db,
                    name: arg(0),
                    pid: pid_of(1)?,
                    endpoint: arg(2),
                };
                let ops = self
                    .ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.recover_table(r).await }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .ops;
                Ok(started(&ops))
            }
            "changeleader" => {
                let mut candidate = String::new();
                let mut force = false;
                for word in &args[2..] {
                    match *word {
                        "force" => force = true,
                        "auto" => {}
                        endpoint => candidate = endpoint.to_string(),
                    }
                }
                let request = ChangeLeaderRequest {
                    db,
                    name: arg(0),
                    pid: pid_of(1)?,
                    candidate,
                    force,
                };
                let ops = self
                    .ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.change_leader(r).await }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .ops;
                let mut text = started(&ops);
                if force {
                    text.push_str(
                        "\nforced: acknowledged writes the chosen replica lacks are lost",
                    );
                }
                Ok(text)
            }
            "migrate" | "addreplica" | "delreplica" => {
                let request = match command.name {
                    "migrate" => ReplicaRequest {
                        db,
                        name: arg(1),
                        pids: parse_pid_group(args[2])?,
                        endpoint: arg(3),
                        source: arg(0),
                    },
                    _ => ReplicaRequest {
                        db,
                        name: arg(0),
                        pids: parse_pid_group(args[1])?,
                        endpoint: arg(2),
                        source: String::new(),
                    },
                };
                let which = command.name;
                let ops = self
                    .ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move {
                            match which {
                                "migrate" => c.migrate(r).await,
                                "addreplica" => c.add_replica(r).await,
                                _ => c.del_replica(r).await,
                            }
                        }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .ops;
                Ok(started(&ops))
            }
            "makesnapshot" => {
                let request = PartitionsRequest {
                    db,
                    name: arg(0),
                    pids: vec![pid_of(1)?],
                };
                let ops = self
                    .ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.make_snapshot(r).await }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .ops;
                Ok(started(&ops))
            }
            "updatetablealive" => {
                let pids = if args[1] == "*" {
                    Vec::new()
                } else {
                    parse_pid_group(args[1])?
                };
                let alive = match args[3] {
                    "yes" => true,
                    "no" => false,
                    other => {
                        return Err(format!(
                            "`{other}` must be yes or no; usage: {}",
                            command.usage
                        ))
                    }
                };
                let request = UpdateTableAliveRequest {
                    db,
                    name: arg(0),
                    pids,
                    endpoint: arg(2),
                    alive,
                };
                let updated = self
                    .ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.update_table_alive(r).await }
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .updated;
                Ok(format!("update ok: {updated} partition(s)"))
            }
            "cancelop" => {
                let op_id: u64 = args[0]
                    .parse()
                    .map_err(|_| format!("`{}` is not an op id", args[0]))?;
                self.ns
                    .call(|mut c| async move { c.cancel_op(OpIdRequest { op_id }).await })
                    .await
                    .map_err(status_text)?;
                Ok(format!("cancel op {op_id} ok"))
            }
            "drop" => {
                if !args[0].eq_ignore_ascii_case("table") {
                    return Err(format!("usage: {}", command.usage));
                }
                let request = DropTableRequest { db, name: arg(1) };
                self.ns
                    .call(|mut c| {
                        let r = request.clone();
                        async move { c.drop_table(r).await }
                    })
                    .await
                    .map_err(status_text)?;
                Ok(format!("drop table {} ok", arg(1)))
            }
            other => Err(format!("`{other}` is not available yet")),
        }
    }
}

impl Shell {
    async fn data_command(&mut self, command: &CommandSpec, args: &[&str]) -> Outcome {
        let Some(client) = &self.data else {
            return Err("data commands need a connection to the cluster".into());
        };
        let (db, name) = (self.db.clone(), args[0].to_string());
        let schema = client.schema(&db, &name).await.map_err(|e| e.to_string())?;
        let key_columns = schema
            .indexes
            .first()
            .map(|ix| ix.key_columns.clone())
            .unwrap_or_default();
        let rest = &args[1..];
        let key = |texts: &[&str]| -> Result<Vec<tessera_common::Value>, String> {
            if texts.len() < key_columns.len() {
                return Err(format!(
                    "{} needs {} key value(s); usage: {}",
                    name,
                    key_columns.len(),
                    command.usage
                ));
            }
            key_columns
                .iter()
                .zip(texts)
                .map(|(&pos, text)| schema.columns[pos].parse_value(text))
                .collect()
        };
        let draw = |rows: Vec<Vec<tessera_common::Value>>| {
            let header: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
            let mut out = table(&header);
            let count = rows.len();
            for row in rows {
                out.add_row(row.iter().map(|v| v.to_string()).collect::<Vec<_>>());
            }
            format!("{out}\n{count} row(s)")
        };
        let e = |err: tessera_ns_client::ClientError| err.to_string();
        match command.name {
            "put" => {
                if rest.len() != schema.columns.len() {
                    return Err(format!(
                        "{name} has {} columns, {} values were given",
                        schema.columns.len(),
                        rest.len()
                    ));
                }
                let row = schema
                    .columns
                    .iter()
                    .zip(rest)
                    .map(|(column, text)| column.parse_value(text))
                    .collect::<Result<Vec<_>, _>>()?;
                let (term, offset) = client.put(&db, &name, row).await.map_err(e)?;
                Ok(format!("put ok (term {term}, offset {offset})"))
            }
            "get" => {
                let row = client.get(&db, &name, key(rest)?).await.map_err(e)?;
                Ok(draw(row.into_iter().collect()))
            }
            "scan" => {
                let key_values = key(rest)?;
                let numbers = rest[key_columns.len()..]
                    .iter()
                    .map(|t| {
                        t.parse::<i64>()
                            .map_err(|_| format!("`{t}` is not a number; usage: {}", command.usage))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let rows = client
                    .scan(
                        &db,
                        &name,
                        key_values,
                        numbers.first().copied(),
                        numbers.get(1).copied(),
                        numbers.get(2).map_or(0, |n| *n as u32),
                    )
                    .await
                    .map_err(e)?;
                Ok(draw(rows))
            }
            "count" => {
                let key_values = if rest.is_empty() {
                    Vec::new()
                } else {
                    key(rest)?
                };
                Ok(format!(
                    "count: {}",
                    client.count(&db, &name, key_values).await.map_err(e)?
                ))
            }
            "preview" => {
                let limit = match rest.first() {
                    Some(t) => t
                        .parse()
                        .map_err(|_| format!("`{t}` is not a number; usage: {}", command.usage))?,
                    None => 10,
                };
                Ok(draw(client.preview(&db, &name, limit).await.map_err(e)?))
            }
            _ => {
                let deleted = client.delete(&db, &name, key(rest)?).await.map_err(e)?;
                Ok(format!("delete ok: {deleted} row(s)"))
            }
        }
    }
}

/// Splits a command line into words; '…' and "…" quote words with spaces.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => current.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            None => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("a quoted value is not closed".into());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

fn started(ops: &[OpInfo]) -> String {
    let ids: Vec<String> = ops
        .iter()
        .map(|op| format!("{} ({} pid {})", op.op_id, op.op_type, op.pid))
        .collect();
    format!(
        "ok; ops started: {}",
        if ids.is_empty() {
            "none".into()
        } else {
            ids.join(", ")
        }
    )
}

fn help(command: Option<&str>) -> String {
    match command.and_then(find) {
        Some(c) => format!("{}\n  {}", c.usage, c.help),
        None => {
            let mut out = table(&["command", "what it does"]);
            for c in COMMANDS {
                out.add_row(vec![c.usage, c.help]);
            }
            out.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_and_pid_groups() {
        assert_eq!(nearest("showtabel"), Some("showtable"));
        assert_eq!(nearest("confst"), Some("confset"));
        assert_eq!(nearest("xyzzyplugh"), None);
        assert_eq!(parse_pid_group("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_pid_group("1,3").unwrap(), vec![1, 3]);
        assert!(parse_pid_group("3-1").is_err());
        assert!(parse_pid_group("a").is_err());
    }

    #[test]
    fn words_and_values() {
        assert_eq!(
            split_words("put t 'a b' 1").unwrap(),
            vec!["put", "t", "a b", "1"]
        );
        assert_eq!(split_words("get t ''").unwrap(), vec!["get", "t", ""]);
        assert!(split_words("put t 'open").is_err());
        let column = tessera_common::Column {
            name: "v".into(),
            ty: tessera_common::ColumnType::Int64,
            nullable: true,
        };
        assert_eq!(
            column.parse_value("42").unwrap(),
            tessera_common::Value::Int64(42)
        );
        assert_eq!(
            column.parse_value("NULL").unwrap(),
            tessera_common::Value::Null
        );
        assert!(column.parse_value("x").unwrap_err().contains("column `v`"));
    }

    #[test]
    fn times() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(86_400_000), "1970-01-02 00:00:00");
        // A leap day.
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(
            timestamp(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03"
        );
        assert_eq!(duration(1500), "1s");
    }
}
