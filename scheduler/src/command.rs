//! The runner of `run` steps: the step's command, with its templates filled in, run by the shell
//! in its own process group, with its output in a log file per attempt that is kept. A step
//! finds its output directory in `$KILN_OUTPUTS` (and `${outputs}`) and an earlier step's output
//! `NAME` at `${steps.ID.NAME}`. When the executor gives up on an attempt (its timeout), the
//! whole process group is killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::executor::{Attempt, StepRunner};
use crate::pipeline::{Action, Step};

/// Runs `run` steps of one pipeline run, under `dir` (`steps/ID/outputs`, `steps/ID/attempt-N.log`).
pub struct CommandRunner {
    pub dir: PathBuf,
    pub params: BTreeMap<String, String>,
    pub run_id: String,
    pub date: String,
}

impl CommandRunner {
    pub fn outputs(&self, step: &str) -> PathBuf {
        self.dir.join("steps").join(step).join("outputs")
    }

    pub fn log(&self, step: &str, attempt: u32) -> PathBuf {
        self.dir
            .join("steps")
            .join(step)
            .join(format!("attempt-{attempt}.log"))
    }

    /// `text` with `${params.X}`, `${outputs}`, `${steps.ID.NAME}`, `${date}`, `${run_id}` filled in.
    pub fn fill(&self, step: &str, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("`${{` without `}}` in {text:?}"))?;
            let reference = after[..end].trim();
            let parts: Vec<&str> = reference.splitn(3, '.').collect();
            let value = match parts.as_slice() {
                ["params", name] => self
                    .params
                    .get(*name)
                    .cloned()
                    .ok_or_else(|| format!("no parameter `{name}`"))?,
                ["outputs"] => path_text(&self.outputs(step)),
                ["steps", id, name] => path_text(&self.outputs(id).join(name)),
                ["date"] => self.date.clone(),
                ["run_id"] => self.run_id.clone(),
                _ => return Err(format!("unknown reference `${{{reference}}}`")),
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

/// Kills a process group when dropped (an attempt cut short by its timeout).
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl StepRunner for CommandRunner {
    async fn run(&self, step: &Step, attempt: u32) -> Attempt {
        let Action::Run { command } = &step.action else {
            return Attempt::Failed(format!(
                "step `{}` uses a component; this runner runs commands only",
                step.id
            ));
        };
        let command = match self.fill(&step.id, command) {
            Ok(c) => c,
            Err(e) => return Attempt::Failed(format!("step `{}`: {e}", step.id)),
        };
        let outputs = self.outputs(&step.id);
        let log_path = self.log(&step.id, attempt);
        if let Err(e) = std::fs::create_dir_all(&outputs) {
            return Attempt::Failed(format!("{}: {e}", outputs.display()));
        }
        let log = match std::fs::File::create(&log_path) {
            Ok(f) => f,
            Err(e) => return Attempt::Failed(format!("{}: {e}", log_path.display())),
        };
        let err_log = match log.try_clone() {
            Ok(f) => f,
            Err(e) => return Attempt::Failed(format!("{}: {e}", log_path.display())),
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&command)
            .current_dir(&self.dir)
            .env("KILN_OUTPUTS", &outputs)
            .env("KILN_STEP", &step.id)
            .env("KILN_RUN_ID", &self.run_id)
            .env("KILN_ATTEMPT", attempt.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Attempt::Failed(format!("starting `sh`: {e}")),
        };
        let mut group = Group(child.id());
        let status = child.wait().await;
        group.0 = None;
        match status {
            Ok(s) if s.success() => Attempt::Succeeded,
            Ok(s) => {
                let last = std::fs::read_to_string(&log_path)
                    .ok()
                    .and_then(|t| t.lines().last().map(str::to_string))
                    .unwrap_or_default();
                Attempt::Failed(format!(
                    "`{command}` exited with {s}; log {} ends: {last}",
                    log_path.display()
                ))
            }
            Err(e) => Attempt::Failed(format!("waiting for `{command}`: {e}")),
        }
    }
}
