//! kiln's pipelines: pipeline files with their diagnostics, and the plan of a pipeline's steps
//! in levels that can run in parallel, and the executor that runs them (retries, timeouts).

pub mod command;
pub mod executor;
pub mod export;
pub mod hermetic;
pub mod local;
pub mod pipeline;
pub mod prune;
pub mod run;
pub mod schedule;
pub mod service;
pub mod shell;

pub use crate::pipeline::{
    ComponentSpec, Diagnostic, Parsed, Pipeline, Severity, levels, parse, parse_with,
};
