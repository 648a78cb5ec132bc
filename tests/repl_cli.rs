//! `kiln repl` without a terminal: scripts and standard input run the same lines, stop at the
//! first error with its line number and exit 1.
#![allow(clippy::unwrap_used)]

mod util;

use std::io::Write;
use std::process::Stdio;

#[test]
fn a_script_stops_at_its_first_error_with_the_line() {
    let k = util::Kiln::new();
    let script = k.file(
        "s.kiln",
        "# comment\nload bc examples/data/breast_cancer.csv\n\ndescribe bcc\ndatasets\n",
    );
    let r = k.run(&["repl", "--script", &script.display().to_string()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}:4: no dataset `bcc`; did you mean `bc`?",
            script.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("bc: 569 rows") && !r.stdout.contains("kiln> datasets"));
}

#[test]
fn standard_input_that_is_not_a_terminal_runs_as_a_script() {
    let k = util::Kiln::new();
    let mut child = k
        .command()
        .arg("repl")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"load bc examples/data/breast_cancer.csv\nshow\nexperiments list\nexit\nnot reached\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("kiln> show") && stdout.contains("model: (none; `use NAME`)"),
        "{stdout}"
    );
    assert!(!stdout.contains("not reached"));
}

#[test]
fn registry_lines_in_quick_succession_all_open_the_store() {
    // Each line opens and drops the registry; sled's flusher lets go of the store a moment
    // after, and the next line must wait for it rather than fail.
    let k = util::Kiln::new();
    let lines: String = (0..150)
        .map(|i| format!("runs create --experiment quick --name r{i}\nexperiments list\n"))
        .collect();
    let script = k.file("quick.kiln", lines);
    let out = k.ok(&["repl", "--script", &script.display().to_string()]);
    assert_eq!(out.matches("kiln> runs create").count(), 150);
}
