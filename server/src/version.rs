//! One loaded model version: its runtime, its metric series and its drift window. The server's
//! model table (`models`), the inference path (`infer`) and the prediction log (`predlog`) all
//! hold these; this module depends on none of them.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// One loaded version of a model.
pub struct Version {
    pub model: String,
    pub version: u32,
    pub runtime: Arc<Runtime>,
    pub load_time: Duration,
    /// The label value of this version in metrics.
    pub label: String,
    /// This version's metric series, looked up once rather than per request.
    pub metrics: VersionMetrics,
    /// Its drift window, fed by the prediction log.
    pub monitor: crate::drift::Monitor,
}

/// The metric series one version's requests update.
pub struct VersionMetrics {
    requests: [(&'static str, prometheus::IntCounter); 4],
    pub rows: prometheus::IntCounter,
    pub latency: prometheus::Histogram,
}

impl VersionMetrics {
    pub(crate) fn new(metrics: &Metrics, model: &str, version: &str) -> VersionMetrics {
        let request = |p| metrics.requests.with_label_values(&[model, version, p]);
        VersionMetrics {
            requests: ["v2", "grpc", "tfserving", "mlflow"].map(|p| (p, request(p))),
            rows: metrics.rows.with_label_values(&[model, version]),
            latency: metrics.latency.with_label_values(&[model, version]),
        }
    }

    /// Counts a request answered over `protocol`.
    pub fn answered(&self, protocol: &str) {
        if let Some((_, c)) = self.requests.iter().find(|(p, _)| *p == protocol) {
            c.inc();
        }
    }
}
