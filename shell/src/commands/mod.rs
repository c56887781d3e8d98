//! Every `ns_client` command, declared once: its name, usage, help, argument rules,
//! flags and handler. Help, `man`, completion and usage errors all read these
//! declarations, and a command cannot be declared without its handler.
//!
//! The commands are grouped by theme: [`show`] (reading the cluster), [`ops`] (changing
//! replicas and configuration), [`tables`] (tables and databases), [`data`] (rows through
//! the SDK), [`jobs`] (the taskmanager), [`users`] and [`help`].

pub mod data;
pub mod help;
pub mod jobs;
pub mod ops;
pub mod show;
pub mod tables;
pub mod users;

use std::future::Future;
use std::pin::Pin;

use crate::format::Format;
use crate::shell::Shell;

/// What a command prints, or the error it reports.
pub type Outcome = Result<String, String>;
/// A handler's running call.
pub type Reply<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;
/// Runs one command.
pub type Handler = for<'a> fn(&'a mut Shell, Call) -> Reply<'a>;

/// A flag a command accepts besides its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// `--format=table|json`: how a show command prints.
    Format,
    /// `--raw`: sizes in bytes instead of human units.
    Raw,
    /// `--yes`: no confirmation asked.
    Yes,
}

impl Flag {
    pub fn usage(self) -> &'static str {
        match self {
            Flag::Format => "--format=table|json",
            Flag::Raw => "--raw",
            Flag::Yes => "--yes",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Flag::Format => "print JSON for scripts instead of a table",
            Flag::Raw => "sizes in bytes instead of KiB, MiB, GiB",
            Flag::Yes => "do not ask for confirmation",
        }
    }
}

/// How a command's words are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Words {
    /// Words separated by spaces; '…' and "…" quote words with spaces.
    Quoted,
    /// The handler parses the statement itself (`create table`, `load data`, users):
    /// its quotes and punctuation matter.
    Statement,
}

/// One command.
pub struct Command {
    pub name: &'static str,
    pub usage: &'static str,
    pub help: &'static str,
    /// Longer text for `man`: examples and details.
    pub details: &'static str,
    pub min_args: usize,
    pub max_args: usize,
    pub words: Words,
    pub flags: &'static [Flag],
    pub run: Handler,
}

impl Command {
    /// A command of `min..=max` arguments split into words, with no flags.
    pub const fn new(
        name: &'static str,
        usage: &'static str,
        help: &'static str,
        (min_args, max_args): (usize, usize),
        run: Handler,
    ) -> Command {
        Command {
            name,
            usage,
            help,
            details: "",
            min_args,
            max_args,
            words: Words::Quoted,
            flags: &[],
            run,
        }
    }

    pub const fn flags(mut self, flags: &'static [Flag]) -> Command {
        self.flags = flags;
        self
    }

    pub const fn details(mut self, details: &'static str) -> Command {
        self.details = details;
        self
    }

    /// The handler parses the statement itself.
    pub const fn statement(mut self) -> Command {
        self.words = Words::Statement;
        self
    }
}

/// Unbounded arguments.
pub const MANY: usize = usize::MAX;
/// The flags of a show command.
pub const SHOW: &[Flag] = &[Flag::Format];

/// A command being run: the statement and its arguments, flags taken out.
pub struct Call {
    /// The whole statement, trimmed, without its `;`.
    pub line: String,
    pub args: Vec<String>,
    /// Whether each argument was quoted (a quoted word is never an option).
    pub quoted: Vec<bool>,
    pub format: Format,
    pub raw: bool,
    pub yes: bool,
    pub usage: &'static str,
}

impl Call {
    /// Argument `i`, or "" when absent.
    pub fn arg(&self, i: usize) -> &str {
        self.args.get(i).map_or("", String::as_str)
    }

    /// Argument `i` as a number; `what` names it in the error.
    pub fn number<T: std::str::FromStr>(&self, i: usize, what: &str) -> Result<T, String> {
        let text = self.arg(i);
        text.parse()
            .map_err(|_| format!("`{text}` is not {what}; usage: {}", self.usage))
    }

    pub fn pid(&self, i: usize) -> Result<u32, String> {
        let text = self.arg(i);
        text.parse()
            .map_err(|_| format!("`{text}` is not a partition id"))
    }

