//! sgw-agent: an edge storage-gateway agent that mirrors cloud buckets into local shares.
//!
//! # Layout
//!
//! - [`model`]: plain data shared by every layer (object metadata, local records, events).
//! - [`engine`]: the sans-IO sync core, `(state, input) -> decision`; unit- and property-tested.
//! - [`cache`]: the cache disk: safe key -> path mapping, verified atomic publish, the state
//!   journal.
//! - [`cloud`]: wire protocols behind small traits (`ObjectStore`, `EventQueue`): S3, SQS,
//!   event formats, SigV4, retries.
//! - [`access`]: who the agent runs as; the rule for secret files and the write check of share
//!   and state directories (a directory the service cannot write is a configuration error).
//! - [`config`]: the TOML configuration and credentials, with errors that name file and key.
//! - [`shell`]: the I/O shell that drives one share (full sync, then the event loop), a folder
//!   of small rooms: the driver, the full sync, queue batches, disk effects, the download
//!   pool, crash recovery, the spooled listing; for two-way shares the upload side (each key
//!   reconciled by [`engine::reconcile`], single and multipart uploads, conflict copies) and
//!   the inotify watcher.
//! - [`format`]: small formatting helpers (sizes, hex); [`time`]: UTC time (Unix seconds,
//!   the civil calendar, RFC 3339 text).
//! - [`status`]: per-share status files written by the agent and read by `sgw-agent status`.
//! - [`runner`]: the `sync` and `run` commands: one thread per share, graceful stop.
//! - [`daemon`]: signals and graceful shutdown; logging set-up for terminals and journald.
//! - [`control_client`]: the agent's side of the agent<->control protocol (types, signing,
//!   client). The control endpoint itself is the `sgw-control` crate in `control/`, a member
//!   of this workspace that depends on this crate; the agent links no async runtime, HTTP
//!   server or database.
//!
//! The binaries in `src/bin/` only parse arguments and call into this library.

#![forbid(unsafe_code)]

pub mod access;
pub mod cache;
pub mod cloud;
pub mod config;
pub mod control_client;
pub mod daemon;
pub mod engine;
pub mod format;
pub mod model;
pub mod runner;
pub mod shell;
pub mod status;
pub mod time;
