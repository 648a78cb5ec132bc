//! The threads that run inference: a fixed pool, as many threads as the machine has cores,
//! shared by every model, waiting on one queue. A waiting thread sleeps in the kernel until
//! work comes (no spinning, which on a small machine takes the cores that the HTTP workers need),
//! and the pool never grows the way tokio's blocking pool does under load.

use std::panic::{AssertUnwindSafe, catch_unwind};
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

/// Starts the inference threads now rather than on the first request.
pub fn start() {
    pool();
}

/// Runs `f` on an inference thread and waits for it without blocking the async workers.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServeError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task: Task = Box::new(move || {
        let _ = tx.send(f());
    });
    pool()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(task)
        .map_err(|_| ServeError::Internal("the inference threads stopped".into()))?;
    rx.await
        .map_err(|_| ServeError::Internal("an inference task ended without an answer".into()))
}
