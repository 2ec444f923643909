//! `sgw-control`, the control endpoint: the Cloud Storage Gateway express-sync API for
//! operators, the provisioning of the messaging behind it, and the API agents poll.
//!
//! # Operators: the API (`POST /`)
//!
//! Served exactly as the official SDKs call it: `alibabacloud-sgw20180511` (tea-openapi,
//! `Authorization: ACS3-HMAC-SHA256 …`, action in `x-acs-action`) and
//! `aliyun-python-sdk-sgw` (classic RPC, `Action=…&Signature=…` HMAC-SHA1), both version
//! `2018-05-11`; see [`auth`]. Timestamps must be within ±15 minutes and each nonce is accepted
//! once (nonces are kept in the database, so a restart does not reopen the window).
//! Actions ([`actions`](self)): `CreateExpressSync`, `AddSharesToExpressSync`,
//! `DescribeExpressSyncShares` (the seeds, with their documented errors), and
//! `DescribeExpressSyncs`, `DeleteExpressSync`, `RemoveSharesFromExpressSync`,
//! `ValidateExpressSyncConfig`, `DescribeSharesBucketInfoForExpressSync`, `DescribeTasks`.
//! Answers are JSON, or XML with `Format=XML` ([`render`]). Every action validates everything
//! before it changes anything; each change is one SQLite transaction ([`store`]). Actions run
//! synchronously, so the `TaskId` they return is already `task.state.completed` (or
//! `task.state.failed`) in `DescribeTasks`.
//!
//! API keys: the bootstrap key from `SGW_ACCESS_KEY_ID`/`SGW_ACCESS_KEY_SECRET` (installed at
//! start-up), or `sgw-control key add [ID]`.
//!
//! # Operators: OMS sync tasks (`/v2/{project_id}/sync-tasks`, [`oms`])
//!
//! The Huawei Cloud OMS v2 synchronization-task API (seed 003), as the official
//! `huaweicloudsdkoms` calls it (`SDK-HMAC-SHA256` with the same API keys; the path's
//! `project_id` is the tenant, five tasks each), and the tasks themselves: bucket → bucket runs
//! of the agent's reconciliation (`sgw_agent::engine::plan::FullSyncMerge`) on threads, full
//! pass then re-list and events, CRC-64/NVME checked end to end, resumed after a restart.
//! Buckets are found through `[[oms.endpoints]]` ([`oms::endpoints`]).
//!
//! # Provisioning ([`provision`])
//!
//! Per group: one topic `sgw-express-sync-topic-<ExpressSyncId>` and one bucket notification
//! rule `sgw-express-sync-<ExpressSyncId>` (`s3:ObjectCreated:*`, `s3:ObjectRemoved:*`, prefix
//! filter = `BucketPrefix`). Per share: one queue `sgw-express-sync-queue-<GatewayId>-<n>`
//! subscribed to the topic with raw delivery (the queue receives plain S3 event JSON). Another
//! rule on the bucket whose events and prefix overlap is refused with
//! `ExpressSyncNotificationEventConflict`; other rules are kept byte for byte. Removing a
//! share deletes its subscription and queue; deleting a group deletes them all, the rule and the
//! topic. Today on the AWS protocol (S3 + SNS + SQS, three hosts on AWS: by default
//! `s3.`/`sns.`/`sqs.<region>.amazonaws.com`, each overridable in `[cloud]`, or one `endpoint`
//! for a moto-like peer); the [`provision::Provisioner`] trait is the seam for OSS + MNS. The
//! wire protocols themselves live in `sgw_agent::cloud` (`sns`, `sqs_admin`, `notification`);
//! [`provision`] is only the choreography: policies, conflict checks, cleanup on failure.
//!
//! # Agents ([`sgw_agent::control_client::protocol`])
//!
//! An operator creates a gateway with `sgw-control gateway add NAME [--region R]`, which prints
//! `gateway_id` and `gateway_secret` (shown once). The agent signs each request with that
//! secret (`sgw_agent::control_client::sign`, which this crate verifies with):
//!
//! ```text
//! x-sgw-gateway-id: gw-…
//! x-sgw-date: 2026-11-21T05:22:09Z            (UTC, within ±15 min of the server)
//! x-sgw-nonce: <unique per request, ≤128 printable ASCII>
//! authorization: SGW-HMAC-SHA256 Signature=<hex HMAC-SHA256(secret, string_to_sign)>
//! string_to_sign = "SGW-HMAC-SHA256\n" METHOD "\n" PATH "\n" GATEWAY_ID "\n" DATE "\n"
//!                  NONCE "\n" hex(SHA-256(body))
//! ```
//!
//! It then `POST`s [`REGISTER_PATH`](sgw_agent::control_client::protocol::REGISTER_PATH) with its shares, polls
//! [`ASSIGNMENTS_PATH`](sgw_agent::control_client::protocol::ASSIGNMENTS_PATH) every `poll_interval_secs` (a share that appears there starts
//! its full sync from the queue given; one that disappears stops), and `POST`s
//! [`PROGRESS_PATH`](sgw_agent::control_client::protocol::PROGRESS_PATH) with each share's `SyncProgress` and `ExpressSyncState`, which
//! `DescribeExpressSyncShares` shows.
//!
//! A registered share may name its bucket (`bucket_region` + `bucket_name`, optional
//! `bucket_prefix`): it can then only join a group on that bucket (`ConflictExpressSyncConfig`
//! otherwise). Or it may name none ("unbound": the agent is configured with only the control
//! endpoint, its gateway id/secret and its share directories): `IsExternal=true` lists it as
//! addable to every group, `AddSharesToExpressSync` binds it to the group's bucket, region and
//! prefix, which its assignment carries, and leaving the group (`RemoveSharesFromExpressSync`,
//! `DeleteExpressSync`) unbinds it again. The binding lives in the membership, not in the
//! share's registration, so an agent re-registering its unbound shares never undoes it.
//!
//! # Running
//!
//! `sgw-control -c control.toml` (see `--help`), with `--listen`, `--data-dir`,
//! `--cloud-endpoint`, `--cloud-region`, `--max-connections`, `--max-connections-per-peer`
//! overriding the file and `AWS_*` credentials for provisioning. It serves plain HTTP/1.1
//! ([`http_server`]: hyper on tokio, keep-alive, deadlines for heads and bodies, connections bounded
//! in total and per peer address, handlers on a bounded blocking pool): bind it to loopback or
//! put a TLS-terminating proxy in front. SIGTERM/SIGINT stop accepting and let the requests in
//! progress finish (within `shutdown_timeout_secs`).
//!
//! # Layout
//!
//! This crate is the workspace member `control/` (package `sgw-control`); the root package is
//! the agent, which stays small and blocking: it links no tokio, hyper or SQLite. This crate
//! depends on the agent's library for what both sides share, so nothing is defined twice:
//! `sgw_agent::control_client::{protocol, sign}` (the agent API's JSON types and
//! `SGW-HMAC-SHA256` signature) and `sgw_agent::cloud` (the S3/SNS/SQS clients and SigV4 that
//! provisioning uses). A third "shared types" crate would hold just those two small modules
//! and add a crate boundary without removing a dependency, so there is none.
//!
//! - [`http_server`]: the HTTP server and its limits; [`Request`](http_server::Request) /
//!   [`Response`](http_server::Response) are plain types, so everything below is sans-hyper.
//! - [`server`]: `control.toml` + command-line overrides, start-up.
//! - [`router`]: routing a request to the API, the agent endpoints, the OMS API or `/health`.
//! - [`auth`]: both Alibaba signature schemes and the agents' signatures, replay protection.
//! - [`params`], [`render`], [`error`]: API parameters, JSON/XML answers, the documented errors.
//! - `actions`, `agent_api`: the express-sync actions and the agent endpoints.
//! - [`provision`]: topics, queues, subscriptions, bucket notification rules.
//! - [`metrics`]: `/metrics` (Prometheus text) and the provisioning-failure counter.
//! - [`oms`]: the Huawei OMS sync-task API under `/v2/{project_id}/sync-tasks` (its
//!   `SDK-HMAC-SHA256` signature, validation, the `[[oms.endpoints]]` resolution) and the tasks
//!   themselves: bucket → bucket runs of the agent's reconciliation engine on threads.
//! - [`store`]: SQLite (one transaction per change).
//! - `main.rs`: the `sgw-control` binary (arguments, logging, exit codes).

#![forbid(unsafe_code)]

pub mod auth;
pub mod error;
pub mod http_server;
pub mod metrics;
pub mod oms;
pub mod params;
pub mod provision;
pub mod render;
pub mod router;
pub mod server;
pub mod store;

mod actions;
mod agent_api;
