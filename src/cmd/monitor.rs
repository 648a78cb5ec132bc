//! `kiln monitor drift MODEL`: each feature's drift against the training statistics, from a
//! running server's windows (`--server`) or from the prediction log in `KILN_HOME`.

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use kiln_core::bundle;
use kiln_core::registry::Registry;
use kiln_server::drift::{DriftReport, Monitor, Thresholds};

use crate::Outcome;
use crate::cmd::registry::Home;
use crate::cmd::remote::{self, Server};
use crate::ui::{self, num};

#[derive(Debug, Subcommand)]
pub enum MonitorCommand {
    /// Drift per feature and of the predictions; exit code 3 when a threshold is crossed.
    Drift(DriftArgs),
}

#[derive(Debug, Args)]
pub struct DriftArgs {
    /// The served model's name.
    model: String,
    /// The version to judge (default: the one `champion` points to).
    #[arg(long)]
    version: Option<u32>,
    /// Ask a running `kiln serve` or `kiln up` (`--server URL`, with `--token` when it protects
    /// reads) for its live windows instead of reading the log.
    #[command(flatten)]
    server: Server,
    /// Rows of the log to judge, newest first (reading the log).
    #[arg(long, default_value_t = 10_000)]
    window: usize,
    /// Thresholds (TOML, as for `kiln serve --drift-thresholds`), when reading the log.
    #[arg(long)]
    thresholds: Option<std::path::PathBuf>,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, command: MonitorCommand) -> Result<Outcome> {
    let MonitorCommand::Drift(args) = command;
    let reports = match &args.server.server {
        Some(_) => from_server(&args.server, &args.model)?,
        None => vec![from_log(home, &args)?],
    };
    if args.json {
        ui::print_json(&reports)?;
    } else {
        for r in &reports {
            print(r);
        }
    }
    let alarms = reports.iter().any(|r| !r.alarms().is_empty());
    Ok(if alarms {
        Outcome::Anomalies
    } else {
        Outcome::Ok
    })
}

fn from_server(server: &Server, model: &str) -> Result<Vec<DriftReport>> {
    let answer: kiln_server::drift::DriftAnswer = remote::call(
        server,
        "GET",
        &format!("/api/models/{}/drift", remote::url_part(model)),
    )?;
    Ok(answer.versions)
}

/// Replays the newest logged rows of a version through a fresh window.
fn from_log(home: &Home, args: &DriftArgs) -> Result<DriftReport> {
    let reg = Registry::open(&home.dir)?;
    let version = match args.version {
        Some(v) => reg.version(&args.model, v)?,
        None => reg.resolve(&args.model, "champion")?,
    };
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path().join("bundle");
    reg.export_artifact(&version.artifact, &dir)?;
    let (manifest, _) = bundle::read(&dir)?;
    let logged = kiln_server::predlog::read_recent(
        &home.dir.join("predictions"),
        &manifest,
        &args.model,
        version.version,
        args.window,
    )
    .map_err(|e| anyhow!(e))?;
    if logged.rows.rows == 0 {
        bail!(
            "no logged predictions of {} version {} in {}; serve it (`kiln serve`, logging is on by default) or ask a running server with --server",
            args.model,
            version.version,
            logged.dir.display()
        );
    }
    let (thresholds, per) = match &args.thresholds {
        Some(p) => crate::cmd::serve::read_thresholds(p)?,
        None => (Thresholds::default(), Default::default()),
    };
    let monitor = Monitor::new(&manifest, args.window);
    monitor.observe(&logged.rows, &logged.outputs, logged.width);
    Ok(monitor.report(&args.model, version.version, &thresholds, &per))
}

fn print(r: &DriftReport) {
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), num);
    let rows = r
        .features
        .iter()
        .chain(r.prediction.as_ref())
        .map(|f| {
            vec![
                if f.alarm {
                    format!("! {}", f.feature)
                } else {
                    format!("  {}", f.feature)
                },
                f.kind.clone(),
                fmt(f.psi),
                fmt(f.js),
                fmt(f.linf),
                fmt(f.unseen),
                format!("{} ({})", num(f.missing), num(f.missing_train)),
                f.reasons.join("; "),
            ]
        })
        .collect();
    println!(
        "{}",
        ui::table(
            &[
                "feature",
                "kind",
                "psi",
                "js",
                "linf",
                "unseen",
                "missing (train)",
                "alarm"
            ],
            rows,
            &[2, 3, 4, 5]
        )
    );
    let alarms = r.alarms().len();
    println!(
        "\n{} version {}: {} rows in the window ({} observed){}",
        r.model,
        r.version,
        r.rows,
        r.observed,
        if !r.judged {
            format!(
                "; fewer than {} rows, nothing judged yet",
                r.thresholds.min_rows
            )
        } else if alarms == 0 {
            "; no drift".to_string()
        } else {
            format!("; {alarms} in alarm")
        }
    );
}
