//! Every decoder of request bytes, fed generated input through the whole router: V2 JSON and
//! binary tensors, TF Serving and MLflow bodies, the management API's JSON, the runs filter
//! language in a query, cookies, `Host` and `Origin` headers. No input panics or gets a 5xx.
//!
//! CI runs a short pass; a long one is
//! `PROPTEST_CASES=10000000 cargo test --release -p kiln-server --test untrusted`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use common::*;
use kiln_server::{AppState, ServerConfig};
use proptest::prelude::*;

/// One server for every case (loading models per case would test the loader, not the decoders).
fn server() -> &'static (tokio::runtime::Runtime, AppState, Fixture) {
    static S: OnceLock<(tokio::runtime::Runtime, AppState, Fixture)> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let f = fixture();
        let s = rt.block_on(state(&f, ServerConfig::default()));
        (rt, s, f)
    })
}

fn status_of(method: &str, uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> u16 {
    let (rt, s, _) = server();
    rt.block_on(call(s, method, uri, headers, Body::from(body)))
        .0
        .as_u16()
}

/// JSON-shaped text: the tokens of the protocols' bodies in random order and nesting, so that
/// cases get past the JSON parser into the decoders.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        prop_oneof![
            Just("\"inputs\""),
            Just("\"instances\""),
            Just("\"name\""),
            Just("\"shape\""),
            Just("\"datatype\""),
            Just("\"data\""),
            Just("\"FP64\""),
            Just("\"BYTES\""),
            Just("\"INT64\""),
            Just("\"parameters\""),
            Just("\"binary_data_size\""),
            Just("\"dataframe_split\""),
            Just("\"dataframe_records\""),
            Just("\"columns\""),
            Just("\"routes\""),
            Just("\"target\""),
            Just("\"percent\""),
            Just("\"mean radius\""),
            Just("\"x\""),
            Just("\"run_id\""),
            Just("\"experiment_id\""),
            Just("\"experiment\""),
            Just("\"metrics\""),
            Just("\"key\""),
            Just("\"value\""),
            Just("\"step\""),
            Just("\"status\""),
            Just("\"filter\""),
            Just("\"order_by\""),
            Just("\"max_results\""),
            Just("\"page_token\""),
            Just("\"digest\""),
            Just("\"kind\""),
            Just("\"NaN\""),
            Just("\"00000001\""),
            Just("\"name\""),
            Just("\"bc\""),
            Just("\"source\""),
            Just("\"runs:/00000001/model\""),
            Just("\"alias\""),
            Just("\"stage\""),
        ]
        .prop_map(str::to_string),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
        Just("4294967295".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
    ];
    proptest::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        jsonish().prop_map(String::into_bytes),
    ]
}

