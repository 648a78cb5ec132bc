//! Where registry, training and pipeline commands go: the `KILN_HOME` this process opens, or a
//! running `kiln up` (`--server`, `KILN_SERVER`) that owns one. Both are a
//! [`kiln_core::backend::Backend`]; the HTTP calls themselves are `kiln_server::client`'s.

use anyhow::{Context, Result};
use clap::Args;
use kiln_core::backend::{Backend, Pipelines};
use kiln_core::registry::Registry;
use kiln_server::client::Client;

use crate::cmd::registry::Home;

/// A running `kiln up` to ask instead of opening `KILN_HOME`.
#[derive(Debug, Args, Clone, Default)]
pub struct Server {
    /// The URL of a running `kiln up` (e.g. http://127.0.0.1:8080): registry, training and
    /// pipeline commands go to it instead of opening KILN_HOME.
    #[arg(long, env = "KILN_SERVER")]
    pub server: Option<String>,
    /// Its token, for calls that change state.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an https:// server whose certificate a private CA signed: trust that CA (PEM), in
    /// place of the public roots kiln carries.
    #[arg(long, env = "KILN_SERVER_CA", value_name = "PEM")]
    pub server_ca: Option<std::path::PathBuf>,
}

impl Server {
    /// The client for `--server`, when one is given.
    pub fn client(&self) -> Result<Option<Client>> {
        let Some(url) = self.server.as_deref() else {
            return Ok(None);
        };
        let client = Client::new(url, self.token.clone());
        Ok(Some(match &self.server_ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading --server-ca {}", path.display()))?;
                client
                    .trusting(&pem)
                    .with_context(|| format!("--server-ca {}", path.display()))?
            }
            None => client,
        }))
    }

    /// The client for `--server`, or an error that says a command needs one.
    pub fn required(&self, what: &str) -> Result<Client> {
        self.client()?
            .ok_or_else(|| anyhow::anyhow!("{what} needs --server URL (or KILN_SERVER)"))
    }

    /// The pipelines wherever they run: in that server, or in this process over `KILN_HOME`.
    pub fn pipelines(&self, home: &Home) -> Result<Box<dyn Pipelines>> {
        Ok(match self.client()? {
            Some(c) => Box::new(c),
            None => Box::new(crate::components::local(
                home.open_registry()?,
                crate::cmd::serve::async_runtime("kiln-pipeline")?,
            )),
        })
    }

    /// The registry wherever it is: the server's when `--server` is given, else `KILN_HOME`.
    pub fn backend(&self, home: &Home) -> Result<Box<dyn Backend>> {
        Ok(match self.client()? {
            Some(c) => Box::new(c),
            None => Box::new(Registry::open(&home.dir)?),
        })
    }
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
    Ok(server.required(path)?.send(method, path, body)?)
}

pub use kiln_server::client::url_part;
