//! Operator tools. Today: `tessera-bench`, a load generator for replicated puts.

pub mod bench;
