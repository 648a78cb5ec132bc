//! V2 over gRPC on a real socket, asked with a plain HTTP/2 client: answers equal V2 over REST,
//! the token guards it as it guards REST, errors carry REST's message under the matching gRPC
//! code, and nothing a client sends (a malformed message, an oversized one, an unknown method)
//! stops it from serving. `examples/clients/tritonclient_grpc_check.py` asks the same server
//! with the unmodified tritonclient.grpc.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use axum::http::StatusCode;
use common::*;
use kiln_server::ServerConfig;
use kiln_server::grpc::pb;
use prost::Message;
use serde_json::{Value, json};

/// Starts a gRPC server for `state` on a free loopback port.
async fn grpc_server(state: &kiln_server::AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(kiln_server::grpc::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    addr
}

/// A gRPC status: its code and message.
#[derive(Debug, PartialEq)]
struct Refused(u32, String);

/// Sends `body` (an encoded message, framed here) to `method` and returns the answer's message
/// bytes, or the status it was refused with.
async fn call_raw(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<u8>, Refused> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = axum::http::Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(body);
    send.send_data(framed.into(), true).unwrap();
    let (parts, mut stream) = response.await.unwrap().into_parts();
    assert_eq!(parts.status, StatusCode::OK);
    let mut data = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.unwrap();
        let _ = stream.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    // A refusal with no message comes as headers alone ("trailers-only").
    let trailers = match parts.headers.get("grpc-status") {
        Some(_) => parts.headers,
        None => stream.trailers().await.unwrap().unwrap(),
    };
    let code: u32 = trailers["grpc-status"].to_str().unwrap().parse().unwrap();
    if code != 0 {
        let message = trailers
            .get("grpc-message")
            .map(|m| percent_decode(m.to_str().unwrap()))
            .unwrap_or_default();
        return Err(Refused(code, message));
    }
    assert!(data.len() >= 5 && data[0] == 0, "one uncompressed message");
    Ok(data[5..].to_vec())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn call<Res: Message + Default>(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    request: &impl Message,
) -> Result<Res, Refused> {
    let bytes = call_raw(addr, method, headers, &request.encode_to_vec()).await?;
    Ok(Res::decode(bytes.as_slice()).unwrap())
}

/// The first `n` breast cancer rows as one `[n, 30]` FP64 tensor in raw bytes.
fn bc_raw(n: usize) -> Vec<u8> {
    let columns = bc_columns();
    bc_records(n)
        .iter()
        .flat_map(|r| {
            columns
                .iter()
                .map(|c| r[c].as_f64().unwrap())
                .collect::<Vec<_>>()
        })
        .flat_map(f64::to_le_bytes)
        .collect()
}

fn infer_request(model: &str, version: &str, n: usize) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        id: "g1".into(),
        inputs: vec![pb::InferInputTensor {
            name: "x".into(),
            datatype: "FP64".into(),
            shape: vec![n as i64, 30],
            contents: None,
        }],
        outputs: vec![],
        raw_input_contents: vec![bc_raw(n)],
    }
}

