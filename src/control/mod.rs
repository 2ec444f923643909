//! The control endpoint (`sgw-control`).

pub mod auth;
pub mod error;
pub mod http;
pub mod params;
pub mod provision;
pub mod store;
