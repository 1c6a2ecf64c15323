//! The verified caller: Clerk v1 and v2 session claims folded into one [`Identity`], with
//! Clerk's `has()` semantics for plans, features, org roles and org permissions.

use serde_json::{Map, Value};

/// Which subject an entitlement (`pla`/`fea` entry) belongs to: `u:` user, `o:` organization,
/// `uo:`/`ou:` both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub user: bool,
    pub org: bool,
    pub name: String,
}

/// The active organization of the session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Org {
    pub id: String,
    pub slug: Option<String>,
    /// Always `org:`-prefixed, whatever the token version wrote.
    pub role: Option<String>,
    pub permissions: Vec<String>,
}

/// A caller whose token verified. Built only by [`Identity::from_claims`] after the signature
/// and the standard claims were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: String,
    pub session_id: String,
    pub org: Option<Org>,
    pub plans: Vec<Entitlement>,
    pub features: Vec<Entitlement>,
    /// `act.sub` when the session is an impersonation.
    pub actor: Option<String>,
    /// Claims format: 1 (flat `org_*`) or 2 (`v: 2`, nested `o`, `pla`, `fea`).
    pub version: u8,
    pub expires_at: i64,
    /// Every claim, for custom-claim rules (`metadata.subscription`).
    pub claims: Map<String, Value>,
    /// Identity header values, built once when the token is verified (the identity is cached
    /// with the token, so a repeated token costs no formatting): user id, session id, org id,
    /// org slug, org role, org permissions, plans, features, actor. `None` when absent or not
    /// valid header text.
    pub header_values: [Option<http::HeaderValue>; 9],
}

/// Why a verified payload still cannot become an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("claim `{0}` is missing")]
    Missing(&'static str),
    #[error("claim `{0}` has the wrong type")]
    WrongType(&'static str),
    #[error("claim `sub` is not a Clerk user id")]
    BadSubject,
    #[error("claim `sid` is not a Clerk session id")]
    BadSession,
}

fn is_clerk_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `^user_[A-Za-z0-9]+$`: also what makes `sub` safe inside a header and an S3 prefix.
pub fn is_user_id(s: &str) -> bool {
    is_clerk_id(s, "user_")
}

fn opt_str<'a>(m: &'a Map<String, Value>, k: &'static str) -> Result<Option<&'a str>, ClaimsError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ClaimsError::WrongType(k)),
    }
}

/// Parses a `pla`/`fea` claim: comma-separated `scope:name`; entries without a scope are
/// ignored, as Clerk's `has()` ignores them.
pub fn parse_entitlements(raw: &str) -> Vec<Entitlement> {
    raw.split(',')
        .filter_map(|e| {
            let (scope, name) = e.trim().split_once(':')?;
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            let (user, org) = match scope {
                "u" => (true, false),
                "o" => (false, true),
                "uo" | "ou" => (true, true),
                _ => return None,
            };
            Some(Entitlement {
                user,
                org,
                name: name.to_string(),
            })
        })
        .collect()
}

fn org_prefixed(role: &str) -> String {
    if role.starts_with("org:") {
        role.to_string()
    } else {
        format!("org:{role}")
    }
}

/// v2 org permissions: `fpm[i]` is a bitmask over `per` for the i-th org-scoped feature.
fn v2_org_permissions(fea: &[Entitlement], per: Option<&str>, fpm: Option<&str>) -> Vec<String> {
    let (Some(per), Some(fpm)) = (per, fpm) else {
        return Vec::new();
    };
    let perms: Vec<&str> = per.split(',').map(str::trim).collect();
    let org_features: Vec<&str> = fea
        .iter()
        .filter(|e| e.org)
        .map(|e| e.name.as_str())
        .collect();
    let mut out = Vec::new();
    for (feature, mask) in org_features.iter().zip(fpm.split(',')) {
        let Ok(mask) = mask.trim().parse::<u128>() else {
            continue;
        };
        for (bit, perm) in perms.iter().enumerate().take(128) {
            if mask & (1u128 << bit) != 0 {
                out.push(format!("org:{feature}:{perm}"));
            }
        }
    }
    out
}

