//! kiln's interactive console, independent of what its lines do: line editing with history,
//! completion and hints (rustyline), multi-line input (a JSON value continues until its brackets
//! balance), and scripts run line by line, stopping at the first error with its line number.
//!
//! What a line does is a [`Shell`]'s business: the binary implements it with the same command
//! definitions as the command line, plus the session's state.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::{Hinter, HistoryHinter};
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Config, Context, Editor, Helper};

/// What runs the lines.
pub trait Shell {
    /// Runs one line, given as words (see [`split`]); prints what it shows. An error is shown
    /// to the person and the session goes on.
    fn run(&mut self, words: &[String]) -> Result<(), String>;
    /// Candidates for the word being typed (`partial`), after the line's earlier `words`.
    fn complete(&self, words: &[String], partial: &str) -> Vec<String>;
    /// The prompt, which may show session state.
    fn prompt(&self) -> String {
        "kiln> ".to_string()
    }
}

/// A line that ends the session.
pub fn is_exit(words: &[String]) -> bool {
    matches!(words, [w] if w == "exit" || w == "quit")
}

/// Splits a line into words as a shell would (quotes, escapes), except that a word starting
/// with `{` or `[` takes the rest of the line as it is: inline JSON stays one word.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let json_start = line
        .char_indices()
        .find(|&(i, c)| {
            (c == '{' || c == '[') && (i == 0 || line[..i].ends_with(char::is_whitespace))
        })
        .map(|(i, _)| i);
    let (words, json) = match json_start {
        Some(i) => (&line[..i], Some(line[i..].trim())),
        None => (line, None),
    };
    let mut out = shlex::split(words).ok_or_else(|| {
        "unbalanced quotes: close the quote, or escape it with a backslash".to_string()
    })?;
    if let Some(j) = json {
        out.push(j.to_string());
    }
    Ok(out)
}

/// Whether `text` needs more lines: a `{` or `[` not yet closed (outside JSON strings).
pub fn needs_more(text: &str) -> bool {
    let mut depth = 0i64;
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    depth > 0
}

/// A line or lines of a script that failed.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct ScriptError {
    pub source_name: String,
    pub line: usize,
    pub message: String,
}

/// Runs a script's lines (`#` starts a comment; blank lines are skipped; a JSON value may span
/// lines), stopping at the first error. Returns the number of entries run.
pub fn run_script<S: Shell>(
    shell: &mut S,
    text: &str,
    source_name: &str,
) -> Result<usize, ScriptError> {
    let mut ran = 0;
    let mut pending = String::new();
    let mut first_line = 0;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if pending.is_empty() {
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            first_line = n + 1;
        } else {
            pending.push('\n');
        }
        pending.push_str(line);
        if needs_more(&pending) {
            continue;
        }
        let entry = std::mem::take(&mut pending);
        let fail = |message: String| ScriptError {
            source_name: source_name.to_string(),
            line: first_line,
            message,
        };
        let words = split(&entry).map_err(fail)?;
        if is_exit(&words) {
            return Ok(ran);
        }
        println!("kiln> {}", entry.trim());
        shell.run(&words).map_err(fail)?;
        ran += 1;
    }
    if !pending.is_empty() {
        return Err(ScriptError {
            source_name: source_name.to_string(),
            line: first_line,
            message: "the input ends inside a JSON value (a `{` or `[` is not closed)".into(),
        });
    }
    Ok(ran)
}

/// The candidates for the word at `pos` of `line`: where it starts and what it may become.
pub fn completions<S: Shell>(shell: &S, line: &str, pos: usize) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before.rfind(char::is_whitespace).map_or(0, |i| {
        i + before[i..].chars().next().map_or(1, char::len_utf8)
    });
    let partial = &before[start..];
    let words = split(&before[..start]).unwrap_or_default();
    let mut candidates: Vec<String> = shell
        .complete(&words, partial)
        .into_iter()
        .filter(|c| c.starts_with(partial))
        .collect();
    candidates.sort();
    candidates.dedup();
    (start, candidates)
}

struct Assist<S> {
    shell: Rc<RefCell<S>>,
    history: HistoryHinter,
}

impl<S: Shell> Completer for Assist<S> {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let Ok(shell) = self.shell.try_borrow() else {
            return Ok((pos, Vec::new()));
        };
        let (start, found) = completions(&*shell, line, pos);
        Ok((
            start,
            found
                .into_iter()
                .map(|c| Pair {
                    display: c.clone(),
                    replacement: c,
                })
                .collect(),
        ))
    }
}

impl<S> Hinter for Assist<S> {
    type Hint = String;
    fn hint(&self, line: &str, pos: usize, ctx: &Context<'_>) -> Option<String> {
        self.history.hint(line, pos, ctx)
    }
}

impl<S> Highlighter for Assist<S> {}

impl<S> Validator for Assist<S> {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if needs_more(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl<S: Shell> Helper for Assist<S> {}

/// What ended an interactive session badly.
#[derive(Debug, thiserror::Error)]
#[error("the terminal: {0}")]
pub struct TerminalError(#[from] rustyline::error::ReadlineError);

/// Reads lines from the terminal until `exit`, Ctrl-D or end of input, with history kept in
/// `history` (created when missing). Ctrl-C drops the line being typed; errors are shown and
/// the session goes on.
pub fn interactive<S: Shell>(shell: S, history: &Path) -> Result<(), TerminalError> {
    let shell = Rc::new(RefCell::new(shell));
    let config = Config::builder()
        .auto_add_history(false)
        .max_history_size(10_000)?
        .completion_type(rustyline::CompletionType::List)
        .build();
    let mut editor: Editor<Assist<S>, DefaultHistory> = Editor::with_config(config)?;
    editor.set_helper(Some(Assist {
        shell: shell.clone(),
        history: HistoryHinter::new(),
    }));
    let _ = editor.load_history(history);
    loop {
        let prompt = shell.borrow().prompt();
        let line = match editor.readline(&prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        let _ = editor.save_history(history);
        let words = match split(&line) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        if is_exit(&words) {
            break;
        }
        if let Err(e) = shell.borrow_mut().run(&words) {
            eprintln!("error: {e}");
        }
    }
    Ok(())
}
