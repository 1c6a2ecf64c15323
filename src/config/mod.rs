//! `config.toml` in three layers: the raw serde schema as written ([`raw`]: unknown keys are
//! errors, values keep their spans), the checks that turn it into the checked [`Config`]
//! ([`check`], one function per section), and the checked types the server runs on
//! ([`types`]). Every problem is reported at once, as `file:line:col: key: message`. Secrets
//! are never in this file: it names the environment variables or files that hold them.

mod check;
pub mod egress_rules;
pub mod lint;
mod raw;
pub mod types;

use std::path::Path;

pub use egress_rules::{KeyGlob, Permission, Rule};
pub use types::*;

use crate::diag::{from_toml_error, Diagnostic, Diagnostics};

impl Config {
    pub fn load(file: &Path) -> Result<Config, Diagnostics> {
        let src = std::fs::read_to_string(file).map_err(|e| {
            Diagnostics(vec![Diagnostic::file(
                file,
                "file",
                format!("cannot read: {e}"),
            )])
        })?;
        Self::parse(file, &src)
    }

    /// Parses config text; `file` names it in diagnostics and anchors relative paths.
    pub fn parse(file: &Path, src: &str) -> Result<Config, Diagnostics> {
        let raw: raw::RawConfig =
            toml::from_str(src).map_err(|e| Diagnostics(vec![from_toml_error(file, src, &e)]))?;
        check::Checker {
            file,
            src,
            diags: Diagnostics::default(),
        }
        .check(raw)
    }

    /// Upstream names policies may use: the configured ones, and `s3` when `[s3]` is set.
    pub fn upstream_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
        if self.s3.is_some() {
            names.push(crate::S3_UPSTREAM);
        }
        names
    }

    pub fn webhook_names(&self) -> Vec<&str> {
        self.webhooks.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests;
