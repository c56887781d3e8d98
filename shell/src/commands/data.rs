//! Rows through the SDK: `put`, `get`, `scan`, `count`, `preview`, `delete`. Reads and
//! deletes take `index=NAME` to use another index than the first; `get`, `scan`,
//! `count` and `delete` take a ts range.

use tessera_common::{Schema, Value};

use super::{Call, Command, Reply, MANY};
use crate::format::table;
use crate::shell::Shell;

pub const COMMANDS: &[Command] = &[
    Command::new(
        "put",
        "put table value…",
        "write a row (one value per column; NULL for null; quote strings with spaces)",
        (2, MANY),
        put,
    ),
    Command::new(
        "get",
        "get table key… [index=NAME] [ts=N]",
        "the newest row of a key (or the row with exactly ts N)",
        (2, MANY),
        get,
    ),
    Command::new(
        "scan",
        "scan table key… [max_ts [min_ts [limit]]] [index=NAME] [max_ts=N] [min_ts=N] [limit=N]",
        "rows of a key, newest first, with max_ts >= ts >= min_ts",
        (2, MANY),
        scan,
    ),
    Command::new(
        "count",
        "count table [key…] [index=NAME] [max_ts=N] [min_ts=N]",
        "rows of a key, or of the whole table",
        (1, MANY),
        count,
    )
    .details("With a ts range the rows of the key are read and counted."),
    Command::new(
        "preview",
        "preview table [limit]",
        "the first rows of a table (default 10)",
        (1, 2),
        preview,
    ),
    Command::new(
        "delete",
        "delete table key… [index=NAME] [max_ts=N] [min_ts=N]",
        "delete the rows of a key (of its ts range), from every index",
        (2, MANY),
        delete,
    )
    .details(
        "A key of the first index lives in one partition; a key of another index is \
         deleted in every partition.",
    ),
];

/// A data command's arguments: the table, its key values, the positional numbers after
/// them, and the `name=value` options.
struct Query {
    table: String,
    schema: Schema,
    index: String,
    key: Vec<Value>,
    numbers: Vec<i64>,
    ts: Option<i64>,
    max_ts: Option<i64>,
    min_ts: Option<i64>,
    limit: Option<u32>,
}

/// The options a data command accepts after its key.
const OPTIONS: [&str; 5] = ["index", "ts", "max_ts", "min_ts", "limit"];

impl Query {
    /// Reads `call`'s arguments: `allowed` names the options this command takes; `key`
    /// whether the key may be absent (count).
    async fn parse(
        shell: &Shell,
        call: &Call,
        allowed: &[&str],
        key_optional: bool,
    ) -> Result<Query, String> {
        let table = call.arg(0).to_string();
        let schema = shell
            .data()?
            .schema(&shell.db, &table)
            .await
            .map_err(|e| e.to_string())?;
        let mut query = Query {
            table,
            schema,
            index: String::new(),
            key: Vec::new(),
            numbers: Vec::new(),
            ts: None,
            max_ts: None,
            min_ts: None,
            limit: None,
        };
        let mut plain = Vec::new();
        for (word, &quoted) in call.args[1..].iter().zip(&call.quoted[1..]) {
            // `'index=x'` is a key value, not an option.
            let option = word
                .split_once('=')
                .filter(|(name, _)| !quoted && OPTIONS.contains(name));
            let Some((name, value)) = option else {
                plain.push(word.as_str());
                continue;
            };
            if !allowed.contains(&name) {
                return Err(format!("{name}= is not taken here; {}", call.usage_error()));
            }
            let number = || {
                value
                    .parse::<i64>()
                    .map_err(|_| format!("`{value}` is not a number ({name}=)"))
            };
            match name {
                "index" => query.index = value.to_string(),
                "ts" => query.ts = Some(number()?),
                "max_ts" => query.max_ts = Some(number()?),
                "min_ts" => query.min_ts = Some(number()?),
                _ => {
                    query.limit = Some(
                        value
                            .parse()
                            .map_err(|_| format!("`{value}` is not a row count (limit=)"))?,
                    )
                }
            }
        }
        let (_, index) = query.schema.index(&query.index).ok_or_else(|| {
            let names: Vec<&str> = query
                .schema
                .live_indexes()
                .map(|(_, i)| i.name.as_str())
                .collect();
            format!(
                "table `{}` has no index `{}` (its indexes: {})",
                query.table,
                query.index,
                names.join(", ")
            )
        })?;
        let key_columns = index.key_columns.clone();
        if plain.is_empty() && key_optional {
            return Ok(query);
        }
        if plain.len() < key_columns.len() {
            return Err(format!(
                "{} needs {} key value(s) for index `{}`; {}",
                query.table,
                key_columns.len(),
                index.name,
                call.usage_error()
            ));
        }
        query.key = key_columns
            .iter()
            .zip(&plain)
            .map(|(&pos, text)| query.schema.columns[pos].parse_value(text))
            .collect::<Result<_, _>>()?;
        query.numbers = plain[key_columns.len()..]
            .iter()
            .map(|t| {
                t.parse::<i64>()
                    .map_err(|_| format!("`{t}` is not a number; {}", call.usage_error()))
            })
            .collect::<Result<_, _>>()?;
        Ok(query)
    }

