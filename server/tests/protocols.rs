//! Every endpoint of the three inference protocols, in process through the router: answers
//! agree across protocols and formats, and every kind of bad input gets a 4xx naming the problem
//! while the server keeps serving.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::*;
use kiln_server::ServerConfig;
use serde_json::{Value, json};

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

/// The probability of class 1 of each row, as V2 gives it for rows as one FP64 tensor.
async fn v2_reference(state: &kiln_server::AppState, n: usize) -> Vec<f64> {
    let records = bc_records(n);
    let columns = bc_columns();
    let data: Vec<Vec<Value>> = records
        .iter()
        .map(|r| columns.iter().map(|c| r[c].clone()).collect())
        .collect();
    let (status, body) = json(
        state,
        "POST",
        "/v2/models/bc/infer",
        json!({ "id": "r1", "inputs": [{ "name": "x", "shape": [n, 30], "datatype": "FP64", "data": data }] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], "r1");
    assert_eq!(body["model_name"], "bc");
    assert_eq!(body["model_version"], "1");
    probabilities(&body).chunks(2).map(|p| p[1]).collect()
}

#[tokio::test]
async fn health_and_metadata() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    assert_eq!(get(&s, "/v2/health/live").await.0, StatusCode::OK);
    let (status, ready) = get(&s, "/v2/health/ready").await;
    assert_eq!(
        (status, ready["ready"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (_, server) = get(&s, "/v2").await;
    assert_eq!(server["name"], "kiln");
    assert_eq!(server["extensions"], json!(["binary_tensor_data"]));

    let (status, meta) = get(&s, "/v2/models/bc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(meta["inputs"].as_array().unwrap().len(), 30);
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "mean radius", "datatype": "FP64", "shape": [-1]})
    );
    assert_eq!(
        meta["outputs"][1],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]})
    );
    assert_eq!(meta["parameters"]["labels"], json!(["0", "1"]));

    let (_, meta) = get(&s, "/v2/models/ctr").await;
    let c1 = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "c1")
        .unwrap();
    assert_eq!(c1["datatype"], "BYTES");
    assert_eq!(meta["parameters"]["single_tensor_input"], false);

    assert_eq!(get(&s, "/v2/models/bc/ready").await.0, StatusCode::OK);
    let (status, v) = get(&s, "/v2/models/bc/versions/2/ready").await;
    assert_eq!((status, v["version"].clone()), (StatusCode::OK, json!("2")));
    assert_eq!(
        get(&s, "/v2/models/bc/versions/2").await.1["parameters"]["version"],
        "2"
    );
    assert_eq!(
        get(&s, "/v2/models/bc/versions/champion").await.1["parameters"]["version"],
        "1"
    );

    let (status, tf) = get(&s, "/v1/models/bc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tf["model_version_status"][0]["version"], "1");
    assert_eq!(tf["model_version_status"][0]["state"], "AVAILABLE");
    let (_, tf) = get(&s, "/v1/models/bc/versions/2").await;
    assert_eq!(tf["model_version_status"][0]["version"], "2");
    let (_, tf) = get(&s, "/v1/models/bc/metadata").await;
    let sig = &tf["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(sig["inputs"]["mean radius"]["dtype"], "DT_DOUBLE");
    assert_eq!(sig["outputs"]["label"]["dtype"], "DT_STRING");
    assert_eq!(
        get(&s, "/v1/models/bc/labels/champion/metadata").await.1["model_spec"]["version"],
        "1"
    );

    let (status, _, body) = call(&s, "GET", "/ping", &[], axum::body::Body::empty()).await;
    assert_eq!((status, body), (StatusCode::OK, b"\n".to_vec()));
    assert_eq!(get(&s, "/health").await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_three_protocols_and_their_formats_agree() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let n = 5;
    let expected = v2_reference(&s, n).await;
    let records = bc_records(n);
    let columns = bc_columns();

    // V2, one tensor per column.
    let inputs: Vec<Value> = columns
        .iter()
        .map(|c| {
            let data: Vec<Value> = records.iter().map(|r| r[c].clone()).collect();
            json!({ "name": c, "shape": [n], "datatype": "FP32", "data": data })
        })
        .collect();
    let (status, body) = json(
        &s,
        "POST",
        "/v2/models/bc/infer",
        json!({ "inputs": inputs }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // FP32 inputs round the raw values, so these agree less tightly.
    let p1: Vec<f64> = probabilities(&body).chunks(2).map(|p| p[1]).collect();
    for (a, b) in p1.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-4);
    }
    let labels = body["outputs"][0]["data"].clone();
    assert_eq!(body["outputs"][0]["name"], "label");

    // V2 with only the label requested.
    let (_, body) = json(
        &s,
        "POST",
        "/v2/models/bc/versions/1/infer",
        json!({ "inputs": inputs, "outputs": [{ "name": "label" }] }),
    )
    .await;
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(body["outputs"][0]["data"], labels);

    // TF Serving, rows as objects, rows as arrays, and columns.
    let (status, body) = json(
        &s,
        "POST",
        "/v1/models/bc:predict",
        json!({ "instances": records }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tf: Vec<f64> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probabilities"][1].as_f64().unwrap())
        .collect();
    close(&tf, &expected);
    let tf_labels: Vec<Value> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].clone())
        .collect();
    assert_eq!(json!(tf_labels), labels);
    let arrays: Vec<Value> = records
        .iter()
        .map(|r| json!(columns.iter().map(|c| r[c].clone()).collect::<Vec<_>>()))
        .collect();
    let (_, body) = json(
        &s,
        "POST",
        "/v1/models/bc/versions/1:predict",
        json!({ "instances": arrays }),
    )
    .await;
    let tf: Vec<f64> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probabilities"][1].as_f64().unwrap())
        .collect();
    close(&tf, &expected);
    let by_column: serde_json::Map<String, Value> = columns
        .iter()
        .map(|c| {
            (
                c.clone(),
                json!(records.iter().map(|r| r[c].clone()).collect::<Vec<_>>()),
            )
        })
        .collect();
    let (status, body) = json(
        &s,
        "POST",
        "/v1/models/bc/labels/champion:predict",
        json!({ "inputs": by_column }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tf: Vec<f64> = body["outputs"]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    close(&tf, &expected);

    // MLflow, all four formats; predictions are labels.
    let split = json!({ "dataframe_split": { "columns": columns, "data": arrays } });
    for body in [
        split,
        json!({ "dataframe_records": records }),
        json!({ "instances": records }),
        json!({ "inputs": by_column }),
    ] {
        let (status, answer) = json(&s, "POST", "/invocations?model=bc", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["predictions"], labels);
    }
    // TF Serving's :classify: examples over a shared context, a feature as a one-element list;
    // each class with its score.
    let first = columns[0].clone();
    let examples: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut e = r.as_object().unwrap().clone();
            e.remove(&first);
            let second = columns[1].clone();
            let v = e[&second].clone();
            e.insert(second, json!([v]));
            Value::Object(e)
        })
        .collect();
    // Every example shares the first record's value of the first feature.
    let shared = records[0][&first].clone();
    let (status, body) = json(
        &s,
        "POST",
        "/v1/models/bc:classify",
        json!({ "context": { first.clone(): shared.clone() }, "examples": examples }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), n);
    assert_eq!(results[0][1][0], json!("1"), "{body}");
    // The first example's features are exactly the first record's: its score agrees.
    close(&[results[0][1][1].as_f64().unwrap()], &expected[..1]);

    // MLflow's CSV input, as pandas' `to_csv(index=False)` writes it.
    let mut csv = columns.join(",");
    for row in &arrays {
        let fields: Vec<String> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        csv.push('\n');
        csv.push_str(&fields.join(","));
    }
    let (status, _, answer) = common::call(
        &s,
        "POST",
        "/invocations?model=bc",
        &[("content-type", "text/csv; charset=utf-8")],
        csv.into_bytes(),
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["predictions"], labels);
    let (_, _, version) = common::call(&s, "GET", "/version", &[], axum::body::Body::empty()).await;
    assert_eq!(
        String::from_utf8(version).unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    let (_, answer) = json(
        &s,
        "POST",
        "/invocations?model=bc&version=2",
        json!({ "instances": records }),
    )
    .await;
    assert!(answer["predictions"].is_array());
}

#[tokio::test]
async fn categorical_columns_as_bytes_tensors_and_json_rows_agree() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let rows = vec![
        json!({"i1": 3, "i2": 10.5, "i5": null, "c1": "c1_0", "c3": "c3_5", "c4": "never-seen"}),
        json!({"i1": 0, "i2": 1, "i5": 200, "c1": "c1_3", "c3": "c3_0", "c4": "c4_1"}),
    ];
    let (status, body) = json(
        &s,
        "POST",
        "/v1/models/ctr:predict",
        json!({ "instances": rows }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tf: Vec<f64> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["probabilities"][1].as_f64().unwrap())
        .collect();

    let mut inputs = vec![];
    for (name, dt) in [
        ("i1", "INT64"),
        ("i2", "FP64"),
        ("i5", "FP64"),
        ("c1", "BYTES"),
        ("c3", "BYTES"),
        ("c4", "BYTES"),
    ] {
        let data: Vec<Value> = rows.iter().map(|r| r[name].clone()).collect();
        inputs.push(json!({ "name": name, "shape": [2], "datatype": dt, "data": data }));
    }
    let (status, body) = json(
        &s,
        "POST",
        "/v2/models/ctr/infer",
        json!({ "inputs": inputs }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v2: Vec<f64> = probabilities(&body).chunks(2).map(|p| p[1]).collect();
    close(&v2, &tf);

    // The tokens that mean missing in kiln's files mean missing here too.
    let ask = |c4: Value| {
        let s = s.clone();
        async move {
            let row = json!({"i1": 1, "i2": 2, "i5": 3, "c1": "c1_0", "c3": "c3_0", "c4": c4});
            let (_, body) = json(
                &s,
                "POST",
                "/v1/models/ctr:predict",
                json!({ "instances": [row] }),
            )
            .await;
            body["predictions"][0]["probabilities"].clone()
        }
    };
    assert_eq!(ask(json!("NA")).await, ask(Value::Null).await);
    assert_eq!(ask(json!("")).await, ask(Value::Null).await);
    assert_ne!(ask(json!("c4_1")).await, ask(Value::Null).await);

    // One numeric tensor cannot carry categorical columns.
    let (status, body) = json(
        &s,
        "POST",
        "/v2/models/ctr/infer",
        json!({ "inputs": [{ "name": "x", "shape": [1, 6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6] }] }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("categorical columns"),
        "{body}"
    );
}

/// The binary tensor data extension, as `tritonclient.http` sends it: FP32 inputs in the binary
/// part, outputs asked for in binary.
#[tokio::test]
async fn binary_tensor_extension() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let n = 3;
    let expected = v2_reference(&s, n).await;
    let records = bc_records(n);
    let columns = bc_columns();
    let mut binary = Vec::new();
    for r in &records {
        for c in &columns {
            binary.extend_from_slice(&(r[c].as_f64().unwrap() as f32).to_le_bytes());
        }
    }
    let header = json!({
        "inputs": [{ "name": "INPUT0", "shape": [n, 30], "datatype": "FP32", "parameters": { "binary_data_size": binary.len() } }],
        "outputs": [{ "name": "probabilities", "parameters": { "binary_data": true } }, { "name": "label", "parameters": { "binary_data": false } }],
    });
    let header = serde_json::to_vec(&header).unwrap();
    let length = header.len().to_string();
    let mut body = header;
    body.extend_from_slice(&binary);
    let (status, headers, answer) = call(
        &s,
        "POST",
        "/v2/models/bc/infer",
        &[
            ("content-type", "application/octet-stream"),
            ("inference-header-content-length", &length),
        ],
        body,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let json_len: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&answer[..json_len]).unwrap();
    let out = &head["outputs"][0];
    assert_eq!(out["name"], "probabilities");
    assert_eq!(out["parameters"]["binary_data_size"], json!(n * 2 * 4));
    assert!(out.get("data").is_none());
    let probs: Vec<f64> = answer[json_len..]
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    for (a, b) in probs.chunks(2).map(|p| p[1]).zip(&expected) {
        assert!((a - b).abs() < 1e-4);
    }
    assert_eq!(head["outputs"][1]["data"].as_array().unwrap().len(), n);

    // binary_data_output for all outputs; BYTES labels come length-prefixed.
    let header = json!({
        "inputs": [{ "name": "INPUT0", "shape": [n, 30], "datatype": "FP32", "parameters": { "binary_data_size": binary.len() } }],
        "parameters": { "binary_data_output": true },
    });
    let header = serde_json::to_vec(&header).unwrap();
    let length = header.len().to_string();
    let mut body = header;
    body.extend_from_slice(&binary);
    let (status, headers, answer) = call(
        &s,
        "POST",
        "/v2/models/bc/infer",
        &[("inference-header-content-length", &length)],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let json_len: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&answer[..json_len]).unwrap();
    let label_size = head["outputs"][0]["parameters"]["binary_data_size"]
        .as_u64()
        .unwrap() as usize;
    let labels = &answer[json_len..json_len + label_size];
    assert_eq!(
        u32::from_le_bytes([labels[0], labels[1], labels[2], labels[3]]),
        1
    );
    assert_eq!(answer.len() - json_len - label_size, n * 2 * 4);
}

/// Each bad request gets a 4xx whose message names the problem; a good request afterwards
/// still succeeds.
#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_serving_goes_on() {
    let f = fixture();
    let s = state(
        &f,
        ServerConfig {
            max_body: 64 * 1024,
            ..ServerConfig::default()
        },
    )
    .await;
    let good = bc_records(1);
    let mut missing = good[0].clone();
    missing.as_object_mut().unwrap().remove("mean area");
    let mut extra = good[0].clone();
    extra["mean aera"] = json!(1.0);
    let mut text = good[0].clone();
    text["mean radius"] = json!("abc");
    let mut nested = good[0].clone();
    nested["mean radius"] = json!([1]);
    let nan: Vec<u8> = std::iter::repeat_n(f32::NAN.to_le_bytes(), 30)
        .flatten()
        .collect();

    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, String)>,
        Vec<u8>,
        StatusCode,
        &'static str,
    );
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    let nan_header = j(
        json!({ "inputs": [{ "name": "x", "shape": [1, 30], "datatype": "FP32", "parameters": { "binary_data_size": 120 } }] }),
    );
    let mut nan_body = nan_header.clone();
    nan_body.extend_from_slice(&nan);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v2/models/bc/infer",
            vec![],
            b"{\"inputs\": [".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "POST",
            "/v1/models/bc:predict",
            vec![],
            b"not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "POST",
            "/invocations?model=bc",
            vec![],
            b"[1,2".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "POST",
            "/v2/models/bc/infer",
            vec![],
            j(
                json!({ "inputs": [{ "name": "x", "shape": [1, 29], "datatype": "FP32", "data": vec![0.5; 29] }] }),
            ),
            StatusCode::BAD_REQUEST,
            "[rows, 30]",
        ),
        (
            "POST",
            "/v2/models/bc/infer",
            vec![],
            j(
                json!({ "inputs": [{ "name": "x", "shape": [2, 30], "datatype": "FP32", "data": vec![0.5; 30] }] }),
            ),
            StatusCode::BAD_REQUEST,
            "holds 60 values but 30 were sent",
        ),
        (
            "POST",
            "/v2/models/bc/infer",
            vec![],
            j(
                json!({ "inputs": [{ "name": "x", "shape": [1, 30], "datatype": "FP32", "data": vec!["a"; 30] }] }),
            ),
            StatusCode::BAD_REQUEST,
            "is FP32 but its data holds the string",
        ),
        (
            "POST",
            "/v2/models/bc/infer",
            vec![],
            j(
                json!({ "inputs": [{ "name": "x", "shape": [1, 30], "datatype": "FP8", "data": vec![1; 30] }] }),
            ),
            StatusCode::BAD_REQUEST,
            "unknown datatype `FP8`",
        ),
        (
            "POST",
            "/v2/models/ctr/infer",
            vec![],
            j(json!({ "inputs": [
            { "name": "i1", "shape": [1], "datatype": "INT64", "data": [1] },
            { "name": "i2", "shape": [1], "datatype": "FP64", "data": [1] },
            { "name": "i5", "shape": [1], "datatype": "FP64", "data": [1] },
            { "name": "c1", "shape": [1], "datatype": "FP32", "data": [1] },
            { "name": "c3", "shape": [1], "datatype": "BYTES", "data": ["a"] },
            { "name": "c4", "shape": [1], "datatype": "BYTES", "data": ["b"] },
        ] })),
            StatusCode::BAD_REQUEST,
            "column `c1` is categorical; send it as BYTES",
        ),
        (
            "POST",
            "/v2/models/bc/infer",
            vec![(
                "inference-header-content-length",
                nan_header.len().to_string(),
            )],
            nan_body,
            StatusCode::BAD_REQUEST,
            "NaN is not a value",
        ),
        (
            "POST",
            "/v1/models/bc:predict",
            vec![],
            j(json!({ "instances": [missing] })),
            StatusCode::BAD_REQUEST,
            "missing column `mean area`",
        ),
        (
            "POST",
            "/v1/models/bc:predict",
            vec![],
            j(json!({ "instances": [extra] })),
            StatusCode::BAD_REQUEST,
            "unknown column `mean aera`; did you mean `mean area`?",
        ),
        (
            "POST",
            "/invocations?model=bc",
            vec![],
            j(json!({ "dataframe_records": [text] })),
            StatusCode::BAD_REQUEST,
            "column `mean radius` (float): expected a number or null, found the string",
        ),
        (
            "POST",
            "/invocations?model=bc",
            vec![],
            j(json!({ "dataframe_records": [nested] })),
            StatusCode::BAD_REQUEST,
            "found an array",
        ),
        (
            "POST",
            "/invocations?model=bc",
            vec![],
            j(json!({ "rows": [] })),
            StatusCode::BAD_REQUEST,
            "expected exactly one of dataframe_split",
        ),
        (
            "POST",
            "/invocations?model=bc",
            vec![],
            j(json!({ "instances": [] })),
            StatusCode::BAD_REQUEST,
            "no rows",
        ),
        (
            "POST",
            "/invocations",
            vec![],
            j(json!({ "instances": good })),
            StatusCode::BAD_REQUEST,
            "name one with /invocations?model=NAME",
        ),
        (
            "POST",
            "/invocations?model=bc",
            vec![("content-type", "text/plain".into())],
            b"a,b\n1,2\n".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/json or text/csv",
        ),
        (
            "POST",
            "/invocations?model=bc",
            vec![("content-type", "text/csv".into())],
            b"a,b\n1,2\n".to_vec(),
            StatusCode::BAD_REQUEST,
            "unknown column `a`",
        ),
        (
            "POST",
            "/invocations?model=bc",
            vec![("content-type", "text/csv".into())],
            b"mean radius\n1\n".to_vec(),
            StatusCode::BAD_REQUEST,
            "missing",
        ),
        (
            "POST",
            "/v2/models/bc/infer",
            vec![],
            vec![b' '; 65 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "over the server's limit of 65536 bytes",
        ),
        (
            "POST",
            "/v2/models/ctrr/infer",
            vec![],
            j(json!({})),
            StatusCode::NOT_FOUND,
            "no model `ctrr` is served here; did you mean `ctr`?",
        ),
        (
            "POST",
            "/v2/models/bc/versions/9/infer",
            vec![],
            j(json!({})),
            StatusCode::NOT_FOUND,
            "no version `9` of model `bc`",
        ),
        (
            "POST",
            "/v1/models/bc/labels/challenger:predict",
            vec![],
            j(json!({ "instances": good })),
            StatusCode::NOT_FOUND,
            "no alias `challenger",
        ),
        (
            "POST",
            "/v1/models/bc:classify",
            vec![],
            j(json!({})),
            StatusCode::BAD_REQUEST,
            "the body needs `examples`",
        ),
        (
            "POST",
            "/v1/models/bc:regress",
            vec![],
            j(json!({ "examples": [good] })),
            StatusCode::BAD_REQUEST,
            "ask it with :classify",
        ),
        (
            "GET",
            "/v1/models/bc/weird/path",
            vec![],
            vec![],
            StatusCode::NOT_FOUND,
            "no TF Serving endpoint",
        ),
        (
            "GET",
            "/v3/anything",
            vec![],
            vec![],
            StatusCode::NOT_FOUND,
            "no endpoint GET /v3/anything",
        ),
        (
            "GET",
            "/v2/models/nope/ready",
            vec![],
            vec![],
            StatusCode::NOT_FOUND,
            "no model `nope`",
        ),
    ];
    for (method, uri, headers, body, status, needle) in cases {
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if !h.iter().any(|(k, _)| *k == "content-type") {
            h.push(("content-type", "application/json"));
        }
        let (got, _, answer) = call(&s, method, uri, &h, body).await;
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(got, status, "{method} {uri}: {text}");
        assert!(
            text.contains(needle),
            "{method} {uri}: {text:?} does not say {needle:?}"
        );
        let (ok, _) = json(
            &s,
            "POST",
            "/v1/models/bc:predict",
            json!({ "instances": good }),
        )
        .await;
        assert_eq!(ok, StatusCode::OK, "serving stopped after {method} {uri}");
    }
    let (_, m) = get(&s, "/metrics").await;
    let m = m.as_str().unwrap();
    assert!(
        m.contains("kiln_request_errors_total{model=\"bc\",protocol=\"v2\",status=\"400\"}"),
        "{m}"
    );
    assert!(
        m.contains("kiln_requests_total{model=\"bc\",protocol=\"tfserving\",version=\"1\"}"),
        "{m}"
    );
    // Made-up model names are counted together, not as labels of their own.
    assert!(
        m.contains("kiln_request_errors_total{model=\"(unknown)\",protocol=\"v2\",status=\"404\"}"),
        "{m}"
    );
    assert!(!m.contains("ctrr"), "{m}");
}

/// TF Serving's `:regress` on a regression model answers one value per example, the values
/// `:predict` gives; `:classify` on it names the verb to use.
#[tokio::test]
async fn regress_answers_what_predict_does() {
    use kiln_core::bundle::{Activation, Architecture, Task};
    let f = fixture();
    let dir = f.home.path().join("bundles/reg");
    make_bundle(
        &dir,
        &breast_cancer(),
        BC_SPEC,
        "label",
        Task::Regression,
        &[],
        Architecture::Mlp {
            inputs: 30,
            hidden: vec![],
            activation: Activation::Relu,
            outputs: 1,
        },
        9,
    );
    register(&f.registry, "reg", &dir);
    f.registry
        .set_alias(
            "reg",
            "champion",
            1,
            kiln_core::registry::Expect::Any,
            "test",
            "",
        )
        .unwrap();
    let s = state(&f, ServerConfig::default()).await;
    let records = bc_records(3);
    let (status, predicted) = json(
        &s,
        "POST",
        "/v1/models/reg:predict",
        json!({ "instances": records }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{predicted}");
    let (status, regressed) = json(
        &s,
        "POST",
        "/v1/models/reg:regress",
        json!({ "examples": records }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{regressed}");
    assert_eq!(
        regressed["results"], predicted["predictions"],
        "{regressed}"
    );
    assert_eq!(regressed["results"].as_array().unwrap().len(), 3);
    let (status, e) = json(
        &s,
        "POST",
        "/v1/models/reg:classify",
        json!({ "examples": records }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("ask it with :regress"), "{e}");
}
