//! Prometheus metrics of the server, in the text exposition format on `/metrics`: requests,
//! errors, latency and batch sizes per model and version, loaded models, swaps, shadow agreement,
//! the prediction log, and drift per feature.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the server keeps, registered in its own registry (not the process-global one,
/// so several servers in one test process do not share counts).
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub latency: HistogramVec,
    pub batch_rows: HistogramVec,
    pub rows: IntCounterVec,
    pub loaded: IntGauge,
    pub swaps: IntCounterVec,
    pub shadow_requests: IntCounterVec,
    pub shadow_agreements: IntCounterVec,
    pub shadow_skipped: IntCounterVec,
    pub logged: IntCounterVec,
    pub log_dropped: IntCounterVec,
    pub drift: Drift,
    pub drift_alarm: IntGaugeVec,
}

/// Drift of each feature of a served version over its window, one family per measure (as
/// Prometheus wants one unit and meaning per family), labelled model, version and feature.
pub struct Drift {
    /// Population stability index of a numeric feature.
    pub psi: GaugeVec,
    /// Jensen-Shannon divergence of a numeric feature.
    pub js: GaugeVec,
    /// L-infinity distance between a categorical feature's frequencies.
    pub linf: GaugeVec,
    /// Share of a categorical feature's values never seen in training.
    pub unseen: GaugeVec,
    /// Share of missing values.
    pub missing: GaugeVec,
}

/// The commit kiln was built from (`unknown` outside a git checkout).
const COMMIT: &str = env!("KILN_COMMIT");

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
            h
        };
        let latency_buckets = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ];
        let batch_buckets = vec![
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
        ];
        let loaded = IntGauge::new("kiln_models_loaded", "Model versions loaded in memory")
            .unwrap_or_else(|e| unreachable!("metric: {e}"));
        registry
            .register(Box::new(loaded.clone()))
            .unwrap_or_else(|e| unreachable!("metric: {e}"));
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
            g
        };
        let build = IntGaugeVec::new(
            Opts::new(
                "kiln_build_info",
                "Always 1; the labels say which kiln answers: its version and commit",
            ),
            &["version", "commit"],
        )
        .unwrap_or_else(|e| unreachable!("metric: {e}"));
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), COMMIT])
            .set(1);
        registry
            .register(Box::new(build))
            .unwrap_or_else(|e| unreachable!("metric: {e}"));
        let drift_alarm = IntGaugeVec::new(
            Opts::new(
                "kiln_drift_alarm",
                "1 when a feature (or the prediction) of a served version crosses a drift threshold",
            ),
            &["model", "version", "feature"],
        )
        .unwrap_or_else(|e| unreachable!("metric: {e}"));
        registry
            .register(Box::new(drift_alarm.clone()))
            .unwrap_or_else(|e| unreachable!("metric: {e}"));
        Metrics {
            logged: counter(
                "kiln_predictions_logged_total",
                "Requests sampled into the prediction log, by model and version",
                &["model", "version"],
            ),
            log_dropped: counter(
                "kiln_predictions_log_dropped_total",
                "Sampled requests dropped because the prediction log's queue was full",
                &["model"],
            ),
            drift: Drift {
                psi: gauge(
                    "kiln_drift_psi",
                    "Population stability index of a numeric feature of a served version over \
                     the window",
                    &["model", "version", "feature"],
                ),
                js: gauge(
                    "kiln_drift_js",
                    "Jensen-Shannon divergence of a numeric feature of a served version over \
                     the window",
                    &["model", "version", "feature"],
                ),
                linf: gauge(
                    "kiln_drift_linf",
                    "L-infinity distance of a categorical feature's frequencies from training's",
                    &["model", "version", "feature"],
                ),
                unseen: gauge(
                    "kiln_drift_unseen",
                    "Share of a categorical feature's values never seen in training",
                    &["model", "version", "feature"],
                ),
                missing: gauge(
                    "kiln_drift_missing",
                    "Share of a feature's values missing over the window",
                    &["model", "version", "feature"],
                ),
            },
            drift_alarm,
            requests: counter(
                "kiln_requests_total",
                "Inference requests answered, by model, version and protocol",
                &["model", "version", "protocol"],
            ),
            errors: counter(
                "kiln_request_errors_total",
                "Inference requests refused or failed, by model, protocol and status code",
                &["model", "protocol", "status"],
            ),
            latency: histogram(
                "kiln_request_duration_seconds",
                "Time from routing an inference request to its answer",
                &["model", "version"],
                latency_buckets,
            ),
            batch_rows: histogram(
                "kiln_batch_rows",
                "Rows per forward pass",
                &["model", "version"],
                batch_buckets,
            ),
            rows: counter(
                "kiln_rows_total",
                "Rows predicted, by model and version",
                &["model", "version"],
            ),
            loaded,
            swaps: counter(
                "kiln_model_swaps_total",
                "Times a model's live versions changed",
                &["model"],
            ),
            shadow_requests: counter(
                "kiln_shadow_requests_total",
                "Requests copied to a shadow version, by model and shadow version",
                &["model", "version"],
            ),
            shadow_agreements: counter(
                "kiln_shadow_agreements_total",
                "Shadow answers that agreed with the live answer for every row",
                &["model", "version"],
            ),
            shadow_skipped: counter(
                "kiln_shadow_skipped_total",
                "Requests not copied to a shadow version because the server was busy",
                &["model", "version"],
            ),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// One model's running totals: requests, errors, and the latency histogram's sum and count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub requests: f64,
    pub errors: f64,
    pub latency_sum: f64,
    pub latency_count: f64,
}

impl Metrics {
    /// Per model: requests copied to a shadow and the answers that agreed.
    pub fn shadow_totals(&self) -> std::collections::BTreeMap<String, (f64, f64)> {
        let mut out: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
        for family in self.registry.gather() {
            let which = match family.name() {
                "kiln_shadow_requests_total" => 0,
                "kiln_shadow_agreements_total" => 1,
                _ => continue,
            };
            for m in family.get_metric() {
                if let Some(model) = m.get_label().iter().find(|l| l.name() == "model") {
                    let e = out.entry(model.value().to_string()).or_default();
                    if which == 0 {
                        e.0 += m.get_counter().get_value();
                    } else {
                        e.1 += m.get_counter().get_value();
                    }
                }
            }
        }
        out
    }

    /// Every model's totals now.
    pub fn totals(&self) -> std::collections::BTreeMap<String, Totals> {
        let mut out: std::collections::BTreeMap<String, Totals> = Default::default();
        for family in self.registry.gather() {
            for m in family.get_metric() {
                let Some(model) = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "model")
                    .map(|l| l.value().to_string())
                else {
                    continue;
                };
                let t = out.entry(model).or_default();
                match family.name() {
                    "kiln_requests_total" => t.requests += m.get_counter().get_value(),
                    "kiln_request_errors_total" => t.errors += m.get_counter().get_value(),
                    "kiln_request_duration_seconds" => {
                        t.latency_sum += m.get_histogram().get_sample_sum();
                        t.latency_count += m.get_histogram().get_sample_count() as f64;
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