    pub fn usage_error(&self) -> String {
        format!("usage: {}", self.usage)
    }
}

/// The command groups, in the order `help` lists them.
const GROUPS: &[&[Command]] = &[
    help::COMMANDS,
    show::COMMANDS,
    tables::COMMANDS,
    ops::COMMANDS,
    data::COMMANDS,
    jobs::COMMANDS,
    users::COMMANDS,
];

/// Every command.
pub fn all() -> impl Iterator<Item = &'static Command> {
    GROUPS.iter().flat_map(|group| group.iter())
}

pub fn find(name: &str) -> Option<&'static Command> {
    all().find(|c| c.name == name)
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
    all()
        .map(|c| (levenshtein(name, c.name), c.name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

/// Builds a [`Call`]: splits the words and takes out the flags the command accepts.
pub fn prepare(
    command: &'static Command,
    line: &str,
    words: Vec<crate::shell::Word>,
    format: Format,
) -> Result<Call, String> {
    let mut call = Call {
        line: line.to_string(),
        args: Vec::new(),
        quoted: Vec::new(),
        format,
        raw: false,
        yes: false,
        usage: command.usage,
    };
    for word in words.into_iter().skip(1) {
        let flag = match word.text.strip_prefix("--") {
            Some(flag) if !word.quoted => flag.to_string(),
            _ => {
                call.args.push(word.text);
                call.quoted.push(word.quoted);
                continue;
            }
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (flag, None),
        };
        let accepted = |f: Flag| command.flags.contains(&f);
        match (name.as_str(), value) {
            ("format", Some(value)) if accepted(Flag::Format) => {
                call.format = value.parse()?;
            }
            ("raw", None) if accepted(Flag::Raw) => call.raw = true,
            ("yes", None) if accepted(Flag::Yes) => call.yes = true,
            _ => {
                return Err(format!(
                    "`{}` takes no --{name}; usage: {}",
                    command.name,
                    full_usage(command)
                ))
            }
        }
    }
    if call.args.len() < command.min_args || call.args.len() > command.max_args {
        return Err(format!("usage: {}", full_usage(command)));
    }
    Ok(call)
}

/// The usage line with the flags the command accepts.
pub fn full_usage(command: &Command) -> String {
    let mut usage = command.usage.to_string();
    for flag in command.flags {
        usage.push_str(&format!(" [{}]", flag.usage()));
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_declared_once_with_a_usage_naming_it() {
        let mut names: Vec<&str> = all().map(|c| c.name).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a command is declared twice");
        for command in all() {
            assert!(
                command.usage.starts_with(command.name),
                "`{}`'s usage does not start with its name: {}",
                command.name,
                command.usage
            );
            assert!(command.min_args <= command.max_args, "{}", command.name);
            assert!(!command.help.is_empty(), "{}", command.name);
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(nearest("showtabel"), Some("showtable"));
        assert_eq!(nearest("confst"), Some("confset"));
        assert_eq!(nearest("xyzzyplugh"), None);
    }

    #[test]
    fn flags_are_taken_out_and_checked() {
        let showtable = find("showtable").unwrap();
        let words = |line: &str| crate::shell::split_words(line).unwrap();
        let call = prepare(
            showtable,
            "",
            words("showtable t1 --format=json --raw"),
            Format::Table,
        )
        .unwrap();
        assert_eq!(call.args, vec!["t1"]);
        assert_eq!(call.format, Format::Json);
        assert!(call.raw);
        let err = prepare(showtable, "", words("showtable --yes"), Format::Table)
            .err()
            .unwrap();
        assert!(err.contains("takes no --yes"), "{err}");
        let err = prepare(
            showtable,
            "",
            words("showtable --format=xml"),
            Format::Table,
        )
        .err()
        .unwrap();
        assert!(err.contains("table or json"), "{err}");
        let err = prepare(showtable, "", words("showtable a b"), Format::Table)
            .err()
            .unwrap();
        let call = prepare(showtable, "", words("showtable '--raw'"), Format::Table).unwrap();
        assert_eq!(call.args, vec!["--raw"], "a quoted word is an argument");
        assert!(err.starts_with("usage: showtable"), "{err}");
    }
}
