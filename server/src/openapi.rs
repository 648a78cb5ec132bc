//! The OpenAPI 3.1 description of kiln's own API (`GET /api/openapi.json`): models,
//! deployments, drift, experiments, runs, artifacts and pipelines.
//!
//! Its routes are added through [`Api`], which puts each one in the router and in the document
//! together, so neither can name a route the other lacks. Bodies, answers and query strings are
//! described by the JSON Schemas (schemars) of the same types the handlers parse and write.
//! The other protocols (V2, TF Serving, MLflow) are described by their own projects.

use axum::Router;
use axum::body::Bytes;
use axum::handler::Handler;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, delete, get, head, post, put};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::state::AppState;

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What one operation takes and answers.
pub(crate) struct Doc {
    summary: &'static str,
    body: Option<SchemaFn>,
    query: Option<SchemaFn>,
    answer: Answer,
    /// The status of a success (200 unless said).
    status: u16,
}

enum Answer {
    Json(SchemaFn),
    /// Bytes of this media type.
    Raw(&'static str),
    /// Nothing in the body (a `HEAD`).
    Empty,
}

/// An operation that answers `T` as JSON.
pub(crate) fn answers<T: JsonSchema>(summary: &'static str) -> Doc {
    Doc {
        summary,
        body: None,
        query: None,
        answer: Answer::Json(schema_of::<T>),
        status: 200,
    }
}

/// An operation that answers bytes of `media_type`.
pub(crate) fn answers_raw(summary: &'static str, media_type: &'static str) -> Doc {
    Doc {
        summary,
        body: None,
        query: None,
        answer: Answer::Raw(media_type),
        status: 200,
    }
}

/// An operation whose answer is its status alone.
pub(crate) fn answers_nothing(summary: &'static str) -> Doc {
    Doc {
        summary,
        body: None,
        query: None,
        answer: Answer::Empty,
        status: 200,
    }
}

impl Doc {
    /// It takes a JSON body of type `T`.
    pub(crate) fn takes<T: JsonSchema>(mut self) -> Doc {
        self.body = Some(schema_of::<T>);
        self
    }

    /// Its query string holds the fields of `T`.
    pub(crate) fn query<T: JsonSchema>(mut self) -> Doc {
        self.query = Some(schema_of::<T>);
        self
    }

    /// It succeeds with `status` (e.g. 202).
    pub(crate) fn status(mut self, status: u16) -> Doc {
        self.status = status;
        self
    }
}

struct Operation {
    method: &'static str,
    path: &'static str,
    doc: Doc,
    writes: bool,
}

/// Routes and their description, built together.
pub(crate) struct Api {
    router: Router<AppState>,
    operations: Vec<Operation>,
    writes: bool,
}

impl Api {
    /// Routes that only read (open unless `--protect-reads`).
    pub(crate) fn reads() -> Api {
        Api {
            router: Router::new(),
            operations: Vec::new(),
            writes: false,
        }
    }

    /// Routes that change state (the token is required when the server has one).
    pub(crate) fn writes() -> Api {
        Api {
            writes: true,
            ..Api::reads()
        }
    }

    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        route: MethodRouter<AppState>,
        doc: Doc,
    ) -> Api {
        self.router = self.router.route(path, route);
        self.operations.push(Operation {
            method,
            path,
            doc,
            writes: self.writes,
        });
        self
    }

    pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        handler: H,
        doc: Doc,
    ) -> Api {
        self.add("get", path, get(handler), doc)
    }

    pub(crate) fn head<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        handler: H,
        doc: Doc,
    ) -> Api {
        self.add("head", path, head(handler), doc)
    }

    pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        handler: H,
        doc: Doc,
    ) -> Api {
        self.add("post", path, post(handler), doc)
    }

    pub(crate) fn put<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        handler: H,
        doc: Doc,
    ) -> Api {
        self.add("put", path, put(handler), doc)
    }

    /// A `PUT` whose body may be as large as the artifact limit (`--max-upload`), not
    /// `--max-body`.
    pub(crate) fn put_unlimited<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        handler: H,
        doc: Doc,
    ) -> Api {
        let route = put(handler).layer(axum::extract::DefaultBodyLimit::disable());
        self.add("put", path, route, doc)
    }

    pub(crate) fn delete<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        handler: H,
        doc: Doc,
    ) -> Api {
        self.add("delete", path, delete(handler), doc)
    }

    pub(crate) fn merge(mut self, other: Api) -> Api {
        self.router = self.router.merge(other.router);
        self.operations.extend(other.operations);
        self
    }

    /// The router, and the operations to describe.
    pub(crate) fn split(self) -> (Router<AppState>, Operations) {
        (self.router, Operations(self.operations))
    }
}

/// The described operations of one or more [`Api`]s.
pub(crate) struct Operations(Vec<Operation>);

