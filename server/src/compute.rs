//! The threads that run inference: a fixed pool, as many threads as the machine has cores,
//! shared by every model, waiting on one queue. A waiting thread sleeps in the kernel until
//! work comes (no spinning, which on a small machine takes the cores that the HTTP workers need),
//! and the pool never grows the way tokio's blocking pool does under load.
//!
//! **The queue is bounded.** At most [`QUEUED_PER_THREAD`] tasks per thread wait or run (a few
//! tens of milliseconds of small requests, more than a load test's connections); past
//! that a request is answered 503 with `Retry-After` at once, so memory stays flat however hard
//! clients push. A task whose request is gone (the client left, or the timeout answered 408) is
//! dropped unrun when its turn comes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::ServeError;

type Task = Box<dyn FnOnce() + Send>;

fn pool() -> &'static Mutex<Sender<Task>> {
    static POOL: OnceLock<Mutex<Sender<Task>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-infer-{i}"))
                .spawn(move || {
                    loop {
                        let task = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(task) => task,
                            Err(_) => return,
                        };
                        if catch_unwind(AssertUnwindSafe(task)).is_err() {
                            tracing::error!("an inference task panicked");
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting an inference thread");
            }
        }
        Mutex::new(tx)
    })
}

/// Tasks waiting or running per inference thread before requests are turned away.
pub const QUEUED_PER_THREAD: usize = 256;

/// Tasks waiting or running now.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

fn capacity() -> usize {
    static CAPACITY: OnceLock<usize> = OnceLock::new();
    *CAPACITY.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get()) * QUEUED_PER_THREAD
    })
}

/// A place in the queue, given back when the task ends (run or dropped).
struct Place;

impl Place {
    /// A place when fewer than `limit` tasks wait or run.
    fn take(limit: usize) -> Option<Place> {
        QUEUED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        QUEUED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the inference threads now rather than on the first request.
pub fn start() {
    pool();
}

fn send(task: Task) -> Result<(), ServeError> {
    pool()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(task)
        .map_err(|_| ServeError::Internal("the inference threads stopped".into()))
}

/// Runs `f` on an inference thread and waits for it without blocking the async workers; 503
/// when the queue is full. `f` does not run if this future is dropped before its turn.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServeError> {
    let place = Place::take(capacity()).ok_or_else(|| {
        ServeError::NotReady(format!(
            "the server is at capacity ({} requests queued); try again shortly",
            capacity()
        ))
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    send(Box::new(move || {
        // The place is given back before the answer goes out, so that a caller holding its
        // answer never still counts against the queue.
        if tx.is_closed() {
            drop(place);
            return;
        }
        let out = f();
        drop(place);
        let _ = tx.send(out);
    }))?;
    rx.await
        .map_err(|_| ServeError::Internal("an inference task ended without an answer".into()))
}

/// Runs `f` on an inference thread when the queue is at most half full, without waiting for
/// it (work nobody waits on, such as shadow copies, gives way first); false when it was skipped.
pub fn run_detached(f: impl FnOnce() + Send + 'static) -> bool {
    let Some(place) = Place::take(capacity() / 2) else {
        return false;
    };
    send(Box::new(move || {
        let _place = place;
        f();
    }))
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[tokio::test]
    async fn work_whose_request_is_gone_is_dropped_unrun_and_a_full_queue_turns_work_away() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Hold every inference thread until released.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut holders = Vec::new();
        for _ in 0..threads {
            let rx = release_rx.clone();
            holders.push(tokio::spawn(run(move || {
                let _ = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            })));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A request that gives up (its client left, or the timeout answered) before its turn.
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let gone = tokio::spawn(run(move || flag.store(true, Ordering::SeqCst)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        gone.abort();
        let _ = gone.await;
        // Fill the queue: what does not fit is refused at once, not queued.
        let mut queued = Vec::new();
        let mut refused = 0;
        for _ in 0..capacity() + 10 {
            let attempt = tokio::spawn(run(|| ()));
            tokio::task::yield_now().await;
            if attempt.is_finished() {
                if let Ok(Err(ServeError::NotReady(_))) = attempt.await {
                    refused += 1;
                }
            } else {
                queued.push(attempt);
            }
        }
        assert!(refused >= 10, "only {refused} refused");
        for _ in 0..threads {
            release_tx.send(()).unwrap();
        }
        for h in holders {
            h.await.unwrap().unwrap();
        }
        for q in queued {
            let _ = q.await;
        }
        assert!(!ran.load(Ordering::SeqCst), "work for a gone request ran");
        assert_eq!(QUEUED.load(Ordering::SeqCst), 0, "places leaked");
    }
}