impl Identity {
    /// Builds an identity from a payload whose signature, `exp`, `nbf`, `iat`, `iss` and `azp`
    /// were already checked by the verifier.
    pub fn from_claims(claims: Map<String, Value>) -> Result<Identity, ClaimsError> {
        let sub = opt_str(&claims, "sub")?.ok_or(ClaimsError::Missing("sub"))?;
        if !is_user_id(sub) {
            return Err(ClaimsError::BadSubject);
        }
        let sid = opt_str(&claims, "sid")?.ok_or(ClaimsError::Missing("sid"))?;
        if !is_clerk_id(sid, "sess_") {
            return Err(ClaimsError::BadSession);
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(ClaimsError::WrongType("exp"))?;
        let version = match claims.get("v") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_u64() {
                Some(1) => 1,
                Some(2) => 2,
                _ => return Err(ClaimsError::WrongType("v")),
            },
        };
        let actor = match claims.get("act") {
            Some(Value::Object(act)) => act.get("sub").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let plans = opt_str(&claims, "pla")?
            .map(parse_entitlements)
            .unwrap_or_default();
        let features = opt_str(&claims, "fea")?
            .map(parse_entitlements)
            .unwrap_or_default();
        let org = if version == 2 {
            match claims.get("o") {
                None | Some(Value::Null) => None,
                Some(Value::Object(o)) => {
                    let id = opt_str(o, "id")?.ok_or(ClaimsError::Missing("o.id"))?;
                    Some(Org {
                        id: id.to_string(),
                        slug: opt_str(o, "slg")?.map(str::to_string),
                        role: opt_str(o, "rol")?.map(org_prefixed),
                        permissions: v2_org_permissions(
                            &features,
                            opt_str(o, "per")?,
                            opt_str(o, "fpm")?,
                        ),
                    })
                }
                Some(_) => return Err(ClaimsError::WrongType("o")),
            }
        } else {
            match opt_str(&claims, "org_id")? {
                None => None,
                Some(id) => Some(Org {
                    id: id.to_string(),
                    slug: opt_str(&claims, "org_slug")?.map(str::to_string),
                    role: opt_str(&claims, "org_role")?.map(org_prefixed),
                    permissions: match claims.get("org_permissions") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|p| p.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or(ClaimsError::WrongType("org_permissions"))?,
                        Some(_) => return Err(ClaimsError::WrongType("org_permissions")),
                    },
                }),
            }
        };
        let mut id = Identity {
            user_id: sub.to_string(),
            session_id: sid.to_string(),
            org,
            plans,
            features,
            actor,
            version,
            expires_at,
            claims,
            header_values: Default::default(),
        };
        id.header_values = id.build_header_values();
        Ok(id)
    }

    /// Clerk `has({ plan })`: `org:`/`o:`/`organization:` asks the org, `user:`/`u:` the
    /// user, an unscoped name either.
    pub fn has_plan(&self, requested: &str) -> bool {
        has_entitlement(&self.plans, requested)
    }

    /// Clerk `has({ feature })`, same scoping as [`Identity::has_plan`].
    pub fn has_feature(&self, requested: &str) -> bool {
        has_entitlement(&self.features, requested)
    }

    /// Clerk `has({ role })`: compares `org:`-prefixed roles of the active organization.
    pub fn has_role(&self, role: &str) -> bool {
        let want = org_prefixed(role);
        self.org
            .as_ref()
            .and_then(|o| o.role.as_deref())
            .is_some_and(|r| r == want)
    }

    /// Clerk `has({ permission })` over the active organization's permissions.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.org
            .as_ref()
            .is_some_and(|o| o.permissions.iter().any(|p| p == permission))
    }

    /// A claim by dotted path (`metadata.subscription`). A string claim holding a JSON object
    /// (Clerk templates such as `"{{user.public_metadata}}"` may be serialised that way) is not
    /// parsed: the template should emit an object.
    pub fn claim(&self, dotted: &str) -> Option<&Value> {
        let mut parts = dotted.split('.');
        let mut cur = self.claims.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }

    fn build_header_values(&self) -> [Option<http::HeaderValue>; 9] {
        let v = |s: &str| http::HeaderValue::from_str(s).ok();
        let org = self.org.as_ref();
        let nonempty = |s: String| if s.is_empty() { None } else { v(&s) };
        [
            v(&self.user_id),
            v(&self.session_id),
            org.and_then(|o| v(&o.id)),
            org.and_then(|o| o.slug.as_deref().and_then(v)),
            org.and_then(|o| o.role.as_deref().and_then(v)),
            org.and_then(|o| nonempty(o.permissions.join(","))),
            nonempty(self.plans_header()),
            nonempty(self.features_header()),
            self.actor.as_deref().and_then(v),
        ]
    }

    /// Comma-joined entitlements in their token spelling, for identity headers.
    pub fn plans_header(&self) -> String {
        join_entitlements(&self.plans)
    }

    pub fn features_header(&self) -> String {
        join_entitlements(&self.features)
    }
}

fn join_entitlements(list: &[Entitlement]) -> String {
    let mut out = String::new();
    for e in list {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(match (e.user, e.org) {
            (true, true) => "uo:",
            (false, true) => "o:",
            _ => "u:",
        });
        out.push_str(&e.name);
    }
    out
}

