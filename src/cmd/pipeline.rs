//! `kiln pipeline …`: pipeline files from the command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use kiln_scheduler::pipeline::{Action, Severity};

use crate::Outcome;
use crate::ui;

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Check a pipeline file: every problem at once, each with its line; the plan of its steps.
    Validate {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: PipelineCommand) -> Result<Outcome> {
    match command {
        PipelineCommand::Validate { file, json } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed = kiln_scheduler::parse(&text);
            let outcome = if parsed.has_errors() {
                Outcome::Anomalies
            } else {
                Outcome::Ok
            };
            if json {
                ui::print_json(&parsed)?;
                return Ok(outcome);
            }
            for d in &parsed.diagnostics {
                let severity = match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                eprintln!(
                    "{}:{}:{}: {severity}: {}",
                    file.display(),
                    d.line,
                    d.column,
                    d.message
                );
            }
            let Some(p) = &parsed.pipeline else {
                return Ok(outcome);
            };
            if parsed.has_errors() {
                let errors = parsed
                    .diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .count();
                eprintln!("pipeline `{}`: {errors} errors", p.name);
                return Ok(outcome);
            }
            let levels = kiln_scheduler::levels(p).unwrap_or_default();
            let mut rows = Vec::new();
            for (i, level) in levels.iter().enumerate() {
                for id in level {
                    let Some(step) = p.steps.iter().find(|s| &s.id == id) else {
                        continue;
                    };
                    let what = match &step.action {
                        Action::Uses { component, .. } => format!("uses {component}"),
                        Action::Run { command } => {
                            let short: String = command.chars().take(48).collect();
                            if short.len() < command.len() {
                                format!("run {short}…")
                            } else {
                                format!("run {short}")
                            }
                        }
                    };
                    rows.push(vec![
                        (i + 1).to_string(),
                        id.clone(),
                        what,
                        step.needs.join(", "),
                    ]);
                }
            }
            println!(
                "{}",
                ui::table(&["level", "step", "does", "needs"], rows, &[0])
            );
            let schedule = p.schedule.as_ref().map_or("no schedule".to_string(), |s| {
                format!(
                    "schedule `{}` (catch-up {}, overlap {})",
                    s.cron,
                    format!("{:?}", s.catchup).to_lowercase(),
                    format!("{:?}", s.overlap).to_lowercase()
                )
            });
            println!(
                "pipeline `{}` is valid: {} steps in {} levels; {schedule}",
                p.name,
                p.steps.len(),
                levels.len()
            );
            Ok(outcome)
        }
    }
}
