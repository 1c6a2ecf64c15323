//! Authentication: where the session token comes from, how it is verified against the
//! issuer's keys, and the [`Identity`] it yields.

pub mod identity;
pub mod jwks;
pub mod token;
pub mod verify;

pub use identity::Identity;
pub use token::{extract_token, TokenSource};
pub use verify::{MissingAzp, Verifier, VerifierSettings, VerifyError};
