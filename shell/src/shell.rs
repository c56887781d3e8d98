//! The shell's state and its statement runner: finds a statement's command in
//! [`crate::commands`], splits its words, checks its arguments and flags, and runs its
//! handler.

use std::future::Future;

use tessera_ns_client::nameserver::{NameserverConnection, TaskManagerConnection};
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::taskmanager::task_manager_client::TaskManagerClient;

use crate::commands::{self, Outcome, Words};
use crate::format::Format;

type NsClient = NameserverClient<tessera_common::auth::AuthChannel>;
type TmClient = TaskManagerClient<tessera_common::auth::AuthChannel>;

/// The database a shell starts in; it always exists.
pub const DEFAULT_DB: &str = "default";

/// Asks the operator a yes/no question; `true` to go on.
pub type Confirm = Box<dyn FnMut(&str) -> bool + Send>;

pub struct Shell {
    ns: NameserverConnection,
    /// For the job commands.
    taskmanager: Option<TaskManagerConnection>,
    /// For the data commands.
    data: Option<tessera_ns_client::Client>,
    pub db: String,
    /// How show commands print unless a command says `--format=…`.
    pub format: Format,
    /// Asks before destructive commands; `None` (scripts, `--cmd`, standard input, or
    /// `--yes`) never asks.
    confirm: Option<Confirm>,
}

fn status_text(status: tonic::Status) -> String {
    status.message().to_string()
}

impl Shell {
    pub fn new(ns: NameserverConnection) -> Shell {
        Shell {
            ns,
            taskmanager: None,
            data: None,
            db: DEFAULT_DB.into(),
            format: Format::Table,
            confirm: None,
        }
    }

    /// Enables put, get, scan, count, preview and delete through the SDK.
    pub fn with_data(mut self, client: tessera_ns_client::Client) -> Shell {
        self.data = Some(client);
        self
    }

    /// Enables load, export, showjobs, showjob and stopjob through the taskmanager.
    pub fn with_taskmanager(mut self, taskmanager: TaskManagerConnection) -> Shell {
        self.taskmanager = Some(taskmanager);
        self
    }

    /// Asks `confirm` before dropping anything (the interactive shell).
    pub fn with_confirmation(mut self, confirm: Confirm) -> Shell {
        self.confirm = Some(confirm);
        self
    }

    /// Calls the nameserver leader with `request`; the answer, or the error's message.
    pub(crate) async fn ns<Req, T, F, Fut>(&mut self, request: Req, call: F) -> Result<T, String>
    where
        Req: Clone,
        F: Fn(NsClient, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.ns
            .call(|client| call(client, request.clone()))
            .await
            .map(tonic::Response::into_inner)
            .map_err(status_text)
    }

    /// Calls the taskmanager leader with `request`.
    pub(crate) async fn tm<Req, T, F, Fut>(&mut self, request: Req, call: F) -> Result<T, String>
    where
        Req: Clone,
        F: Fn(TmClient, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let Some(tm) = self.taskmanager.as_mut() else {
            return Err("this shell has no taskmanager connection".into());
        };
        tm.call(|client| call(client, request.clone()))
            .await
            .map(tonic::Response::into_inner)
            .map_err(status_text)
    }

    pub(crate) fn nameserver(&mut self) -> &mut NameserverConnection {
        &mut self.ns
    }

    /// The SDK client of the data commands.
    pub(crate) fn data(&self) -> Result<&tessera_ns_client::Client, String> {
        self.data
            .as_ref()
            .ok_or_else(|| "data commands need a connection to the cluster".to_string())
    }

    /// Whether to go on with a destructive command: asks in the interactive shell unless
    /// `--yes` was given; scripts never ask.
    pub(crate) fn confirmed(&mut self, yes: bool, question: &str) -> bool {
        match (&mut self.confirm, yes) {
            (Some(confirm), false) => confirm(question),
            _ => true,
        }
    }

