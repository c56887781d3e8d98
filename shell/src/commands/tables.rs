//! Tables and databases: `create`, `drop`, `use`, `dropdb`. `create user` and
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
            "user" => crate::users::run(shell.nameserver(), &call.line).await,
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

fn use_db(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let name = call.arg(0).to_string();
        let dbs = shell
            .ns(
                ShowDbRequest {},
                |mut c, r| async move { c.show_db(r).await },
            )
            .await?
            .dbs;
        if !dbs.contains(&name) {
            return Err(format!(
                "database `{name}` does not exist (`showdb` lists them; `create database \
                 {name}` creates it)"
            ));
        }
        shell.db = name;
        Ok(format!("Database changed to {}", shell.db))
    })
}
