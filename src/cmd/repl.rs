//! `kiln repl` (and `kiln` alone in a terminal): every command-line command as a REPL line, with
//! the same words and options (parsed by the same clap definitions), plus session state: named
//! datasets loaded once (`load ctr examples/data/ctr.csv`), the current model (`use ctr`) and
//! the last run as defaults, `predict` with inline JSON rows, `describe` of a loaded dataset.
//! Against a running `kiln up` (`--server URL`) every line whose command takes `--server` goes
//! to it: registry, training, pipeline and deploy lines alike.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser};
use kiln_core::backend::Backend;
use kiln_core::data::Table;
use kiln_core::registry::run_id_text;
use kiln_core::wire::runs::RunQuery;
use kiln_repl::Shell;

use crate::cmd::registry::Home;
use crate::cmd::remote::Server;
use crate::ui;
use crate::{Cli, Command, Outcome};

#[derive(Debug, Args, Default)]
pub struct ReplArgs {
    /// Run the lines of this file, stopping at the first error (with its line number).
    #[arg(long)]
    script: Option<PathBuf>,
    /// A running `kiln up` to send pipeline and deploy lines to (it owns KILN_HOME).
    #[arg(long, env = "KILN_SERVER")]
    server: Option<String>,
}

/// The REPL's own words, with what they do.
const OWN: &[(&str, &str)] = &[
    (
        "load",
        "load NAME FILE: read a dataset once; use NAME wherever a command takes --data",
    ),
    ("datasets", "datasets: the loaded datasets"),
    (
        "describe",
        "describe NAME (or show NAME): a loaded dataset's statistics, a data file's, a model's versions or a run",
    ),
    ("use", "use MODEL[@ALIAS]: the model `predict` uses"),
    (
        "predict",
        "predict {JSON row} or [rows]: score inline rows with the current model",
    ),
    ("show", "show: the session's datasets, model and last run"),
    (
        "$last",
        "$last, $prev, $model: the session's last two runs and current model, in any line",
    ),
    ("help", "help [COMMAND]: this list, or a command's options"),
    ("exit", "exit (or Ctrl-D): leave"),
];

pub struct Session {
    home: PathBuf,
    server: Option<String>,
    datasets: BTreeMap<String, (PathBuf, Table)>,
    model: Option<String>,
    last_run: Option<String>,
    /// Runs trained in this session, oldest first (`$last`, `$prev`).
    trained: Vec<String>,
}

pub fn repl(home: &Home, args: ReplArgs) -> Result<Outcome> {
    let mut session = Session {
        home: home.dir.clone(),
        server: args.server.clone(),
        datasets: BTreeMap::new(),
        model: None,
        last_run: None,
        trained: Vec::new(),
    };
    let stdin_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
    match &args.script {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kiln_repl::run_script(&mut session, &text, &path.display().to_string())?;
        }
        None if !stdin_is_terminal => {
            let text = std::io::read_to_string(std::io::stdin()).context("reading stdin")?;
            kiln_repl::run_script(&mut session, &text, "stdin")?;
        }
        None => {
            ui::watch_ctrl_c();
            std::fs::create_dir_all(&home.dir)
                .with_context(|| format!("creating {}", home.dir.display()))?;
            eprintln!(
                "kiln {} — `help` lists commands, Tab completes, Ctrl-D leaves",
                env!("CARGO_PKG_VERSION")
            );
            kiln_repl::interactive(session, &home.dir.join("repl_history"))?;
        }
    }
    Ok(Outcome::Ok)
}

fn subcommand_names() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

impl Session {
    /// The registry the session's lines go to: the server's, or KILN_HOME's.
    fn backend(&self) -> Result<Box<dyn Backend>> {
        self.remote().unwrap_or_default().backend(&Home {
            dir: self.home.clone(),
        })
    }

