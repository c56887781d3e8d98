//! The user statements of the shell, in the syntax MySQL and OpenMLDB users know:
//!
//! ```text
//! create user NAME options (password='…')
//! alter user NAME set options (password='…')
//! drop user NAME
//! show users
//! grant select|insert|all on DB.TABLE|DB.*|*.* to NAME
//! revoke select|insert|all on DB.TABLE|DB.*|*.* from NAME
//! ```

use tessera_common::auth::{grant_entry, Privilege, Scope};
use tessera_proto::nameserver::{GrantRequest, ShowUsersRequest, UserRequest};

use tessera_ns_client::nameserver::NameserverConnection;

pub const CREATE_USAGE: &str = "create user NAME options (password='…')";
pub const ALTER_USAGE: &str = "alter user NAME set options (password='…')";
pub const GRANT_USAGE: &str = "grant select|insert|all on DB.TABLE|DB.*|*.* to NAME";
pub const REVOKE_USAGE: &str = "revoke select|insert|all on DB.TABLE|DB.*|*.* from NAME";

/// A parsed user statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    Create {
        name: String,
        password: String,
    },
    Alter {
        name: String,
        password: String,
    },
    Drop {
        name: String,
    },
    Show,
    Grant {
        user: String,
        privilege: Privilege,
        scope: Scope,
    },
    Revoke {
        user: String,
        privilege: Privilege,
        scope: Scope,
    },
}

/// The password in `options (password='…')`: quoted with ' or ", a doubled quote
/// standing for itself.
fn password_option(text: &str, usage: &str) -> Result<String, String> {
    let bad = || format!("usage: {usage}");
    let lower = text.to_ascii_lowercase();
    let at = lower.find("password").ok_or_else(bad)?;
    let rest = text[at + "password".len()..].trim_start();
    let rest = rest.strip_prefix('=').ok_or_else(bad)?.trim_start();
    let quote = rest
        .chars()
        .next()
        .filter(|c| *c == '\'' || *c == '"')
        .ok_or_else(bad)?;
    let mut password = String::new();
    let mut chars = rest[1..].chars().peekable();
    loop {
        match chars.next() {
            None => return Err("the password's quote is not closed".into()),
            Some(c) if c == quote => {
                if chars.peek() == Some(&quote) {
                    password.push(quote);
                    chars.next();
                } else {
                    break;
                }
            }
            Some(c) => password.push(c),
        }
    }
    let tail: String = chars.collect();
    if tail.trim() != ")" {
        return Err(bad());
    }
    Ok(password)
}

/// Parses a user statement (see the module comment).
pub fn parse(line: &str) -> Result<Statement, String> {
    let line = line.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = line.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    match lower.as_slice() {
        ["create", "user", _, "options", ..] | ["create", "user", _, "options(", ..] => {
            let name = words[2].to_string();
            let options = &line[line.to_ascii_lowercase().find("options").unwrap_or(0)..];
            Ok(Statement::Create {
                name,
                password: password_option(options, CREATE_USAGE)?,
            })
        }
        ["create", "user", ..] => Err(format!("usage: {CREATE_USAGE}")),
        ["alter", "user", _, "set", "options", ..] => {
            let name = words[2].to_string();
            let options = &line[line.to_ascii_lowercase().find("options").unwrap_or(0)..];
            Ok(Statement::Alter {
                name,
                password: password_option(options, ALTER_USAGE)?,
            })
        }
        ["alter", ..] => Err(format!("usage: {ALTER_USAGE}")),
        ["drop", "user", _] => Ok(Statement::Drop {
            name: words[2].to_string(),
        }),
        ["drop", "user", ..] => Err("usage: drop user NAME".into()),
        ["show", "users"] => Ok(Statement::Show),
        [verb @ ("grant" | "revoke"), ..] => {
            let (usage, preposition) = if *verb == "grant" {
                (GRANT_USAGE, "to")
            } else {
                (REVOKE_USAGE, "from")
            };
            // `all privileges` is `all`.
            let mut rest: Vec<&str> = words[1..].to_vec();
            if rest.len() > 1 && rest[1].eq_ignore_ascii_case("privileges") {
                rest.remove(1);
            }
            let [privilege, on, scope, to, user] = rest.as_slice() else {
                return Err(format!("usage: {usage}"));
            };
            if !on.eq_ignore_ascii_case("on") || !to.eq_ignore_ascii_case(preposition) {
                return Err(format!("usage: {usage}"));
            }
            let privilege = Privilege::parse(privilege)?;
            let scope = Scope::parse(scope)?;
            let user = user.to_string();
            Ok(if *verb == "grant" {
                Statement::Grant {
                    user,
                    privilege,
                    scope,
                }
            } else {
                Statement::Revoke {
                    user,
                    privilege,
                    scope,
                }
            })
        }
        _ => Err("not a user statement".into()),
    }
}

