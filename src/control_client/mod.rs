//! The agent's side of the agent <-> control protocol: the JSON types ([`protocol`]), the
//! request signature ([`sign`]) and the blocking client ([`client`], on `ureq`) the runner uses
//! to register, fetch assignments and report progress.
//!
//! The control endpoint (the `sgw-control` crate in `control/`) depends on this crate and uses
//! the very same [`protocol`] types and [`sign`] functions to parse and verify what agents
//! send, so the two sides cannot drift apart. Keeping them here, instead of in a third crate,
//! costs the agent nothing (serde, ring and ureq are agent dependencies anyway) and keeps the
//! workspace at two crates.
//!
//! # Layout
//!
//! - [`protocol`]: paths and request/answer bodies of the agent-facing endpoints.
//! - [`sign`]: `SGW-HMAC-SHA256` request signing (and the ISO 8601 dates it carries).
//! - [`client`]: [`client::ControlClient`], signed calls with capped answers.

pub mod client;
pub mod protocol;
pub mod sign;
