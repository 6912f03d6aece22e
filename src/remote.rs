//! `--server URL`: asking a running collector over its HTTP port instead of reading the data
//! directory (`idtrail query` posts to `/v1/query`, `idtrail report` gets `/v1/report`). The
//! server's engine has its caches warm, the lineage graph above all.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use idtrail_query::error::error_chain;
use serde_json::Value;

/// The `--server` and `--token` flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerArgs {
    /// Ask a running collector (its HTTP address, e.g. http://127.0.0.1:4318) instead of
    /// reading the data directory; --config, --data-dir and --set are then not used.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer key for --server, one of the collector's query.auth_keys_file (prefer the
    /// environment variable: arguments show in the process list).
    #[arg(
        long,
        env = "IDTRAIL_QUERY_TOKEN",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub token: Option<String>,
}

impl ServerArgs {
    /// The collector to ask, when `--server` names one.
    pub fn remote(&self) -> anyhow::Result<Option<Remote>> {
        self.server
            .as_deref()
            .map(|server| Remote::new(server, self.token.clone()))
            .transpose()
    }
}

/// A running collector's HTTP port.
pub struct Remote {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A successful answer: its content type and body.
pub struct Answer {
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Remote {
    fn new(server: &str, token: Option<String>) -> anyhow::Result<Remote> {
        let base = server.trim().trim_end_matches('/');
        if base.starts_with("https://") {
            bail!(
                "--server {base}: this build speaks plain HTTP only (as the collector serves it); \
                 reach a remote collector through an SSH tunnel"
            );
        }
        if !base.starts_with("http://") {
            bail!("--server {base}: expected an http:// URL, e.g. http://127.0.0.1:4318");
        }
        // A URL pasted with its route still names the collector.
        let base = ["/v1/query", "/v1/report"]
            .iter()
            .find_map(|route| base.strip_suffix(route))
            .unwrap_or(base);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Remote {
            client,
            base: base.to_string(),
            token: token.filter(|t| !t.trim().is_empty()),
        })
    }

    /// The URL of `route` (`/v1/query`).
    pub fn url(&self, route: &str) -> String {
        format!("{}{route}", self.base)
    }

    /// `POST route` with a JSON body, asking for `accept`.
    pub async fn post_json(
        &self,
        route: &str,
        body: &Value,
        accept: &str,
    ) -> anyhow::Result<Answer> {
        let request = self
            .client
            .post(self.url(route))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body.to_string());
        self.send(route, request).await
    }

    /// `GET route?query`.
    pub async fn get(&self, route: &str, query: &str) -> anyhow::Result<Answer> {
        let url = format!("{}?{query}", self.url(route));
        self.send(route, self.client.get(url)).await
    }

    async fn send(&self, route: &str, request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let url = self.url(route);
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {url}: {}", error_chain(&e)))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow!("reading the answer of {url}: {}", error_chain(&e)))?
            .to_vec();
        if !status.is_success() {
            bail!("{}", remote_error(status, &body));
        }
        Ok(Answer { content_type, body })
    }
}

/// The message of a failed request: its JSON `error`, else the status and the start of the
/// body.
fn remote_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body)
        && let Some(Value::String(message)) = object.get("error")
    {
        return message.clone();
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    if text.is_empty() {
        format!("the server answered {status}")
    } else {
        format!("the server answered {status}: {text}")
    }
}
