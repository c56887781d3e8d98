//! Tables and databases: `create`, `drop`, `use`, `dropdb`, and changes to a table:
//! `setttl`, `addindex`, `deleteindex`, `addtablefield`. `create user` and
//! `drop user` share their first word and are handed to [`crate::users`].

use tessera_proto::nameserver::*;

use super::{Call, Command, Flag, Reply, MANY};
use crate::shell::Shell;

pub const COMMANDS: &[Command] = &[
    Command::new(
        "create",
        "create table name (col type [not null], …, index(key=col|(cols), ts=col, ttl=N[m|h|d], ttl_type=…)) [options (partitionnum=N, replicanum=N, replication='quorum'|'async')] | create database NAME | create user NAME options (password='…')",
        "create a table, a database, or a user",
        (2, MANY),
        create,
    )
    .statement()
    .details(
        "A statement may span lines until its `;`, interactively or on standard input.\n\
         ttl is minutes by default; 30m, 12h and 7d name the unit. ttl_type is absolute \
         (rows older than ttl go), latest (only the newest ttl rows of a key stay), \
         absandlat or absorlat with ttl=(abs, lat).\n\
         Example: create table t1 (id string, ts timestamp, v double, index(key=id, ts=ts, \
         ttl=7d, ttl_type=absolute)) options (partitionnum=8, replicanum=3);",
    ),
    Command::new(
        "drop",
        "drop table name | drop database NAME | drop user NAME",
        "drop a table and its replicas, an empty database, or a user",
        (2, 2),
        drop,
    )
    .flags(&[Flag::Yes])
    .details(
        "The interactive shell asks before dropping a table or a database; --yes, --cmd \
         and standard input do not ask.",
    ),
    Command::new(
        "dropdb",
        "dropdb NAME",
        "drop a database that holds no tables",
        (1, 1),
        dropdb,
    )
    .flags(&[Flag::Yes]),
    Command::new(
        "setttl",
        "setttl name absolute|latest|absandlat|absorlat ttl [lat_ttl] [index]",
        "change the TTL of a table's index (of every index without one), on every replica",
        (3, 5),
        setttl,
    )
    .details(
        "Times are minutes, or carry a unit: 30m, 12h, 7d. latest counts rows per key. \
         absandlat and absorlat take a time and a count. Reads apply the new TTL at once \
         and the next collection removes what it expires; rows a shorter TTL removed do \
         not come back. A replica whose tablet is down takes the TTL when it returns.\n\
         Examples: setttl t1 absolute 7d | setttl t1 latest 10 index_b | \
         setttl t1 absorlat 1h 100",
    ),
    Command::new(
        "addindex",
        "addindex name index_name [col[,col…]] [ts_col]",
        "add an index to a table, built from its rows on every replica",
        (2, 4),
        addindex,
    )
    .details(
        "The key columns default to the column named like the index. Without a ts column \
         rows are ordered by write time. The new index takes the first index's TTL (change \
         it with setttl). Every partition's leader logs the change and builds the index \
         from the rows it holds while reads and writes go on; followers do the same when \
         they apply it. Rows whose key or ts column is NULL are not in the index.\n\
         Examples: addindex t1 city | addindex t1 by_user_day user,day ts",
    ),
    Command::new(
        "deleteindex",
        "deleteindex name index_name",
        "drop an index of a table (never the first: it partitions the table)",
        (2, 2),
        deleteindex,
    )
    .details(
        "Reads through the index are refused from then on and its memory is freed; the \
         name can be given to a new index.",
    ),
    Command::new(
        "addtablefield",
        "addtablefield name column_name column_type",
        "append a nullable column to a table; existing rows read it as NULL",
        (3, 3),
        addtablefield,
    )
    .details(
        "Types: bool, smallint, int, bigint, float, double, string, timestamp, date. No \
         row is rewritten. Writers that do not know the column yet may leave it out.\n\
         Example: addtablefield t1 city string",
    ),
    Command::new(
        "use",
        "use db",
        "switch the current database (it must exist)",
        (1, 1),
        use_db,
    ),
];

fn create(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        match call.arg(0).to_ascii_lowercase().as_str() {
            "user" => crate::users::run(shell.nameserver(), &call.line).await,
            "database" => {
                let name = single_name(&call, "create database NAME")?;
                shell
                    .ns(
                        DatabaseRequest { name: name.clone() },
                        |mut c, r| async move { c.create_database(r).await },
                    )
                    .await?;
                Ok(format!("Create database {name} ok"))
            }
            "table" => {
                let request = crate::create_table::parse(&call.line, &shell.db)?;
                let table = shell
                    .ns(request, |mut c, r| async move { c.create_table(r).await })
                    .await?
                    .table
                    .unwrap_or_default();
                Ok(format!(
                    "Create table {} ok (tid {}, {} partitions, {} replicas)",
                    table.name, table.tid, table.partition_num, table.replica_num
                ))
            }
            _ => Err(call.usage_error()),
        }
    })
}

/// The one name after `create database` / `drop database`.
fn single_name(call: &Call, usage: &str) -> Result<String, String> {
    match call.args.as_slice() {
        [_, name] => Ok(name.trim_end_matches(';').to_string()),
        _ => Err(format!("usage: {usage}")),
    }
}

