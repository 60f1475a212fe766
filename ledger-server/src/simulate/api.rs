//! The simulator's HTTP client: JSON in and out, bearer keys, and errors that name the call,
//! the status and the server's error envelope. One pooled client is shared by every terminal.

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

/// Longest one call may take (a year close forfeits every elder in one batch).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Idle keep-alive connections kept per host: one per terminal and some to spare.
const POOL_IDLE_MAX: usize = 256;

#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

/// A response: status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The binding error code of an error envelope, or "".
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    pub fn new(addr: std::net::SocketAddr) -> anyhow::Result<Api> {
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_MAX)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            client,
            base: format!("http://{addr}"),
        })
    }

    /// Any call; the body is parsed as JSON (a non-JSON body becomes a JSON string).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            request = request.json(b);
        }
        if let Some(k) = idempotency_key {
            request = request.header("Idempotency-Key", k);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: reading the body"))?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply { status, body })
    }

    /// A call that must answer `status`; returns the body.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
        status: u16,
    ) -> anyhow::Result<Value> {
        let reply = self.call(method.clone(), path, key, body, None).await?;
        expect_status(&reply, status, &method, path)?;
        Ok(reply.body)
    }

    pub async fn post(
        &self,
        path: &str,
        key: &str,
        body: &Value,
        status: u16,
    ) -> anyhow::Result<Value> {
        self.expect(Method::POST, path, key, Some(body), status)
            .await
    }

    pub async fn put(&self, path: &str, key: &str, body: &Value) -> anyhow::Result<Value> {
        self.expect(Method::PUT, path, key, Some(body), 200).await
    }

    pub async fn get(&self, path: &str, key: &str) -> anyhow::Result<Value> {
        self.expect(Method::GET, path, key, None, 200).await
    }

    /// A GET that must answer 200; returns the body's text exactly as sent.
    pub async fn get_text(&self, path: &str, key: &str) -> anyhow::Result<String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("GET {path}: reading the body"))?;
        anyhow::ensure!(
            status == 200,
            "GET {path}: expected 200, got {status} {text}"
        );
        Ok(text)
    }
}

/// An error naming the call unless the reply has `status`.
pub fn expect_status(
    reply: &Reply,
    status: u16,
    method: &Method,
    path: &str,
) -> anyhow::Result<()> {
    if reply.status == status {
        Ok(())
    } else {
        anyhow::bail!(
            "{method} {path}: expected {status}, got {} {}",
            reply.status,
            reply.body
        )
    }
}
