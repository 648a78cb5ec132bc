//! `kiln completions SHELL` and `kiln man`: shell completions and manual pages, generated from
//! the same clap definitions that parse the command line (and that the REPL completes from).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::{Cli, Outcome};

/// `kiln completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, powershell or elvish. Install, e.g.:
    /// `kiln completions bash > ~/.local/share/bash-completion/completions/kiln`.
    #[arg(value_enum)]
    shell: Shell,
}

/// `kiln man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command (kiln.1, kiln-train.1, …) into this directory (created when
    /// missing); without it, kiln.1 goes to standard output.
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<Outcome> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "kiln", &mut script);
    print_all(&script)
}

/// Writes `bytes` to standard output; a reader that stops early (`| head`) is no error.
fn print_all(bytes: &[u8]) -> Result<Outcome> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(Outcome::Ok),
    }
}

pub fn man(args: ManArgs) -> Result<Outcome> {
    let command = Cli::command();
    match args.output {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing manual pages to {}", dir.display()))?;
            eprintln!("wrote kiln's manual pages to {}", dir.display());
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .context("writing the manual page")?;
            return print_all(&page);
        }
    }
    Ok(Outcome::Ok)
}
