//! Portier: an authorization sidecar on Pingora. It verifies Clerk session tokens, decides
//! every request with route policies from `policies/*.toml`, and forwards only what the policy
//! allowed, with identity headers the upstream can trust.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod assertion;
pub mod auth;
pub mod clock;
pub mod config;
pub mod decision_log;
pub mod dev;
pub mod diag;
pub mod egress;
pub mod error;
pub mod explain;
pub mod files;
pub mod guards;
pub mod head_deadline;
pub mod headers;
pub mod logging;
pub mod metrics;
pub mod nextjs;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod s3;
pub mod serve;
pub mod server;
pub mod state;

/// The reserved upstream name of the S3 bucket configured in `[s3]`.
pub const S3_UPSTREAM: &str = "s3";