    fn cli(&mut self, words: &[String]) -> Result<()> {
        let mut words = words.to_vec();
        // Loaded datasets by name wherever a file is asked for.
        let mut loaded: Option<String> = None;
        for i in 1..words.len() {
            if words[i - 1] == "--data"
                && let Some((path, _)) = self.datasets.get(&words[i])
            {
                loaded = Some(words[i].clone());
                words[i] = path.display().to_string();
            }
        }
        let first = words.first().cloned().unwrap_or_default();
        let first = first.as_str();
        // Defaults from the session.
        if words.len() == 2
            && first == "runs"
            && words[1] == "show"
            && let Some(r) = &self.last_run
        {
            words.push(r.clone());
        }
        if first == "predict"
            && !words.iter().any(|w| w == "--model" || w == "--bundle")
            && let Some(m) = &self.model
        {
            words.extend(["--model".to_string(), m.clone()]);
        }
        // A line goes where the session's registry is: to the server when its command takes
        // `--server` (one given on the line wins).
        if let Some(url) = &self.server
            && takes_server(&words)
            && !words.iter().any(|w| w == "--server")
        {
            words.extend(["--server".to_string(), url.clone()]);
        }
        let cli = match Cli::try_parse_from(
            std::iter::once("kiln".to_string()).chain(words.iter().cloned()),
        ) {
            Ok(c) => c,
            Err(e) => {
                use clap::error::ErrorKind;
                if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                    print!("{e}");
                    return Ok(());
                }
                if e.kind() == ErrorKind::InvalidSubcommand
                    && !subcommand_names().iter().any(|n| n == first)
                {
                    let mut names = subcommand_names();
                    names.extend(OWN.iter().map(|(n, _)| n.to_string()));
                    anyhow::bail!(
                        "no command `{first}`{}; `help` lists them",
                        kiln_core::suggest::hint(first, names.iter().map(String::as_str))
                    );
                }
                let text = e.render().to_string();
                anyhow::bail!("{}", text.trim_start_matches("error: ").trim_end());
            }
        };
        let home = Home {
            dir: self.home.clone(),
        };
        let Some(command) = cli.command else {
            return Ok(());
        };
        let trains = matches!(command, Command::Train(_) | Command::Sweep(_));
        ui::INTERRUPTED.store(false, Ordering::Relaxed);
        let outcome = match (command, loaded.as_ref().and_then(|n| self.datasets.get(n))) {
            (Command::Repl(_), _) => anyhow::bail!("this is the REPL already"),
            (Command::Train(args), Some((_, table))) => {
                crate::cmd::train::train_on(&home, args, Some(table))
            }
            (command, _) => crate::dispatch(&home, command),
        };
        if trains {
            self.after_training();
        }
        match outcome? {
            Outcome::Ok => Ok(()),
            Outcome::Anomalies => anyhow::bail!("anomalies at or above the failing severity"),
            Outcome::Retry => anyhow::bail!("failed; another attempt may succeed"),
        }
    }

    /// Remembers the newest run and draws its loss curves.
    fn after_training(&mut self) {
        let Ok(backend) = self.backend() else { return };
        let newest = RunQuery {
            limit: Some(1),
            ..RunQuery::default()
        };
        let Some(id) = backend
            .runs(&newest)
            .ok()
            .and_then(|p| p.runs.first().map(|e| e.run.0.id))
        else {
            return;
        };
        self.last_run = Some(run_id_text(id));
        self.trained.push(run_id_text(id));
        let Ok(detail) = backend.run(id) else { return };
        for key in ["train_loss", "validation_loss"] {
            if let Some(values) = detail.series.get(key)
                && values.len() > 1
            {
                println!(
                    "{key:>16} {} {} → {}",
                    ui::sparkline(values),
                    ui::num(values[0]),
                    ui::num(values[values.len() - 1])
                );
            }
        }
    }

    fn load(&mut self, name: &str, path: &str) -> Result<()> {
        let path = PathBuf::from(path);
        let table =
            kiln_core::data::read_with_progress(&path, &Default::default(), &ui::Bar::new())?;
        println!(
            "{name}: {} rows, {} columns ({})",
            table.num_rows(),
            table.num_columns(),
            table.names().collect::<Vec<_>>().join(", ")
        );
        self.datasets.insert(name.to_string(), (path, table));
        Ok(())
    }

    /// `describe NAME`: a loaded dataset, a data file, a model or a run, whichever NAME is.
    fn describe(&mut self, name: &str) -> Result<()> {
        if let Some((_, table)) = self.datasets.get(name) {
            return crate::cmd::data::describe_table(name, table, false).map(|_| ());
        }
        if std::path::Path::new(name).exists() {
            return self.cli(&["data".into(), "describe".into(), name.to_string()]);
        }
        let model = name.split(['@', ':']).next().unwrap_or(name);
        let run = kiln_core::registry::parse_run_id(name).ok();
        // Which of the two the registry (or the server) knows.
        let (is_model, is_run) = match self.backend() {
            Ok(b) => (
                b.model(model).is_ok(),
                run.is_some_and(|id| b.run(id).is_ok()),
            ),
            Err(_) => (false, false),
        };
        if is_model {
            return self.cli(&["models".into(), "show".into(), model.to_string()]);
        }
        if is_run {
            return self.cli(&["runs".into(), "show".into(), name.to_string()]);
        }
        anyhow::bail!(
            "no dataset `{name}`{} (nor a file, model or run of that name); `load NAME FILE` loads one",
            kiln_core::suggest::hint(name, self.datasets.keys().map(String::as_str))
        )
    }

    fn use_model(&mut self, spec: &str) -> Result<()> {
        let name = spec.split(['@', ':']).next().unwrap_or(spec);
        self.backend()?.model(name)?;
        self.model = Some(spec.to_string());
        println!("using {spec} (model `{name}`)");
        Ok(())
    }

    /// The server the session talks to, with the token from `KILN_TOKEN` and the CA from
    /// `KILN_SERVER_CA`.
    fn remote(&self) -> Option<Server> {
        self.server.as_ref().map(|url| Server {
            server: Some(url.clone()),
            token: std::env::var("KILN_TOKEN").ok(),
            server_ca: std::env::var_os("KILN_SERVER_CA").map(Into::into),
        })
    }

    fn predict_inline(&mut self, json: &str) -> Result<()> {
        let value: serde_json::Value =
            serde_json::from_str(json).context("the rows are not valid JSON")?;
        let rows = match value {
            serde_json::Value::Object(_) => vec![value],
            serde_json::Value::Array(a) if !a.is_empty() && a.iter().all(|v| v.is_object()) => a,
            _ => anyhow::bail!("give one row as a JSON object, or several as an array of objects"),
        };
        let model = self.model.clone().ok_or_else(|| {
            anyhow::anyhow!("no current model; `use NAME` first (`models list` shows them)")
        })?;
        if let Some(client) = self.remote().map(|r| r.client()).transpose()?.flatten() {
            for p in client.predict(&model, rows)? {
                println!("{p}");
            }
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("rows.jsonl");
        let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        std::fs::write(&file, text.join("\n") + "\n")?;
        let words: Vec<String> = [
            "predict",
            "--model",
            &model,
            "--data",
            &file.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.cli(&words)
    }

    fn help(&self, topic: Option<&str>) -> Result<()> {
        match topic {
            None => {
                println!("REPL commands:");
                for (_, text) in OWN {
                    println!("  {text}");
                }
                println!("\nkiln commands (the same words and options as on the command line):");
                for c in Cli::command().get_subcommands() {
                    println!(
                        "  {:<12} {}",
                        c.get_name(),
                        c.get_about().map(|a| a.to_string()).unwrap_or_default()
                    );
                }
                println!(
                    "\n`help COMMAND` shows a command's options; Tab completes commands, options, columns, models and runs."
                );
            }
            Some(t) => {
                if let Some((_, text)) = OWN.iter().find(|(n, _)| *n == t) {
                    println!("{text}");
                    return Ok(());
                }
                let mut cmd = Cli::command();
                match cmd.find_subcommand_mut(t) {
                    Some(sub) => println!("{}", sub.render_long_help()),
                    None => {
                        let mut names = subcommand_names();
                        names.extend(OWN.iter().map(|(n, _)| n.to_string()));
                        anyhow::bail!(
                            "no command `{t}`{}",
                            kiln_core::suggest::hint(t, names.iter().map(String::as_str))
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn show(&self) {
        let rows = self
            .datasets
            .iter()
            .map(|(n, (p, t))| {
                vec![
                    n.clone(),
                    p.display().to_string(),
                    t.num_rows().to_string(),
                    t.num_columns().to_string(),
                ]
            })
            .collect();
        println!(
            "{}",
            ui::table(&["dataset", "file", "rows", "columns"], rows, &[2, 3])
        );
        println!(
            "model: {}\nlast run: {}\nhome: {}{}",
            self.model.as_deref().unwrap_or("(none; `use NAME`)"),
            self.last_run.as_deref().unwrap_or("(none)"),
            self.home.display(),
            self.server
                .as_ref()
                .map_or(String::new(), |s| format!(" (through {s})"))
        );
    }

    /// `$last` and `$prev` (the session's last two runs) and `$model` in a line.
    fn expand(&self, words: &[String]) -> Result<Vec<String>> {
        words
            .iter()
            .map(|w| {
                let pick = |n: usize, what: &str| {
                    self.trained
                        .len()
                        .checked_sub(n)
                        .and_then(|i| self.trained.get(i))
                        .cloned()
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "`{what}`: this session has trained {} runs",
                                self.trained.len()
                            )
                        })
                };
                match w.as_str() {
                    "$last" => pick(1, w),
                    "$prev" => pick(2, w),
                    "$model" => self.model.clone().ok_or_else(|| {
                        anyhow::anyhow!("`$model`: no current model; `use NAME` first")
                    }),
                    _ => Ok(w.clone()),
                }
            })
            .collect()
    }

    fn dispatch_line(&mut self, words: &[String]) -> Result<()> {
        let words = &self.expand(words)?;
        let first = words[0].as_str();
        match (first, words.len()) {
            ("help", 1) => self.help(None),
            ("help", 2) => self.help(Some(&words[1])),
            ("load", 3) => self.load(&words[1], &words[2]),
            ("load", _) => anyhow::bail!("load NAME FILE: give a name and a file"),
            ("datasets", 1) | ("show", 1) => {
                self.show();
                Ok(())
            }
            ("describe" | "show", 2) => self.describe(&words[1]),
            ("use", 2) => self.use_model(&words[1]),
            ("predict", 2) if words[1].starts_with(['{', '[']) => self.predict_inline(&words[1]),
            _ => self.cli(words),
        }
    }
}

impl Shell for Session {
    fn run(&mut self, words: &[String]) -> Result<(), String> {
        if words.is_empty() {
            return Ok(());
        }
        self.dispatch_line(words).map_err(|e| format!("{e:#}"))
    }

    fn prompt(&self) -> String {
        match &self.model {
            Some(m) => format!("kiln ({m})> "),
            None => "kiln> ".to_string(),
        }
    }

    fn complete(&self, words: &[String], partial: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let Some(first) = words.first() else {
            out.extend(subcommand_names());
            out.extend(
                OWN.iter()
                    .filter(|(n, _)| !n.starts_with('$'))
                    .map(|(n, _)| n.to_string()),
            );
            return out;
        };
        let previous = words.last().map(String::as_str).unwrap_or("");
        if partial.starts_with('-') {
            // Options of the subcommand the words name.
            let mut current = Cli::command();
            for w in words {
                match current.find_subcommand(w) {
                    Some(sub) => current = sub.clone(),
                    None => break,
                }
            }
            out.extend(
                current
                    .get_arguments()
                    .filter_map(|a| a.get_long().map(|l| format!("--{l}"))),
            );
            return out;
        }
        match (first.as_str(), previous) {
            ("help", _) if words.len() == 1 => {
                out.extend(subcommand_names());
                out.extend(OWN.iter().map(|(n, _)| n.to_string()));
            }
            (_, "--data") | ("describe", "describe") => out.extend(self.datasets.keys().cloned()),
            (_, "--target") => {
                for (_, table) in self.datasets.values() {
                    out.extend(table.names().map(str::to_string));
                }
            }
            ("use", "use") | (_, "--model") => out.extend(self.model_candidates(partial)),
            ("models", _) if words.len() >= 2 && words.len() <= 3 && previous != "models" => {
                out.extend(self.model_candidates(partial));
            }
            ("runs", "show" | "compare" | "delete" | "end" | "log" | "artifact") => {
                // The newest runs.
                let query = RunQuery {
                    limit: Some(200),
                    ..RunQuery::default()
                };
                if let Ok(page) = self.backend().and_then(|b| Ok(b.runs(&query)?)) {
                    out.extend(page.runs.iter().map(|e| run_id_text(e.run.0.id)));
                }
            }
            _ if words.len() == 1 => {
                // A command's subcommands.
                if let Some(sub) = Cli::command().find_subcommand(first) {
                    out.extend(sub.get_subcommands().map(|c| c.get_name().to_string()));
                }
            }
            _ => {}
        }
        out
    }
}

impl Session {
    /// Model names, or `NAME@ALIAS` once `@` is typed.
    fn model_candidates(&self, partial: &str) -> Vec<String> {
        let Ok(list) = self.backend().and_then(|b| Ok(b.models()?)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in list.models {
            if partial.contains('@') {
                out.extend(m.aliases.keys().map(|a| format!("{}@{a}", m.name)));
            } else {
                out.push(m.name);
            }
        }
        out
    }
}

/// Whether the command a line names (`models alias set …`) takes `--server`.
fn takes_server(words: &[String]) -> bool {
    let mut command = Cli::command();
    for word in words {
        match command.find_subcommand(word) {
            Some(sub) => command = sub.clone(),
            None => break,
        }
    }
    command.get_arguments().any(|a| a.get_id() == "server")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn session() -> (tempfile::TempDir, Session) {
        let dir = tempfile::tempdir().unwrap();
        let s = Session {
            home: dir.path().join("home"),
            server: None,
            datasets: BTreeMap::new(),
            model: None,
            last_run: None,
            trained: Vec::new(),
        };
        (dir, s)
    }

    fn words(line: &str) -> Vec<String> {
        kiln_repl::split(line).unwrap()
    }

    #[test]
    fn completion_against_a_server_offers_its_runs() {
        // A real server on loopback over a registry with one run.
        let dir = tempfile::tempdir().unwrap();
        let registry = kiln_core::registry::Registry::open(&dir.path().join("served")).unwrap();
        let run = registry
            .create_run(kiln_core::registry::NewRun {
                experiment: "e".into(),
                name: "r".into(),
                params: BTreeMap::new(),
                tags: BTreeMap::new(),
                parent: None,
                lineage: Default::default(),
            })
            .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = rt
            .block_on(kiln_server::start(
                std::sync::Arc::new(registry),
                kiln_server::Selection::All,
                kiln_server::ServerConfig::default(),
            ))
            .unwrap();
        rt.spawn(kiln_server::serve(
            listener,
            kiln_server::router(state),
            std::future::pending(),
        ));
        let (_d, mut s) = session();
        s.server = Some(format!("http://{addr}"));
        let line = "runs show ";
        let (_, c) = kiln_repl::completions(&s, line, line.len());
        assert_eq!(c, [run_id_text(run.id)]);
        // No models there yet.
        let line = "use ";
        let (_, c) = kiln_repl::completions(&s, line, line.len());
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn completion_knows_commands_options_columns_and_datasets() {
        let (_d, mut s) = session();
        let data = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/data/breast_cancer.csv"
        );
        s.run(&words(&format!("load bc {data}"))).unwrap();
        let (_, c) = kiln_repl::completions(&s, "tr", 2);
        assert_eq!(c, ["train"]);
        let (_, c) = kiln_repl::completions(&s, "lo", 2);
        assert_eq!(c, ["load"]);
        let line = "train --data bc --tar";
        let (start, c) = kiln_repl::completions(&s, line, line.len());
        assert_eq!((start, c), (16, vec!["--target".to_string()]));
        let line = "train --data bc --target la";
        let (_, c) = kiln_repl::completions(&s, line, line.len());
        assert_eq!(c, ["label"]);
        let line = "train --data ";
        let (_, c) = kiln_repl::completions(&s, line, line.len());
        assert_eq!(c, ["bc"]);
        let line = "runs s";
        let (_, c) = kiln_repl::completions(&s, line, line.len());
        assert_eq!(c, ["show"]);
    }

    #[test]
    fn describe_takes_a_dataset_a_model_or_a_run() {
        let (_d, mut s) = session();
        let data = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/data/breast_cancer.csv"
        );
        s.run(&words(&format!("load bc {data}"))).unwrap();
        s.run(&words(
            "train --data bc --target label --epochs 1 --register bcm",
        ))
        .unwrap();
        for line in [
            "describe bc",
            "describe bcm",
            "show bcm@champion",
            "describe $last",
        ] {
            s.run(&words(line))
                .unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        let e = s.run(&words("describe 0000ffff")).unwrap_err();
        assert!(
            e.contains("no dataset `0000ffff` (nor a file, model or run"),
            "{e}"
        );
    }

    #[test]
    fn bad_lines_give_a_message_and_the_session_goes_on() {
        let (_d, mut s) = session();
        let e = s.run(&words("trian --data x")).unwrap_err();
        assert!(
            e.contains("no command `trian`; did you mean `train`?"),
            "{e}"
        );
        let e = s.run(&words("lod x y z")).unwrap_err();
        assert!(e.contains("did you mean `load`?"), "{e}");
        let e = s.run(&words("describe nothing")).unwrap_err();
        assert!(
            e.contains("no dataset `nothing` (nor a file, model or run"),
            "{e}"
        );
        let e = s
            .run(&words("train --data x --target y --epochs many"))
            .unwrap_err();
        assert!(e.contains("--epochs") && e.contains("many"), "{e}");
        let e = s.run(&words("predict {\"a\": ")).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = s.run(&words("predict {\"a\": 1}")).unwrap_err();
        assert!(e.contains("no current model"), "{e}");
        // Still working.
        let data = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/data/breast_cancer.csv"
        );
        s.run(&words(&format!("load bc {data}"))).unwrap();
        s.run(&words("describe bc")).unwrap();
        s.run(&words("help train")).unwrap();
    }
}