impl Operations {
    pub(crate) fn extend(&mut self, other: Operations) {
        self.0.extend(other.0);
    }

    /// The route that serves the document of these operations (and of itself).
    pub(crate) fn serve(mut self) -> Router<AppState> {
        self.0.push(Operation {
            method: "get",
            path: PATH,
            doc: answers::<Value>("This document: OpenAPI 3.1 of kiln's own API"),
            writes: false,
        });
        let document = match serde_json::to_vec_pretty(&self.document()) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::error!("encoding the OpenAPI document: {e}");
                Bytes::from_static(b"{}")
            }
        };
        Router::new().route(
            PATH,
            get(move || {
                let document = document.clone();
                async move {
                    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
                }
            }),
        )
    }

    /// The OpenAPI 3.1 document.
    pub(crate) fn document(&self) -> Value {
        let mut generator = schemars::generate::SchemaSettings::draft2020_12()
            .with(|s| {
                s.definitions_path = "#/components/schemas/".into();
                s.meta_schema = None;
            })
            .into_generator();
        let mut paths = Map::new();
        for op in &self.0 {
            let item = paths
                .entry(op.path)
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(item) = item {
                item.insert(op.method.to_string(), operation(op, &mut generator));
            }
        }
        let mut schemas = generator.take_definitions(true);
        schemas.insert(
            "Error".into(),
            json!({
                "type": "object",
                "description": "Why a request was refused",
                "properties": { "error": { "type": "string" } },
                "required": ["error"],
            }),
        );
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "kiln",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "kiln's own API: models, versions, aliases, deployments and drift; \
                    experiments, runs and artifacts; pipelines and their runs. Changes need \
                    `Authorization: Bearer TOKEN` when the server has a token (and a JSON body); \
                    reads need it under --protect-reads. Inference speaks the Open Inference \
                    Protocol V2 (/v2), TF Serving (/v1) and MLflow (/invocations), and tracking \
                    also speaks MLflow's REST API (/api/2.0/mlflow), each as its project describes.",
                "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
            },
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "token": { "type": "http", "scheme": "bearer" },
                },
            },
        })
    }
}

/// Where the document is served.
pub(crate) const PATH: &str = "/api/openapi.json";

fn operation(op: &Operation, generator: &mut SchemaGenerator) -> Value {
    let mut parameters: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": { "type": "string" },
            })
        })
        .collect();
    if let Some(query) = op.doc.query {
        let schema = query(generator);
        let resolved = resolve(&schema, generator);
        let required: Vec<&str> = resolved["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = resolved["properties"].as_object() {
            for (name, schema) in properties {
                parameters.push(json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "schema": schema,
                }));
            }
        }
    }
    let success = match &op.doc.answer {
        Answer::Json(schema) => json!({
            "description": "Success",
            "content": { "application/json": { "schema": schema(generator) } },
        }),
        Answer::Raw(media_type) => json!({
            "description": "Success",
            "content": { *media_type: { "schema": { "type": "string", "format": "binary" } } },
        }),
        Answer::Empty => json!({ "description": "Success, with no body" }),
    };
    let error = json!({
        "description": "Refused: the body says why",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    });
    let mut responses = Map::new();
    responses.insert(op.doc.status.to_string(), success);
    responses.insert("default".into(), error);
    let mut o = Map::new();
    o.insert("summary".into(), json!(op.doc.summary));
    o.insert(
        "operationId".into(),
        json!(format!("{}{}", op.method, op.path.replace(['{', '}'], ""))),
    );
    o.insert("tags".into(), json!([tag(op.path)]));
    if !parameters.is_empty() {
        o.insert("parameters".into(), json!(parameters));
    }
    if let Some(body) = op.doc.body {
        o.insert(
            "requestBody".into(),
            json!({
                "required": true,
                "content": { "application/json": { "schema": body(generator) } },
            }),
        );
    }
    o.insert("responses".into(), Value::Object(responses));
    // Reads take the token only under --protect-reads: with it, or without.
    let security = if op.writes {
        json!([{ "token": [] }])
    } else {
        json!([{}, { "token": [] }])
    };
    o.insert("security".into(), security);
    Value::Object(o)
}

/// A schema, or the definition it refers to.
fn resolve(schema: &Schema, generator: &SchemaGenerator) -> Value {
    let value = schema.as_value().clone();
    match value["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or("");
            generator
                .definitions()
                .get(name)
                .cloned()
                .unwrap_or(Value::Null)
        }
        None => value,
    }
}

/// The group an operation is listed under: the first segment after `/api/`.
fn tag(path: &str) -> &str {
    match path.trim_start_matches("/api/").split('/').next() {
        Some("pipeline-runs") => "pipelines",
        Some("deployments") => "models",
        Some(first) => first.trim_end_matches(".json"),
        None => "api",
    }
}
