//! Drift on a served model: traffic drawn from the training rows raises no alarm; then the same
//! rows with three features shifted (scaled, offset, made missing) raise alarms on those three
//! features and on no other. The log is written to `KILN_HOME/predictions`, and `/metrics`
//! carries the alarms.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{bc_records, fixture, get, json, state};
use kiln_server::ServerConfig;
use kiln_server::drift::Thresholds;
use kiln_server::predlog::LogConfig;
use serde_json::Value;

const WINDOW: usize = 400;

async fn send(s: &kiln_server::AppState, rows: &[Value]) {
    for chunk in rows.chunks(10) {
        let (status, body) = json(
            s,
            "POST",
            "/v1/models/bc:predict",
            serde_json::json!({ "instances": chunk }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Waits until the log's thread has observed `n` rows.
async fn drift_after(s: &kiln_server::AppState, n: u64) -> Value {
    for _ in 0..200 {
        let (status, body) = get(s, "/api/models/bc/drift").await;
        assert_eq!(status, 200, "{body}");
        if body["versions"][0]["observed"].as_u64() == Some(n) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the drift window did not see {n} rows");
}

fn alarms(body: &Value) -> Vec<String> {
    let mut a: Vec<String> = body["versions"][0]["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["alarm"] == true)
        .map(|f| f["feature"].as_str().unwrap().to_string())
        .collect();
    a.sort();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifted_features_and_only_those_raise_alarms() {
    let f = fixture();
    let s = state(
        &f,
        ServerConfig {
            log: LogConfig {
                sample: 1.0,
                window: WINDOW,
                thresholds: Thresholds {
                    min_rows: 300,
                    ..Thresholds::default()
                },
                ..LogConfig::default()
            },
            ..ServerConfig::default()
        },
    )
    .await;
    let rows = bc_records(569);

    // From the training distribution: judged, no alarm.
    send(&s, &rows).await;
    let body = drift_after(&s, 569).await;
    let report = &body["versions"][0];
    assert_eq!(report["rows"], WINDOW as u64);
    assert_eq!(report["judged"], true);
    assert_eq!(alarms(&body), Vec::<String>::new(), "{report}");
    let radius = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == "mean radius")
        .unwrap();
    assert!(radius["psi"].as_f64().unwrap() < 0.1, "{radius}");

    // Shifted: three features change, the rest stay as they were.
    let shifted: Vec<Value> = rows
        .iter()
        .take(WINDOW)
        .map(|r| {
            let mut r = r.clone();
            let m = r.as_object_mut().unwrap();
            let radius = m["mean radius"].as_f64().unwrap();
            m.insert("mean radius".into(), serde_json::json!(radius * 1.5));
            let texture = m["mean texture"].as_f64().unwrap();
            m.insert("mean texture".into(), serde_json::json!(texture + 8.0));
            m.insert("mean smoothness".into(), Value::Null);
            r
        })
        .collect();
    send(&s, &shifted).await;
    let body = drift_after(&s, 569 + WINDOW as u64).await;
    assert_eq!(
        alarms(&body),
        ["mean radius", "mean smoothness", "mean texture"],
        "{}",
        body["versions"][0]
    );
    assert!(body["alarms"].as_array().unwrap().len() >= 3);
    let smooth = body["versions"][0]["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"] == "mean smoothness")
        .unwrap()
        .clone();
    assert!(
        smooth["reasons"][0]
            .as_str()
            .unwrap()
            .contains("missing share rise"),
        "{smooth}"
    );

    // The same in /metrics, and the log is on disk.
    let (_, _, metrics) = common::call(&s, "GET", "/metrics", &[], axum::body::Body::empty()).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(r#"kiln_drift_alarm{feature="mean radius",model="bc",version="1"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kiln_drift_alarm{feature="worst area",model="bc",version="1"} 0"#));
    // One family per measure, each with its own help.
    for family in ["psi", "js", "missing"] {
        assert!(
            metrics.contains(&format!("# TYPE kiln_drift_{family} gauge"))
                && metrics.contains(&format!(
                    "kiln_drift_{family}{{feature=\"mean radius\",model=\"bc\",version=\"1\"}}"
                )),
            "{family}: {metrics}"
        );
    }
    let build = metrics
        .lines()
        .find(|l| l.starts_with("kiln_build_info{"))
        .unwrap_or_else(|| panic!("no kiln_build_info in {metrics}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.ends_with(" 1"),
        "{build}"
    );
    assert!(metrics.contains("kiln_predictions_logged_total{model=\"bc\",version=\"1\"} 97"));
    let log = f.registry.home().join("predictions/bc/1/current.jsonl");
    let mut lines = 0;
    for _ in 0..100 {
        lines = std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
        if lines == 569 + WINDOW {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines, 569 + WINDOW);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["inputs"]["mean radius"], rows[0]["mean radius"]);
    assert_eq!(first["outputs"].as_array().unwrap().len(), 2);
}
