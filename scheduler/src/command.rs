//! Running a `run` step's command: the shell, in its own process group, with its output in a
//! log file per attempt that is kept. When the executor gives up on an attempt (its timeout, or
//! the run is cancelled), the future is dropped and the whole process group is killed.

use std::path::Path;
use std::process::Stdio;

use crate::executor::Attempt;

/// Kills a process group when dropped (an attempt cut short).
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

/// Runs `command` with `sh -c` in `workdir` with `env` set, its output going to `log`.
pub async fn run_command(
    command: &str,
    workdir: &Path,
    env: &[(&str, &std::ffi::OsStr)],
    log_path: &Path,
) -> Attempt {
    let log = match std::fs::File::create(log_path) {
        Ok(f) => f,
        Err(e) => return Attempt::Failed(format!("{}: {e}", log_path.display())),
    };
    let err_log = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return Attempt::Failed(format!("{}: {e}", log_path.display())),
    };
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Attempt::Failed(format!("starting `sh` in {}: {e}", workdir.display())),
    };
    let mut group = Group(child.id());
    let status = child.wait().await;
    group.0 = None;
    match status {
        Ok(s) if s.success() => Attempt::Succeeded,
        Ok(s) => {
            let last = std::fs::read_to_string(log_path)
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
