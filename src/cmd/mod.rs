//! The subcommands of the `kiln` binary, one module per group.
pub mod backup;
pub mod data;
pub mod engines;
pub mod manifests;
pub mod monitor;
pub mod pipeline;
pub mod registry;
pub mod remote;
pub mod repl;
pub mod serve;
pub mod shell;
pub mod train;
pub mod up;
