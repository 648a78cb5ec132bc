//! `kiln experiments …`, `kiln runs …` and `kiln models …`: the registry from the command line,
//! a file per command group, and what they share (where the registry is, argument parsers).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use kiln_core::registry::{Registry, RunStatus, parse_run_id};

mod experiments;
mod import;
mod models;
mod runs;

pub use self::experiments::{ExperimentsCommand, experiments};
pub use self::models::{ModelsCommand, models};
pub use self::runs::{RunsCommand, runs};

/// Where the registry lives, for every registry command.
#[derive(Debug, Args)]
pub struct Home {
    /// kiln's state directory (registry, artifacts, logs).
    #[arg(
        long = "home",
        env = "KILN_HOME",
        default_value = ".kiln",
        global = true
    )]
    pub dir: PathBuf,
}

impl Home {
    fn open(&self) -> Result<Registry> {
        Ok(Registry::open(&self.dir)?)
    }

    pub fn open_registry(&self) -> Result<Registry> {
        self.open()
    }
}

fn parse_status(s: &str) -> Result<RunStatus, String> {
    s.parse()
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, found {s:?}"))
}

fn parse_metric(s: &str) -> Result<(String, f64), String> {
    let (k, v) = parse_pair(s)?;
    let v: f64 = v
        .parse()
        .map_err(|_| format!("metric `{k}`: {v:?} is not a number"))?;
    Ok((k, v))
}

pub(crate) fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_when(s: &str) -> Result<i64> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    let t = humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .with_context(|| format!("`{s}` is not a date like 2026-11-01 or 2026-11-01T12:00:00Z"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

fn run_id(s: &str) -> Result<u64> {
    Ok(parse_run_id(s)?)
}
