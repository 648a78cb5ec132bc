//! Splitting lines, multi-line JSON, scripts that stop at their first error with its line, and
//! completion, with a shell that records what it is asked.
#![allow(clippy::unwrap_used)]

use kiln_repl::{Shell, completions, needs_more, run_script, split};

#[derive(Default)]
struct Record {
    lines: Vec<Vec<String>>,
}

impl Shell for Record {
    fn run(&mut self, words: &[String]) -> Result<(), String> {
        if words[0] == "fail" {
            return Err("it failed".into());
        }
        self.lines.push(words.to_vec());
        Ok(())
    }
    fn complete(&self, words: &[String], _partial: &str) -> Vec<String> {
        match words {
            [] => vec!["train".into(), "runs".into(), "load".into()],
            [w] if w == "train" => vec!["--data".into(), "--target".into()],
            _ => vec!["ctr".into(), "click".into()],
        }
    }
}

#[test]
fn words_split_like_a_shell_and_json_stays_whole() {
    assert_eq!(
        split("train --data 'my file.csv' --target \"y\"").unwrap(),
        ["train", "--data", "my file.csv", "--target", "y"]
    );
    assert_eq!(
        split(r#"predict {"c1": "a b", "i1": 2}"#).unwrap(),
        ["predict", r#"{"c1": "a b", "i1": 2}"#]
    );
    assert_eq!(
        split(r#"predict [{"x": 1}, {"x": 2}]"#).unwrap(),
        ["predict", r#"[{"x": 1}, {"x": 2}]"#]
    );
    assert!(split("load ctr 'unclosed").is_err());
}

#[test]
fn a_json_value_continues_until_its_brackets_balance() {
    assert!(needs_more("predict {"));
    assert!(needs_more("predict {\"a\": [1, 2"));
    assert!(!needs_more("predict {\"a\": \"}\"}"));
    assert!(needs_more("predict {\"a\": \"{\""));
    assert!(!needs_more("runs list"));
}

#[test]
fn scripts_run_entries_and_stop_at_the_first_error_with_its_line() {
    let mut shell = Record::default();
    let script = "# a session\nload ctr data.csv\n\npredict {\n  \"i1\": 1,\n  \"c1\": \"x\"\n}\nfail now\nruns list\n";
    let e = run_script(&mut shell, script, "s.kiln").unwrap_err();
    assert_eq!(e.to_string(), "s.kiln:8: it failed");
    assert_eq!(shell.lines.len(), 2);
    assert_eq!(shell.lines[1][0], "predict");
    assert!(shell.lines[1][1].contains("\"c1\": \"x\""));

    let mut shell = Record::default();
    assert_eq!(
        run_script(&mut shell, "runs list\nexit\nfail\n", "s").unwrap(),
        1
    );
    let e = run_script(&mut shell, "predict {\n", "t").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.message.contains("ends inside a JSON value"));
}

#[test]
fn completion_offers_what_the_shell_knows_for_the_word_being_typed() {
    let shell = Record::default();
    assert_eq!(completions(&shell, "tr", 2), (0, vec!["train".to_string()]));
    assert_eq!(
        completions(&shell, "train --t", 9),
        (6, vec!["--target".to_string()])
    );
    assert_eq!(
        completions(&shell, "train --data c", 14),
        (13, vec!["click".to_string(), "ctr".to_string()])
    );
}
