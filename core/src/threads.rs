//! Which threads may block. An async runtime's worker threads must never wait on sled, hash a
//! file, read a data file or train: one such call stalls every request that worker holds. The
//! binary's runtimes mark their workers ([`mark_async_worker`]); the places that block call
//! [`debug_assert_may_block`], which in debug builds (every test run) panics on a marked thread,
//! naming what was done there.

use std::cell::Cell;

thread_local! {
    static ASYNC_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as an async runtime's worker. Call it from the runtime's
/// `on_thread_park` and `on_thread_unpark` hooks, which only worker threads run (not the
/// blocking pool's threads, nor the thread in `block_on`).
pub fn mark_async_worker() {
    ASYNC_WORKER.with(|w| w.set(true));
}

/// Whether the calling thread is a marked async worker.
pub fn on_async_worker() -> bool {
    ASYNC_WORKER.with(Cell::get)
}

/// In debug builds, panics when the calling thread is a marked async worker: `what` blocks.
#[track_caller]
pub fn debug_assert_may_block(what: &str) {
    if cfg!(debug_assertions) && on_async_worker() {
        panic!(
            "{what} on an async worker thread; run it with tokio::task::spawn_blocking or on a \
             thread of its own"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_threads_refuse_blocking_work() {
        debug_assert_may_block("reading");
        let refused = std::thread::spawn(|| {
            mark_async_worker();
            std::panic::catch_unwind(|| debug_assert_may_block("reading the registry"))
        })
        .join()
        .unwrap();
        assert_eq!(refused.is_err(), cfg!(debug_assertions));
        assert!(!on_async_worker());
    }
}
