//! The cache disk: where share files live and how they get there safely.
//!
//! - [`paths`]: object key -> path inside the share, refusing anything that could escape it.
//! - [`crc64`]: streaming CRC-64 (NVME for S3, XZ for OSS).
//! - [`share_dir`]: the share as the agent touches it: every path resolved beneath one
//!   descriptor of the root, never through a symlink (stat, read, remove, move aside, fsync).
//! - [`publish`]: staged downloads that become visible only complete, verified and durable.
//! - [`journal`]: length+CRC framed postcard records with a format-version header.
//! - [`state`]: the per-share record of what the agent published (sorted, bounded memory).
//! - [`seen`]: two-way shares: the local side of each base (size, mtime, inode, CRC).

pub mod crc64;
pub mod journal;
pub mod paths;
pub mod publish;
pub mod seen;
pub mod share_dir;
pub mod state;
