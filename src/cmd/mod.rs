//! The subcommands of the `kiln` binary, one module per group.
pub mod data;
pub mod pipeline;
pub mod registry;
pub mod serve;
pub mod train;
