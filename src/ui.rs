//! Terminal output: indicatif progress bars and aligned tables.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use comfy_table::{CellAlignment, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_core::progress::{Progress, Unit};

/// Set by Ctrl-C once [`watch_ctrl_c`] watches for it: long work (training, pipeline runs)
/// stops early instead of the process.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on Ctrl-C sets [`INTERRUPTED`] instead of ending the process: training stops at its
/// next batch, a pipeline run is cancelled; at the REPL's prompt, rustyline reads it as a key
/// and drops the line being typed. Watching twice is watching once.
pub fn watch_ctrl_c() {
    static WATCHING: std::sync::Once = std::sync::Once::new();
    WATCHING.call_once(|| {
        std::thread::spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                while tokio::signal::ctrl_c().await.is_ok() {
                    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("\ninterrupting…");
                }
            });
        });
    });
}

/// A line about the process for whoever runs it (the address it serves on, that it stops), on
/// stderr: as text, or with `KILN_LOG_FORMAT=json` as a log object like every other line there.
pub fn status(line: &str) {
    if std::env::var("KILN_LOG_FORMAT").as_deref() == Ok("json") {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": now,
                "level": "INFO",
                "fields": { "message": line },
                "target": "kiln",
            })
        );
    } else {
        eprintln!("{line}");
    }
}

/// Draws kiln's progress on stderr when it is a terminal; silent otherwise.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    visible: bool,
}

impl Bar {
    pub fn new() -> Bar {
        Bar {
            bar: Mutex::new(None),
            visible: std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: Option<u64>, unit: Unit) {
        if !self.visible {
            return;
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        let counts = match unit {
            Unit::Bytes => "{bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            Unit::Rows => "{human_pos}/{human_len} rows ({per_sec}, {eta})",
            Unit::Trees => "{human_pos}/{human_len} rounds ({per_sec}, {eta})",
        };
        let template = format!("{{msg:>18}} [{{bar:30}}] {counts}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(phase.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn set(&self, done: u64) {
        if let Ok(slot) = self.bar.lock()
            && let Some(bar) = slot.as_ref()
        {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
    }

    fn cancelled(&self) -> bool {
        INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Schema anomalies as a table: severity, column, what is wrong.
pub fn anomalies(anomalies: &[kiln_core::schema::Anomaly]) -> String {
    let rows = anomalies
        .iter()
        .map(|a| vec![a.severity.to_string(), a.column.clone(), a.message.clone()])
        .collect();
    table(&["severity", "column", "anomaly"], rows, &[])
}

/// An aligned, borderless table; columns listed in `right` are right-aligned (numbers).
pub fn table(header: &[&str], rows: Vec<Vec<String>>, right: &[usize]) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    for i in right {
        if let Some(c) = t.column_mut(*i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub use kiln_core::text::num;

/// A one-line chart of a series, e.g. a loss curve: ▇▅▄▃▂▂▁.
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    values
        .iter()
        .map(|v| {
            if !v.is_finite() {
                ' '
            } else if hi > lo {
                BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
            } else {
                BARS[3]
            }
        })
        .collect()
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// What a command changed: `value` as JSON with `--json`, else the line `text` makes.
pub fn changed<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        println!("{}", text());
        Ok(())
    }
}
