//! `kiln registry backup|restore|check`: copies of the registry that open on their own, putting
//! one back, and checking that every reference resolves and every artifact matches its digest.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use kiln_core::registry::{BackupSummary, Registry, RegistryError};

use crate::Outcome;
use crate::cmd::registry::Home;
use crate::cmd::remote::{self, Server};

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Write a consistent copy of the registry (database and artifacts) to DIR, a new directory;
    /// with --server, the running kiln writes one into its --backup-dir.
    Backup {
        /// The new directory to write the backup to.
        #[arg(value_name = "DIR")]
        to: Option<PathBuf>,
        #[command(flatten)]
        server: Server,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a backup in place as KILN_HOME's registry (the current database and artifacts are
    /// moved aside, not deleted). Stop any kiln that uses KILN_HOME first.
    Restore {
        /// The backup's directory.
        #[arg(value_name = "DIR")]
        from: PathBuf,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check that every reference resolves and every artifact matches its digest; exit code 3
    /// with the list of problems when something is wrong.
    Check {
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(home: &Home, command: RegistryCommand) -> Result<Outcome> {
    match command {
        RegistryCommand::Backup { to, server, json } => {
            let summary: BackupSummary = match (&server.server, to) {
                (Some(_), Some(dir)) => bail!(
                    "with --server the running kiln writes the backup into its own --backup-dir; drop {} or --server",
                    dir.display()
                ),
                (Some(_), None) => remote::call(&server, "POST", "/api/registry/backups")?,
                (None, None) => bail!(
                    "give the directory to write the backup to (`kiln registry backup DIR`), or --server URL for a running kiln"
                ),
                (None, Some(dir)) => open(home)?.backup(&dir)?,
            };
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "backed up {} records in {} trees and {} artifacts ({} bytes) to {}",
                    summary.records,
                    summary.trees,
                    summary.artifacts,
                    summary.bytes,
                    summary.dir.display()
                );
            }
            Ok(Outcome::Ok)
        }
        RegistryCommand::Restore { from: dir, json } => {
            let moved = kiln_core::registry::restore(&home.dir, &dir).map_err(|e| match e {
                RegistryError::Locked { .. } => anyhow::anyhow!(
                    "{e}; stop that kiln first: a registry in use cannot be replaced"
                ),
                other => other.into(),
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"restored": dir, "home": home.dir, "moved_aside": moved})
                );
            } else {
                println!("restored {} into {}", dir.display(), home.dir.display());
                for m in moved {
                    println!("  the former {} is kept", m.display());
                }
            }
            Ok(Outcome::Ok)
        }
        RegistryCommand::Check { json } => {
            let problems = open(home)?.check()?;
            if json {
                println!("{}", serde_json::json!({ "problems": problems }));
            } else if problems.is_empty() {
                println!("the registry in {} checks clean", home.dir.display());
            } else {
                println!("{} problem(s) in {}:", problems.len(), home.dir.display());
                for p in &problems {
                    println!("  {p}");
                }
                println!(
                    "restore the newest good backup with `kiln registry restore DIR` (backups: `kiln registry backup`)"
                );
            }
            Ok(if problems.is_empty() {
                Outcome::Ok
            } else {
                Outcome::Anomalies
            })
        }
    }
}

fn open(home: &Home) -> Result<Registry> {
    Registry::open(&home.dir).map_err(|e| match e {
        RegistryError::Locked { .. } => anyhow::anyhow!(
            "{e}; back it up through that kiln instead: `kiln registry backup --server URL`"
        ),
        other => other.into(),
    })
}
