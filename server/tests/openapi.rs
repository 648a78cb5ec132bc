//! `/api/openapi.json`: every operation it describes is routed, every route of kiln's own API
//! is described (they are added together; this also checks no module adds one around that),
//! and what it says of bodies and answers comes from the handlers' own types.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::*;
use kiln_server::ServerConfig;
use serde_json::Value;

async fn document(s: &kiln_server::AppState) -> Value {
    let (status, doc) = get(s, "/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    doc
}

#[tokio::test]
async fn every_described_operation_is_routed() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let doc = document(&s).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            // A path parameter that names nothing: the handler answers 4xx, never the router's
            // "no endpoint" 404 or a 405.
            let uri = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "zz" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let (status, _, body) = call(
                &s,
                &method.to_uppercase(),
                &uri,
                &[("content-type", "application/json")],
                if method == "get" || method == "head" {
                    ""
                } else {
                    "{}"
                },
            )
            .await;
            let text = String::from_utf8_lossy(&body);
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(!text.contains("no endpoint"), "{method} {path}: {text}");
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()));
            let writes = method != "get" && method != "head";
            assert_eq!(
                op["security"].as_array().unwrap().len(),
                if writes { 1 } else { 2 },
                "{method} {path}: writes need the token, reads may"
            );
        }
    }
    assert!(operations >= 39, "{operations} operations");
    // Bodies and answers are the wire types'.
    let op = &doc["paths"]["/api/models/{name}/deployment"]["put"];
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SetDeployment"
    );
    let set = &doc["components"]["schemas"]["SetDeployment"];
    assert_eq!(set["required"], serde_json::json!(["routes"]), "{set}");
    assert_eq!(
        set["additionalProperties"], false,
        "unknown fields are refused"
    );
    let runs = &doc["paths"]["/api/runs"]["get"]["parameters"];
    let names: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "experiment",
            "status",
            "parent",
            "where",
            "order_by",
            "limit"
        ]
    );
    // Floats a run may hold that JSON numbers cannot.
    let float = &doc["components"]["schemas"]["Float"];
    assert_eq!(float["anyOf"][1]["enum"][0], "NaN");
}

/// Routes of kiln's own API are added through `openapi::Api`, so each is described; a
/// `.route("/api/…")` elsewhere would escape the document. MLflow's API is MLflow's.
#[test]
fn no_route_of_the_api_is_added_around_the_description() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let flat: String = text.split_whitespace().collect();
            for (i, _) in flat.match_indices(".route(\"/api/") {
                let rest = &flat[i + ".route(\"".len()..];
                let route = &rest[..rest.find('"').unwrap()];
                if !route.starts_with("/api/2.0/") && route != "/api/openapi.json" {
                    found.push(format!("{}: {route}", path.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "routes outside openapi::Api: {found:?}");
}
