//! Request guards that sit beside token verification: webhook signatures for unauthenticated
//! machine callers and per-key rate limits. Both are pure logic; the proxy decides when to run
//! them and maps their errors to reason codes.

pub mod ratelimit;
pub mod webhook;