fn floats(raw: &[u8]) -> Vec<f64> {
    raw.chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

/// V2 over REST's probabilities for the same rows as [`bc_raw`].
async fn rest_probabilities(state: &kiln_server::AppState, version: &str, n: usize) -> Vec<f64> {
    let columns = bc_columns();
    let data: Vec<Vec<Value>> = bc_records(n)
        .iter()
        .map(|r| columns.iter().map(|c| r[c].clone()).collect())
        .collect();
    let (status, body) = json(
        state,
        "POST",
        &format!("/v2/models/bc/versions/{version}/infer"),
        json!({ "inputs": [{ "name": "x", "shape": [n, 30], "datatype": "FP64", "data": data }] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    probabilities(&body)
}

#[tokio::test]
async fn answers_equal_rest_for_every_version_and_input_form() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let addr = grpc_server(&s).await;

    let live: pb::ServerLiveResponse = call(addr, "ServerLive", &[], &pb::ServerLiveRequest {})
        .await
        .unwrap();
    assert!(live.live);
    let ready: pb::ServerReadyResponse = call(addr, "ServerReady", &[], &pb::ServerReadyRequest {})
        .await
        .unwrap();
    assert!(ready.ready);
    let meta: pb::ModelMetadataResponse = call(
        addr,
        "ModelMetadata",
        &[],
        &pb::ModelRequest {
            name: "bc".into(),
            version: String::new(),
        },
    )
    .await
    .unwrap();
    let (_, rest_meta) = get(&s, "/v2/models/bc").await;
    assert_eq!(meta.name, "bc");
    assert_eq!(json!(meta.versions), rest_meta["versions"]);
    assert_eq!(meta.platform, rest_meta["platform"]);
    let names: Vec<&str> = meta.inputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, bc_columns());
    let outputs: Vec<(String, String, Vec<i64>)> = meta
        .outputs
        .iter()
        .map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone()))
        .collect();
    assert_eq!(
        outputs,
        [
            ("label".to_string(), "BYTES".to_string(), vec![-1]),
            ("probabilities".to_string(), "FP32".to_string(), vec![-1, 2]),
        ]
    );

    for version in ["", "1", "2", "champion"] {
        let answer: pb::ModelInferResponse =
            call(addr, "ModelInfer", &[], &infer_request("bc", version, 5))
                .await
                .unwrap();
        let want = if version == "2" { "2" } else { "1" };
        assert_eq!(answer.model_version, want);
        assert_eq!(answer.id, "g1");
        let names: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["label", "probabilities"]);
        assert_eq!(answer.outputs[1].shape, [5, 2]);
        let got = floats(&answer.raw_output_contents[1]);
        let rest = rest_probabilities(&s, want, 5).await;
        assert_eq!(got.len(), rest.len());
        for (a, b) in got.iter().zip(&rest) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {rest:?}");
        }
        // The labels are BYTES: each one after its 4-byte length.
        let labels = &answer.raw_output_contents[0];
        assert_eq!(u32::from_le_bytes(labels[..4].try_into().unwrap()), 1);
    }

    // Typed contents, one tensor per column, and a chosen output.
    let columns = bc_columns();
    let records = bc_records(3);
    let request = pb::ModelInferRequest {
        model_name: "bc".into(),
        inputs: columns
            .iter()
            .map(|c| pb::InferInputTensor {
                name: c.clone(),
                datatype: "FP32".into(),
                shape: vec![3],
                contents: Some(pb::InferTensorContents {
                    fp32_contents: records
                        .iter()
                        .map(|r| r[c].as_f64().unwrap() as f32)
                        .collect(),
                    ..Default::default()
                }),
            })
            .collect(),
        outputs: vec![pb::InferRequestedOutputTensor {
            name: "probabilities".into(),
        }],
        ..Default::default()
    };
    let answer: pb::ModelInferResponse = call(addr, "ModelInfer", &[], &request).await.unwrap();
    assert_eq!(answer.outputs.len(), 1);
    let got = floats(&answer.raw_output_contents[0]);
    let rest = rest_probabilities(&s, "1", 3).await;
    for (a, b) in got.iter().zip(&rest) {
        assert!((a - b).abs() < 1e-5, "{got:?} vs {rest:?}");
    }

    // Categorical columns as BYTES tensors, raw.
    let (_, ctr_meta) = get(&s, "/v2/models/ctr").await;
    let inputs: Vec<(String, String)> = ctr_meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["datatype"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let raw_of = |datatype: &str| -> Vec<u8> {
        match datatype {
            "BYTES" => ["a", "b"]
                .iter()
                .flat_map(|s| {
                    let mut v = (s.len() as u32).to_le_bytes().to_vec();
                    v.extend_from_slice(s.as_bytes());
                    v
                })
                .collect(),
            "INT64" => [1i64, 2].iter().flat_map(|x| x.to_le_bytes()).collect(),
            _ => [0.5f64, 1.5].iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    };
    let request = pb::ModelInferRequest {
        model_name: "ctr".into(),
        inputs: inputs
            .iter()
            .map(|(name, datatype)| pb::InferInputTensor {
                name: name.clone(),
                datatype: datatype.clone(),
                shape: vec![2],
                contents: None,
            })
            .collect(),
        raw_input_contents: inputs.iter().map(|(_, d)| raw_of(d)).collect(),
        ..Default::default()
    };
    let answer: pb::ModelInferResponse = call(addr, "ModelInfer", &[], &request).await.unwrap();
    assert_eq!(answer.model_name, "ctr");
    assert_eq!(answer.outputs[1].shape, [2, 2]);

    // Counted under their own protocol.
    let (_, _, metrics) = call_rest_metrics(&s).await;
    assert!(
        metrics.contains(r#"kiln_requests_total{model="bc",protocol="grpc",version="1"} 4"#),
        "{metrics}"
    );
}

async fn call_rest_metrics(s: &kiln_server::AppState) -> (StatusCode, (), String) {
    let (status, _, bytes) =
        common::call(s, "GET", "/metrics", &[], axum::body::Body::empty()).await;
    (status, (), String::from_utf8(bytes).unwrap())
}

#[tokio::test]
async fn errors_carry_rest_messages_under_grpc_codes_and_serving_goes_on() {
    let f = fixture();
    let s = state(
        &f,
        ServerConfig {
            max_body: 64 << 10,
            ..ServerConfig::default()
        },
    )
    .await;
    let addr = grpc_server(&s).await;
    const INVALID_ARGUMENT: u32 = 3;
    const NOT_FOUND: u32 = 5;
    const OUT_OF_RANGE: u32 = 11;
    const UNIMPLEMENTED: u32 = 12;
    const INTERNAL: u32 = 13;

    let e = call::<pb::ModelInferResponse>(addr, "ModelInfer", &[], &infer_request("nope", "", 1))
        .await
        .unwrap_err();
    let (status, rest) = json(
        &s,
        "POST",
        "/v2/models/nope/infer",
        json!({ "inputs": [{ "name": "x", "shape": [1, 30], "datatype": "FP64", "data": vec![0.0; 30] }] }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        e,
        Refused(NOT_FOUND, rest["error"].as_str().unwrap().into())
    );

    // A shape that does not hold the values sent.
    let mut wrong = infer_request("bc", "", 2);
    wrong.inputs[0].shape = vec![2, 29];
    let e = call::<pb::ModelInferResponse>(addr, "ModelInfer", &[], &wrong)
        .await
        .unwrap_err();
    assert_eq!(e.0, INVALID_ARGUMENT);
    assert!(
        e.1.contains("shape [2, 29] holds 58 values but 60 were sent"),
        "{e:?}"
    );
    // Raw contents that do not match the inputs.
    let mut wrong = infer_request("bc", "", 2);
    wrong.raw_input_contents.push(vec![1, 2, 3]);
    let e = call::<pb::ModelInferResponse>(addr, "ModelInfer", &[], &wrong)
        .await
        .unwrap_err();
    assert_eq!(e.0, INVALID_ARGUMENT);
    assert!(
        e.1.contains("raw_input_contents has 2 entries for 1 inputs"),
        "{e:?}"
    );
    // An output the model does not have.
    let mut wrong = infer_request("bc", "", 2);
    wrong.outputs = vec![pb::InferRequestedOutputTensor {
        name: "logits".into(),
    }];
    let e = call::<pb::ModelInferResponse>(addr, "ModelInfer", &[], &wrong)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        Refused(
            INVALID_ARGUMENT,
            "unknown output `logits`; the model's outputs are label, probabilities".into()
        )
    );
    // A version that does not exist.
    let e = call::<pb::ModelInferResponse>(addr, "ModelInfer", &[], &infer_request("bc", "9", 1))
        .await
        .unwrap_err();
    assert_eq!(e.0, NOT_FOUND, "{e:?}");
    let ready: pb::ModelReadyResponse = call(
        addr,
        "ModelReady",
        &[],
        &pb::ModelRequest {
            name: "bc".into(),
            version: "9".into(),
        },
    )
    .await
    .unwrap();
    assert!(!ready.ready);

    // Bytes that are no protobuf message, a message over --max-body, a method kiln lacks.
    let e = call_raw(addr, "ModelInfer", &[], &[0xff; 16])
        .await
        .unwrap_err();
    assert_eq!(e.0, INTERNAL, "{e:?}");
    let e = call_raw(addr, "ModelInfer", &[], &vec![0u8; 100 << 10])
        .await
        .unwrap_err();
    assert_eq!(e.0, OUT_OF_RANGE, "{e:?}");
    assert!(e.1.contains("the limit is: 65536 bytes"), "{e:?}");
    let e = call_raw(addr, "ModelStreamInfer", &[], &[])
        .await
        .unwrap_err();
    assert_eq!(e.0, UNIMPLEMENTED);
    assert!(
        e.1.contains("ModelStreamInfer is not served by kiln"),
        "{e:?}"
    );

    // A huge model name is quoted in the error only in part: the message fits a header.
    let huge = infer_request(&"m".repeat(40_000), "", 1);
    let e = call::<pb::ModelInferResponse>(addr, "ModelInfer", &[], &huge)
        .await
        .unwrap_err();
    assert_eq!(e.0, NOT_FOUND);
    assert!(e.1.len() < 1100 && e.1.ends_with('…'), "{}", e.1.len());

    // Still serving.
    let answer: pb::ModelInferResponse = call(addr, "ModelInfer", &[], &infer_request("bc", "", 2))
        .await
        .unwrap();
    assert_eq!(answer.outputs.len(), 2);
}

#[tokio::test]
async fn the_token_guards_grpc_as_it_guards_rest() {
    let f = fixture();
    let open = state(
        &f,
        ServerConfig {
            token: Some("s3cret".into()),
            ..ServerConfig::default()
        },
    )
    .await;
    // Inference is a read: open unless --protect-reads.
    let addr = grpc_server(&open).await;
    assert!(
        call::<pb::ModelInferResponse>(addr, "ModelInfer", &[], &infer_request("bc", "", 1))
            .await
            .is_ok()
    );

    let s = state(
        &f,
        ServerConfig {
            token: Some("s3cret".into()),
            protect_reads: true,
            ..ServerConfig::default()
        },
    )
    .await;
    let addr = grpc_server(&s).await;
    const UNAUTHENTICATED: u32 = 16;
    for headers in [&[][..], &[("authorization", "Bearer nope")][..]] {
        for method in [
            "ModelInfer",
            "ModelMetadata",
            "ModelReady",
            "ServerMetadata",
        ] {
            let e =
                call::<pb::ModelInferResponse>(addr, method, headers, &infer_request("bc", "", 1))
                    .await
                    .unwrap_err();
            assert_eq!(e.0, UNAUTHENTICATED, "{method} {headers:?}: {e:?}");
        }
    }
    let e = call::<pb::ModelInferResponse>(addr, "ModelInfer", &[], &infer_request("bc", "", 1))
        .await
        .unwrap_err();
    assert!(e.1.contains("Authorization: Bearer"), "{e:?}");
    // Health stays open, as over REST.
    let live: pb::ServerLiveResponse = call(addr, "ServerLive", &[], &pb::ServerLiveRequest {})
        .await
        .unwrap();
    assert!(live.live);
    let answer: pb::ModelInferResponse = call(
        addr,
        "ModelInfer",
        &[("authorization", "Bearer s3cret")],
        &infer_request("bc", "", 1),
    )
    .await
    .unwrap();
    assert_eq!(answer.model_name, "bc");
}