    /// The databases the nameserver knows.
    pub(crate) async fn databases(&mut self) -> Result<Vec<String>, String> {
        Ok(self
            .ns(
                tessera_proto::nameserver::ShowDbRequest {},
                |mut c, r| async move { c.show_db(r).await },
            )
            .await?
            .dbs)
    }

    /// Names of the current database's tables (for completion); empty if unreachable.
    pub async fn table_names(&mut self) -> Vec<String> {
        let request = tessera_proto::nameserver::ShowTableRequest {
            db: self.db.clone(),
            name: String::new(),
        };
        let rows = self
            .ns(request, |mut c, r| async move { c.show_table(r).await })
            .await
            .map(|r| r.rows)
            .unwrap_or_default();
        let mut names: Vec<String> = rows.into_iter().map(|r| r.name).collect();
        names.dedup();
        names
    }

    /// Runs one statement; the text to print, or the error to report.
    pub async fn execute(&mut self, line: &str) -> Outcome {
        let line = line.trim().trim_end_matches(';').trim();
        let Some(name) = line.split_whitespace().next() else {
            return Ok(String::new());
        };
        let name_lower = name.to_ascii_lowercase();
        let Some(command) = commands::find(&name_lower) else {
            return Err(match commands::nearest(&name_lower) {
                Some(near) => {
                    format!("unknown command `{name}`; did you mean `{near}`? (`help` lists them)")
                }
                None => format!("unknown command `{name}` (`help` lists them)"),
            });
        };
        let words = match command.words {
            Words::Quoted => split_words(line)?,
            // Parsed from the statement itself: no word is a flag.
            Words::Statement => line
                .split_whitespace()
                .map(|w| Word {
                    text: w.to_string(),
                    quoted: true,
                })
                .collect(),
        };
        let call = commands::prepare(command, line, words, self.format)?;
        (command.run)(self, call).await
    }
}

/// A word of a command line, and whether any of it was quoted (a quoted word is never
/// a flag or an option: `put t '--x'` writes `--x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub quoted: bool,
}

/// Splits a command line into words; '…' and "…" quote words with spaces.
pub fn split_words(line: &str) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut current = Word {
        text: String::new(),
        quoted: false,
    };
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => current.text.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
                current.quoted = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::replace(
                        &mut current,
                        Word {
                            text: String::new(),
                            quoted: false,
                        },
                    ));
                    in_word = false;
                }
            }
            None => {
                current.text.push(c);
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

/// The most partitions one pid group names.
const MAX_PID_GROUP: u32 = 1 << 20;

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
                // A partition count is far below this; a typo must not allocate gigabytes.
                if from > to || to - from >= MAX_PID_GROUP {
                    return Err(bad());
                }
                pids.extend(from..=to);
            }
            None => pids.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_groups() {
        assert_eq!(parse_pid_group("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_pid_group("1,3").unwrap(), vec![1, 3]);
        assert!(parse_pid_group("3-1").is_err());
        assert!(parse_pid_group("0-4294967295").is_err());
        assert!(parse_pid_group("a").is_err());
    }

    #[test]
    fn words_and_values() {
        let texts = |line: &str| -> Vec<String> {
            split_words(line)
                .unwrap()
                .into_iter()
                .map(|w| w.text)
                .collect()
        };
        assert_eq!(texts("put t 'a b' 1"), vec!["put", "t", "a b", "1"]);
        assert_eq!(texts("get t ''"), vec!["get", "t", ""]);
        let quoted: Vec<bool> = split_words("put t '--x' --y")
            .unwrap()
            .iter()
            .map(|w| w.quoted)
            .collect();
        assert_eq!(quoted, vec![false, false, true, false]);
        assert!(split_words("put t 'open").is_err());
        let column = tessera_common::Column {
            name: "v".into(),
            ty: tessera_common::ColumnType::Int64,
            nullable: true,
            added_in_version: 0,
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
}
