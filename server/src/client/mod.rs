//! The one HTTP client of kiln, beside the server it talks to: every command given `--server`,
//! the REPL, `kiln monitor` and the drift webhook talk through [`Client`], which sends the
//! token, bounds every call in time, escapes every name it puts in a path, and reads answers as
//! the types of [`kiln_core::wire`]. It is also a [`Backend`] and a
//! [`kiln_core::backend::Pipelines`], so registry, training and pipeline commands run against a
//! `kiln up` exactly as against a local `KILN_HOME`.

mod pipelines;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kiln_core::backend::{AliasMove, Backend};
use kiln_core::registry::artifacts::{self, UploadSource};
use kiln_core::registry::{
    AliasEvent, ArtifactKind, ArtifactRef, Deployment, Experiment, ModelVersion, NewRun,
    RegistryError, Run, RunStatus, run_id_text,
};
use kiln_core::wire::experiments::{
    CreateExperiment, Delete, Deleted, ExperimentList, RenameExperiment,
};
use kiln_core::wire::models::{
    AliasChanged, DeleteAlias, DeploymentChanged, Expected, History, ModelDetail, ModelList,
    RegisterVersion, SetAlias, SetDeployment,
};
use kiln_core::wire::runs::{
    AttachArtifact, CreateRun, EndRun, LogToRun, Logged, MetricValue, RunDetail, RunPage, RunQuery,
    RunText,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long one call may take before it is given up.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// A running `kiln up` (or `kiln serve`) at a URL, with its token when it has one.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A path segment with every character that URLs reserve escaped.
pub fn url_part(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Posts `body` to `url` once, within `timeout` (webhooks: no token, no answer read).
pub fn post_json(url: &str, body: &serde_json::Value, timeout: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    agent
        .post(url)
        .send_json(body)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

type Answer = ureq::http::Response<ureq::Body>;

/// The client's agent: error statuses are answers to read, every call bounded by [`TIMEOUT`].
fn agent(tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .tls_config(tls)
        .build()
        .into()
}

impl Client {
    /// A client for the server at `url` (`http://127.0.0.1:8080`, a trailing `/` is dropped).
    pub fn new(url: &str, token: Option<String>) -> Client {
        Client {
            base: url.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            agent: agent(ureq::tls::TlsConfig::default()),
        }
    }

    /// The same client trusting only the CA certificates in `pem` for https:// (a private CA),
    /// in place of the public roots.
    pub fn trusting(mut self, pem: &[u8]) -> Result<Client, RegistryError> {
        let certs = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RegistryError::Invalid(format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(RegistryError::Invalid(
                "no certificate in it (give the CA's PEM file)".into(),
            ));
        }
        self.agent = agent(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
                .build(),
        );
        Ok(self)
    }

    /// The server's URL without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, url: &str, e: ureq::Error) -> RegistryError {
        RegistryError::Io(format!(
            "calling {url}: {e} (is `kiln up` or `kiln serve` running there?)"
        ))
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// One request with a JSON body (or none).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, RegistryError> {
        let url = self.url(path);
        let auth = self.auth();
        let answer = match method {
            "GET" | "HEAD" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.head(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = match method {
                    "PUT" => self.agent.put(&url),
                    "DELETE" => self.agent.delete(&url).force_send_body(),
                    _ => self.agent.post(&url),
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(b) => r.send_json(b),
                    None => r.send_empty(),
                }
            }
        };
        answer.map_err(|e| self.unreachable(&url, e))
    }

    /// An error answer as an error: its status and what its body says.
    fn refused(mut answer: Answer) -> Result<Answer, RegistryError> {
        let status = answer.status();
        if status.is_success() {
            return Ok(answer);
        }
        let text = answer.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(RegistryError::Remote {
            status: status.as_u16(),
            status_line: status.to_string(),
            message,
        })
    }

    fn read<T: DeserializeOwned>(path: &str, answer: Answer) -> Result<T, RegistryError> {
        let mut answer = Client::refused(answer)?;
        let text = answer
            .body_mut()
            .read_to_string()
            .map_err(|e| RegistryError::Io(format!("reading the answer to {path}: {e}")))?;
        serde_json::from_str(&text).map_err(|e| {
            RegistryError::Invalid(format!(
                "the answer to {path} is not what this kiln reads ({e}); are client and server \
                 the same version?"
            ))
        })
    }

    /// `GET path`, its answer read as `T`.
    /// The models changed since `after` (this server's run and change number), waiting up to
    /// `wait_s` seconds for one (`GET /api/changes`).
    pub fn changes(
        &self,
        after: Option<(u64, u64)>,
        wait_s: u64,
    ) -> Result<kiln_core::wire::models::Changes, RegistryError> {
        let query = match after {
            Some((epoch, seq)) => format!("?epoch={epoch}&after={seq}&wait={wait_s}"),
            None => format!("?wait={wait_s}"),
        };
        self.get(&format!("/api/changes{query}"))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RegistryError> {
        Client::read(path, self.request("GET", path, None)?)
    }

    /// `method path` with `body` as JSON (none: no body), its answer read as `T`.
    pub fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, RegistryError> {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| RegistryError::Invalid(format!("writing the request to {path}: {e}")))?;
        Client::read(path, self.request(method, path, body.as_ref())?)
    }

    /// A `GET` whose answer is text (logs), with the answer's headers.
    pub fn text(&self, path: &str) -> Result<(String, ureq::http::HeaderMap), RegistryError> {
        let mut answer = Client::refused(self.request("GET", path, None)?)?;
        let headers = answer.headers().clone();
        let text = answer
            .body_mut()
            .read_to_string()
            .map_err(|e| RegistryError::Io(format!("reading the answer to {path}: {e}")))?;
        Ok((text, headers))
    }

    /// Scores rows (JSON objects) with a served model through the TF Serving API: `NAME` as
    /// served, `NAME@ALIAS` or `NAME:VERSION` that one; one prediction per row.
    pub fn predict(
        &self,
        model: &str,
        rows: Vec<serde_json::Value>,
    ) -> Result<Vec<serde_json::Value>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Predictions {
            predictions: Vec<serde_json::Value>,
        }
        let path = match (model.split_once('@'), model.split_once(':')) {
            (Some((n, a)), _) => {
                format!("/v1/models/{}/labels/{}:predict", url_part(n), url_part(a))
            }
            (None, Some((n, v))) => {
                format!(
                    "/v1/models/{}/versions/{}:predict",
                    url_part(n),
                    url_part(v)
                )
            }
            (None, None) => format!("/v1/models/{}:predict", url_part(model)),
        };
        let body = serde_json::json!({ "instances": rows });
        let answer: Predictions = self.send("POST", &path, Some(&body))?;
        Ok(answer.predictions)
    }

    /// An artifact object's bytes, checked against its digest.
    pub fn object(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let path = format!("/api/artifacts/{}", url_part(digest));
        let mut answer = Client::refused(self.request("GET", &path, None)?)?;
        let bytes = answer
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(|e| RegistryError::Io(format!("reading {path}: {e}")))?;
        artifacts::verified(digest, bytes, &self.url(&path))
    }

    /// Uploads one object unless the server holds it already.
    fn put_object(&self, digest: &str, source: &UploadSource) -> Result<(), RegistryError> {
        let path = format!("/api/artifacts/{}", url_part(digest));
        let held = self.request("HEAD", &path, None)?;
        if held.status().is_success() {
            return Ok(());
        }
        let url = self.url(&path);
        let mut r = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream");
        if let Some(a) = self.auth() {
            r = r.header("Authorization", a);
        }
        let answer = match source {
            UploadSource::File(p) => {
                let file = std::fs::File::open(p)
                    .map_err(|e| RegistryError::Io(format!("{}: {e}", p.display())))?;
                r.send(&file)
            }
            UploadSource::Bytes(b) => r.send(&b[..]),
        }
        .map_err(|e| self.unreachable(&url, e))?;
        Client::refused(answer).map(|_| ())
    }
}

fn run_path(id: u64, rest: &str) -> String {
    format!("/api/runs/{}{rest}", run_id_text(id))
}

fn model_path(model: &str, rest: &str) -> String {
    format!("/api/models/{}{rest}", url_part(model))
}

impl Backend for Client {
    fn describe(&self) -> String {
        format!("server {}", self.base)
    }

    fn experiments(&self) -> Result<ExperimentList, RegistryError> {
        self.get("/api/experiments")
    }

    fn create_experiment(&self, name: &str) -> Result<Experiment, RegistryError> {
        let body = CreateExperiment {
            name: name.to_string(),
        };
        self.send("POST", "/api/experiments", Some(&body))
    }

    fn rename_experiment(&self, old: &str, new: &str) -> Result<Experiment, RegistryError> {
        let body = RenameExperiment {
            name: new.to_string(),
        };
        let path = format!("/api/experiments/{}/rename", url_part(old));
        self.send("POST", &path, Some(&body))
    }

    fn delete_experiment(&self, name: &str, force: bool) -> Result<usize, RegistryError> {
        let body = Delete { force, by: None };
        let path = format!("/api/experiments/{}", url_part(name));
        let d: Deleted = self.send("DELETE", &path, Some(&body))?;
        Ok(d.with)
    }

    fn runs(&self, query: &RunQuery) -> Result<RunPage, RegistryError> {
        self.get(&format!("/api/runs?{}", query.to_query_string()))
    }

    fn run(&self, id: u64) -> Result<RunDetail, RegistryError> {
        self.get(&run_path(id, ""))
    }

    fn create_run(&self, new: NewRun) -> Result<Run, RegistryError> {
        let r: RunText = self.send("POST", "/api/runs", Some(&CreateRun::of(&new)))?;
        Ok(r.0)
    }

    fn log_params(&self, id: u64, params: &BTreeMap<String, String>) -> Result<(), RegistryError> {
        let body = LogToRun {
            params: params.clone(),
            ..LogToRun::default()
        };
        self.send::<Logged>("POST", &run_path(id, "/log"), Some(&body))
            .map(|_| ())
    }

    fn set_tags(&self, id: u64, tags: &BTreeMap<String, String>) -> Result<(), RegistryError> {
        let body = LogToRun {
            tags: tags.clone(),
            ..LogToRun::default()
        };
        self.send::<Logged>("POST", &run_path(id, "/log"), Some(&body))
            .map(|_| ())
    }

    fn log_metrics(&self, id: u64, points: &[(&str, i64, f64)]) -> Result<(), RegistryError> {
        let body = LogToRun {
            metrics: points
                .iter()
                .map(|(key, step, value)| MetricValue {
                    key: key.to_string(),
                    value: *value,
                    step: *step,
                })
                .collect(),
            ..LogToRun::default()
        };
        self.send::<Logged>("POST", &run_path(id, "/log"), Some(&body))
            .map(|_| ())
    }

    fn log_artifact(&self, id: u64, name: &str, path: &Path) -> Result<ArtifactRef, RegistryError> {
        let upload = artifacts::plan_upload(path)?;
        for object in &upload.objects {
            self.put_object(&object.digest, &object.source)?;
        }
        let body = AttachArtifact {
            name: name.to_string(),
            digest: upload.digest,
            kind: if upload.directory {
                ArtifactKind::Directory
            } else {
                ArtifactKind::File
            },
        };
        self.send("POST", &run_path(id, "/artifacts"), Some(&body))
    }

    fn end_run(&self, id: u64, status: RunStatus) -> Result<Run, RegistryError> {
        let r: RunText = self.send("POST", &run_path(id, "/end"), Some(&EndRun { status }))?;
        Ok(r.0)
    }

    fn delete_run(&self, id: u64) -> Result<(), RegistryError> {
        self.send::<Deleted>("DELETE", &run_path(id, ""), None::<&()>)
            .map(|_| ())
    }

    fn models(&self) -> Result<ModelList, RegistryError> {
        self.get("/api/models")
    }

    fn model(&self, name: &str) -> Result<ModelDetail, RegistryError> {
        self.get(&model_path(name, ""))
    }

    fn register_version(
        &self,
        model: &str,
        run: u64,
        artifact: &str,
        description: &str,
        signature: Option<serde_json::Value>,
    ) -> Result<ModelVersion, RegistryError> {
        let body = RegisterVersion {
            run: run_id_text(run),
            artifact: artifact.to_string(),
            description: description.to_string(),
            signature,
        };
        self.send("POST", &model_path(model, "/versions"), Some(&body))
    }

    fn resolve(&self, model: &str, which: &str) -> Result<ModelVersion, RegistryError> {
        self.get(&model_path(
            model,
            &format!("/versions/{}", url_part(which)),
        ))
    }

    fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u32,
        change: &AliasMove,
    ) -> Result<AliasEvent, RegistryError> {
        let body = SetAlias {
            version,
            expect: Expected::of(change.expect),
            reason: change.reason.clone(),
            by: Some(change.by.clone()),
        };
        let path = model_path(model, &format!("/aliases/{}", url_part(alias)));
        let answer: AliasChanged = self.send("PUT", &path, Some(&body))?;
        Ok(answer.event)
    }

    fn delete_alias(
        &self,
        model: &str,
        alias: &str,
        change: &AliasMove,
    ) -> Result<AliasEvent, RegistryError> {
        let body = DeleteAlias {
            expect: Expected::of(change.expect),
            reason: change.reason.clone(),
            by: Some(change.by.clone()),
        };
        let path = model_path(model, &format!("/aliases/{}", url_part(alias)));
        let answer: AliasChanged = self.send("DELETE", &path, Some(&body))?;
        Ok(answer.event)
    }

    fn history(&self, model: &str) -> Result<Vec<AliasEvent>, RegistryError> {
        let h: History = self.get(&model_path(model, "/history"))?;
        Ok(h.events)
    }

    fn delete_model(&self, model: &str, force: bool, by: &str) -> Result<usize, RegistryError> {
        let body = Delete {
            force,
            by: Some(by.to_string()),
        };
        let d: Deleted = self.send("DELETE", &model_path(model, ""), Some(&body))?;
        Ok(d.with)
    }

    fn delete_version(
        &self,
        model: &str,
        version: u32,
        force: bool,
        by: &str,
    ) -> Result<(), RegistryError> {
        let body = Delete {
            force,
            by: Some(by.to_string()),
        };
        let path = model_path(model, &format!("/versions/{version}"));
        self.send::<Deleted>("DELETE", &path, Some(&body))
            .map(|_| ())
    }

    fn export_artifact(&self, a: &ArtifactRef, dest: &Path) -> Result<(), RegistryError> {
        artifacts::export_with(
            &|digest| self.object(digest),
            &a.digest,
            a.kind == ArtifactKind::Directory,
            dest,
        )
    }

    fn set_deployment(
        &self,
        deployment: Deployment,
        by: &str,
    ) -> Result<Deployment, RegistryError> {
        let body = SetDeployment {
            routes: deployment.routes,
            shadow: deployment.shadow,
            batching: deployment.batching,
            by: Some(by.to_string()),
        };
        let path = model_path(&deployment.model, "/deployment");
        let answer: DeploymentChanged = self.send("PUT", &path, Some(&body))?;
        Ok(answer.deployment)
    }

    fn reset_deployment(&self, model: &str) -> Result<Deployment, RegistryError> {
        let path = model_path(model, "/deployment");
        let answer: DeploymentChanged = self.send("DELETE", &path, None::<&()>)?;
        Ok(answer.deployment)
    }
}
