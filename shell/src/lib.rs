//! `ns_client`, the operators' shell: OpenMLDB's commands over the nameserver, the
//! taskmanager and the SDK, drawn as tables (comfy-table), interactively (rustyline) or
//! one command at a time. It lives apart from the SDK so that programs using the SDK do
//! not pull in what only a terminal needs.

pub mod commands;
pub mod create_table;
pub mod format;
pub mod jobs;
pub mod repl;
pub mod shell;
pub mod users;