fn has_entitlement(list: &[Entitlement], requested: &str) -> bool {
    let (want_user, want_org, name) = if let Some(n) = requested
        .strip_prefix("org:")
        .or_else(|| requested.strip_prefix("o:"))
        .or_else(|| requested.strip_prefix("organization:"))
    {
        (false, true, n)
    } else if let Some(n) = requested
        .strip_prefix("user:")
        .or_else(|| requested.strip_prefix("u:"))
    {
        (true, false, n)
    } else {
        (true, true, requested)
    };
    list.iter()
        .any(|e| e.name == name && ((want_user && e.user) || (want_org && e.org)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v2() -> Identity {
        let c = json!({"v":2,"azp":"https://app.example.com","exp":2000000000,"iat":1,"nbf":1,
            "iss":"https://clerk.example.com","jti":"j","sid":"sess_abc","sub":"user_abc","fva":[7,-1],
            "pla":"u:pro,o:business",
            "fea":"o:reservations,u:dashboard,uo:support-chat,o:impersonation",
            "o":{"id":"org_1","slg":"orgSlug","rol":"member","per":"read,manage","fpm":"2,3"}});
        Identity::from_claims(c.as_object().unwrap().clone()).unwrap()
    }

    #[test]
    fn clerk_has_vectors_on_v2_payload() {
        let id = v2();
        assert!(id.has_plan("pro"));
        assert!(!id.has_plan("org:pro"));
        assert!(id.has_plan("user:pro"));
        assert!(id.has_plan("business"));
        assert!(id.has_plan("o:business"));
        assert!(!id.has_plan("u:business"));
        assert!(id.has_feature("dashboard"));
        assert!(!id.has_feature("org:dashboard"));
        assert!(!id.has_feature("pro"));
        assert!(id.has_feature("org:support-chat"));
        assert!(id.has_feature("user:support-chat"));
    }

    #[test]
    fn v2_org_role_and_permissions() {
        let id = v2();
        let org = id.org.as_ref().unwrap();
        assert_eq!(org.id, "org_1");
        assert_eq!(org.role.as_deref(), Some("org:member"));
        assert!(id.has_role("member"));
        assert!(id.has_role("org:member"));
        assert!(!id.has_role("org:admin"));
        // org features in order: reservations (fpm 2 = manage), support-chat (3 = read+manage),
        // impersonation (no mask entry).
        assert_eq!(
            org.permissions,
            [
                "org:reservations:manage",
                "org:support-chat:read",
                "org:support-chat:manage"
            ]
        );
        assert!(id.has_permission("org:support-chat:read"));
        assert!(!id.has_permission("org:reservations:read"));
    }

    #[test]
    fn v1_payload_maps_flat_org_claims_and_has_no_entitlements() {
        let c = json!({"azp":"http://localhost:3000","exp":1730410018,"iat":1730409958,
            "iss":"https://wealthy-warthog-69.clerk.accounts.dev","nbf":1730409948,"org_id":"org_2d3Z",
            "org_permissions":["org:sys:read"],"org_role":"org:admin","org_slug":"marine-projex",
            "sid":"sess_2mUX","sub":"user_2d3v"});
        let id = Identity::from_claims(c.as_object().unwrap().clone()).unwrap();
        assert_eq!(id.version, 1);
        assert!(id.has_role("org:admin"));
        assert!(id.has_permission("org:sys:read"));
        assert!(!id.has_plan("pro"));
        assert!(!id.has_feature("dashboard"));
    }

    #[test]
    fn bad_subjects_and_sessions_are_refused() {
        let base = json!({"exp": 10, "sid": "sess_1", "sub": "user_1"});
        let cases = [
            ("sub", json!("mch_1"), ClaimsError::BadSubject),
            ("sub", json!("user_"), ClaimsError::BadSubject),
            ("sub", json!("user_a/../b"), ClaimsError::BadSubject),
            ("sub", json!(5), ClaimsError::WrongType("sub")),
            ("sid", json!("x"), ClaimsError::BadSession),
            ("exp", json!("10"), ClaimsError::WrongType("exp")),
        ];
        for (k, v, want) in cases {
            let mut c = base.as_object().unwrap().clone();
            c.insert(k.into(), v);
            assert_eq!(Identity::from_claims(c), Err(want.clone()), "{k}");
        }
        let mut c = base.as_object().unwrap().clone();
        c.remove("sid");
        assert_eq!(Identity::from_claims(c), Err(ClaimsError::Missing("sid")));
    }

    #[test]
    fn entries_without_scope_never_match() {
        let e = parse_entitlements("pro, x:y ,u:");
        assert!(e.is_empty());
    }

    #[test]
    fn dotted_claims() {
        let c = json!({"exp": 10, "sid": "sess_1", "sub": "user_1",
            "metadata": {"subscription": "pro", "n": {"deep": true}}});
        let id = Identity::from_claims(c.as_object().unwrap().clone()).unwrap();
        assert_eq!(id.claim("metadata.subscription"), Some(&json!("pro")));
        assert_eq!(id.claim("metadata.n.deep"), Some(&json!(true)));
        assert_eq!(id.claim("metadata.none"), None);
    }
}
