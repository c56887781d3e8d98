//! The interactive shell: line editing and a history file (rustyline), tab completion of
//! command and table names, and statements that span lines until a `;`.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use crate::shell::Shell;

/// Completes the first word from the commands, later words from the table names.
struct Completion {
    tables: Arc<Mutex<Vec<String>>>,
}

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let prefix = &before[start..];
        let first_word = before[..start].trim().is_empty();
        let candidates: Vec<String> = if first_word {
            crate::commands::all().map(|c| c.name.to_string()).collect()
        } else {
            self.tables.lock().clone()
        };
        let mut matches: Vec<Pair> = candidates
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .map(|c| Pair {
                display: c.clone(),
                replacement: c,
            })
            .collect();
        matches.sort_by(|a, b| a.display.cmp(&b.display));
        matches.dedup_by(|a, b| a.display == b.display);
        Ok((start, matches))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {}
impl Validator for Completion {}
impl Helper for Completion {}

/// Where the history is kept: `$TESSERA_NS_CLIENT_HISTORY`, else `~/.tessera_ns_client_history`.
pub fn default_history_file() -> PathBuf {
    if let Ok(path) = std::env::var("TESSERA_NS_CLIENT_HISTORY") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".tessera_ns_client_history")
}

/// Whether a statement needs more lines: a `create` runs until its `;`, and any
/// statement while a parenthesis is open.
pub fn needs_more(statement: &str) -> bool {
    let first = statement.split_whitespace().next().unwrap_or("");
    open_parentheses(statement) > 0
        || first.eq_ignore_ascii_case("create") && !statement.trim_end().ends_with(';')
}

/// Asks `question` on the terminal; only `yes` (or `y`) goes on.
pub fn ask_on_terminal(question: &str) -> bool {
    use std::io::Write;
    print!("{question} yes/no: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "yes" | "y")
}

/// Parentheses opened and not closed, outside quotes.
fn open_parentheses(statement: &str) -> i64 {
    let mut depth = 0i64;
    let mut quote = None;
    for c in statement.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// Runs the interactive shell until `quit`, `exit` or end of input.
pub async fn run(shell: &mut Shell, history: PathBuf) -> Result<(), String> {
    let tables = Arc::new(Mutex::new(shell.table_names().await));
    let mut editor: Editor<Completion, rustyline::history::DefaultHistory> =
        Editor::new().map_err(|e| format!("cannot open the terminal: {e}"))?;
    editor.set_helper(Some(Completion {
        tables: tables.clone(),
    }));
    let _ = editor.load_history(&history);
    println!("Welcome to Tessera. `help` lists the commands; statements may span lines until `;`.");
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() {
            format!("{}> ", shell.db)
        } else {
            "    -> ".to_string()
        };
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(format!("cannot read input: {e}")),
        };
        if !statement.is_empty() {
            statement.push(' ');
        }
        statement.push_str(line.trim());
        if needs_more(&statement) {
            continue;
        }
        let text = std::mem::take(&mut statement);
        if text.is_empty() {
            continue;
        }
        // A statement with a password stays out of the history file.
        if !text.to_ascii_lowercase().contains("password") {
            let _ = editor.add_history_entry(text.as_str());
        }
        if text.eq_ignore_ascii_case("quit") || text.eq_ignore_ascii_case("exit") {
            break;
        }
        match shell.execute(&text).await {
            Ok(out) if out.is_empty() => {}
            Ok(out) => println!("{out}"),
            Err(e) => println!("Error: {e}"),
        }
        *tables.lock() = shell.table_names().await;
    }
    let _ = editor.save_history(&history);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_table_spans_lines_until_a_semicolon() {
        assert!(needs_more("create table t (a string,"));
        assert!(!needs_more("create table t (a string, index(key=a));"));
        assert!(!needs_more("showtable"));
        assert!(!needs_more("put t '(' x"));
        assert!(needs_more(
            "load data infile 'a.csv' into table t options (header=true,"
        ));
    }
}
