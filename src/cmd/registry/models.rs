//! `kiln models …`: registering versions, aliases, stages and their history, export and
//! deletion, locally or through a running server.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use kiln_core::backend::{AliasMove, alias_at};
use kiln_core::registry::{Expect, Stage, run_id_text};
use kiln_core::wire::models::{ModelDetail, ModelList};

use super::{Home, parse_when, run_id, when};
use crate::cmd::remote::Server;
use crate::ui::num;
use crate::{Outcome, ui};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List registered models with their aliases.
    List {
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show a model: versions with stage, aliases and metrics side by side.
    Show {
        /// The model's name.
        name: String,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// List a model's versions.
    Versions {
        /// The model's name.
        name: String,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Register a run's artifact as the model's next version.
    Register {
        /// The model (created when it does not exist).
        name: String,
        /// The run whose artifact becomes the version, by id.
        #[arg(long)]
        run: String,
        /// The run's artifact to register (a bundle directory).
        #[arg(long, default_value = "model")]
        artifact: String,
        /// What the version is, for people.
        #[arg(long, default_value = "")]
        description: String,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Set or delete an alias.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Move a stage's alias to a version: Production (`champion`, what serving follows) by
    /// default, or Staging (`staging`).
    Promote {
        /// The model's name.
        name: String,
        /// The version to promote.
        version: u32,
        /// The stage: production (alias `champion`, which serving follows) or staging.
        #[arg(long, value_enum, default_value_t = StageArg::Production)]
        to: StageArg,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        change: Change,
        #[command(flatten)]
        server: Server,
    },
    /// Every alias move of a model; with --at, what an alias pointed to at that time.
    History {
        /// The model's name.
        name: String,
        /// Only this alias's moves.
        #[arg(long)]
        alias: Option<String>,
        /// A date or time (UTC), e.g. 2026-11-01 or 2026-11-01T12:00:00Z.
        #[arg(long, requires = "alias")]
        at: Option<String>,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Copy a version's artifact out of the store (verified), e.g. to serve elsewhere; or, with
    /// --format onnx, write it as an ONNX model for onnxruntime, Triton or KServe.
    Export {
        /// The model's name.
        name: String,
        /// An alias or a version number.
        #[arg(long, default_value = "champion")]
        version: String,
        /// The new directory to copy the bundle to (or the new `.onnx` file).
        #[arg(short, long)]
        output: PathBuf,
        /// bundle (kiln's own directory) or onnx.
        #[arg(long, value_enum, default_value_t = ExportFormat::Bundle)]
        format: ExportFormat,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Register an ONNX model from any framework (scikit-learn, XGBoost, LightGBM, PyTorch,
    /// TensorFlow) as the model's next version, checked by running it first.
    Import(super::import::ImportArgs),
    /// Delete a model, or one version with --version.
    Delete {
        /// The model's name.
        name: String,
        /// Delete only this version.
        #[arg(long)]
        version: Option<u32>,
        /// Delete even when aliases point to it (the aliases are deleted, and recorded).
        #[arg(long)]
        force: bool,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Point an alias at a version.
    Set {
        /// The model's name.
        name: String,
        /// The alias (letters, digits, `-`, `_`), e.g. champion or challenger.
        alias: String,
        /// The version it points to.
        version: u32,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        change: Change,
        #[command(flatten)]
        server: Server,
    },
    /// Delete an alias.
    Delete {
        /// The model's name.
        name: String,
        /// The alias to delete.
        alias: String,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        change: Change,
        #[command(flatten)]
        server: Server,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Bundle,
    Onnx,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StageArg {
    Production,
    Staging,
}

/// Who moves an alias, why, and what it must point to now (compare-and-set).
#[derive(Debug, Args)]
pub struct Change {
    /// Only move the alias if it now points to this version (`none`: only if it does not exist).
    #[arg(long, value_name = "VERSION|none")]
    expect: Option<String>,
    /// Why, for the history.
    #[arg(long, default_value = "")]
    reason: String,
    /// Who, for the history (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

impl Change {
    fn expect(&self) -> Result<Expect> {
        Ok(match self.expect.as_deref() {
            None => Expect::Any,
            Some("none") => Expect::Absent,
            Some(v) => Expect::Version(
                v.trim_start_matches('v')
                    .parse()
                    .with_context(|| format!("--expect {v}: expected a version number or none"))?,
            ),
        })
    }
    /// The move as a backend takes it.
    fn alias_move(&self) -> Result<AliasMove> {
        Ok(AliasMove {
            expect: self.expect()?,
            by: self.by(),
            reason: self.reason.clone(),
        })
    }
    fn by(&self) -> String {
        self.by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".to_string())
    }
}

fn print_models(models: &ModelList) {
    let rows = models
        .models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.versions.to_string(),
                m.aliases
                    .iter()
                    .map(|(a, v)| format!("{a}→{v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                when(m.created_ms),
            ]
        })
        .collect();
    println!(
        "{}",
        ui::table(&["model", "versions", "aliases", "created"], rows, &[1])
    );
}

fn print_versions(detail: &ModelDetail) {
    let versions = &detail.versions;
    let keys: BTreeSet<&String> = versions
        .iter()
        .flat_map(|v| v.version.metrics.keys())
        .collect();
    let mut header: Vec<String> = ["version", "stage", "aliases", "run", "created"]
        .map(String::from)
        .to_vec();
    header.extend(keys.iter().map(|k| k.to_string()));
    let rows = versions
        .iter()
        .map(|entry| {
            let v = &entry.version;
            let mut row = vec![
                v.version.to_string(),
                if entry.stage == Stage::None {
                    String::new()
                } else {
                    entry.stage.to_string()
                },
                detail
                    .aliases
                    .iter()
                    .filter(|(_, t)| **t == v.version)
                    .map(|(a, _)| a.clone())
                    .collect::<Vec<_>>()
                    .join(" "),
                run_id_text(v.run_id),
                when(v.created_ms),
            ];
            row.extend(
                keys.iter()
                    .map(|k| v.metrics.get(*k).map_or("-".into(), |m| num(*m))),
            );
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let right: Vec<usize> = (5..header.len()).collect();
    println!("{}", ui::table(&header, rows, &right));
}

impl ModelsCommand {
    fn server(&self) -> &Server {
        match self {
            ModelsCommand::List { server, .. }
            | ModelsCommand::Show { server, .. }
            | ModelsCommand::Versions { server, .. }
            | ModelsCommand::Register { server, .. }
            | ModelsCommand::Promote { server, .. }
            | ModelsCommand::History { server, .. }
            | ModelsCommand::Export { server, .. }
            | ModelsCommand::Delete { server, .. }
            | ModelsCommand::Import(super::import::ImportArgs { server, .. })
            | ModelsCommand::Alias(AliasCommand::Set { server, .. })
            | ModelsCommand::Alias(AliasCommand::Delete { server, .. }) => server,
        }
    }
}

pub fn models(home: &Home, command: ModelsCommand) -> Result<Outcome> {
    let backend = command.server().backend(home)?;
    match command {
        ModelsCommand::List { json, .. } => {
            let models = backend.models()?;
            if json {
                ui::print_json(&models)?;
            } else {
                print_models(&models);
            }
        }
        ModelsCommand::Show { name, json, .. } | ModelsCommand::Versions { name, json, .. } => {
            let detail = backend.model(&name)?;
            if json {
                ui::print_json(&detail)?;
            } else {
                print_versions(&detail);
            }
        }
        ModelsCommand::Register {
            name,
            run,
            artifact,
            description,
            json,
            ..
        } => {
            let v =
                backend.register_version(&name, run_id(&run)?, &artifact, &description, None)?;
            ui::changed(json, &v, || {
                format!(
                    "registered {name} version {} from run {}",
                    v.version,
                    run_id_text(v.run_id)
                )
            })?;
        }
        ModelsCommand::Alias(AliasCommand::Set {
            name,
            alias,
            version,
            change,
            json,
            ..
        }) => {
            let e = backend.set_alias(&name, &alias, version, &change.alias_move()?)?;
            ui::changed(json, &e, || {
                format!(
                    "{name}@{alias}: {} → {version}",
                    e.from.map_or("none".into(), |v| v.to_string())
                )
            })?;
        }
        ModelsCommand::Alias(AliasCommand::Delete {
            name,
            alias,
            change,
            json,
            ..
        }) => {
            let e = backend.delete_alias(&name, &alias, &change.alias_move()?)?;
            ui::changed(json, &e, || format!("deleted alias {alias} of {name}"))?;
        }
        ModelsCommand::Promote {
            name,
            version,
            to,
            change,
            json,
            ..
        } => {
            let stage = match to {
                StageArg::Production => Stage::Production,
                StageArg::Staging => Stage::Staging,
            };
            let alias = stage.alias().unwrap_or("champion");
            let e = backend.set_alias(&name, alias, version, &change.alias_move()?)?;
            let serves = if stage == Stage::Production {
                ", which serving follows"
            } else {
                ""
            };
            let what = serde_json::json!({ "stage": stage.to_string(), "event": e });
            ui::changed(json, &what, || {
                format!(
                    "{name} version {version} is now in {stage} (alias `{alias}`{serves}; was {})",
                    e.from.map_or("none".into(), |v| format!("version {v}"))
                )
            })?;
        }
        ModelsCommand::History {
            name,
            alias,
            at,
            json,
            ..
        } => {
            let history = backend.history(&name)?;
            if let (Some(alias), Some(at)) = (&alias, &at) {
                let ms = parse_when(at)?;
                let v = alias_at(&history, alias, ms);
                if json {
                    return ui::print_json(&serde_json::json!({"model": name, "alias": alias, "at": when(ms), "version": v})).map(|_| Outcome::Ok);
                }
                match v {
                    Some(v) => println!("{name}@{alias} at {}: version {v}", when(ms)),
                    None => println!("{name}@{alias} at {}: no version", when(ms)),
                }
                return Ok(Outcome::Ok);
            }
            let events: Vec<_> = history
                .into_iter()
                .filter(|e| alias.as_ref().is_none_or(|a| &e.alias == a))
                .collect();
            if json {
                return ui::print_json(&events).map(|_| Outcome::Ok);
            }
            let v = |x: Option<u32>| x.map_or("-".to_string(), |v| v.to_string());
            let rows = events
                .iter()
                .map(|e| {
                    vec![
                        when(e.at_ms),
                        e.alias.clone(),
                        v(e.from),
                        v(e.to),
                        e.by.clone(),
                        e.reason.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                ui::table(
                    &["when", "alias", "from", "to", "by", "reason"],
                    rows,
                    &[2, 3]
                )
            );
        }
        ModelsCommand::Export {
            name,
            version,
            output,
            format: ExportFormat::Onnx,
            json,
            ..
        } => {
            if output.exists() {
                bail!("{} exists; choose a new path", output.display());
            }
            let v = backend.resolve(&name, &version)?;
            let scratch = tempfile::tempdir().context("creating a temporary directory")?;
            let dir = scratch.path().join("bundle");
            backend.export_version(&v, &dir)?;
            let (manifest, weights) = kiln_core::bundle::read(&dir)?;
            let exported = kiln_server::onnx::export::export(&manifest, &weights)
                .map_err(|e| anyhow::anyhow!("{name} version {}: {e}", v.version))?;
            kiln_core::data::write_atomically(&output, |w| {
                std::io::Write::write_all(w, &exported.bytes)?;
                Ok(())
            })?;
            let what = serde_json::json!({
                "model": name,
                "version": v.version,
                "output": output,
                "inputs": exported.inputs,
                "transform_included": exported.transform_included,
                "note": exported.note,
            });
            ui::changed(json, &what, || {
                let mut text = format!(
                    "exported {name} version {} to {} (ONNX, opset 17; inputs {})",
                    v.version,
                    output.display(),
                    exported.inputs.join(", ")
                );
                if let Some(why) = &exported.note {
                    text.push_str(&format!(
                        "\nthe graph takes kiln's transformed features, not raw columns: {why}"
                    ));
                }
                text
            })?;
        }
        ModelsCommand::Export {
            name,
            version,
            output,
            json,
            ..
        } => {
            if output.exists() {
                bail!("{} exists; choose a new path", output.display());
            }
            let v = backend.resolve(&name, &version)?;
            backend.export_version(&v, &output)?;
            let what = serde_json::json!({ "model": name, "version": v.version, "output": output });
            ui::changed(json, &what, || {
                format!(
                    "exported {name} version {} to {}",
                    v.version,
                    output.display()
                )
            })?;
        }
        ModelsCommand::Import(args) => super::import::import_model(backend.as_ref(), args)?,
        ModelsCommand::Delete {
            name,
            version,
            force,
            json,
            ..
        } => {
            let by = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            match version {
                Some(v) => {
                    backend.delete_version(&name, v, force, &by)?;
                    let what = serde_json::json!({ "model": name, "version": v });
                    ui::changed(json, &what, || format!("deleted {name} version {v}"))?;
                }
                None => {
                    let n = backend.delete_model(&name, force, &by)?;
                    let what = serde_json::json!({ "model": name, "versions_deleted": n });
                    ui::changed(json, &what, || {
                        format!("deleted model {name} and {n} versions")
                    })?;
                }
            }
        }
    }
    Ok(Outcome::Ok)
}
