//! Running a `run` step's command: the shell, in its own process group, with its output in a
//! log file per attempt that is kept. When the executor gives up on an attempt (its timeout, or
//! the run is cancelled), the future is dropped and the whole process group is killed.
//!
//! **Steps die with kiln.** Each group has a watchdog: a background shell of the group that
//! waits on a pipe whose other end only kiln holds, and kills the group when the pipe closes.
//! kiln closes it when the step ends (nothing it started outlives it), and the kernel closes it
//! when kiln exits in any way, `SIGKILL` included, so a killed kiln leaves no orphans.

use std::path::Path;
use std::process::Stdio;

use crate::executor::Attempt;

/// Kills a process group when dropped (an attempt cut short).
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self
            .0
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pgid) = pgid {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

/// The shell that runs a step's command (`$1`): it moves the watchdog pipe (its standard input)
/// to fd 3, starts the watchdog, and becomes the command's own shell with no standard input.
const WRAPPER: &str = "exec 3<&0 </dev/null; (read -r _ <&3; kill -s KILL 0) & exec 3<&-; exec sh -c \"$1\"";

/// Variables a step never inherits from kiln: the server's token.
const WITHHELD: &[&str] = &["KILN_TOKEN"];

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
    cmd.args(["-c", WRAPPER, "sh", command])
        .current_dir(workdir)
        .stdin(Stdio::piped())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .kill_on_drop(true);
    for k in WITHHELD {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Attempt::Failed(format!("starting `sh` in {}: {e}", workdir.display())),
    };
    let mut group = Group(child.id());
    // Held until the command ends; closing it lets the watchdog end the group.
    let watchdog = child.stdin.take();
    let status = child.wait().await;
    drop(watchdog);
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
