//! Talking to a running `kiln up` (or `kiln serve`), which owns its `KILN_HOME`: the `--server`
//! and `--token` options and the HTTP calls behind them.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

/// A running `kiln up` to ask instead of opening `KILN_HOME`.
#[derive(Debug, Args, Clone)]
pub struct Server {
    /// The URL of a running `kiln up` (e.g. http://127.0.0.1:8080).
    #[arg(long, env = "KILN_SERVER")]
    pub server: Option<String>,
    /// Its token, for calls that change state.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// An HTTP client that hands error statuses back as answers (their body says why).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// The server's URL without a trailing `/`.
pub fn base(server: &Server) -> &str {
    server
        .server
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/')
}

/// One request with the token, if any, as a bearer token.
fn send(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<ureq::http::Response<ureq::Body>> {
    let url = format!("{}{path}", base(server));
    let agent = agent();
    let auth = server.token.as_ref().map(|t| format!("Bearer {t}"));
    let response = match method {
        "GET" => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "PUT" => agent.put(&url),
                "DELETE" => agent.delete(&url).force_send_body(),
                _ => agent.post(&url),
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            match body {
                Some(b) => r.send_json(b),
                None => r.send_empty(),
            }
        }
    }
    .with_context(|| format!("calling {url} (is `kiln up` or `kiln serve` running there?)"))?;
    Ok(response)
}

/// Calls the API of a running `kiln up`; an error answer becomes an error.
pub fn call<T: serde::de::DeserializeOwned>(
    server: &Server,
    method: &str,
    path: &str,
) -> Result<T> {
    call_with(server, method, path, None)
}

/// [`call`] with a JSON body (`POST`, `PUT`, `DELETE`).
pub fn call_with<T: serde::de::DeserializeOwned>(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<T> {
    let mut response = send(server, method, path, body)?;
    let status = response.status();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("{status}: {message}");
    }
    serde_json::from_str(&text).with_context(|| format!("reading the answer to {path}"))
}

/// A `GET` whose answer is text (logs).
pub fn call_text(server: &Server, path: &str) -> Result<String> {
    let mut response = send(server, "GET", path, None)?;
    let status = response.status();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    Ok(text)
}

/// A path segment with the characters that URLs reserve escaped.
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