const POSTS: &[&str] = &[
    "/v2/models/bc/infer",
    "/v2/models/ctr/infer",
    "/v2/models/bc/versions/2/infer",
    "/v1/models/bc:predict",
    "/v1/models/ctr/versions/1:predict",
    "/v1/models/bc:classify",
    "/v1/models/bc:regress",
    "/invocations",
    "/invocations?model=ctr",
    "/api/models/bc/promote",
    "/api/experiments",
    "/api/runs",
    "/api/runs/00000001/log",
    "/api/runs/00000001/end",
    "/api/runs/00000001/artifacts",
    "/api/models/bc/versions",
    "/api/2.0/mlflow/experiments/create",
    "/api/2.0/mlflow/experiments/search",
    "/api/2.0/mlflow/runs/create",
    "/api/2.0/mlflow/runs/update",
    "/api/2.0/mlflow/runs/search",
    "/api/2.0/mlflow/runs/log-metric",
    "/api/2.0/mlflow/runs/log-parameter",
    "/api/2.0/mlflow/runs/set-tag",
    "/api/2.0/mlflow/runs/log-batch",
    "/api/2.0/mlflow/runs/delete-tag",
    "/api/2.0/mlflow/experiments/update",
    "/api/2.0/mlflow/experiments/delete",
    "/api/2.0/mlflow/experiments/set-experiment-tag",
    "/api/2.0/mlflow/registered-models/create",
    "/api/2.0/mlflow/registered-models/alias",
    "/api/2.0/mlflow/registered-models/get-latest-versions",
    "/api/2.0/mlflow/model-versions/create",
    "/api/2.0/mlflow/model-versions/transition-stage",
    "/api/2.0/mlflow/logged-models",
    "/api/2.0/mlflow/logged-models/search",
    "/api/2.0/mlflow/logged-models/m-6b696c6e00000001/params",
    "/api/2.0/mlflow/runs/outputs",
    "/api/2.0/mlflow/runs/log-inputs",
    "/api/2.0/mlflow/runs/restore",
    "/api/2.0/mlflow/experiments/restore",
    "/api/2.0/mlflow/registered-models/rename",
    "/api/2.0/mlflow/registered-models/set-tag",
    "/api/2.0/mlflow/model-versions/set-tag",
    "/api/2.0/mlflow-artifacts/mpu/create/0/00000001/artifacts/big",
    "/api/2.0/mlflow-artifacts/mpu/complete/0/00000001/artifacts/big",
    "/api/2.0/mlflow-artifacts/mpu/abort/0/00000001/artifacts/big",
];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_body_gets_a_server_error(which in 0..POSTS.len(), bytes in body()) {
        let status = status_of("POST", POSTS[which], &[("content-type", "application/json")], bytes);
        prop_assert!(status < 500, "{} answered {status}", POSTS[which]);
    }

    #[test]
    fn no_binary_tensor_header_gets_a_server_error(
        bytes in body(),
        json_len in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9a-z-]{0,12}"],
    ) {
        let status = status_of(
            "POST",
            "/v2/models/bc/infer",
            &[
                ("content-type", "application/octet-stream"),
                ("inference-header-content-length", &json_len),
            ],
            bytes,
        );
        prop_assert!(status < 500, "answered {status}");
    }

    #[test]
    fn no_patch_put_or_delete_gets_a_server_error(bytes in body(), which in 0..9usize) {
        let (method, uri) = [
            ("PATCH", "/api/2.0/mlflow/logged-models/m-6b696c6e00000001/tags"),
            ("PATCH", "/api/2.0/mlflow/logged-models/m-6b696c6e00000001"),
            ("PATCH", "/api/2.0/mlflow/registered-models/update"),
            ("PATCH", "/api/2.0/mlflow/model-versions/update"),
            ("DELETE", "/api/2.0/mlflow/registered-models/delete-tag"),
            ("DELETE", "/api/2.0/mlflow/model-versions/delete-tag"),
            ("DELETE", "/api/2.0/mlflow/logged-models/m-6b696c6e00000001"),
            ("PUT", "/api/2.0/mlflow-artifacts/mpu/parts/0123456789abcdef0123456789abcdef/1"),
            ("PUT", "/api/2.0/mlflow-artifacts/mpu/parts/..%2F..%2Fetc/1"),
        ][which];
        let status = status_of(method, uri, &[("content-type", "application/json")], bytes);
        prop_assert!(status < 500, "{uri} answered {status}");
    }

    #[test]
    fn no_deployment_gets_a_server_error(bytes in body()) {
        let status = status_of("PUT", "/api/models/bc/deployment", &[("content-type", "application/json")], bytes);
        prop_assert!(status < 500, "answered {status}");
    }

    #[test]
    fn no_query_or_header_gets_a_server_error(
        query in "[ -~]{0,40}",
        cookie in "[ -~]{0,40}",
        host in "[ -~]{0,30}",
        origin in "[ -~]{0,30}",
    ) {
        let q: String = url_encode(&query);
        for uri in [
            format!("/api/runs?where={q}"),
            format!("/api/runs?order_by={q}"),
            format!("/ui/runs?where={q}&page={q}"),
            format!("/api/runs?limit={q}"),
            format!("/api/2.0/mlflow/runs/get?run_id={q}"),
            format!("/api/2.0/mlflow/metrics/get-history?run_id={q}&metric_key={q}"),
            format!("/api/2.0/mlflow/experiments/get?experiment_id={q}"),
            format!("/api/2.0/mlflow/logged-models/{q}"),
            format!("/api/2.0/mlflow/model-versions/get-download-uri?name=bc&version={q}"),
            format!("/api/2.0/mlflow/experiments/get-by-name?experiment_name={q}"),
            format!("/api/artifacts/{q}"),
            format!("/api/2.0/mlflow/registered-models/search?filter={q}"),
            format!("/api/2.0/mlflow/model-versions/get?name=bc&version={q}"),
            format!("/api/2.0/mlflow/registered-models/alias?name=bc&alias={q}"),
            format!("/api/2.0/mlflow-artifacts/artifacts?path={q}"),
        ] {
            let mut headers = vec![("cookie", cookie.as_str())];
            if axum::http::HeaderValue::from_str(&host).is_ok() {
                headers.push(("host", host.as_str()));
            }
            if axum::http::HeaderValue::from_str(&origin).is_ok() {
                headers.push(("origin", origin.as_str()));
            }
            let status = status_of("GET", &uri, &headers, Vec::new());
            prop_assert!(status < 500, "{uri} answered {status}");
            let status = status_of("POST", "/ui/models/bc/alias", &headers, query.clone().into_bytes());
            prop_assert!(status < 500, "the alias form answered {status}");
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
