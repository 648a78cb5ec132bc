//! Running a `run` step's command: the shell, in its own process group, with its output in a
//! log file per attempt that is kept. When the executor gives up on an attempt (its timeout, or
//! the run is cancelled), the future is dropped and the whole process group is killed.
//!
//! **Logs are capped.** A command's output reaches its log through kiln, which keeps the first
//! [`LOG_CAP`] bytes of an attempt and counts the rest, so a step that prints forever cannot
//! fill the disk.
//!
//! **Steps die with kiln.** Each group has a watchdog: a background shell of the group that
//! waits on a pipe whose other end only kiln holds, and kills the group when the pipe closes.
//! kiln closes it when the step ends (nothing it started outlives it), and the kernel closes it
//! when kiln exits in any way, `SIGKILL` included, so a killed kiln leaves no orphans.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

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
const WRAPPER: &str =
    "exec 3<&0 </dev/null; (read -r _ <&3; kill -s KILL 0) & exec 3<&-; exec sh -c \"$1\"";

/// Variables a step never inherits from kiln: the server's token.
const WITHHELD: &[&str] = &["KILN_TOKEN"];

/// The most bytes of output an attempt's log keeps.
pub const LOG_CAP: u64 = 64 << 20;

/// An attempt's log file and how much went into it.
struct Log {
    file: std::fs::File,
    kept: u64,
    dropped: u64,
}

/// Copies one of the command's output streams into the log, up to the cap.
async fn keep(mut from: impl AsyncRead + Unpin, log: Arc<Mutex<Log>>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let room = usize::try_from(LOG_CAP.saturating_sub(log.kept)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take > 0 && log.file.write_all(&buf[..take]).is_ok() {
            log.kept += take as u64;
        }
        log.dropped += (n - take) as u64;
    }
}

/// The last line of a log, read from its end.
pub fn last_line(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut tail = Vec::new();
    let _ = f.take(4096).read_to_end(&mut tail);
    String::from_utf8_lossy(&tail)
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// Runs `command` with `sh -c` in `workdir` with `env` set, its output going to `log`.
pub async fn run_command(
    command: &str,
    workdir: &Path,
    env: &[(&str, &std::ffi::OsStr)],
    log_path: &Path,
) -> Attempt {
    let log = match std::fs::File::create(log_path) {
        Ok(file) => Arc::new(Mutex::new(Log {
            file,
            kept: 0,
            dropped: 0,
        })),
        Err(e) => return Attempt::Failed(format!("{}: {e}", log_path.display())),
    };
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", WRAPPER, "sh", command])
        .current_dir(workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
    let copies: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| tokio::spawn(keep(o, log.clone()))),
        child
            .stderr
            .take()
            .map(|e| tokio::spawn(keep(e, log.clone()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let status = child.wait().await;
    drop(watchdog);
    group.0 = None;
    // The group ends with the command, closing its output; a process that left the group
    // (setsid) may hold it open, and is not waited for long.
    for copy in copies {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), copy).await;
    }
    {
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.dropped > 0 {
            let dropped = log.dropped;
            let _ = writeln!(
                log.file,
                "\n[kiln: the log stops at {} MiB; {dropped} more bytes of output were dropped]",
                LOG_CAP >> 20
            );
        }
    }
    match status {
        Ok(s) if s.success() => Attempt::Succeeded,
        Ok(s) => {
            let last = last_line(log_path);
            Attempt::Failed(format!(
                "`{command}` exited with {s}; log {} ends: {last}",
                log_path.display()
            ))
        }
        Err(e) => Attempt::Failed(format!("waiting for `{command}`: {e}")),
    }
}
