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

/// Gathers lines into statements, the same way on a terminal and on standard input:
/// a statement parsed whole (`create`, `load`, `export`, the user statements) continues
/// while a parenthesis is open, and one written over several lines continues until its
/// `;`. Every other command is one line.
#[derive(Default)]
pub struct Statements {
    text: String,
    lines: usize,
}

impl Statements {
    /// Adds a line; the statement, once it is complete.
    pub fn push(&mut self, line: &str) -> Option<String> {
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(line.trim());
        self.lines += 1;
        if needs_more(&self.text, self.lines) {
            return None;
        }
        self.take()
    }

    /// What is gathered so far (at the end of input), if anything.
    pub fn take(&mut self) -> Option<String> {
        self.lines = 0;
        let text = std::mem::take(&mut self.text);
        (!text.is_empty()).then_some(text)
    }

    /// Whether a statement is under way (the continuation prompt).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// Whether `statement`, read over `lines` lines so far, needs more.
fn needs_more(statement: &str, lines: usize) -> bool {
    let first = statement.split_whitespace().next().unwrap_or("");
    let whole_statement = crate::commands::find(&first.to_ascii_lowercase())
        .is_some_and(|c| c.words == crate::commands::Words::Statement);
    if !whole_statement {
        return false;
    }
    open_parentheses(statement) > 0 || lines > 1 && !statement.trim_end().ends_with(';')
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
    let mut statements = Statements::default();
    loop {
        let prompt = if statements.is_empty() {
            format!("{}> ", shell.db)
        } else {
            "    -> ".to_string()
        };
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                statements.take();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(format!("cannot read input: {e}")),
        };
        let Some(text) = statements.push(&line) else {
            continue;
        };
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
    fn statements_span_lines_while_open_or_until_a_semicolon() {
        let mut s = Statements::default();
        assert_eq!(s.push("create table t (a string,"), None);
        assert_eq!(
            s.push("index(key=a))"),
            None,
            "over several lines: until `;`"
        );
        assert_eq!(
            s.push("options (partitionnum=1);").as_deref(),
            Some("create table t (a string, index(key=a)) options (partitionnum=1);")
        );
        // One line, balanced: complete without `;`, so the next line is its own.
        assert_eq!(
            s.push("create database shop").as_deref(),
            Some("create database shop")
        );
        assert_eq!(
            s.push("create table t (a string, index(key=a))").as_deref(),
            Some("create table t (a string, index(key=a))")
        );
        // Only whole statements continue: a value with a parenthesis does not.
        assert_eq!(s.push("put t a(b 1").as_deref(), Some("put t a(b 1"));
        assert_eq!(s.push("showtable").as_deref(), Some("showtable"));
        assert_eq!(
            s.push("load data infile 'a.csv' into table t options (header=true,"),
            None
        );
        assert_eq!(
            s.take().as_deref(),
            Some("load data infile 'a.csv' into table t options (header=true,")
        );
        assert!(s.is_empty());
        assert_eq!(
            s.push("create user a options (password='(')").as_deref(),
            Some("create user a options (password='(')")
        );
    }
}
