//! Dynamic batching: concurrent requests for one model version are merged into one forward pass
//! when the batch holds `max_batch` rows or its first request has waited `max_delay`, then the
//! outputs are split back to each request.
//!
//! Each batching route has its own thread: it waits for requests with the operating system's
//! microsecond timeouts (tokio's timers tick in milliseconds, too coarse for delays of a few
//! hundred microseconds) and runs the forward pass itself, so a batch costs no further handoff.
//! How a batch is formed ([`collect`]) is separate from where requests come from ([`Source`]),
//! so it is tested on a virtual clock.

use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::runtime::Features;

/// What runs a merged batch: features in, `width` outputs per row out. Blocking.
pub type Forward = Arc<dyn Fn(&Features) -> Result<Vec<f32>, ServeError> + Send + Sync>;

/// Called with the number of rows of each batch run (for metrics).
pub type OnBatch = Arc<dyn Fn(usize) + Send + Sync>;

/// One request waiting in a batch queue.
pub struct Job {
    pub features: Features,
    reply: oneshot::Sender<Result<Vec<f32>, ServeError>>,
}

/// The sending side of one route's batch queue; its thread ends when every clone is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
}

/// How many requests may wait in one queue before new ones are refused (503).
const QUEUE_REQUESTS: usize = 4096;

impl Batcher {
    /// Starts the batching thread.
    pub fn start(
        forward: Forward,
        width: usize,
        max_batch: usize,
        max_delay: Duration,
        on_batch: OnBatch,
    ) -> Result<Batcher, ServeError> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_REQUESTS);
        std::thread::Builder::new()
            .name("kiln-batch".into())
            .spawn(move || {
                let mut source = Channel(rx);
                let mut pending = None;
                while let Some(jobs) =
                    collect(&mut source, &mut pending, max_batch.max(1), max_delay)
                {
                    run(jobs, &forward, width, &on_batch);
                }
            })
            .map_err(|e| ServeError::Internal(format!("starting a batching thread: {e}")))?;
        Ok(Batcher { tx })
    }

    /// Queues features and waits for their outputs.
    pub async fn submit(&self, features: Features) -> Result<Vec<f32>, ServeError> {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Job { features, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ServeError::NotReady(format!(
                    "the batch queue holds {QUEUE_REQUESTS} requests; try again shortly"
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServeError::Internal("the batch queue closed".into()));
            }
        }
        answer
            .await
            .map_err(|_| ServeError::Internal("the batch was dropped".into()))?
    }
}

/// Where a batcher's requests come from.
pub trait Source {
    /// The next request, waiting at most until `deadline` (forever when `None`); `None` when
    /// the deadline passed or the queue closed.
    fn next(&mut self, deadline: Option<Instant>) -> Option<Job>;
    /// Whether the queue has closed (no request will ever come).
    fn closed(&self) -> bool;
    fn now(&self) -> Instant;
}

struct Channel(mpsc::Receiver<Job>);

impl Source for Channel {
    fn next(&mut self, deadline: Option<Instant>) -> Option<Job> {
        match deadline {
            None => self.0.recv().ok(),
            Some(d) => self
                .0
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .ok(),
        }
    }

