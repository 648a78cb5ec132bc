//! Running the real `kiln` binary in a fresh temporary `KILN_HOME` with `KILN_*` cleared.
#![allow(dead_code, clippy::unwrap_used, clippy::new_without_default)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Kiln {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Kiln {
    pub fn new() -> Kiln {
        Kiln {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A path inside the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file inside the test's directory and returns its path.
    pub fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// The kiln binary, in the repository root, with a clean environment.
    pub fn command(&self) -> Command {
        self.program(env!("CARGO_BIN_EXE_kiln"))
    }

    /// A script run by bash in the same clean environment, with `KILN` naming the binary.
    pub fn script(&self, path: &str) -> Command {
        let mut c = self.program("bash");
        c.arg(path).env("KILN", env!("CARGO_BIN_EXE_kiln"));
        c
    }

    fn program(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KILN_") {
                c.env_remove(k);
            }
        }
        c.env("KILN_HOME", self.path("home"));
        c.current_dir(repo_root());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out: Output = self.command().args(args).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs with `--home` set to this test's `KILN_HOME`.
    pub fn run_home(&self, args: &[&str]) -> Run {
        let home = self.path("home").display().to_string();
        let mut all = vec!["--home", home.as_str()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "kiln {args:?} failed:\n{}", r.stderr);
        r.stdout
    }
}

/// An HTTP client that hands error statuses back as answers, for tests to look at.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A `kiln` process answering HTTP (`serve` or `up`) in a test's `KILN_HOME`; killed when dropped.
pub struct Served {
    pub child: std::process::Child,
    pub url: String,
}

impl Served {
    /// Starts `kiln --home HOME ARGS` and waits for the line of its log that names the
    /// address (warnings about models that do not serve yet may come first); the rest of the log
    /// is drained so the process never blocks on it.
    pub fn start(k: &Kiln, args: &[&str]) -> Served {
        use std::io::{BufRead, BufReader};
        let home = k.path("home").display().to_string();
        let mut child = k
            .command()
            .args(["--home", home.as_str()])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let url = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "kiln ended without naming its address:\n{}",
                    seen.join("\n")
                );
            };
            if line.starts_with("kiln ")
                && let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://"))
            {
                break url.to_string();
            }
            seen.push(line);
        };
        std::thread::spawn(move || for _ in lines {});
        Served { child, url }
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
