//! Parsing `create table`, in OpenMLDB's syntax:
//!
//! ```text
//! create table t1 (id string, ts timestamp, v double not null,
//!     index(key=id, ts=ts, ttl=0, ttl_type=absolute))
//!     options (partitionnum=8, replicanum=3, replication='quorum');
//! ```
//!
//! `key` may name several columns: `key=(c1, c2)`. `ttl` is a time for `absolute`
//! (minutes: `10`, or with a unit: `10m`, `12h`, `7d`), a row count for `latest`, and
//! `(10m, 100)` for `absandlat` / `absorlat`.
//! Columns are nullable unless `not null`.

use tessera_proto::common::{ColumnDesc, ColumnType, IndexDesc, TableSchema, TtlDesc, TtlType};
use tessera_proto::nameserver::CreateTableRequest;
use tessera_proto::tablet::ReplicationMode;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Number(u64),
    /// A number with a time unit (`12h`), in minutes; `text` as written.
    Minutes {
        minutes: u64,
        text: String,
    },
    Text(String),
    Punct(char),
}

fn tokenize(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
            {
                word.push(c);
                chars.next();
            }
            tokens.push(Token::Word(word));
        } else if c.is_ascii_digit() {
            let mut digits = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_ascii_digit()) {
                digits.push(c);
                chars.next();
            }
            let number: u64 = digits
                .parse()
                .map_err(|_| format!("number {digits} is too large"))?;
            match chars.peek().copied().filter(|c| "mhd".contains(*c)) {
                Some(unit) => {
                    chars.next();
                    let text = format!("{digits}{unit}");
                    tokens.push(Token::Minutes {
                        minutes: minutes_of(number, unit)
                            .ok_or_else(|| format!("ttl {text} is too large"))?,
                        text,
                    });
                }
                None => tokens.push(Token::Number(number)),
            }
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    Some(q) if q == c => break,
                    Some(ch) => text.push(ch),
                    None => return Err("a quoted string is not closed".into()),
                }
            }
            tokens.push(Token::Text(text));
        } else if "(),=;".contains(c) {
            tokens.push(Token::Punct(c));
            chars.next();
        } else {
            return Err(format!("unexpected character `{c}`"));
        }
    }
    Ok(tokens)
}

/// `n` of `unit` (`m`, `h` or `d`) in minutes; `None` if it overflows.
fn minutes_of(n: u64, unit: char) -> Option<u64> {
    match unit {
        'm' => Some(n),
        'h' => n.checked_mul(60),
        _ => n.checked_mul(1440),
    }
}

/// A TTL time as an operator writes it: minutes (`90`), or `30m`, `12h`, `7d`.
pub fn parse_minutes(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a time (examples: 90, 30m, 12h, 7d)");
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if "mhd".contains(c) => (&text[..i], c),
        _ => (text, 'm'),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    minutes_of(n, unit).ok_or_else(bad)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn punct(&mut self, p: char) -> Result<(), String> {
        match self.next() {
            Some(Token::Punct(c)) if c == p => Ok(()),
            other => Err(format!(
                "expected `{p}`, found {}",
                describe(other.as_ref())
            )),
        }
    }

    fn word(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w),
            other => Err(format!(
                "expected {what}, found {}",
                describe(other.as_ref())
            )),
        }
    }

    fn keyword(&mut self, keyword: &str) -> Result<(), String> {
        let word = self.word(&format!("`{keyword}`"))?;
        if word.eq_ignore_ascii_case(keyword) {
            Ok(())
        } else {
            Err(format!("expected `{keyword}`, found `{word}`"))
        }
    }

    fn is_punct(&self, p: char) -> bool {
        matches!(self.peek(), Some(Token::Punct(c)) if *c == p)
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    /// `item, item, …`: at least one.
    fn comma_separated(
        &mut self,
        mut item: impl FnMut(&mut Parser) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            item(self)?;
            if !self.is_punct(',') {
                return Ok(());
            }
            self.next();
        }
    }

    /// `(item, item, …)`, or one `item` alone.
    fn one_or_list(
        &mut self,
        mut item: impl FnMut(&mut Parser) -> Result<(), String>,
    ) -> Result<(), String> {
        if !self.is_punct('(') {
            return item(self);
        }
        self.next();
        self.comma_separated(item)?;
        self.punct(')')
    }
}