    fn draw(&self, rows: Vec<Vec<Value>>) -> String {
        draw(&self.schema, rows)
    }
}

/// Rows under their column names, and how many.
fn draw(schema: &Schema, rows: Vec<Vec<Value>>) -> String {
    let header: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let mut out = table(&header);
    let count = rows.len();
    for row in rows {
        out.add_row(row.iter().map(|v| v.to_string()).collect::<Vec<_>>());
    }
    format!("{out}\n{count} row(s)")
}

fn sdk_error(e: tessera_ns_client::ClientError) -> String {
    e.to_string()
}

fn put(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let client = shell.data()?;
        let name = call.arg(0);
        let schema = client.schema(&shell.db, name).await.map_err(sdk_error)?;
        let values = &call.args[1..];
        if values.len() != schema.columns.len() {
            return Err(format!(
                "{name} has {} columns, {} values were given",
                schema.columns.len(),
                values.len()
            ));
        }
        let row = schema
            .columns
            .iter()
            .zip(values)
            .map(|(column, text)| column.parse_value(text))
            .collect::<Result<Vec<_>, _>>()?;
        let (term, offset) = client.put(&shell.db, name, row).await.map_err(sdk_error)?;
        Ok(format!("put ok (term {term}, offset {offset})"))
    })
}

fn get(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let q = Query::parse(shell, &call, &["index", "ts"], false).await?;
        if !q.numbers.is_empty() {
            return Err(call.usage_error());
        }
        let client = shell.data()?;
        let rows = match q.ts {
            // The row with exactly this ts: a scan of [ts, ts].
            Some(ts) => client
                .scan_index(
                    &shell.db,
                    &q.table,
                    &q.index,
                    q.key.clone(),
                    Some(ts),
                    Some(ts),
                    1,
                )
                .await
                .map_err(sdk_error)?,
            None => client
                .get_index(&shell.db, &q.table, &q.index, q.key.clone())
                .await
                .map_err(sdk_error)?
                .into_iter()
                .collect(),
        };
        Ok(q.draw(rows))
    })
}

fn scan(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let q = Query::parse(shell, &call, &["index", "max_ts", "min_ts", "limit"], false).await?;
        if q.numbers.len() > 3 {
            return Err(call.usage_error());
        }
        let max_ts = q.max_ts.or(q.numbers.first().copied());
        let min_ts = q.min_ts.or(q.numbers.get(1).copied());
        let limit = match (q.limit, q.numbers.get(2)) {
            (Some(limit), _) => limit,
            (None, Some(&n)) => u32::try_from(n)
                .map_err(|_| format!("`{n}` is not a row count; {}", call.usage_error()))?,
            (None, None) => 0,
        };
        let rows = shell
            .data()?
            .scan_index(
                &shell.db,
                &q.table,
                &q.index,
                q.key.clone(),
                max_ts,
                min_ts,
                limit,
            )
            .await
            .map_err(sdk_error)?;
        Ok(q.draw(rows))
    })
}

fn count(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let q = Query::parse(shell, &call, &["index", "max_ts", "min_ts"], true).await?;
        if !q.numbers.is_empty() {
            return Err(call.usage_error());
        }
        let client = shell.data()?;
        let count = if q.max_ts.is_some() || q.min_ts.is_some() {
            if q.key.is_empty() {
                return Err("a ts range counts the rows of a key: give the key".into());
            }
            client
                .scan_index(
                    &shell.db,
                    &q.table,
                    &q.index,
                    q.key.clone(),
                    q.max_ts,
                    q.min_ts,
                    0,
                )
                .await
                .map_err(sdk_error)?
                .len() as u64
        } else {
            client
                .count_index(&shell.db, &q.table, &q.index, q.key.clone())
                .await
                .map_err(sdk_error)?
        };
        Ok(format!("count: {count}"))
    })
}

fn preview(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let limit = if call.args.len() > 1 {
            call.number(1, "a number")?
        } else {
            10
        };
        let client = shell.data()?;
        let schema = client
            .schema(&shell.db, call.arg(0))
            .await
            .map_err(sdk_error)?;
        let rows = client
            .preview(&shell.db, call.arg(0), limit)
            .await
            .map_err(sdk_error)?;
        Ok(draw(&schema, rows))
    })
}

fn delete(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let q = Query::parse(shell, &call, &["index", "max_ts", "min_ts"], false).await?;
        if !q.numbers.is_empty() {
            return Err(call.usage_error());
        }
        let deleted = shell
            .data()?
            .delete_index_range(
                &shell.db,
                &q.table,
                &q.index,
                q.key.clone(),
                q.max_ts,
                q.min_ts,
            )
            .await
            .map_err(sdk_error)?;
        Ok(format!("delete ok: {deleted} row(s)"))
    })
}
