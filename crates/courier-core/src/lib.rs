//! Courier's pure domain: plain types and functions, no I/O.
//!
//! - [`ids`]: tenant, event, webhook and batch identifiers (parsed newtypes).
//! - [`catalog`]: the event catalog, event keys and subscription patterns.
//! - [`event`]: events as upstream sends them and as the pipeline carries them.
//! - [`envelope`]: the batch envelope a subscriber receives and the delivery job.
//! - [`batch_codec`]: how the batch accumulator stores waiting events and cut
//!   batches (structured, length-framed; read by the Redis adapter).
//! - [`webhook`]: webhook fields, validation and the "does it want this event" decision.
//! - [`signing`]: Standard Webhooks and hmac-sha256-hex signatures, secrets.
//! - [`keyring`]: encryption of secrets at rest under rotating keys.
//! - [`target`]: which network addresses deliveries may go to (SSRF protection).
//! - [`delivery`]: classification of attempts and the delivery log's status.
//! - [`retry`]: retry policies and the delay ladder.
//! - [`tenant`]: tenants, API keys and scopes.
//! - [`audit`]: audit log entries of configuration changes.
//! - [`errors`]: per-field validation problems.

pub mod audit;
pub mod batch_codec;
pub mod catalog;
pub mod delivery;
pub mod envelope;
pub mod errors;
pub mod event;
pub mod ids;
pub mod keyring;
pub mod retry;
pub mod signing;
pub mod target;
pub mod tenant;
pub mod webhook;
