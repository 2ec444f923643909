//! The agent's side of the agent API: register, fetch assignments, report progress.
//!
//! Requests are signed with the gateway secret ([`super::sign::sign_agent_request`]). Failures
//! come back as [`CloudError`], so "the control endpoint said no" (a 4xx with its code) and "it
//! could not be reached" stay apart; the runner keeps syncing either way.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{
    ASSIGNMENTS_PATH, AgentError, AssignmentsResponse, PROGRESS_PATH, ProgressRequest,
    ProgressResponse, REGISTER_PATH, RegisterRequest, RegisterResponse,
};
use super::sign::sign_agent_request;
use crate::cloud::CloudError;
use crate::cloud::http::{build_agent, read_capped};
use crate::config::ControlSettings;

/// Answers from the control endpoint are small; anything bigger is refused.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

pub struct ControlClient {
    settings: ControlSettings,
    agent: ureq::Agent,
}

impl ControlClient {
    pub fn new(settings: &ControlSettings) -> ControlClient {
        ControlClient {
            settings: settings.clone(),
            agent: build_agent(),
        }
    }

    pub fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, CloudError> {
        self.call("POST", REGISTER_PATH, Some(req))
    }

    pub fn assignments(&self) -> Result<AssignmentsResponse, CloudError> {
        match self.assignments_since(None)? {
            Polled::Changed(a, _) => Ok(a),
            Polled::Unchanged => Err(CloudError::Transport(
                "control endpoint answered 304 to an unconditional poll".into(),
            )),
        }
    }

    /// A poll that sends back the ETag of the assignments held (`If-None-Match`), so an
    /// unchanged answer is a bodiless 304.
    pub fn assignments_since(&self, etag: Option<&str>) -> Result<Polled, CloudError> {
        let extra: Vec<(&str, &str)> = etag.map(|e| ("if-none-match", e)).into_iter().collect();
        let (status, headers, bytes) =
            self.exchange("GET", ASSIGNMENTS_PATH, Vec::new(), &extra)?;
        if status == 304 {
            return Ok(Polled::Unchanged);
        }
        let etag = headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Polled::Changed(decode(status, &bytes)?, etag))
    }

    pub fn progress(&self, req: &ProgressRequest) -> Result<ProgressResponse, CloudError> {
        self.call("POST", PROGRESS_PATH, Some(req))
    }

    fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, CloudError> {
        let body = match body {
            Some(b) => serde_json::to_vec(b)
                .map_err(|e| CloudError::Transport(format!("encoding the request: {e}")))?,
            None => Vec::new(),
        };
        let (status, _, bytes) = self.exchange(method, path, body, &[])?;
        decode(status, &bytes)
    }

    /// Signs and sends one request; returns status, headers and the (capped) body.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        extra_headers: &[(&str, &str)],
    ) -> Result<(u16, ureq::http::HeaderMap, Vec<u8>), CloudError> {
        let headers = sign_agent_request(
            method,
            path,
            &self.settings.gateway_id,
            &self.settings.gateway_secret,
            crate::time::unix_now(),
            &nonce(),
            &body,
        );
        let url = format!("{}{path}", self.settings.endpoint);
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        for (k, v) in &headers {
            builder = builder.header(*k, v);
        }
        for (k, v) in extra_headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(body)
            .map_err(|e| CloudError::Transport(format!("building the request: {e}")))?;
        let response = self.agent.run(request).map_err(|e| {
            CloudError::Transport(format!("control endpoint {}: {e}", self.settings.endpoint))
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = read_capped(response.into_body(), MAX_ANSWER_BYTES, "control answer")?;
        Ok((status, headers, bytes))
    }
}

/// What an assignments poll brought.
pub enum Polled {
    /// New assignments, with their ETag when the endpoint sent one.
    Changed(AssignmentsResponse, Option<String>),
    /// Unchanged since the ETag sent (304).
    Unchanged,
}

/// A 2xx answer's JSON, or the endpoint's error.
fn decode<R: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<R, CloudError> {
    if !(200..300).contains(&status) {
        return Err(match serde_json::from_slice::<AgentError>(bytes) {
            Ok(e) => CloudError::Service {
                status,
                code: e.code,
                message: e.message,
            },
            Err(_) => CloudError::Service {
                status,
                code: String::new(),
                message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
            },
        });
    }
    serde_json::from_slice(bytes).map_err(|e| {
        CloudError::Transport(format!("control endpoint answered unreadable JSON: {e}"))
    })
}

/// 16 random bytes, hex: a nonce the server accepts once.
fn nonce() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Unreachable on Linux; a time-based nonce is still unique per request here.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
