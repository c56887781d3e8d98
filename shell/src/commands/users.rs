//! User statements, in the syntax MySQL and OpenMLDB users know; parsed and run by
//! [`crate::users`]. `create user` and `drop user` are reached through `create` and
//! `drop`.

use super::{Call, Command, Reply, MANY, SHOW};
use crate::shell::Shell;
use crate::users::{ALTER_USAGE, GRANT_USAGE, REVOKE_USAGE};

pub const COMMANDS: &[Command] = &[
    Command::new(
        "grant",
        GRANT_USAGE,
        "give a user a privilege (select: read rows, insert: write rows, all: both and administer)",
        (5, 6),
        user_statement,
    )
    .statement(),
    Command::new(
        "revoke",
        REVOKE_USAGE,
        "take a privilege back",
        (5, 6),
        user_statement,
    )
    .statement(),
    Command::new(
        "alter",
        ALTER_USAGE,
        "change a user's password (your own, or anyone's as an administrator)",
        (4, MANY),
        user_statement,
    )
    .statement(),
    Command::new(
        "show",
        "show users",
        "the users and their privileges",
        (1, 1),
        show_users,
    )
    .flags(SHOW),
];

fn show_users(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        if !call.arg(0).eq_ignore_ascii_case("users") {
            return Err(call.usage_error());
        }
        Ok(crate::users::show(shell.nameserver())
            .await?
            .render(call.format))
    })
}

fn user_statement(shell: &mut Shell, call: Call) -> Reply<'_> {
    // The password's quotes matter: the statement as typed.
    Box::pin(async move { crate::users::run(shell.nameserver(), &call.line).await })
}
