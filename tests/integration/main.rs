//! Integration tests: Portier as a real Pingora server in front of real upstream servers,
//! with a real JWKS server and real RS256 keys. One binary, so the heavy link happens once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth;
mod cli;
mod common;
mod credentials;
mod egress;
mod files;
mod flask;
mod guards;
mod jwks;
mod lifecycle;
mod nextjs;
mod ops;
mod pages;
mod paths;
mod proxying;
mod s3;
mod security;
mod shipped;
mod structure;