fn describe(token: Option<&Token>) -> String {
    match token {
        None => "the end of the statement".into(),
        Some(Token::Word(w)) => format!("`{w}`"),
        Some(Token::Number(n)) => format!("`{n}`"),
        Some(Token::Minutes { text, .. }) => format!("`{text}`"),
        Some(Token::Text(t)) => format!("'{t}'"),
        Some(Token::Punct(p)) => format!("`{p}`"),
    }
}

pub fn column_type(name: &str) -> Result<ColumnType, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "bool" => ColumnType::Bool,
        "smallint" | "int16" => ColumnType::Int16,
        "int" | "int32" => ColumnType::Int32,
        "bigint" | "int64" => ColumnType::Int64,
        "float" => ColumnType::Float,
        "double" => ColumnType::Double,
        "string" | "varchar" => ColumnType::String,
        "timestamp" => ColumnType::Timestamp,
        "date" => ColumnType::Date,
        other => {
            return Err(format!(
                "unknown column type `{other}` (bool, int16, int32, int64, float, double, string, timestamp, date)"
            ))
        }
    })
}

fn parse_index(p: &mut Parser) -> Result<IndexDesc, String> {
    p.punct('(')?;
    let mut index = IndexDesc::default();
    // Numbers as written; which may carry a unit depends on ttl_type, which may follow.
    let mut ttl_values: Vec<Token> = Vec::new();
    let mut ttl_type = TtlType::Absolute;
    p.comma_separated(|p| {
        let key = p
            .word("an index option (key, ts, ttl, ttl_type)")?
            .to_ascii_lowercase();
        p.punct('=')?;
        match key.as_str() {
            "key" => p.one_or_list(|p| {
                index.key_columns.push(p.word("a key column")?);
                Ok(())
            })?,
            "ts" => index.ts_column = p.word("a ts column")?,
            "ttl" => p.one_or_list(|p| {
                match p.next() {
                    Some(t @ (Token::Number(_) | Token::Minutes { .. })) => ttl_values.push(t),
                    other => {
                        return Err(format!(
                            "expected a ttl (90, 30m, 12h, 7d or a row count), found {}",
                            describe(other.as_ref())
                        ))
                    }
                }
                Ok(())
            })?,
            "ttl_type" => {
                ttl_type = match p.word("a ttl type")?.to_ascii_lowercase().as_str() {
                    "absolute" => TtlType::Absolute,
                    "latest" => TtlType::Latest,
                    "absandlat" => TtlType::AbsAndLat,
                    "absorlat" => TtlType::AbsOrLat,
                    other => {
                        return Err(format!(
                            "unknown ttl_type `{other}` (absolute, latest, absandlat, absorlat)"
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown index option `{other}` (key, ts, ttl, ttl_type)"
                ))
            }
        }
        Ok(())
    })?;
    p.punct(')')?;
    if index.key_columns.is_empty() {
        return Err("an index needs key=…".into());
    }
    // A time: minutes, bare or with a unit.
    let time = |token: Option<&Token>| match token {
        None => Ok(0),
        Some(Token::Number(n)) | Some(Token::Minutes { minutes: n, .. }) => Ok(*n),
        Some(other) => Err(format!(
            "expected a ttl time, found {}",
            describe(Some(other))
        )),
    };
    // A row count: no unit.
    let count = |token: Option<&Token>| match token {
        None => Ok(0),
        Some(Token::Number(n)) => Ok(*n),
        Some(other) => Err(format!(
            "the latest part of a ttl counts rows: {} has a time unit",
            describe(Some(other))
        )),
    };
    let expected = if matches!(ttl_type, TtlType::Absolute | TtlType::Latest) {
        1
    } else {
        2
    };
    if ttl_values.len() > expected {
        return Err(format!(
            "ttl_type {} takes {expected} ttl value(s), {} were given",
            ttl_type
                .as_str_name()
                .trim_start_matches("TTL_TYPE_")
                .to_ascii_lowercase(),
            ttl_values.len()
        ));
    }
    let (abs_ttl_minutes, lat_ttl) = match ttl_type {
        TtlType::Absolute => (time(ttl_values.first())?, 0),
        TtlType::Latest => (0, count(ttl_values.first())?),
        _ => (time(ttl_values.first())?, count(ttl_values.get(1))?),
    };
    index.ttl = Some(TtlDesc {
        ttl_type: ttl_type as i32,
        abs_ttl_minutes,
        lat_ttl,
    });
    Ok(index)
}

/// Parses a whole `create table …` statement for database `db`.
pub fn parse(statement: &str, db: &str) -> Result<CreateTableRequest, String> {
    let mut p = Parser {
        tokens: tokenize(statement)?,
        pos: 0,
    };
    p.keyword("create")?;
    p.keyword("table")?;
    let name = p.word("a table name")?;
    let mut request = CreateTableRequest {
        db: db.to_string(),
        name,
        ..CreateTableRequest::default()
    };
    let mut schema = TableSchema {
        version: 1,
        ..TableSchema::default()
    };
    p.punct('(')?;
    p.comma_separated(|p| {
        if p.is_word("index") {
            p.next();
            schema.indexes.push(parse_index(p)?);
        } else {
            let column = p.word("a column name or index(…)")?;
            let ty = column_type(&p.word(&format!("the type of column `{column}`"))?)?;
            let mut nullable = true;
            if p.is_word("not") {
                p.next();
                p.keyword("null")?;
                nullable = false;
            } else if p.is_word("null") {
                p.next();
            }
            schema.columns.push(ColumnDesc {
                name: column,
                r#type: ty as i32,
                nullable,
                ..Default::default()
            });
        }
        Ok(())
    })?;
    p.punct(')')?;
    if p.is_word("options") {
        p.next();
        p.punct('(')?;
        p.comma_separated(|p| {
            let key = p
                .word("an option (partitionnum, replicanum, replication)")?
                .to_ascii_lowercase();
            p.punct('=')?;
            let value = p.next();
            match (key.as_str(), value) {
                ("partitionnum", Some(Token::Number(n))) => {
                    request.partition_num =
                        u32::try_from(n).map_err(|_| format!("partitionnum {n} is too large"))?
                }
                ("replicanum", Some(Token::Number(n))) => {
                    request.replica_num =
                        u32::try_from(n).map_err(|_| format!("replicanum {n} is too large"))?
                }
                ("replication", Some(Token::Text(mode) | Token::Word(mode))) => {
                    request.mode = match mode.to_ascii_lowercase().as_str() {
                        "quorum" => ReplicationMode::Quorum,
                        "async" => ReplicationMode::Async,
                        other => {
                            return Err(format!(
                                "replication must be 'quorum' or 'async', not '{other}'"
                            ))
                        }
                    } as i32
                }
                (other, value) => {
                    return Err(format!(
                        "bad option `{other}` = {}",
                        describe(value.as_ref())
                    ))
                }
            }
            Ok(())
        })?;
        p.punct(')')?;
    }
    while p.is_punct(';') {
        p.next();
    }
    if let Some(extra) = p.peek() {
        return Err(format!(
            "unexpected {} after the statement",
            describe(Some(extra))
        ));
    }
    if schema.indexes.is_empty() {
        return Err("a table needs at least one index(key=…)".into());
    }
    request.schema = Some(schema);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_example_parses() {
        let r = parse(
            "create table t1 (id string, ts timestamp, v double, index(key=id, ts=ts, ttl=0, ttl_type=absolute)) \
             options (partitionnum=8, replicanum=3, replication='quorum');",
            "default",
        )
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.partition_num, r.replica_num),
            ("t1", 8, 3)
        );
        assert_eq!(r.mode(), ReplicationMode::Quorum);
        let schema = r.schema.clone().unwrap();
        assert_eq!(schema.columns.len(), 3);
        assert_eq!(schema.indexes[0].key_columns, vec!["id"]);
        assert_eq!(schema.indexes[0].ts_column, "ts");
    }

    #[test]
    fn multi_column_keys_ttls_and_not_null() {
        let r = parse(
            "create table t2 (a string not null, b int, t bigint, index(key=(a, b), ts=t, ttl=(10m, 100), ttl_type=absorlat)) options (replication='async')",
            "db1",
        )
        .unwrap();
        let schema = r.schema.clone().unwrap();
        assert!(!schema.columns[0].nullable && schema.columns[1].nullable);
        assert_eq!(schema.indexes[0].key_columns, vec!["a", "b"]);
        let ttl = schema.indexes[0].ttl.unwrap();
        assert_eq!((ttl.abs_ttl_minutes, ttl.lat_ttl), (10, 100));
        assert_eq!(r.mode(), ReplicationMode::Async);
        assert_eq!(r.db, "db1");
    }

    #[test]
    fn ttls_take_minutes_hours_and_days() {
        let ttl = |index: &str| {
            parse(
                &format!("create table t (a string, ts bigint, {index})"),
                "d",
            )
            .map(|r| r.schema.unwrap().indexes[0].ttl.unwrap())
        };
        let t = ttl("index(key=a, ts=ts, ttl=7d, ttl_type=absolute)").unwrap();
        assert_eq!(t.abs_ttl_minutes, 7 * 1440);
        assert_eq!(ttl("index(key=a, ttl=12h)").unwrap().abs_ttl_minutes, 720);
        assert_eq!(ttl("index(key=a, ttl=90)").unwrap().abs_ttl_minutes, 90);
        let t = ttl("index(key=a, ttl=(2h, 10), ttl_type=absandlat)").unwrap();
        assert_eq!((t.abs_ttl_minutes, t.lat_ttl), (120, 10));
        assert_eq!(
            ttl("index(key=a, ttl=5, ttl_type=latest)").unwrap().lat_ttl,
            5
        );
        assert!(ttl("index(key=a, ttl=5d, ttl_type=latest)")
            .unwrap_err()
            .contains("counts rows"));
        assert!(ttl("index(key=a, ttl=(1h, 2), ttl_type=absolute)")
            .unwrap_err()
            .contains("takes 1 ttl value"));
        assert!(ttl("index(key=a, ttl=99999999999999999d)")
            .unwrap_err()
            .contains("too large"));
        // A unit belongs to ttls only.
        assert!(parse(
            "create table t (a string, index(key=a)) options (partitionnum=8h)",
            "d"
        )
        .is_err());
        assert_eq!(parse_minutes("7d").unwrap(), 10_080);
        assert_eq!(parse_minutes("45").unwrap(), 45);
        assert!(parse_minutes("h").is_err() && parse_minutes("5w").is_err());
    }

    #[test]
    fn mistakes_say_what_was_expected() {
        assert!(parse("create table t (a strng, index(key=a))", "d")
            .unwrap_err()
            .contains("unknown column type `strng`"));
        assert!(parse("create table t (a string)", "d")
            .unwrap_err()
            .contains("at least one index"));
        assert!(parse("create table t (a string, index(key=a)", "d")
            .unwrap_err()
            .contains("expected `)`"));
        assert!(parse(
            "create table t (a string, index(key=a)) options (replication='sync')",
            "d"
        )
        .unwrap_err()
        .contains("'quorum' or 'async'"));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// Pieces of create table statements, in any order: near misses of real ones.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "create",
                    "table",
                    "t1",
                    "(",
                    ")",
                    ",",
                    ";",
                    "=",
                    "'",
                    "\"",
                    "index",
                    "key",
                    "ts",
                    "ttl",
                    "ttl_type",
                    "absolute",
                    "latest",
                    "absandlat",
                    "absorlat",
                    "options",
                    "partitionnum",
                    "replicanum",
                    "replication",
                    "quorum",
                    "string",
                    "int64",
                    "timestamp",
                    "double",
                    "not",
                    "null",
                    "id",
                    "v",
                    "10m",
                    "(10m, 5)",
                    "4000000000",
                    "-1",
                    "0",
                    "99999999999999999999",
                ])
                .prop_map(str::to_string),
                "[ -~]{0,6}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Any statement parses or is refused with a message, never a panic.
            #[test]
            fn any_statement_parses_or_is_refused(
                pieces in prop::collection::vec(piece(), 0..24),
                prefix in any::<bool>(),
            ) {
                let mut statement = if prefix { "create table t1 (".to_string() } else { String::new() };
                statement.push_str(&pieces.join(" "));
                if let Err(message) = parse(&statement, "default") {
                    prop_assert!(!message.is_empty());
                }
            }
        }
    }
}
