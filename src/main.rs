//! The `kiln` binary: command line, exit codes and the wiring of kiln's crates.
//!
//! Exit codes: 0 success, 1 error, 2 usage error, 3 validation found anomalies.

mod cmd;
mod components;
mod imported;
mod ui;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// kiln: an ML platform in one binary.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(flatten)]
    home: cmd::registry::Home,
    /// Colours in the log: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorArg::Auto)]
    color: ColorArg,
    /// With no command in a terminal, kiln starts its REPL.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read, describe, check and transform tabular data.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Experiments: groups of runs.
    #[command(subcommand)]
    Experiments(cmd::registry::ExperimentsCommand),
    /// Runs: parameters, metrics, artifacts and lineage of each training.
    #[command(subcommand)]
    Runs(cmd::registry::RunsCommand),
    /// The model registry: versions, aliases, stages and their history.
    #[command(subcommand)]
    Models(cmd::registry::ModelsCommand),
    /// The registry as a whole: backups, restores and checks.
    #[command(subcommand)]
    Registry(cmd::backup::RegistryCommand),
    /// Train a model; every training is a run in the registry.
    Train(cmd::train::TrainArgs),
    /// Score a file offline with a bundle or a registered model.
    Predict(cmd::train::PredictArgs),
    /// Search hyperparameters: every trial a child run of one sweep run.
    Sweep(cmd::train::SweepArgs),
    /// Retraining pipelines: steps as a DAG, on a schedule.
    #[command(subcommand)]
    Pipeline(cmd::pipeline::PipelineCommand),
    /// Serve registered models over HTTP (Open Inference Protocol V2, TF Serving, MLflow).
    Serve(cmd::serve::ServeArgs),
    /// Registry, scheduler and model server in one process, on one port.
    Up(cmd::up::UpArgs),
    /// Watch served models: drift of each feature against the training statistics.
    #[command(subcommand)]
    Monitor(cmd::monitor::MonitorCommand),
    /// The interactive console: every command as a line, with datasets and models kept.
    Repl(cmd::repl::ReplArgs),
    /// Route a model's traffic: split between versions, a shadow version, dynamic batching.
    Deploy(cmd::serve::DeployArgs),
    /// Print a shell's completion script for kiln.
    Completions(cmd::shell::CompletionsArgs),
    /// Write kiln's manual pages (roff), generated from the same definitions as `--help`.
    Man(cmd::shell::ManArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

/// Runs one command (from the command line or a REPL line).
fn dispatch(home: &cmd::registry::Home, command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Data(c) => cmd::data::run(c),
        Command::Experiments(c) => cmd::registry::experiments(home, c),
        Command::Runs(c) => cmd::registry::runs(home, c),
        Command::Models(c) => cmd::registry::models(home, c),
        Command::Registry(c) => cmd::backup::run(home, c),
        Command::Train(a) => cmd::train::train(home, a),
        Command::Predict(a) => cmd::train::predict(home, a),
        Command::Sweep(a) => cmd::train::sweep(home, a),
        Command::Pipeline(c) => cmd::pipeline::run(home, c),
        Command::Serve(a) => cmd::serve::serve(home, a),
        Command::Deploy(a) => cmd::serve::deploy(home, a),
        Command::Up(a) => cmd::up::up(home, a),
        Command::Repl(a) => cmd::repl::repl(home, a),
        Command::Monitor(c) => cmd::monitor::run(home, c),
        Command::Completions(a) => cmd::shell::completions(a),
        Command::Man(a) => cmd::shell::man(a),
    }
}

/// What a command asks the process to exit with, beyond plain success.
pub enum Outcome {
    Ok,
    /// Validation found anomalies at or above the failing severity.
    Anomalies,
    /// The work failed in a way another attempt may not repeat: exit status 75 (`EX_TEMPFAIL`),
    /// which exported workflows retry.
    Retry,
}

/// How kiln's log lines look: `KILN_LOG_FORMAT=json` for one JSON object per line (for
/// containers and log shippers), text otherwise; colours only on a terminal, never with
/// `NO_COLOR` set or `--color never`.
fn init_logs(color: ColorArg) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = match color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => !no_color && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("KILN_LOG_FORMAT").as_deref() {
        Ok("json") => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        Ok("text") | Err(_) => logs.with_ansi(ansi).init(),
        Ok(other) => {
            return Err(format!(
                "KILN_LOG_FORMAT={other:?}: give `json` (one object per line) or `text`"
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logs(cli.color) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Some(command) => dispatch(&cli.home, command),
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            cmd::repl::repl(&cli.home, cmd::repl::ReplArgs::default())
        }
        None => {
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Anomalies) => ExitCode::from(3),
        Ok(Outcome::Retry) => ExitCode::from(kiln_scheduler::hermetic::EXIT_RETRY),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every flag says what it is for in `--help`.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for s in c.get_subcommands() {
                let sub = format!("{path} {}", s.get_name());
                if s.get_about().is_none() && s.get_long_about().is_none() {
                    missing.push(sub.clone());
                }
                walk(s, &sub, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "kiln", &mut missing);
        assert!(
            missing.is_empty(),
            "{} without help:\n{}",
            missing.len(),
            missing.join("\n")
        );
    }

    /// Every command that changes something can say what it changed as JSON.
    #[test]
    fn every_change_has_json() {
        let cli = super::Cli::command();
        let mut lacking = Vec::new();
        for path in [
            "experiments create",
            "experiments rename",
            "experiments delete",
            "runs create",
            "runs log",
            "runs artifact",
            "runs end",
            "runs delete",
            "models register",
            "models alias set",
            "models alias delete",
            "models promote",
            "models export",
            "models delete",
            "registry backup",
            "registry restore",
            "train",
            "sweep",
            "deploy",
            "pipeline run",
            "pipeline cancel",
            "pipeline backfill",
            "pipeline prune",
            "pipeline schedule pause",
            "pipeline schedule resume",
            "data transform",
        ] {
            let mut c = &cli;
            for word in path.split(' ') {
                c = c
                    .find_subcommand(word)
                    .unwrap_or_else(|| panic!("no command `{path}`"));
            }
            if !c.get_arguments().any(|a| a.get_id() == "json") {
                lacking.push(path);
            }
        }
        assert!(lacking.is_empty(), "without --json: {lacking:?}");
    }
}