    fn closed(&self) -> bool {
        false
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Forms the next batch: the request left over from the last one (or the next to arrive), then
/// more until `max_batch` rows or `max_delay` after the first. A request that would overflow the
/// batch is kept in `pending` to start the next one. `None` when the source is done.
pub fn collect<S: Source>(
    source: &mut S,
    pending: &mut Option<Job>,
    max_batch: usize,
    max_delay: Duration,
) -> Option<Vec<Job>> {
    let first = match pending.take() {
        Some(job) => job,
        None => source.next(None)?,
    };
    let deadline = source.now() + max_delay;
    let mut rows = first.features.rows;
    let mut jobs = vec![first];
    while rows < max_batch && !source.closed() {
        let Some(job) = source.next(Some(deadline)) else {
            break;
        };
        if rows + job.features.rows > max_batch {
            *pending = Some(job);
            break;
        }
        rows += job.features.rows;
        jobs.push(job);
    }
    Some(jobs)
}

/// Runs one merged batch and answers each request with its own rows.
fn run(jobs: Vec<Job>, forward: &Forward, width: usize, on_batch: &OnBatch) {
    let mut merged = Features::default();
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        merged.extend(&job.features);
        replies.push((job.features.rows, job.reply));
    }
    on_batch(merged.rows);
    match forward(&merged) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::VecDeque;

    /// Requests arriving at set times on a virtual clock that only moves when the batcher waits.
    struct Script {
        clock: Instant,
        arrivals: VecDeque<(Duration, usize)>,
        start: Instant,
    }

    impl Script {
        fn new(arrivals: &[(u64, usize)]) -> Script {
            let start = Instant::now();
            Script {
                clock: start,
                start,
                arrivals: arrivals
                    .iter()
                    .map(|(us, rows)| (Duration::from_micros(*us), *rows))
                    .collect(),
            }
        }
        fn job(rows: usize) -> Job {
            let (reply, _) = oneshot::channel();
            Job {
                features: Features {
                    rows,
                    dense: vec![0.0; rows],
                    ..Features::default()
                },
                reply,
            }
        }
        fn elapsed_us(&self) -> u128 {
            (self.clock - self.start).as_micros()
        }
    }

    impl Source for Script {
        fn next(&mut self, deadline: Option<Instant>) -> Option<Job> {
            let (at, rows) = *self.arrivals.front()?;
            let at = self.start + at;
            match deadline {
                Some(d) if at > d => {
                    self.clock = self.clock.max(d);
                    None
                }
                _ => {
                    self.arrivals.pop_front();
                    self.clock = self.clock.max(at);
                    Some(Script::job(rows))
                }
            }
        }
        fn closed(&self) -> bool {
            self.arrivals.is_empty()
        }
        fn now(&self) -> Instant {
            self.clock
        }
    }

    fn sizes(script: &mut Script, max_batch: usize, delay_us: u64) -> Vec<(usize, u128)> {
        let mut pending = None;
        let mut out = vec![];
        while let Some(jobs) = collect(
            script,
            &mut pending,
            max_batch,
            Duration::from_micros(delay_us),
        ) {
            out.push((
                jobs.iter().map(|j| j.features.rows).sum(),
                script.elapsed_us(),
            ));
        }
        out
    }

    #[test]
    fn a_lone_request_waits_for_the_delay_then_runs_alone() {
        let mut s = Script::new(&[(0, 1), (5_000, 1)]);
        // The first waits its 500 µs, sees nothing, runs; the second comes much later.
        assert_eq!(sizes(&mut s, 8, 500), vec![(1, 500), (1, 5_000)]);
    }

    #[test]
    fn requests_within_the_delay_merge_and_a_full_batch_runs_at_once() {
        let mut s = Script::new(&[(0, 1), (100, 1), (200, 1), (300, 1), (350, 1), (900, 1)]);
        // Four rows fill the batch at 300 µs, before the 500 µs deadline; the next batch starts
        // at 350 µs and its deadline (850 µs) passes before the last request.
        assert_eq!(sizes(&mut s, 4, 500), vec![(4, 300), (1, 850), (1, 900)]);
    }

    #[test]
    fn a_request_that_does_not_fit_starts_the_next_batch() {
        let mut s = Script::new(&[(0, 3), (10, 3), (20, 1)]);
        assert_eq!(sizes(&mut s, 4, 1_000), vec![(3, 10), (4, 20)]);
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_rows_back() {
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = batches.clone();
        let forward: Forward =
            Arc::new(|f: &Features| Ok(f.dense.iter().map(|x| 2.0 * x).collect()));
        let on_batch: OnBatch = Arc::new(move |n| seen.lock().unwrap().push(n));
        let b = Batcher::start(forward, 1, 64, Duration::from_millis(50), on_batch).unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.submit(Features {
                        rows: 2,
                        dense: vec![i as f32, 100.0 + i as f32],
                        ..Features::default()
                    })
                    .await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(
                t.await.unwrap().unwrap(),
                vec![2.0 * i as f32, 2.0 * (100.0 + i as f32)]
            );
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.iter().sum::<usize>(), 32);
        assert!(batches.len() < 16, "{batches:?}");
    }
}