fn drop(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let name = call.arg(1).to_string();
        match call.arg(0).to_ascii_lowercase().as_str() {
            // The statement without its flags.
            "user" => crate::users::run(shell.nameserver(), &format!("drop user {name}")).await,
            "database" => drop_database(shell, &name, call.yes).await,
            "table" => {
                if !shell.confirmed(call.yes, &format!("Drop table {name}?")) {
                    return Ok("Drop cancelled".into());
                }
                let request = DropTableRequest {
                    db: shell.db.clone(),
                    name: name.clone(),
                };
                shell
                    .ns(request, |mut c, r| async move { c.drop_table(r).await })
                    .await?;
                Ok(format!("drop table {name} ok"))
            }
            _ => Err(call.usage_error()),
        }
    })
}

async fn drop_database(shell: &mut Shell, name: &str, yes: bool) -> Result<String, String> {
    if !shell.confirmed(yes, &format!("Drop database {name}?")) {
        return Ok("Drop cancelled".into());
    }
    shell
        .ns(
            DatabaseRequest {
                name: name.to_string(),
            },
            |mut c, r| async move { c.drop_database(r).await },
        )
        .await?;
    if shell.db == name {
        shell.db = crate::shell::DEFAULT_DB.to_string();
    }
    Ok(format!("drop database {name} ok"))
}

fn dropdb(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move { drop_database(shell, call.arg(0), call.yes).await })
}

fn setttl(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        use tessera_proto::common::{TtlDesc, TtlType};
        let count = |i: usize| -> Result<u64, String> {
            call.arg(i).parse().map_err(|_| {
                format!(
                    "`{}` is not a row count; {}",
                    call.arg(i),
                    call.usage_error()
                )
            })
        };
        let time = |i: usize| crate::create_table::parse_minutes(call.arg(i));
        let (ttl_type, abs_ttl_minutes, lat_ttl, next) =
            match call.arg(1).to_ascii_lowercase().as_str() {
                "absolute" => (TtlType::Absolute, time(2)?, 0, 3),
                "latest" => (TtlType::Latest, 0, count(2)?, 3),
                "absandlat" => (TtlType::AbsAndLat, time(2)?, count(3)?, 4),
                "absorlat" => (TtlType::AbsOrLat, time(2)?, count(3)?, 4),
                other => {
                    return Err(format!(
                        "unknown ttl type `{other}` (absolute, latest, absandlat, absorlat)"
                    ))
                }
            };
        if call.args.len() > next + 1 {
            return Err(call.usage_error());
        }
        let request = SetTtlRequest {
            db: shell.db.clone(),
            name: call.arg(0).to_string(),
            index: call.arg(next).to_string(),
            ttl: Some(TtlDesc {
                ttl_type: ttl_type as i32,
                abs_ttl_minutes,
                lat_ttl,
            }),
        };
        let answer = shell
            .ns(request, |mut c, r| async move { c.set_ttl(r).await })
            .await?;
        let text = format!("set ttl ok: {} replica(s) updated", answer.updated);
        Ok(with_pending(text, &answer.pending, "when seen again"))
    })
}

fn addindex(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let name = call.arg(1).to_string();
        let keys = match call.arg(2) {
            "" => name.clone(),
            keys => keys.to_string(),
        };
        let key_columns: Vec<String> = keys.split(',').map(|k| k.trim().to_string()).collect();
        if key_columns.iter().any(String::is_empty) {
            return Err(format!("`{keys}` is not a list of key columns"));
        }
        let index = tessera_proto::common::IndexDesc {
            name,
            key_columns,
            ts_column: call.arg(3).to_string(),
            ..Default::default()
        };
        let change = change_schema_request::Change::AddIndex(index);
        change_schema(shell, &call, change, "addindex").await
    })
}

fn deleteindex(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let change = change_schema_request::Change::DeleteIndex(call.arg(1).to_string());
        change_schema(shell, &call, change, "deleteindex").await
    })
}

fn addtablefield(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let column = tessera_proto::common::ColumnDesc {
            name: call.arg(1).to_string(),
            r#type: crate::create_table::column_type(call.arg(2))? as i32,
            nullable: true,
            ..Default::default()
        };
        let change = change_schema_request::Change::AddColumn(column);
        change_schema(shell, &call, change, "addtablefield").await
    })
}

/// Sends a schema change of table `call.arg(0)` and reports what it did.
async fn change_schema(
    shell: &mut Shell,
    call: &Call,
    change: change_schema_request::Change,
    what: &str,
) -> Result<String, String> {
    let request = ChangeSchemaRequest {
        db: shell.db.clone(),
        name: call.arg(0).to_string(),
        change: Some(change),
    };
    let answer = shell
        .ns(request, |mut c, r| async move { c.change_schema(r).await })
        .await?;
    let text = format!(
        "{what} ok: schema version {}, {} partition(s) updated",
        answer.version, answer.updated
    );
    Ok(with_pending(
        text,
        &answer.pending,
        "when their leader is seen again",
    ))
}

/// `text`, then the places a change did not reach yet, which take it `when`.
fn with_pending(mut text: String, pending: &[String], when: &str) -> String {
    if !pending.is_empty() {
        text.push_str(&format!("; {} will take it {when}:", pending.len()));
        for place in pending {
            text.push_str(&format!("\n  {place}"));
        }
    }
    text
}

fn use_db(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let name = call.arg(0).to_string();
        if !shell.databases().await?.contains(&name) {
            return Err(format!(
                "database `{name}` does not exist (`showdb` lists them; `create database \
                 {name}` creates it)"
            ));
        }
        shell.db = name;
        Ok(format!("Database changed to {}", shell.db))
    })
}
