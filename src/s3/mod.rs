//! The S3 front door's building blocks: object keys and their owners ([`key`]), SigV4 signing
//! and presigning against the configured bucket ([`sign`]), and the embedded S3-compatible
//! store for `portier dev` and tests ([`store`]). The proxy routes that use them live
//! elsewhere; this module performs no I/O except the embedded store.

pub mod client;
pub mod credentials;
pub mod front;
pub mod key;
pub mod sign;
mod signer;
pub mod store;

#[cfg(test)]
mod tests;

pub use credentials::{AssumeRole, CredentialCache, CredentialSource, CredentialSpec};
pub use key::{
    canonical_key, encode_key_for_path, encode_query_component, is_valid_user_id, kind_folder,
    owned_by, KeyError, MAX_KEY_BYTES,
};
pub use sign::{
    is_signed_header, presign, presign_with, query_string, sign_headers, Addressing, Credentials,
    EnvNames, Payload, PresignExtras, S3Target, SignError, MAX_PRESIGN_EXPIRY,
};
pub use store::{generate_keys, start, start_with_keys, EmbeddedStore, KeyRing, StoreError};

/// The bucket behind the reserved upstream `s3`, as checked from `config.toml`'s `[s3]`.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    pub target: S3Target,
    /// Where the AWS credentials come from.
    pub credentials: CredentialSpec,
    pub presign_default: std::time::Duration,
    pub presign_max: std::time::Duration,
    pub presign_stable: std::time::Duration,
    /// Where file API uploads are spooled when the key comes after the file.
    pub spool_dir: std::path::PathBuf,
    pub connect_timeout: std::time::Duration,
    pub read_timeout: std::time::Duration,
}
