//! `kiln experiments list|create|rename|delete`.

use anyhow::Result;
use clap::Subcommand;

use super::{Home, when};
use crate::cmd::remote::Server;
use crate::{Outcome, ui};

#[derive(Debug, Subcommand)]
pub enum ExperimentsCommand {
    /// List experiments with their run counts.
    List {
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Create an experiment.
    Create {
        /// The new experiment's name.
        name: String,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Rename an experiment.
    Rename {
        /// The experiment's name now.
        old: String,
        /// Its new name.
        new: String,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Delete an experiment (with its runs when --force).
    Delete {
        /// The experiment to delete.
        name: String,
        /// Delete its runs too (without it, an experiment with runs is refused).
        #[arg(long)]
        force: bool,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
}

pub fn experiments(home: &Home, command: ExperimentsCommand) -> Result<Outcome> {
    let (ExperimentsCommand::List { server, .. }
    | ExperimentsCommand::Create { server, .. }
    | ExperimentsCommand::Rename { server, .. }
    | ExperimentsCommand::Delete { server, .. }) = &command;
    let backend = server.backend(home)?;
    match command {
        ExperimentsCommand::List { json, .. } => {
            let list = backend.experiments()?.experiments;
            if json {
                ui::print_json(&list)?;
            } else {
                let rows = list
                    .iter()
                    .map(|e| {
                        vec![
                            e.experiment.name.clone(),
                            e.runs.to_string(),
                            when(e.experiment.created_ms),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    ui::table(&["experiment", "runs", "created"], rows, &[1])
                );
            }
        }
        ExperimentsCommand::Create { name, json, .. } => {
            let e = backend.create_experiment(&name)?;
            ui::changed(json, &e, || format!("created experiment {name}"))?;
        }
        ExperimentsCommand::Rename { old, new, json, .. } => {
            let e = backend.rename_experiment(&old, &new)?;
            ui::changed(json, &e, || format!("renamed experiment {old} to {new}"))?;
        }
        ExperimentsCommand::Delete {
            name, force, json, ..
        } => {
            let n = backend.delete_experiment(&name, force)?;
            let what = serde_json::json!({ "experiment": name, "runs_deleted": n });
            ui::changed(json, &what, || {
                format!("deleted experiment {name} and {n} runs")
            })?;
        }
    }
    Ok(Outcome::Ok)
}
