//! A progress sink for long reads and writes, so the library reports and the binary draws.

/// Receives progress of a long operation. The binary draws it (with indicatif); tests ignore it.
pub trait Progress: Sync {
    /// A new phase starts, with its total in `unit`s when known.
    fn start(&self, phase: &str, total: Option<u64>, unit: Unit);
    /// The current phase has reached `done` units.
    fn set(&self, done: u64);
    /// The current phase is finished.
    fn finish(&self);
    /// Whether whoever waits for the operation has given up on it (a cancelled pipeline step):
    /// long loops stop early when it turns true.
    fn cancelled(&self) -> bool {
        false
    }
}

/// What a progress count counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Rows,
    /// Boosting rounds of tree models.
    Trees,
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: Option<u64>, _unit: Unit) {}
    fn set(&self, _done: u64) {}
    fn finish(&self) {}
}
