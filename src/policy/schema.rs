//! What platform teams write in `policies/*.toml`, read tolerantly: the file is parsed into a
//! spanned tree first, then every route's keys are taken one by one, so an unknown key, a value
//! of the wrong type and a missing key are each reported (with line and column) and the rest of
//! the route and the file are still checked. Nothing here decides what a route means; that is
//! [`super::compile`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::content::ContentType;
use crate::diag::{Diagnostic, Diagnostics};

/// Who may use a route, as written (`access = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawAccess {
    Public,
    SignedIn,
    Webhook,
}

/// Whether a route's rules are enforced or only evaluated and logged (a dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Shadow,
}

/// What an S3 route does (`s3 = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum S3Mode {
    /// Object operations on `/prefix/{key..}`.
    Object,
    /// `POST` JSON: a presigned URL for a key.
    Presign,
    /// `POST` multipart/form-data: `file` stored under `s3_key`.
    Upload,
    /// `DELETE` JSON: `s3_key`, or `s3_keys` (a batch).
    Delete,
    /// `GET ?user_id=&content_type=`: the caller's files of one kind, as JSON.
    List,
}

/// One `[[route]]` as written; every key is optional here so that a missing one is reported
/// by the compiler next to the other problems of the route.
#[derive(Debug, Default)]
pub struct RawRoute {
    /// Where the `[[route]]` table starts (for missing keys).
    pub at: usize,
    pub name: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<String>>>,
    pub upstream: Option<Spanned<String>>,
    pub access: Option<Spanned<RawAccess>>,
    pub mode: Option<Spanned<Mode>>,
    pub page: Option<Spanned<bool>>,
    /// The route accepts WebSocket upgrades (authorized like any request).
    pub websocket: Option<Spanned<bool>>,
    /// Page routes: where this page's signed-out navigations go (overrides `[pages]`).
    pub sign_in_url: Option<Spanned<String>>,
    /// Page routes: where navigations lacking this page's plan or feature go.
    pub upgrade_url: Option<Spanned<String>>,
    pub requirements: RawRequirements,
    /// Requirements evaluated and logged but not enforced.
    pub shadow: Option<Spanned<RawRequirements>>,
    /// `access = "webhook"`: the name of a `[webhooks.<name>]` in config.toml.
    pub webhook: Option<Spanned<String>>,
    /// Per-caller limit such as "5/min" (by user id; by client address on public routes).
    pub rate_limit: Option<Spanned<String>>,
    /// Request body limit for this route (overrides `[limits] max_body_bytes`).
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Upstream answer timeout for this route (overrides the upstream's read timeout).
    pub timeout_ms: Option<Spanned<u64>>,
    pub s3: Option<Spanned<S3Mode>>,
    pub presign_for: Option<Spanned<String>>,
    /// For the file API routes (`s3 = "upload" | "delete" | "list" | "presign"`): the object
    /// route whose policy decides every key.
    pub objects: Option<Spanned<String>>,
    /// Per kind folder (`<user>/<kind>s/...`) rules of an S3 object route.
    pub kinds: Option<Spanned<BTreeMap<String, Spanned<RawKind>>>>,
}

/// Requirement fields, shared by a route and its `[route.shadow]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequirements {
    #[serde(default)]
    pub plan: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub feature: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub org_role: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub org_permission: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub owner: Option<Spanned<String>>,
    #[serde(default)]
    pub claims: Option<Spanned<BTreeMap<String, toml::Value>>>,
}

