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
//!
//! # Dependencies, and where we chose otherwise
//!
//! Small, blocking and bounded: `ureq` with `rustls` on plain threads for every HTTP call (no
//! async runtime in the agent; `tokio` and `hyper` are only in `sgw-control`); `serde` with
//! `postcard` for the state journal and `toml` for the configuration; `crc-fast` for CRC-64
//! (SIMD, the hot path of every byte), with `crc` for the journal frames' CRC-32C and as the
//! CRC-64 reference in tests; `log` as the
//! facade; `rustix` for descriptor-relative share I/O (`openat`/`renameat`/`unlinkat`
//! beneath one directory descriptor, so a symlink swapped in mid-sync is never followed);
//! `ring` for SHA-256, HMAC and randomness; `quick-xml`, `percent-encoding`, `base64`,
//! `httpdate` and `md-5` for the wire formats; `signal-hook` and `socket2` (TCP quick ACKs)
//! for the OS; `lexopt` for arguments (a few KiB against clap's hundreds, and our help text
//! is written by hand anyway, see `sgw-agent help`).
//!
//! Where the design card names a crate and we do not use it, the reason:
//!
//! - **simplelog**: not used. Under journald a line must start with its syslog priority
//!   (`<3>` … `<7>`) so `journalctl -p err` and alerting work, carry no timestamp (journald
//!   adds one) and never span two lines (a key with a newline must not forge a log line);
//!   simplelog writes its own level names and time and has no priority prefix. The one logger
//!   is [`daemon::Logger`] (about 50 lines), used by both `sgw-agent` and `sgw-control`.
//! - **heapless**: not used. The bounded queues between threads are `std::sync::mpsc`
//!   `sync_channel`s with a fixed capacity (the download pool, the listing spool's reader),
//!   which already give back-pressure without unsafe code; a queue too large for memory is
//!   spooled to disk instead (the listing, deferred deletes), so no fixed-capacity in-memory
//!   container is on a hot path.

#![forbid(unsafe_code)]

pub mod access;
pub mod cache;
pub mod check;
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
