//! Templated values in `run` lines, which `sh -c` reads: **no value is ever shell code.**
//!
//! A value made only of characters the shell takes literally in every context (letters, digits
//! and `_ . / : @ % + , = -`) goes into the line as written, so logs read naturally. Any other
//! value goes in as a reference to an environment variable that holds it (`${KILN_PARAM_X}`),
//! quoted for where it stands: the shell substitutes a variable's value after it has parsed the
//! line, so quotes, `;`, `$( )`, backticks and newlines in a value stay text. A reference is
//! safe even where the context is guessed wrong (a here-document, a comment): the worst outcome
//! is a value split into words, never a value run.

/// Whether `value` reads the same to the shell wherever it stands.
pub fn is_plain(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with(['~', '-', '='])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@%+,=-".contains(&b))
}

/// Where in a shell line a template stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Outside quotes (or in a comment).
    Bare,
    /// Inside `'…'`.
    Single,
    /// Inside `"…"`.
    Double,
}

/// Follows the quoting of a shell line's literal text, piece by piece.
#[derive(Debug, Clone, Copy)]
pub struct Scanner {
    context: Context,
    escaped: bool,
    comment: bool,
    word_start: bool,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            context: Context::Bare,
            escaped: false,
            comment: false,
            word_start: true,
        }
    }
}

impl Scanner {
    /// Reads the next piece of literal text.
    pub fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if self.escaped {
                self.escaped = false;
                self.word_start = false;
                continue;
            }
            if self.comment {
                if c == '\n' {
                    self.comment = false;
                    self.word_start = true;
                }
                continue;
            }
            match self.context {
                Context::Bare => match c {
                    '\\' => self.escaped = true,
                    '\'' => self.context = Context::Single,
                    '"' => self.context = Context::Double,
                    '#' if self.word_start => self.comment = true,
                    _ => {}
                },
                Context::Single => {
                    if c == '\'' {
                        self.context = Context::Bare;
                    }
                }
                Context::Double => match c {
                    '\\' => self.escaped = true,
                    '"' => self.context = Context::Bare,
                    _ => {}
                },
            }
            self.word_start = self.context == Context::Bare
                && (c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '<' | '>'));
        }
    }

    /// The context the next character stands in.
    pub fn context(&self) -> Context {
        self.context
    }

    /// Notes that a value was inserted (the next character no longer starts a word).
    pub fn inserted(&mut self) {
        self.word_start = false;
    }
}

/// A quoted reference to the environment variable `var`, for a line at `context`.
pub fn reference(var: &str, context: Context) -> String {
    match context {
        Context::Bare => format!("\"${{{var}}}\""),
        Context::Double => format!("${{{var}}}"),
        Context::Single => format!("'\"${{{var}}}\"'"),
    }
}

/// An environment variable's name for a template reference: `KILN_` and the reference upper-cased,
/// every character other than a letter or digit as `_` (`params.rows` → `KILN_PARAM_ROWS`,
/// `steps.train.model` → `KILN_STEP_TRAIN_MODEL`).
pub fn variable(reference: &str) -> String {
    let rest = reference
        .strip_prefix("params.")
        .map(|p| format!("PARAM_{p}"))
        .or_else(|| {
            reference
                .strip_prefix("steps.")
                .map(|s| format!("STEP_{s}"))
        })
        .unwrap_or_else(|| reference.to_string());
    let mut out = String::from("KILN_");
    out.extend(rest.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context_after(text: &str) -> Context {
        let mut s = Scanner::default();
        s.feed(text);
        s.context()
    }

    #[test]
    fn follows_quotes_escapes_and_comments() {
        assert_eq!(context_after("echo "), Context::Bare);
        assert_eq!(context_after("echo 'a "), Context::Single);
        assert_eq!(context_after("echo \"a "), Context::Double);
        assert_eq!(context_after("echo \"a\" 'b' "), Context::Bare);
        assert_eq!(context_after("echo \\' "), Context::Bare);
        assert_eq!(context_after("echo \"\\\" "), Context::Double);
        assert_eq!(context_after("echo \"it's "), Context::Double);
        assert_eq!(context_after("# don't\necho "), Context::Bare);
        assert_eq!(context_after("echo a#b'c "), Context::Single);
    }

    #[test]
    fn plain_values_are_the_ones_no_context_changes() {
        for v in ["20000", "0.01", "ctr", "/a/b/c.csv", "a=b", "x@1", "50%"] {
            assert!(is_plain(v), "{v}");
        }
        for v in [
            "", "a b", "1;x", "$(x)", "`x`", "a'b", "a\"b", "a\nb", "*", "~", "-rf", "a\\b",
        ] {
            assert!(!is_plain(v), "{v:?}");
        }
    }

    #[test]
    fn variables_are_valid_names() {
        assert_eq!(variable("params.rows"), "KILN_PARAM_ROWS");
        assert_eq!(
            variable("steps.generate.ctr.csv"),
            "KILN_STEP_GENERATE_CTR_CSV"
        );
        assert_eq!(
            variable("steps.infra-validate.ok"),
            "KILN_STEP_INFRA_VALIDATE_OK"
        );
        assert_eq!(variable("date"), "KILN_DATE");
    }

    #[test]
    fn references_survive_every_context() {
        assert_eq!(reference("V", Context::Bare), "\"${V}\"");
        assert_eq!(reference("V", Context::Double), "${V}");
        assert_eq!(reference("V", Context::Single), "'\"${V}\"'");
    }
}
