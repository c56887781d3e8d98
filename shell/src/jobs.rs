//! The taskmanager's statements in ns_client:
//!
//! ```text
//! load data infile 'f.csv' into table t [options (header=true, delimiter=',', skip_bad_rows=true)]
//! export table t to 'f.csv' [options (header=true, delimiter=',')]
//! ```

use tessera_proto::taskmanager::{CsvOptions, JobInfo, SubmitJobRequest};

/// Words, quoted strings (quotes removed, kept whole) and the punctuation `( ) , = .`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '\'' | '"' => {
                chars.next();
                let mut quoted = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(other) => quoted.push(other),
                        None => return Err(format!("unterminated quote {c}…")),
                    }
                }
                tokens.push(Token::Quoted(quoted));
            }
            '(' | ')' | ',' | '=' | '.' | ';' => {
                chars.next();
                if c != ';' {
                    tokens.push(Token::Punct(c));
                }
            }
            _ => {
                let mut word = String::new();
                while let Some(&w) = chars.peek() {
                    if w.is_whitespace() || "()',=.;\"".contains(w) {
                        break;
                    }
                    word.push(w);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    usage: &'static str,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn fail<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what}; usage: {}", self.usage))
    }

    fn keyword(&mut self, word: &str) -> Result<(), String> {
        match self.next() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(word) => Ok(()),
            _ => self.fail(&format!("expected `{word}`")),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Token::Quoted(s)) | Some(Token::Word(s)) => Ok(s),
            _ => self.fail(&format!("expected {what}")),
        }
    }

    /// `name` or `db.name`.
    fn table(&mut self, db: &str) -> Result<(String, String), String> {
        let first = self.string("a table name")?;
        if self.tokens.get(self.at) == Some(&Token::Punct('.')) {
            self.at += 1;
            let name = self.string("a table name after the database")?;
            return Ok((first, name));
        }
        Ok((db.to_string(), first))
    }

    /// `[options (key=value, …)]`.
    fn options(&mut self, allowed: &[&str]) -> Result<CsvOptions, String> {
        let mut options = CsvOptions {
            header: true,
            ..CsvOptions::default()
        };
        match self.next() {
            None => return Ok(options),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("options") => {}
            Some(other) => return self.fail(&format!("unexpected {other:?} at the end")),
        }
        if self.next() != Some(Token::Punct('(')) {
            return self.fail("expected `(` after options");
        }
        loop {
            let key = self.string("an option name")?.to_ascii_lowercase();
            if self.next() != Some(Token::Punct('=')) {
                return self.fail(&format!("expected `=` after {key}"));
            }
            let value = self.string(&format!("a value for {key}"))?;
            let flag = |v: &str| match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("{key} takes true or false, not `{v}`")),
            };
            if !allowed.contains(&key.as_str()) {
                return Err(format!(
                    "unknown option `{key}` (known: {})",
                    allowed.join(", ")
                ));
            }
            match key.as_str() {
                "header" => options.header = flag(&value)?,
                "skip_bad_rows" => options.skip_bad_rows = flag(&value)?,
                _ => {
                    if value.chars().count() != 1 {
                        return Err(format!("delimiter must be one character, not `{value}`"));
                    }
                    options.delimiter = value;
                }
            }
            match self.next() {
                Some(Token::Punct(',')) => continue,
                Some(Token::Punct(')')) => break,
                _ => return self.fail("expected `,` or `)` in options"),
            }
        }
        match self.next() {
            None => Ok(options),
            Some(other) => self.fail(&format!("unexpected {other:?} after the options")),
        }
    }
}

pub const LOAD_USAGE: &str = "load data infile 'file.csv' into table t [options (header=true, delimiter=',', skip_bad_rows=false)]";
pub const EXPORT_USAGE: &str =
    "export table t to 'file.csv' [options (header=true, delimiter=',')]";

/// Parses a `load data infile …` statement.
pub fn parse_load(statement: &str, db: &str) -> Result<SubmitJobRequest, String> {
    let mut p = Parser {
        tokens: tokenize(statement)?,
        at: 0,
        usage: LOAD_USAGE,
    };
    p.keyword("load")?;
    p.keyword("data")?;
    p.keyword("infile")?;
    let path = p.string("the file's path")?;
    p.keyword("into")?;
    p.keyword("table")?;
    let (db, table) = p.table(db)?;
    let options = p.options(&["header", "delimiter", "skip_bad_rows"])?;
    Ok(SubmitJobRequest {
        job_type: "ImportData".into(),
        db,
        table,
        // Relative to the taskmanager's job data directory, not to this shell's.
        path,
        options: Some(options),
    })
}

/// Parses an `export table … to …` statement.
pub fn parse_export(statement: &str, db: &str) -> Result<SubmitJobRequest, String> {
    let mut p = Parser {
        tokens: tokenize(statement)?,
        at: 0,
        usage: EXPORT_USAGE,
    };
    p.keyword("export")?;
    p.keyword("table")?;
    let (db, table) = p.table(db)?;
    p.keyword("to")?;
    let path = p.string("the file's path")?;
    let options = p.options(&["header", "delimiter"])?;
    Ok(SubmitJobRequest {
        job_type: "ExportData".into(),
        db,
        table,
        // Relative to the taskmanager's job data directory, not to this shell's.
        path,
        options: Some(options),
    })
}

/// `done/total` with a percentage.
pub fn progress(job: &JobInfo) -> String {
    if job.total == 0 {
        return format!("{}", job.done);
    }
    format!(
        "{}/{} ({}%)",
        job.done,
        job.total,
        job.done * 100 / job.total
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_with_options() {
        let r = parse_load(
            "load data infile '/data/a b.csv' into table d.t options (header=false, delimiter=';', skip_bad_rows=true);",
            "default",
        )
        .unwrap();
        assert_eq!((r.db.as_str(), r.table.as_str()), ("d", "t"));
        assert_eq!(r.path, "/data/a b.csv");
        let o = r.options.unwrap();
        assert!(!o.header && o.skip_bad_rows);
        assert_eq!(o.delimiter, ";");
        let comma = parse_load(
            "load data infile '/x.csv' into table t options (delimiter=',')",
            "db1",
        )
        .unwrap();
        assert_eq!(comma.db, "db1");
        assert_eq!(comma.options.unwrap().delimiter, ",");
    }

    #[test]
    fn export_and_mistakes() {
        let r = parse_export("export table t to '/tmp/t.csv'", "default").unwrap();
        assert_eq!(r.job_type, "ExportData");
        assert!(r.options.unwrap().header, "a header by default");
        assert!(parse_load("load data infile 'x' into t", "d")
            .unwrap_err()
            .contains("expected `table`"));
        assert!(parse_load(
            "load data infile 'x' into table t options (colour=red)",
            "d"
        )
        .unwrap_err()
        .contains("unknown option `colour`"));
        assert!(parse_load(
            "load data infile 'x' into table t options (header=maybe)",
            "d"
        )
        .unwrap_err()
        .contains("true or false"));
        assert!(
            parse_export("export table t to '/x' options (skip_bad_rows=true)", "d")
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(parse_load("load data infile 'x", "d")
            .unwrap_err()
            .contains("unterminated"));
    }
}
