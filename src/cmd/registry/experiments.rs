//! `kiln experiments list|create|rename|delete`.

use super::*;

#[derive(Debug, Subcommand)]
pub enum ExperimentsCommand {
    /// List experiments with their run counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create an experiment.
    Create { name: String },
    /// Rename an experiment.
    Rename { old: String, new: String },
    /// Delete an experiment (with its runs when --force).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

pub fn experiments(home: &Home, command: ExperimentsCommand) -> Result<Outcome> {
    let reg = home.open()?;
    match command {
        ExperimentsCommand::List { json } => {
            let exps = reg.experiments()?;
            let counts: Vec<usize> = exps
                .iter()
                .map(|e| reg.runs(Some(&e.name)).map(|r| r.len()))
                .collect::<Result<_, _>>()?;
            if json {
                #[derive(Serialize)]
                struct Row<'a> {
                    #[serde(flatten)]
                    experiment: &'a kiln_core::registry::Experiment,
                    runs: usize,
                }
                let rows: Vec<Row> = exps
                    .iter()
                    .zip(&counts)
                    .map(|(e, c)| Row {
                        experiment: e,
                        runs: *c,
                    })
                    .collect();
                ui::print_json(&rows)?;
            } else {
                let rows = exps
                    .iter()
                    .zip(&counts)
                    .map(|(e, c)| vec![e.name.clone(), c.to_string(), when(e.created_ms)])
                    .collect();
                println!(
                    "{}",
                    ui::table(&["experiment", "runs", "created"], rows, &[1])
                );
            }
        }
        ExperimentsCommand::Create { name } => {
            reg.create_experiment(&name)?;
            println!("created experiment {name}");
        }
        ExperimentsCommand::Rename { old, new } => {
            reg.rename_experiment(&old, &new)?;
            println!("renamed experiment {old} to {new}");
        }
        ExperimentsCommand::Delete { name, force } => {
            let n = reg.delete_experiment(&name, force)?;
            println!("deleted experiment {name} and {n} runs");
        }
    }
    Ok(Outcome::Ok)
}
