//! `portier explain --egress SERVICE`: how the egress listener would decide one request of a
//! service, with the same [`ops::classify`] and [`ops::authorize`] the listener runs. The
//! signature is not part of it (the explanation is for a request already signed correctly).

use http::HeaderMap;
use serde::Serialize;

use super::errors::S3Error;
use super::ops;
use crate::config::{EgressConfig, EgressService};

/// The explanation, printable as text or JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressReport {
    pub service: String,
    /// The S3 operation, when the request is one Portier knows.
    pub operation: Option<&'static str>,
    pub key: Option<String>,
    pub copy_source: Option<String>,
    pub prefix: Option<String>,
    /// The keys of a DeleteObjects body.
    pub delete_keys: Vec<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The S3 error code of a refusal (`AccessDenied`, `NotImplemented`...).
    pub error: Option<&'static str>,
    /// The rules (by index in the service's `allow` list) that each allow the request alone.
    pub allowed_by: Vec<usize>,
}

/// Why a request cannot be explained at all.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no egress service named {0:?} (services: {1})")]
    UnknownService(String, String),
}

/// Decides `method target` (path and query, path-style) for `service`.
pub fn explain(
    cfg: &EgressConfig,
    service: &str,
    method: &str,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<EgressReport, ExplainError> {
    let svc: &EgressService = cfg.services.get(service).ok_or_else(|| {
        let names: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
        ExplainError::UnknownService(service.to_owned(), names.join(", "))
    })?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut report = EgressReport {
        service: svc.name.clone(),
        operation: None,
        key: None,
        copy_source: None,
        prefix: None,
        delete_keys: Vec::new(),
        decision: "deny",
        error: None,
        allowed_by: Vec::new(),
    };
    let refuse = |mut r: EgressReport, e: S3Error| {
        r.error = Some(e.code);
        r
    };
    let req = match ops::classify(method, path, query, headers, &cfg.bucket) {
        Ok(r) => r,
        Err(e) => return Ok(refuse(report, e)),
    };
    report.operation = Some(req.op.name());
    report.key.clone_from(&req.key);
    report.copy_source.clone_from(&req.copy_source);
    report.prefix.clone_from(&req.prefix);
    if req.op == ops::Operation::DeleteObjects {
        match ops::delete_keys(body) {
            Ok(k) => report.delete_keys = k,
            Err(e) => return Ok(refuse(report, e)),
        }
    }
    report.allowed_by = (0..svc.rules.len())
        .filter(|&i| ops::authorize(&svc.rules[i..=i], &req, &report.delete_keys).is_ok())
        .collect();
    Ok(
        match ops::authorize(&svc.rules, &req, &report.delete_keys) {
            Ok(()) => {
                report.decision = "allow";
                report
            }
            Err(e) => refuse(report, e),
        },
    )
}

impl EgressReport {
    pub fn render_text(&self) -> String {
        let mut out = format!("egress service: {}\n", self.service);
        out.push_str(&format!(
            "operation:      {}\n",
            self.operation
                .unwrap_or("(not an operation Portier passes on)")
        ));
        for (label, v) in [
            ("key:           ", &self.key),
            ("copy source:   ", &self.copy_source),
            ("prefix:        ", &self.prefix),
        ] {
            if let Some(v) = v {
                out.push_str(&format!("{label} {v}\n"));
            }
        }
        for k in &self.delete_keys {
            out.push_str(&format!("delete key:      {k}\n"));
        }
        match (self.decision, self.error) {
            ("allow", _) => {
                let rules: Vec<String> = self
                    .allowed_by
                    .iter()
                    .map(|i| format!("allow[{i}]"))
                    .collect();
                let by = if rules.is_empty() {
                    "several rules together".to_owned()
                } else {
                    rules.join(", ")
                };
                out.push_str(&format!("decision:       allow (by {by})\n"));
            }
            (_, Some(code)) => out.push_str(&format!("decision:       deny ({code})\n")),
            _ => out.push_str("decision:       deny\n"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn cfg() -> EgressConfig {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .expect("shipped config");
        let c = Config::parse(Path::new("config.toml"), &text).expect("parses");
        c.egress.expect("the shipped config has [egress]")
    }

    #[test]
    fn explains_the_shipped_services_rules() {
        let c = cfg();
        let h = HeaderMap::new();
        let r = explain(
            &c,
            "workers",
            "PUT",
            "/app-media/user_2abc/images/a.png",
            &h,
            b"",
        )
        .expect("report");
        assert_eq!(
            (r.operation, r.decision, r.allowed_by.as_slice()),
            (Some("PutObject"), "allow", &[0][..])
        );
        assert_eq!(r.key.as_deref(), Some("user_2abc/images/a.png"));
        let r = explain(
            &c,
            "workers",
            "DELETE",
            "/app-media/user_2abc/images/a.png",
            &h,
            b"",
        )
        .expect("report");
        assert_eq!((r.decision, r.error), ("deny", Some("AccessDenied")));
        let r = explain(
            &c,
            "flask",
            "GET",
            "/app-media?list-type=2&prefix=user_2abc/",
            &h,
            b"",
        )
        .expect("report");
        assert_eq!((r.operation, r.decision), (Some("ListObjectsV2"), "allow"));
        let r = explain(
            &c,
            "flask",
            "GET",
            "/app-media?list-type=2&prefix=",
            &h,
            b"",
        )
        .expect("report");
        assert_eq!(
            r.decision, "deny",
            "listing the whole bucket is not under user_*/"
        );
        let body = b"<Delete><Object><Key>user_a/x</Key></Object><Object><Key>admin/y</Key></Object></Delete>";
        let r = explain(&c, "flask", "POST", "/app-media?delete", &h, body).expect("report");
        assert_eq!(r.delete_keys, vec!["user_a/x", "admin/y"]);
        assert_eq!((r.decision, r.error), ("deny", Some("AccessDenied")));
        let r = explain(&c, "flask", "GET", "/other-bucket/user_a/x", &h, b"").expect("report");
        assert_eq!((r.operation, r.error), (None, Some("NoSuchBucket")));
        assert!(r.render_text().contains("deny (NoSuchBucket)"));
        assert!(matches!(
            explain(&c, "nobody", "GET", "/app-media/k", &h, b""),
            Err(ExplainError::UnknownService(..))
        ));
    }
}
