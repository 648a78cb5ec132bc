//! `kiln models …`: registering versions, aliases, stages and their history, export and
//! deletion, locally or through a running server.

use super::*;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List registered models with their aliases.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Show a model: versions with stage, aliases and metrics side by side.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// List a model's versions.
    Versions {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Register a run's artifact as the model's next version.
    Register {
        name: String,
        #[arg(long)]
        run: String,
        #[arg(long, default_value = "model")]
        artifact: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Set or delete an alias.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Move a stage alias (`production` by default) to a version.
    Promote {
        name: String,
        version: u32,
        #[arg(long, value_enum, default_value_t = StageArg::Production)]
        to: StageArg,
        #[command(flatten)]
        change: Change,
        #[command(flatten)]
        server: Server,
    },
    /// Every alias move of a model; with --at, what an alias pointed to at that time.
    History {
        name: String,
        #[arg(long)]
        alias: Option<String>,
        /// A date or time (UTC), e.g. 2026-11-01 or 2026-11-01T12:00:00Z.
        #[arg(long, requires = "alias")]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Copy a version's artifact out of the store (verified), e.g. to serve elsewhere.
    Export {
        name: String,
        /// An alias or a version number.
        #[arg(long, default_value = "champion")]
        version: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Delete a model, or one version with --version.
    Delete {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        /// Delete even when aliases point to it (the aliases are deleted, and recorded).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Point an alias at a version.
    Set {
        name: String,
        alias: String,
        version: u32,
        #[command(flatten)]
        change: Change,
        #[command(flatten)]
        server: Server,
    },
    /// Delete an alias.
    Delete {
        name: String,
        alias: String,
        #[command(flatten)]
        change: Change,
    },
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
    /// `--expect` as the API takes it.
    fn expected(&self) -> Result<Option<Expected>> {
        Ok(Expected::of(self.expect()?))
    }
    fn by(&self) -> String {
        self.by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".to_string())
    }
}

/// One line of `models list`.
struct ModelLine {
    name: String,
    versions: usize,
    aliases: BTreeMap<String, u32>,
    created_ms: i64,
}

fn print_models(models: &[ModelLine]) {
    let rows = models
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

/// One line of `models show`.
struct VersionLine {
    version: u32,
    /// Empty when the version is in no stage.
    stage: String,
    run: String,
    created_ms: i64,
    metrics: BTreeMap<String, f64>,
}

fn print_versions(versions: &[VersionLine], aliases: &BTreeMap<String, u32>) {
    let keys: BTreeSet<&String> = versions.iter().flat_map(|v| v.metrics.keys()).collect();
    let mut header: Vec<String> = ["version", "stage", "aliases", "run", "created"]
        .map(String::from)
        .to_vec();
    header.extend(keys.iter().map(|k| k.to_string()));
    let rows = versions
        .iter()
        .map(|v| {
            let mut row = vec![
                v.version.to_string(),
                v.stage.clone(),
                aliases
                    .iter()
                    .filter(|(_, t)| **t == v.version)
                    .map(|(a, _)| a.clone())
                    .collect::<Vec<_>>()
                    .join(" "),
                v.run.clone(),
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

/// The `models` commands that a running server answers, when `--server` is given.
fn models_over_http(command: &ModelsCommand) -> Result<Option<Outcome>> {
    match command {
        ModelsCommand::List { json, server } if server.server.is_some() => {
            let answer: ModelList = remote::call(server, "GET", "/api/models")?;
            if *json {
                ui::print_json(&answer)?;
                return Ok(Some(Outcome::Ok));
            }
            let lines: Vec<ModelLine> = answer
                .models
                .into_iter()
                .map(|m| ModelLine {
                    name: m.name,
                    versions: m.versions,
                    aliases: m.aliases,
                    created_ms: m.created_ms,
                })
                .collect();
            print_models(&lines);
            Ok(Some(Outcome::Ok))
        }
        ModelsCommand::Show { name, json, server }
        | ModelsCommand::Versions { name, json, server }
            if server.server.is_some() =>
        {
            let answer: ModelDetail = remote::call(
                server,
                "GET",
                &format!("/api/models/{}", remote::url_part(name)),
            )?;
            if *json {
                ui::print_json(&answer)?;
                return Ok(Some(Outcome::Ok));
            }
            let versions: Vec<VersionLine> = answer
                .versions
                .into_iter()
                .map(|v| VersionLine {
                    version: v.version,
                    stage: if v.stage == Stage::None.to_string() {
                        String::new()
                    } else {
                        v.stage
                    },
                    run: v.run_id,
                    created_ms: v.created_ms,
                    metrics: v.metrics,
                })
                .collect();
            print_versions(&versions, &answer.aliases);
            Ok(Some(Outcome::Ok))
        }
        ModelsCommand::Promote {
            name,
            version,
            to,
            change,
            server,
        } if server.server.is_some() => {
            let stage = match to {
                StageArg::Production => "production",
                StageArg::Staging => "staging",
            };
            let body = Promote {
                version: *version,
                to: Some(stage.to_string()),
                expect: change.expected()?,
                reason: change.reason.clone(),
                by: Some(change.by()),
            };
            let answer: Promoted = remote::call_with(
                server,
                "POST",
                &format!("/api/models/{}/promote", remote::url_part(name)),
                Some(&serde_json::to_value(&body)?),
            )?;
            let from = answer
                .event
                .from
                .map_or("none".to_string(), |v| format!("version {v}"));
            println!(
                "{name} version {version} is now in {} (was {from})",
                answer.stage
            );
            Ok(Some(Outcome::Ok))
        }
        ModelsCommand::Alias(AliasCommand::Set {
            name,
            alias,
            version,
            change,
            server,
        }) if server.server.is_some() => {
            let body = SetAlias {
                version: *version,
                expect: change.expected()?,
                reason: change.reason.clone(),
                by: Some(change.by()),
            };
            let answer: AliasChanged = remote::call_with(
                server,
                "PUT",
                &format!(
                    "/api/models/{}/aliases/{}",
                    remote::url_part(name),
                    remote::url_part(alias)
                ),
                Some(&serde_json::to_value(&body)?),
            )?;
            println!(
                "{name}@{alias}: {} → {version}",
                answer.event.from.map_or("none".into(), |v| v.to_string())
            );
            Ok(Some(Outcome::Ok))
        }
        _ => Ok(None),
    }
}

pub fn models(home: &Home, command: ModelsCommand) -> Result<Outcome> {
    if let Some(outcome) = models_over_http(&command)? {
        return Ok(outcome);
    }
    let reg = home.open()?;
    match command {
        ModelsCommand::List { json, .. } => {
            let models = reg.models()?;
            let mut lines = Vec::new();
            let mut out = Vec::new();
            for m in &models {
                let aliases = reg.aliases(&m.name)?;
                let versions = reg.versions(&m.name)?.len();
                out.push(serde_json::json!({"model": m, "versions": versions, "aliases": aliases}));
                lines.push(ModelLine {
                    name: m.name.clone(),
                    versions,
                    aliases,
                    created_ms: m.created_ms,
                });
            }
            if json {
                ui::print_json(&out)?;
            } else {
                print_models(&lines);
            }
        }
        ModelsCommand::Show { name, json, .. } | ModelsCommand::Versions { name, json, .. } => {
            let versions = reg.versions(&name)?;
            let aliases = reg.aliases(&name)?;
            let mut stages = Vec::new();
            for v in &versions {
                stages.push(reg.stage(&name, v.version)?);
            }
            if json {
                let rows: Vec<serde_json::Value> = versions
                    .iter()
                    .zip(&stages)
                    .map(|(v, s)| serde_json::json!({"version": v, "stage": s}))
                    .collect();
                return ui::print_json(&serde_json::json!({"model": reg.model(&name)?, "aliases": aliases, "versions": rows}))
                    .map(|_| Outcome::Ok);
            }
            let lines: Vec<VersionLine> = versions
                .iter()
                .zip(&stages)
                .map(|(v, s)| VersionLine {
                    version: v.version,
                    stage: if *s == Stage::None {
                        String::new()
                    } else {
                        s.to_string()
                    },
                    run: run_id_text(v.run_id),
                    created_ms: v.created_ms,
                    metrics: v.metrics.clone(),
                })
                .collect();
            print_versions(&lines, &aliases);
        }
        ModelsCommand::Register {
            name,
            run,
            artifact,
            description,
        } => {
            let v = reg.register_version(&name, run_id(&run)?, &artifact, &description, None)?;
            println!(
                "registered {name} version {} from run {}",
                v.version,
                run_id_text(v.run_id)
            );
        }
        ModelsCommand::Alias(AliasCommand::Set {
            name,
            alias,
            version,
            change,
            ..
        }) => {
            let e = reg.set_alias(
                &name,
                &alias,
                version,
                change.expect()?,
                &change.by(),
                &change.reason,
            )?;
            println!(
                "{name}@{alias}: {} → {version}",
                e.from.map_or("none".into(), |v| v.to_string())
            );
        }
        ModelsCommand::Alias(AliasCommand::Delete {
            name,
            alias,
            change,
        }) => {
            reg.delete_alias(
                &name,
                &alias,
                change.expect()?,
                &change.by(),
                &change.reason,
            )?;
            println!("deleted alias {alias} of {name}");
        }
        ModelsCommand::Promote {
            name,
            version,
            to,
            change,
            ..
        } => {
            let stage = match to {
                StageArg::Production => Stage::Production,
                StageArg::Staging => Stage::Staging,
            };
            let alias = stage.alias().unwrap_or("production");
            let e = reg.set_alias(
                &name,
                alias,
                version,
                change.expect()?,
                &change.by(),
                &change.reason,
            )?;
            println!(
                "{name} version {version} is now in {stage} (was {})",
                e.from.map_or("none".into(), |v| format!("version {v}"))
            );
        }
        ModelsCommand::History {
            name,
            alias,
            at,
            json,
        } => {
            if let (Some(alias), Some(at)) = (&alias, &at) {
                let ms = parse_when(at)?;
                let v = reg.alias_at(&name, alias, ms)?;
                if json {
                    return ui::print_json(&serde_json::json!({"model": name, "alias": alias, "at": when(ms), "version": v})).map(|_| Outcome::Ok);
                }
                match v {
                    Some(v) => println!("{name}@{alias} at {}: version {v}", when(ms)),
                    None => println!("{name}@{alias} at {}: no version", when(ms)),
                }
                return Ok(Outcome::Ok);
            }
            let events: Vec<_> = reg
                .history(&name)?
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
        } => {
            let v = reg.resolve(&name, &version)?;
            if output.exists() {
                bail!("{} exists; choose a new path", output.display());
            }
            reg.export_artifact(&v.artifact, &output)?;
            println!(
                "exported {name} version {} to {}",
                v.version,
                output.display()
            );
        }
        ModelsCommand::Delete {
            name,
            version,
            force,
        } => {
            let by = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            match version {
                Some(v) => {
                    reg.delete_version(&name, v, force, &by)?;
                    println!("deleted {name} version {v}");
                }
                None => {
                    let n = reg.delete_model(&name, force, &by)?;
                    println!("deleted model {name} and {n} versions");
                }
            }
        }
    }
    Ok(Outcome::Ok)
}