impl RawRequirements {
    /// Where the first requirement is written, if any.
    pub fn first_at(&self) -> Option<usize> {
        [
            self.plan.as_ref().map(|s| s.span().start),
            self.feature.as_ref().map(|s| s.span().start),
            self.org_role.as_ref().map(|s| s.span().start),
            self.org_permission.as_ref().map(|s| s.span().start),
            self.owner.as_ref().map(|s| s.span().start),
            self.claims.as_ref().map(|s| s.span().start),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKind {
    #[serde(default)]
    pub plan: Option<Vec<String>>,
    #[serde(default)]
    pub feature: Option<Vec<String>>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub content_types: Option<Vec<ContentType>>,
}

/// Every key a `[[route]]` may have.
pub const ROUTE_KEYS: &[&str] = &[
    "name",
    "path",
    "methods",
    "upstream",
    "access",
    "mode",
    "page",
    "websocket",
    "sign_in_url",
    "upgrade_url",
    "plan",
    "feature",
    "org_role",
    "org_permission",
    "owner",
    "claims",
    "shadow",
    "webhook",
    "rate_limit",
    "max_body_bytes",
    "timeout_ms",
    "s3",
    "presign_for",
    "objects",
    "kinds",
];

struct Reader<'a> {
    file: &'a Path,
    src: &'a str,
    diags: &'a mut Diagnostics,
}

impl Reader<'_> {
    fn err(&mut self, at: usize, key: &str, msg: String) {
        self.diags
            .push(Diagnostic::at(self.file, self.src, at, key, msg));
    }

    /// Deserializes one value into its field's type; a type error is reported at the value.
    fn take<T: DeserializeOwned>(&mut self, key: &str, v: Spanned<DeValue<'_>>) -> Option<T> {
        let at = v.span().start;
        match T::deserialize(ValueDeserializer::from(v)) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = e.span().map_or(at, |s| s.start);
                self.err(at, key, e.message().trim().to_string());
                None
            }
        }
    }

    fn route(&mut self, table: Spanned<DeValue<'_>>) -> Option<RawRoute> {
        let at = table.span().start;
        let DeValue::Table(t) = table.into_inner() else {
            self.err(at, "route", "each [[route]] must be a table".into());
            return None;
        };
        let mut r = RawRoute {
            at,
            ..RawRoute::default()
        };
        for (k, v) in t {
            let key_at = k.span().start;
            let key = k.into_inner();
            let path = format!("route.{key}");
            match key.as_ref() {
                "name" => r.name = self.take(&path, v),
                "path" => r.path = self.take(&path, v),
                "methods" => r.methods = self.take(&path, v),
                "upstream" => r.upstream = self.take(&path, v),
                "access" => r.access = self.take(&path, v),
                "mode" => r.mode = self.take(&path, v),
                "page" => r.page = self.take(&path, v),
                "websocket" => r.websocket = self.take(&path, v),
                "sign_in_url" => r.sign_in_url = self.take(&path, v),
                "upgrade_url" => r.upgrade_url = self.take(&path, v),
                "plan" => r.requirements.plan = self.take(&path, v),
                "feature" => r.requirements.feature = self.take(&path, v),
                "org_role" => r.requirements.org_role = self.take(&path, v),
                "org_permission" => r.requirements.org_permission = self.take(&path, v),
                "owner" => r.requirements.owner = self.take(&path, v),
                "claims" => r.requirements.claims = self.take(&path, v),
                "shadow" => r.shadow = self.take(&path, v),
                "webhook" => r.webhook = self.take(&path, v),
                "rate_limit" => r.rate_limit = self.take(&path, v),
                "max_body_bytes" => r.max_body_bytes = self.take(&path, v),
                "timeout_ms" => r.timeout_ms = self.take(&path, v),
                "s3" => r.s3 = self.take(&path, v),
                "presign_for" => r.presign_for = self.take(&path, v),
                "objects" => r.objects = self.take(&path, v),
                "kinds" => r.kinds = self.take(&path, v),
                other => self.err(
                    key_at,
                    other,
                    format!(
                        "unknown field `{other}`, expected one of {}",
                        ROUTE_KEYS.join(", ")
                    ),
                ),
            }
        }
        Some(r)
    }
}

/// Reads one policy file into its routes. Syntax errors stop the file (nothing after them can
/// be trusted); every other problem is reported and the file is still read.
pub fn read_file(file: &Path, src: &str, diags: &mut Diagnostics) -> Vec<RawRoute> {
    let (doc, errors) = DeTable::parse_recoverable(src);
    if !errors.is_empty() {
        for e in &errors {
            diags.push(crate::diag::from_toml_error(file, src, e));
        }
        return Vec::new();
    }
    let mut reader = Reader { file, src, diags };
    let mut routes = Vec::new();
    for (k, v) in doc.into_inner() {
        let key_at = k.span().start;
        let key = k.into_inner();
        if key != "route" {
            reader.err(
                key_at,
                &key,
                format!("unknown field `{key}`, expected `route`"),
            );
            continue;
        }
        let at = v.span().start;
        match v.into_inner() {
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let Some(r) = reader.route(item.clone()) {
                        routes.push(r);
                    }
                }
            }
            _ => reader.err(at, "route", "write routes as [[route]] tables".into()),
        }
    }
    routes
}
