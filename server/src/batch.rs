//! Dynamic batching: concurrent requests for one model version are merged into one forward pass
//! when the batch holds `max_batch` rows or its first request has waited `max_delay`, then the
//! outputs are split back to each request.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::ServeError;
use crate::runtime::Features;

/// What runs a merged batch: features in, `width` outputs per row out. Blocking.
pub type Forward = Arc<dyn Fn(&Features) -> Result<Vec<f32>, ServeError> + Send + Sync>;

struct Job {
    features: Features,
    reply: oneshot::Sender<Result<Vec<f32>, ServeError>>,
}

/// The sending side of one version's batch queue; the batching task ends when it is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
}

/// Called with the number of rows of each batch run (for metrics).
pub type OnBatch = Arc<dyn Fn(usize) + Send + Sync>;

impl Batcher {
    /// Starts the batching task on a tokio runtime.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        forward: Forward,
        width: usize,
        max_batch: usize,
        max_delay: Duration,
        on_batch: OnBatch,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(4 * max_batch.max(16));
        runtime.spawn(run(
            rx,
            forward,
            width,
            max_batch.max(1),
            max_delay,
            on_batch,
        ));
        Batcher { tx }
    }

    /// Queues features and waits for their outputs.
    pub async fn submit(&self, features: Features) -> Result<Vec<f32>, ServeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { features, reply })
            .await
            .map_err(|_| ServeError::Internal("the batch queue closed".into()))?;
        answer
            .await
            .map_err(|_| ServeError::Internal("the batch was dropped".into()))?
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    forward: Forward,
    width: usize,
    max_batch: usize,
    max_delay: Duration,
    on_batch: OnBatch,
) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let deadline = Instant::now() + max_delay;
        let mut rows = first.features.rows;
        let mut jobs = vec![first];
        while rows < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => {
                    if rows + job.features.rows > max_batch {
                        // Does not fit: it starts the next batch.
                        pending = Some(job);
                        break;
                    }
                    rows += job.features.rows;
                    jobs.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        on_batch(rows);
        let forward = forward.clone();
        let mut merged = Features::default();
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            merged.extend(&job.features);
            replies.push((job.features.rows, job.reply));
        }
        let result = tokio::task::spawn_blocking(move || forward(&merged))
            .await
            .unwrap_or_else(|e| Err(ServeError::Internal(format!("batch task: {e}"))));
        match result {
            Ok(out) => {
                let mut start = 0;
                for (n, reply) in replies {
                    let end = start + n * width;
                    let _ = reply.send(Ok(out.get(start..end).unwrap_or_default().to_vec()));
                    start = end;
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in replies {
                    let _ = reply.send(Err(ServeError::Internal(message.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Mutex;

    /// A forward pass that doubles the first dense value of each row and records batch sizes.
    fn doubling(sizes: Arc<Mutex<Vec<usize>>>) -> (Forward, OnBatch) {
        let forward: Forward =
            Arc::new(|f: &Features| Ok(f.dense.iter().map(|x| 2.0 * x).collect()));
        let on_batch: OnBatch = Arc::new(move |n| sizes.lock().unwrap().push(n));
        (forward, on_batch)
    }

    fn one_row(x: f32) -> Features {
        Features {
            rows: 1,
            dense: vec![x],
            ids: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_waits_for_the_delay_then_runs_alone() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (forward, on_batch) = doubling(sizes.clone());
        let b = Batcher::start(
            &tokio::runtime::Handle::current(),
            forward,
            1,
            8,
            Duration::from_millis(5),
            on_batch,
        );
        let start = Instant::now();
        let out = b.submit(one_row(3.0)).await.unwrap();
        assert_eq!(out, vec![6.0]);
        assert!(start.elapsed() >= Duration::from_millis(5));
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_merge_and_get_their_own_rows_back() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (forward, on_batch) = doubling(sizes.clone());
        let b = Batcher::start(
            &tokio::runtime::Handle::current(),
            forward,
            1,
            4,
            Duration::from_secs(1),
            on_batch,
        );
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(one_row(i as f32)).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), vec![2.0 * i as f32]);
        }
        // Full batches run at once, long before the one-second delay.
        assert_eq!(*sizes.lock().unwrap(), vec![4, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_does_not_fit_starts_the_next_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (forward, on_batch) = doubling(sizes.clone());
        let b = Batcher::start(
            &tokio::runtime::Handle::current(),
            forward,
            1,
            4,
            Duration::from_millis(2),
            on_batch,
        );
        let three = Features {
            rows: 3,
            dense: vec![1.0, 2.0, 3.0],
            ids: vec![],
        };
        let (a, c) = tokio::join!(b.submit(three.clone()), b.submit(three));
        assert_eq!(a.unwrap(), vec![2.0, 4.0, 6.0]);
        assert_eq!(c.unwrap(), vec![2.0, 4.0, 6.0]);
        assert_eq!(*sizes.lock().unwrap(), vec![3, 3]);
    }
}
