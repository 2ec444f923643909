//! The control endpoint (`sgw-control`).

pub mod auth;
pub mod error;
pub mod http;
pub mod params;
pub mod provision;
pub mod store;
pub mod protocol;
pub mod render;
pub mod service;

mod actions;
mod agent;
pub mod server;
