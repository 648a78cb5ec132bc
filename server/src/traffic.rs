//! Request totals per model, sampled every few seconds for the deployment charts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::metrics::Totals;
use crate::models::Models;

/// Request totals per model, sampled every few seconds for the deployment charts.
#[derive(Default)]
pub struct Traffic {
    samples: Mutex<BTreeMap<String, VecDeque<(f64, Totals)>>>,
}

/// Samples kept per model (15 minutes at one every 5 s).
const KEPT: usize = 180;
const EVERY: Duration = Duration::from_secs(5);

impl Traffic {
    pub fn record(&self, at_s: f64, totals: BTreeMap<String, Totals>) {
        let mut s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (model, t) in totals {
            let q = s.entry(model).or_default();
            q.push_back((at_s, t));
            while q.len() > KEPT {
                q.pop_front();
            }
        }
    }

    /// Per interval: requests per second, errors per second, mean latency in ms.
    pub(crate) fn series(&self, model: &str) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(q) = s.get(model) else {
            return Default::default();
        };
        let pairs: Vec<_> = q.iter().zip(q.iter().skip(1)).collect();
        let rate = |f: &dyn Fn(&Totals) -> f64| -> Vec<f64> {
            pairs
                .iter()
                .map(|((t0, a), (t1, b))| ((f(b) - f(a)) / (t1 - t0).max(1e-9)).max(0.0))
                .collect()
        };
        let latency = pairs
            .iter()
            .map(|((_, a), (_, b))| {
                let n = b.latency_count - a.latency_count;
                if n > 0.0 {
                    (b.latency_sum - a.latency_sum) / n * 1000.0
                } else {
                    0.0
                }
            })
            .collect();
        (rate(&|t| t.requests), rate(&|t| t.errors), latency)
    }
}

/// Samples the server's totals until the process ends.
pub fn start_sampling(traffic: std::sync::Arc<Traffic>, models: std::sync::Arc<Models>) {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        loop {
            traffic.record(start.elapsed().as_secs_f64(), models.metrics().totals());
            tokio::time::sleep(EVERY).await;
        }
    });
}
