//! `help` and `man`: both read the command declarations.

use super::{all, find, full_usage, Call, Command, Reply};
use crate::format::table;
use crate::shell::Shell;

pub const COMMANDS: &[Command] = &[
    Command::new(
        "help",
        "help [command]",
        "list the commands, or explain one",
        (0, 1),
        help,
    ),
    Command::new(
        "man",
        "man command",
        "a command's manual: usage, flags, details",
        (1, 1),
        man,
    ),
];

fn unknown(name: &str) -> String {
    match super::nearest(name) {
        Some(near) => format!("no command `{name}`; did you mean `{near}`?"),
        None => format!("no command `{name}` (`help` lists them)"),
    }
}

fn help(_: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        if let Some(name) = call.args.first() {
            let command = find(&name.to_ascii_lowercase()).ok_or_else(|| unknown(name))?;
            return Ok(format!("{}\n  {}", full_usage(command), command.help));
        }
        let mut out = table(&["command", "what it does"]);
        for c in all() {
            out.add_row(vec![c.usage, c.help]);
        }
        Ok(format!(
            "{out}\n`man command` explains one; show commands take --format=json."
        ))
    })
}

/// The manual of a command.
pub fn manual(command: &Command) -> String {
    let mut text = format!(
        "NAME\n  {} - {}\n\nUSAGE\n  {}\n",
        command.name,
        command.help,
        full_usage(command)
    );
    if !command.flags.is_empty() {
        text.push_str("\nFLAGS\n");
        for flag in command.flags {
            text.push_str(&format!("  {:<22}{}\n", flag.usage(), flag.help()));
        }
    }
    if !command.details.is_empty() {
        text.push_str("\nDETAILS\n");
        for line in command.details.lines() {
            text.push_str(&format!("  {}\n", line.trim()));
        }
    }
    text.trim_end().to_string()
}

fn man(_: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let name = call.arg(0);
        let command = find(&name.to_ascii_lowercase()).ok_or_else(|| unknown(name))?;
        Ok(manual(command))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manual_names_usage_flags_and_details() {
        let text = manual(find("showtable").unwrap());
        assert!(text.contains("USAGE\n  showtable [name] [--format=table|json] [--raw]"));
        assert!(text.contains("--raw") && text.contains("DETAILS"), "{text}");
    }
}