fn status_text(status: tonic::Status) -> String {
    status.message().to_string()
}

#[derive(Clone, Copy)]
enum UserCall {
    Create,
    Alter,
    Drop,
}

/// Creates, alters or drops a user; the line to print.
async fn user_call(
    ns: &mut NameserverConnection,
    request: UserRequest,
    which: UserCall,
) -> Result<String, String> {
    let name = request.name.clone();
    ns.call(|mut c| {
        let r = request.clone();
        async move {
            match which {
                UserCall::Create => c.create_user(r).await,
                UserCall::Alter => c.alter_user(r).await,
                UserCall::Drop => c.drop_user(r).await,
            }
        }
    })
    .await
    .map_err(status_text)?;
    let verb = match which {
        UserCall::Create => "Create",
        UserCall::Alter => "Alter",
        UserCall::Drop => "Drop",
    };
    Ok(format!("{verb} user {name} ok"))
}

/// The users and their grants.
pub async fn show(ns: &mut NameserverConnection) -> Result<crate::format::Rows, String> {
    let users = ns
        .call(|mut c| async move { c.show_users(ShowUsersRequest {}).await })
        .await
        .map_err(status_text)?
        .into_inner()
        .users;
    let mut rows = crate::format::Rows::new(&["user", "grants"]);
    for user in &users {
        let grants = if user.name == tessera_common::auth::ROOT {
            "all on *.* (root)".to_string()
        } else if user.grants.is_empty() {
            "-".to_string()
        } else {
            user.grants
                .iter()
                .map(|g| format!("{} on {}.{}", g.privilege, g.db, g.table))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push(vec![user.name.clone().into(), grants.into()]);
    }
    Ok(rows)
}

/// Runs a user statement against the nameserver.
pub async fn run(ns: &mut NameserverConnection, line: &str) -> Result<String, String> {
    match parse(line)? {
        Statement::Create { name, password } => {
            user_call(ns, UserRequest { name, password }, UserCall::Create).await
        }
        Statement::Alter { name, password } => {
            user_call(ns, UserRequest { name, password }, UserCall::Alter).await
        }
        Statement::Drop { name } => {
            let password = String::new();
            user_call(ns, UserRequest { name, password }, UserCall::Drop).await
        }
        Statement::Show => Ok(show(ns).await?.render(crate::format::Format::Table)),
        Statement::Grant {
            user,
            privilege,
            scope,
        }
        | Statement::Revoke {
            user,
            privilege,
            scope,
        } => {
            let granting = line.trim_start().to_ascii_lowercase().starts_with("grant");
            let request = GrantRequest {
                user: user.clone(),
                grant: Some(grant_entry(privilege, &scope)),
            };
            ns.call(|mut c| {
                let r = request.clone();
                async move {
                    if granting {
                        c.grant(r).await
                    } else {
                        c.revoke(r).await
                    }
                }
            })
            .await
            .map_err(status_text)?;
            Ok(if granting {
                format!("Grant {} on {scope} to {user} ok", privilege.as_str())
            } else {
                format!("Revoke {} on {scope} from {user} ok", privilege.as_str())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_parse() {
        assert_eq!(
            parse("create user alice options (password='it''s a secret');").unwrap(),
            Statement::Create {
                name: "alice".into(),
                password: "it's a secret".into()
            }
        );
        assert_eq!(
            parse("ALTER USER alice SET OPTIONS (password=\"n3w password\")").unwrap(),
            Statement::Alter {
                name: "alice".into(),
                password: "n3w password".into()
            }
        );
        assert_eq!(
            parse("drop user alice").unwrap(),
            Statement::Drop {
                name: "alice".into()
            }
        );
        assert_eq!(parse("show users").unwrap(), Statement::Show);
        assert_eq!(
            parse("grant select on db.* to alice").unwrap(),
            Statement::Grant {
                user: "alice".into(),
                privilege: Privilege::Select,
                scope: Scope::parse("db.*").unwrap()
            }
        );
        assert_eq!(
            parse("REVOKE ALL PRIVILEGES ON *.* FROM bob").unwrap(),
            Statement::Revoke {
                user: "bob".into(),
                privilege: Privilege::All,
                scope: Scope::parse("*.*").unwrap()
            }
        );
    }

    #[test]
    fn bad_statements_say_how_to_write_them() {
        for (line, expected) in [
            ("create user alice", "usage: create user"),
            (
                "create user alice options (password=secret)",
                "usage: create user",
            ),
            ("create user alice options (password='open", "not closed"),
            ("grant select on db.* alice", "usage: grant"),
            ("grant delete on db.* to alice", "unknown privilege"),
            ("grant select on *.t to alice", "not a scope"),
            ("revoke select on db.t to alice", "usage: revoke"),
        ] {
            let error = parse(line).unwrap_err();
            assert!(error.contains(expected), "{line}: {error}");
        }
    }
}
