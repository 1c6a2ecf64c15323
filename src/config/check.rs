//! Checking: the raw schema ([`super::raw`]) becomes the checked [`Config`], one function per
//! section. Every problem is collected as `file:line:col: key: message` and reported together;
//! a section with errors still yields a value so the other sections are checked too.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use toml::Spanned;

use super::raw::*;
use super::types::*;
use crate::auth::jwks::JwksTiming;
use crate::auth::VerifierSettings;
use crate::diag::{Diagnostic, Diagnostics};
use crate::s3::S3Config;

pub(super) struct Checker<'a> {
    pub(super) file: &'a Path,
    pub(super) src: &'a str,
    pub(super) diags: Diagnostics,
}

fn is_loopback_host(uri: &http::Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl Checker<'_> {
    fn err(&mut self, at: usize, key: &str, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::at(self.file, self.src, at, key, msg.into()));
    }

    fn header_name(&mut self, v: Option<Spanned<String>>, key: &str, default: String) -> String {
        let Some(v) = v else { return default };
        let at = v.span().start;
        let name = v.into_inner().to_ascii_lowercase();
        if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            self.err(at, key, format!("{name:?} is not a valid header name"));
        }
        name
    }

    /// A JWKS URL: https, or http to a loopback address only (tests, local issuers).
    fn jwks_url(&mut self, s: &Spanned<String>, key: &str) -> Option<http::Uri> {
        let at = s.span().start;
        match s.get_ref().parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Some(u),
            Ok(u) if u.scheme_str() == Some("http") && is_loopback_host(&u) => Some(u),
            Ok(_) => {
                self.err(
                    at,
                    key,
                    "must be an https:// URL (http:// only to a loopback address)",
                );
                None
            }
            Err(e) => {
                self.err(at, key, format!("not a URL: {e}"));
                None
            }
        }
    }

    /// The whole file. Destructures the raw config, so a new section cannot be forgotten here.
    pub(super) fn check(mut self, raw: RawConfig) -> Result<Config, Diagnostics> {
        let base = self.file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let RawConfig {
            server,
            clerk,
            identity_headers,
            upstreams,
            policies,
            admin,
            decision_log,
            limits,
            rate_limit,
            webhooks,
            s3,
            egress,
            assertion,
            pages,
        } = raw;
        let (server, trusted_proxies) = self.server(server);
        let publishable_key = clerk
            .get_ref()
            .publishable_key
            .as_ref()
            .map(|k| k.get_ref().clone());
        let (verifier, jwks_source, jwks_timing) = self.clerk(clerk, &base);
        let headers = self.identity_headers(identity_headers);
        let upstreams = self.upstreams(upstreams);
        let (policies_dir, reload_poll, declared) = self.policies(policies, &base);
        let admin_listen = admin.and_then(|a| self.admin(a));
        let decision_log = self.decision_log(decision_log, &base);
        let limits = self.limits(limits);
        let rate_limit = self.rate_limit(rate_limit);
        let webhooks = self.webhooks(webhooks);
        let s3 = s3.and_then(|s| self.s3(s, &base));
        let mut taken: Vec<(&str, SocketAddr)> = server
            .listen
            .iter()
            .map(|a| ("server.listen", *a))
            .collect();
        if let Some(a) = admin_listen {
            taken.push(("admin.listen", a));
        }
        let egress = egress.and_then(|e| self.egress(e, s3.as_ref(), &taken));
        let assertion = assertion.and_then(|a| self.assertion(a, &upstreams, &base));
        let pages = self.pages(pages, publishable_key.as_deref());
        if self.diags.has_errors() {
            return Err(self.diags.sorted());
        }
        let Some(jwks_source) = jwks_source else {
            // Unreachable in practice: a missing source is reported as an error above.
            return Err(Diagnostics(vec![Diagnostic::file(
                self.file,
                "clerk.jwks",
                "no key source",
            )]));
        };
        Ok(Config {
            file: self.file.to_path_buf(),
            server,
            verifier,
            jwks_source,
            jwks_timing,
            headers,
            upstreams,
            policies_dir,
            reload_poll,
            declared,
            admin_listen,
            decision_log,
            limits,
            rate_limit,
            webhooks,
            trusted_proxies,
            s3,
            egress,
            assertion,
            pages,
        })
    }

    fn pages(&mut self, raw: RawPages, publishable_key: Option<&str>) -> PagesConfig {
        let mut url = |v: Option<Spanned<String>>, key: &str| {
            let v = v?;
            let at = v.span().start;
            let v = v.into_inner();
            if let Err(e) = crate::nextjs::check_redirect_target(&v) {
                self.err(at, key, e);
                return None;
            }
            Some(v)
        };
        let sign_in_url = url(raw.sign_in_url, "pages.sign_in_url");
        let upgrade_url = url(raw.upgrade_url, "pages.upgrade_url");
        let public_origin = raw.public_origin.and_then(|o| {
            let at = o.span().start;
            let o = o.into_inner();
            let ok = o.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("https" | "http"))
                    && u.host().is_some()
                    && u.path_and_query().is_none_or(|p| p.as_str() == "/")
            });
            if ok {
                Some(o.trim_end_matches('/').to_owned())
            } else {
                self.err(
                    at,
                    "pages.public_origin",
                    "scheme://host[:port], without a path",
                );
                None
            }
        });
        // A key that names no Frontend API is reported by the [clerk] check.
        let instance = publishable_key.and_then(|pk| {
            crate::auth::token::frontend_api_of(pk).map(|frontend_api| ClerkInstance {
                development: !pk.starts_with("pk_live_"),
                frontend_api,
            })
        });
        PagesConfig {
            sign_in_url,
            upgrade_url,
            public_origin,
            instance,
        }
    }

    fn assertion(
        &mut self,
        raw: Spanned<RawAssertion>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        base: &Path,
    ) -> Option<AssertionConfig> {
        let at = raw.span().start;
        let a = raw.into_inner();
        if a.issuer.is_empty() {
            self.err(at, "assertion.issuer", "must not be empty");
        }
        let ups_at = a.upstreams.span().start;
        let ups = a.upstreams.into_inner();
        if ups.is_empty() {
            self.err(
                ups_at,
                "assertion.upstreams",
                "name the upstreams that verify assertions",
            );
        }
        for u in &ups {
            if !upstreams.contains_key(u) {
                self.err(
                    ups_at,
                    "assertion.upstreams",
                    format!("{u:?} is not a configured upstream"),
                );
            }
        }
        let ttl = *a.ttl_seconds.get_ref();
        if !(10..=600).contains(&ttl) {
            self.err(
                a.ttl_seconds.span().start,
                "assertion.ttl_seconds",
                "between 10 and 600: an assertion should outlive one request, not a session",
            );
        }
        let max_age = *a.jwks_max_age_seconds.get_ref();
        if !(1..=86_400).contains(&max_age) {
            self.err(
                a.jwks_max_age_seconds.span().start,
                "assertion.jwks_max_age_seconds",
                "between 1 and 86400",
            );
        }
        let public_jwks_path = a.public_jwks_path.map(|p| {
            let pat = p.span().start;
            let p = p.into_inner();
            if crate::path::canonicalize(&p).ok().as_deref() != Some(p.as_str()) || p == "/" {
                self.err(
                    pat,
                    "assertion.public_jwks_path",
                    "a canonical path such as /.well-known/portier/jwks.json",
                );
            }
            p
        });
        if a.keys.is_empty() {
            self.err(
                at,
                "assertion.keys",
                "list at least one [[assertion.keys]] (kid, pem_file or pem_env)",
            );
        }
        let single = a.keys.len() == 1;
        let mut keys = Vec::new();
        let mut kids = HashSet::new();
        for (i, k) in a.keys.into_iter().enumerate() {
            let kat = k.span().start;
            let k = k.into_inner();
            let key = format!("assertion.keys[{i}]");
            let kid_ok = !k.kid.is_empty()
                && k.kid.len() <= 64
                && k.kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !kid_ok {
                self.err(
                    kat,
                    &format!("{key}.kid"),
                    "1 to 64 letters, digits, '-', '_' or '.'",
                );
            }
            if !kids.insert(k.kid.clone()) {
                self.err(
                    kat,
                    &format!("{key}.kid"),
                    format!("{:?} is used twice", k.kid),
                );
            }
            let source = match (k.pem_file, k.pem_env) {
                (Some(f), None) => Some(KeySource::File(base.join(f))),
                (None, Some(e)) if !e.is_empty() => Some(KeySource::Env(e)),
                _ => {
                    self.err(kat, &key, "exactly one of pem_file, pem_env");
                    None
                }
            };
            if let Some(source) = source {
                keys.push(AssertionKey {
                    kid: k.kid,
                    source,
                    active: k.active || single,
                });
            }
        }
        let active = keys.iter().filter(|k| k.active).count();
        if !keys.is_empty() && active != 1 {
            self.err(
                at,
                "assertion.keys",
                format!("exactly one key signs (active = true); {active} are active"),
            );
        }
        Some(AssertionConfig {
            issuer: a.issuer,
            upstreams: ups,
            ttl: Duration::from_secs(ttl),
            jwks_max_age: Duration::from_secs(max_age),
            public_jwks_path,
            cache_max_bytes: a.cache_max_bytes,
            keys,
        })
    }

    fn server(&mut self, mut raw: RawServer) -> (ServerSettings, Vec<Cidr>) {
        let listen_at = raw.listen.span().start;
        let mut listen = Vec::new();
        for l in raw.listen.get_ref() {
            match l.parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => self.err(
                    listen_at,
                    "server.listen",
                    format!("{l:?} is not an address:port"),
                ),
            }
        }
        if listen.is_empty() {
            self.err(
                listen_at,
                "server.listen",
                "at least one listen address is required",
            );
        }
        if raw.threads == 0 {
            self.err(listen_at, "server.threads", "must be at least 1");
        }
        if raw.body_idle_timeout_seconds == 0 {
            self.err(
                listen_at,
                "server.body_idle_timeout_seconds",
                "must be at least 1 (0 would wait for a stalled client forever)",
            );
        }
        if raw.request_header_timeout_seconds == 0 {
            self.err(
                listen_at,
                "server.request_header_timeout_seconds",
                "must be at least 1 (0 would let a client hold a connection with a head it never finishes)",
            );
        }
        let mut trusted_proxies = Vec::new();
        if let Some(tp) = raw.trusted_proxies.take() {
            let at = tp.span().start;
            for p in tp.into_inner() {
                match Cidr::parse(&p) {
                    Some(c) => trusted_proxies.push(c),
                    None => self.err(
                        at,
                        "trusted_proxies",
                        format!("{p:?} is not an address or CIDR range"),
                    ),
                }
            }
        }
        let settings = ServerSettings {
            listen,
            threads: raw.threads.max(1),
            grace_period: Duration::from_secs(raw.grace_period_seconds),
            graceful_shutdown_timeout: Duration::from_secs(raw.graceful_shutdown_timeout_seconds),
            upgrade_sock: PathBuf::from(&raw.upgrade_sock),
            body_idle_timeout: Duration::from_secs(raw.body_idle_timeout_seconds.max(1)),
            request_header_timeout: Duration::from_secs(raw.request_header_timeout_seconds.max(1)),
        };
        (settings, trusted_proxies)
    }

    fn clerk(
        &mut self,
        raw: Spanned<RawClerk>,
        base: &Path,
    ) -> (VerifierSettings, Option<JwksSourceConfig>, JwksTiming) {
        let clerk_at = raw.span().start;
        let clerk = raw.into_inner();
        let iss_at = clerk.issuer.span().start;
        let issuer = clerk.issuer.into_inner();
        match issuer.parse::<http::Uri>() {
            Ok(u)
                if u.scheme_str() == Some("https")
                    && u.host().is_some()
                    && !issuer.ends_with('/') => {}
            _ => self.err(
                iss_at,
                "clerk.issuer",
                "must be the exact https:// Frontend API URL, without a trailing '/' (development issuers are never trusted here)",
            ),
        }
        for p in &clerk.authorized_parties {
            if p.ends_with('/') || !(p.starts_with("https://") || p.starts_with("http://")) {
                self.err(
                    clerk_at,
                    "clerk.authorized_parties",
                    format!("{p:?} must be an origin like https://app.example.com"),
                );
            }
        }
        let alg_at = clerk.algorithms.span().start;
        let mut algorithms = Vec::new();
        for a in clerk.algorithms.get_ref() {
            match a.as_str() {
                "RS256" => algorithms.push(Algorithm::RS256),
                "RS384" => algorithms.push(Algorithm::RS384),
                "RS512" => algorithms.push(Algorithm::RS512),
                other => self.err(
                    alg_at,
                    "clerk.algorithms",
                    format!("{other:?} is not accepted: Clerk signs with RS256; only RSA algorithms can be listed"),
                ),
            }
        }
        if clerk.algorithms.get_ref().is_empty() {
            self.err(alg_at, "clerk.algorithms", "list at least RS256");
        }
        if clerk.leeway_seconds > 60 {
            self.err(
                clerk_at,
                "clerk.leeway_seconds",
                "at most 60 (Clerk tokens live 60 s)",
            );
        }
        if !(512..=65_536).contains(&clerk.max_token_bytes) {
            self.err(
                clerk_at,
                "clerk.max_token_bytes",
                "must be between 512 and 65536",
            );
        }
        let cookie_suffix = clerk.cookie_suffix.map(|s| {
            let at = s.span().start;
            let s = s.into_inner();
            if s.len() != 8
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.err(
                    at,
                    "clerk.cookie_suffix",
                    "must be the 8-character suffix of __session_<suffix>",
                );
            }
            s
        });
        let derived = clerk.publishable_key.map(|pk| {
            let at = pk.span().start;
            let pk = pk.into_inner();
            match crate::auth::token::frontend_api_of(&pk) {
                None => self.err(
                    at,
                    "clerk.publishable_key",
                    "not a Clerk publishable key (pk_live_... or pk_test_...)",
                ),
                Some(host) => {
                    let issuer_host = issuer
                        .parse::<http::Uri>()
                        .ok()
                        .and_then(|u| u.host().map(str::to_string));
                    if issuer_host.is_some_and(|h| h != host) {
                        self.err(
                            at,
                            "clerk.publishable_key",
                            format!("names the Frontend API {host}, not the issuer's host"),
                        );
                    }
                }
            }
            (at, crate::auth::token::cookie_suffix_of(&pk))
        });
        let cookie_suffix = match (cookie_suffix, derived) {
            (Some(given), Some((at, d))) if given != d => {
                self.err(
                    at,
                    "clerk.cookie_suffix",
                    format!("the publishable key's suffix is {d:?}: remove cookie_suffix"),
                );
                Some(given)
            }
            (given, derived) => given.or(derived.map(|(_, d)| d)),
        };
        let (jwks_source, jwks_timing) = self.jwks(clerk.jwks, base);
        let settings = VerifierSettings {
            issuer,
            authorized_parties: clerk.authorized_parties,
            missing_azp: clerk.missing_azp,
            leeway: Duration::from_secs(clerk.leeway_seconds),
            algorithms,
            max_token_bytes: clerk.max_token_bytes,
            token_cache_capacity: clerk.token_cache_capacity,
            cookie_suffix,
        };
        (settings, jwks_source, jwks_timing)
    }

    fn jwks(
        &mut self,
        raw: Spanned<RawJwks>,
        base: &Path,
    ) -> (Option<JwksSourceConfig>, JwksTiming) {
        let jwks_at = raw.span().start;
        let j = raw.into_inner();
        let mut sources = Vec::new();
        if let Some(u) = &j.frontend_api {
            if let Some(b) = self.jwks_url(u, "clerk.jwks.frontend_api") {
                let s = format!(
                    "{}/.well-known/jwks.json",
                    b.to_string().trim_end_matches('/')
                );
                if let Ok(url) = s.parse() {
                    sources.push(JwksSourceConfig::Url {
                        url,
                        secret_key_env: None,
                    });
                }
            }
        }
        if let Some(u) = &j.backend_api {
            if let Some(b) = self.jwks_url(u, "clerk.jwks.backend_api") {
                let s = format!("{}/v1/jwks", b.to_string().trim_end_matches('/'));
                match &j.secret_key_env {
                    Some(env) => {
                        if let Ok(url) = s.parse() {
                            sources.push(JwksSourceConfig::Url {
                                url,
                                secret_key_env: Some(env.get_ref().clone()),
                            });
                        }
                    }
                    None => self.err(
                        u.span().start,
                        "clerk.jwks.secret_key_env",
                        "backend_api needs secret_key_env (the env var holding the Clerk secret key)",
                    ),
                }
            }
        } else if let Some(env) = &j.secret_key_env {
            self.err(
                env.span().start,
                "clerk.jwks.secret_key_env",
                "only used with backend_api",
            );
        }
        if let Some(u) = &j.url {
            if let Some(url) = self.jwks_url(u, "clerk.jwks.url") {
                sources.push(JwksSourceConfig::Url {
                    url,
                    secret_key_env: None,
                });
            }
        }
        if let Some(p) = &j.pem_file {
            sources.push(JwksSourceConfig::PemFile(base.join(p.get_ref())));
        }
        if let Some(e) = &j.pem_env {
            sources.push(JwksSourceConfig::PemEnv(e.get_ref().clone()));
        }
        let given = [
            &j.frontend_api,
            &j.backend_api,
            &j.url,
            &j.pem_file,
            &j.pem_env,
        ]
        .iter()
        .filter(|o| o.is_some())
        .count();
        if given != 1 {
            self.err(
                jwks_at,
                "clerk.jwks",
                "set exactly one of frontend_api, backend_api, url, pem_file, pem_env",
            );
        }
        if j.ttl_seconds == 0 || j.unknown_kid_cooldown_seconds == 0 {
            self.err(
                jwks_at,
                "clerk.jwks",
                "ttl_seconds and unknown_kid_cooldown_seconds must be positive",
            );
        }
        let timing = JwksTiming {
            ttl: Duration::from_secs(j.ttl_seconds.max(1)),
            unknown_kid_cooldown: Duration::from_secs(j.unknown_kid_cooldown_seconds.max(1)),
            fetch_timeout: Duration::from_millis(j.fetch_timeout_ms.max(1)),
            failure_backoff: Duration::from_secs(j.failure_backoff_seconds),
            max_stale: Duration::from_secs(j.max_stale_seconds),
        };
        (sources.into_iter().next(), timing)
    }

    fn identity_headers(&mut self, h: RawHeaders) -> IdentityHeaders {
        let d = IdentityHeaders::default();
        let headers = IdentityHeaders {
            user_id: self.header_name(h.user_id, "identity_headers.user_id", d.user_id),
            session_id: self.header_name(h.session_id, "identity_headers.session_id", d.session_id),
            org_id: self.header_name(h.org_id, "identity_headers.org_id", d.org_id),
            org_slug: self.header_name(h.org_slug, "identity_headers.org_slug", d.org_slug),
            org_role: self.header_name(h.org_role, "identity_headers.org_role", d.org_role),
            org_permissions: self.header_name(
                h.org_permissions,
                "identity_headers.org_permissions",
                d.org_permissions,
            ),
            plans: self.header_name(h.plans, "identity_headers.plans", d.plans),
            features: self.header_name(h.features, "identity_headers.features", d.features),
            actor: self.header_name(h.actor, "identity_headers.actor", d.actor),
        };
        let mut seen = HashSet::new();
        for n in headers.all() {
            if !seen.insert(fold_header_name(n)) {
                self.err(
                    0,
                    "identity_headers",
                    format!("{n:?} is used twice (after folding case, '_' and '.')"),
                );
            }
        }
        headers
    }

    fn upstreams(
        &mut self,
        raw: Spanned<BTreeMap<String, Spanned<RawUpstream>>>,
    ) -> BTreeMap<String, UpstreamConfig> {
        let ups_at = raw.span().start;
        let mut upstreams = BTreeMap::new();
        if raw.get_ref().is_empty() {
            self.err(ups_at, "upstreams", "declare at least one upstream");
        }
        if raw.get_ref().contains_key(crate::S3_UPSTREAM) {
            self.err(
                ups_at,
                "upstreams.s3",
                "\"s3\" is reserved for the bucket configured in [s3]",
            );
        }
        for (name, u) in raw.into_inner() {
            let up = self.upstream(&name, u);
            upstreams.insert(name, up);
        }
        upstreams
    }

    fn upstream(&mut self, name: &str, raw: Spanned<RawUpstream>) -> UpstreamConfig {
        let at = raw.span().start;
        let u = raw.into_inner();
        let key = format!("upstreams.{name}");
        let mut peers = Vec::new();
        for p in u.peers.get_ref() {
            match p.parse::<SocketAddr>() {
                Ok(a) => peers.push(a),
                Err(_) => self.err(
                    u.peers.span().start,
                    &format!("{key}.peers"),
                    format!("{p:?} is not an ip:port"),
                ),
            }
        }
        if u.peers.get_ref().is_empty() {
            self.err(at, &format!("{key}.peers"), "list at least one peer");
        }
        let health_check = u.health_check.map(|hc| {
            let hat = hc.span().start;
            let hc = hc.into_inner();
            let path = hc.path.unwrap_or_else(|| "/".into());
            if hc.kind == HealthCheckKind::Http && !path.starts_with('/') {
                self.err(
                    hat,
                    &format!("{key}.health_check.path"),
                    "must start with '/'",
                );
            }
            if hc.interval_seconds == 0 {
                self.err(
                    hat,
                    &format!("{key}.health_check.interval_seconds"),
                    "must be positive",
                );
            }
            HealthCheck {
                kind: hc.kind,
                path,
                interval: Duration::from_secs(hc.interval_seconds.max(1)),
            }
        });
        if u.tls && u.sni.as_deref().unwrap_or("").is_empty() {
            self.err(
                at,
                &format!("{key}.sni"),
                "a TLS upstream needs sni (the name its certificate is for)",
            );
        }
        UpstreamConfig {
            name: name.to_string(),
            peers,
            tls: u.tls,
            sni: u.sni.unwrap_or_default(),
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            read_timeout: Duration::from_millis(u.read_timeout_ms),
            credentials: u.credentials,
            health_check,
        }
    }

    fn policies(&mut self, raw: RawPolicies, base: &Path) -> (PathBuf, Option<Duration>, Declared) {
        let dir = base.join(raw.dir.unwrap_or_else(|| "policies".into()));
        let poll = match raw.reload_poll_ms.unwrap_or(1000) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let declared = Declared {
            plans: raw.plans,
            features: raw.features,
        };
        (dir, poll, declared)
    }

    fn admin(&mut self, raw: Spanned<RawAdmin>) -> Option<SocketAddr> {
        let at = raw.span().start;
        let l = raw.into_inner().listen;
        match l.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.err(
                    at,
                    "admin.listen",
                    format!("{:?} is not an address:port", l.get_ref()),
                );
                None
            }
        }
    }

    fn decision_log(&mut self, raw: RawDecisionLog, base: &Path) -> DecisionLogConfig {
        let rate = *raw.sample_rate.get_ref();
        if !(0.0..=1.0).contains(&rate) {
            self.err(
                raw.sample_rate.span().start,
                "decision_log.sample_rate",
                "must be between 0 and 1",
            );
        }
        DecisionLogConfig {
            mode: raw.mode,
            sample_rate: rate.clamp(0.0, 1.0),
            path: raw.path.map(|p| base.join(p)),
        }
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        if raw.max_header_bytes < 1024 {
            self.err(0, "limits.max_header_bytes", "must be at least 1024");
        }
        Limits {
            max_body_bytes: raw.max_body_bytes,
            max_header_bytes: raw.max_header_bytes,
        }
    }

    fn rate_limit(&mut self, raw: Option<Spanned<RawRateLimit>>) -> RateLimitConfig {
        let Some(rl) = raw else {
            return RateLimitConfig {
                store: RateStoreKind::Memory,
                redis_url_env: None,
                redis_url: None,
                on_redis_failure: default_redis_failure(),
                redis_timeout: Duration::from_millis(default_redis_timeout()),
            };
        };
        let at = rl.span().start;
        let rl = rl.into_inner();
        if rl.store == RateStoreKind::Redis && rl.redis_url_env.is_none() == rl.redis_url.is_none()
        {
            self.err(
                at,
                "rate_limit",
                "store = \"redis\" needs exactly one of redis_url_env, redis_url",
            );
        }
        if let Some(u) = &rl.redis_url {
            if u.contains('@') {
                self.err(
                    at,
                    "rate_limit.redis_url",
                    "credentials do not belong in config: use redis_url_env",
                );
            }
        }
        RateLimitConfig {
            store: rl.store,
            redis_url_env: rl.redis_url_env,
            redis_url: rl.redis_url,
            on_redis_failure: rl.on_redis_failure,
            redis_timeout: Duration::from_millis(rl.redis_timeout_ms.max(1)),
        }
    }

    fn webhooks(
        &mut self,
        raw: BTreeMap<String, Spanned<RawWebhook>>,
    ) -> BTreeMap<String, WebhookConfig> {
        let mut webhooks = BTreeMap::new();
        for (name, w) in raw {
            let at = w.span().start;
            let w = w.into_inner();
            if w.secrets_env.is_empty() {
                self.err(
                    at,
                    &format!("webhooks.{name}.secrets_env"),
                    "name at least one env var holding a whsec_ secret",
                );
            }
            if !(1..=3600).contains(&w.tolerance_seconds) {
                self.err(
                    at,
                    &format!("webhooks.{name}.tolerance_seconds"),
                    "must be between 1 and 3600",
                );
            }
            webhooks.insert(
                name.clone(),
                WebhookConfig {
                    name,
                    secrets_env: w.secrets_env,
                    tolerance_seconds: w.tolerance_seconds,
                },
            );
        }
        webhooks
    }

    /// `[egress]`. `taken` are the other listeners' addresses (`server.listen`, `admin.listen`):
    /// the egress listener cannot share a port with one of them.
    fn egress(
        &mut self,
        raw: Spanned<RawEgress>,
        s3: Option<&S3Config>,
        taken: &[(&str, SocketAddr)],
    ) -> Option<EgressConfig> {
        use super::egress_rules::{KeyGlob, Permission, Rule};
        let at = raw.span().start;
        let e = raw.into_inner();
        let listen_at = e.listen.span().start;
        let listen = match e.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    listen_at,
                    "egress.listen",
                    format!("{:?} is not an address:port", e.listen.get_ref()),
                );
                None
            }
        };
        if let Some(a) = listen {
            // The same port on the same address, or on a wildcard address, cannot be bound twice.
            // Port 0 is a port the system picks for each listener: never the same one.
            let clash = |b: &SocketAddr| {
                a.port() != 0
                    && a.port() == b.port()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            };
            for (key, other) in taken {
                if clash(other) {
                    self.err(
                        listen_at,
                        "egress.listen",
                        format!("{a} is also {key}: the egress listener needs its own port"),
                    );
                }
            }
        }
        if let Some(b) = &e.bucket {
            if let Err(err) = crate::s3::sign::check_bucket_name(b.get_ref()) {
                self.err(b.span().start, "egress.bucket", err.to_string());
            }
        }
        let Some(s3) = s3 else {
            self.err(
                at,
                "egress",
                "egress signs for the bucket of [s3]: configure [s3]",
            );
            return None;
        };
        if e.services.is_empty() {
            self.err(at, "egress.services", "declare at least one service");
        }
        let mut services = BTreeMap::new();
        let mut key_ids = HashSet::new();
        for (name, svc) in e.services {
            let sat = svc.span().start;
            let svc = svc.into_inner();
            let key = format!("egress.services.{name}");
            let ak_at = svc.access_key_id.span().start;
            let ak = svc.access_key_id.into_inner();
            if ak.len() < 16
                || !ak
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            {
                self.err(
                    ak_at,
                    &format!("{key}.access_key_id"),
                    "16 or more upper-case letters and digits, like an AWS access key id",
                );
            }
            if !key_ids.insert(ak.clone()) {
                self.err(
                    ak_at,
                    &format!("{key}.access_key_id"),
                    format!("{ak:?} is used by another service"),
                );
            }
            if svc.secret_env.is_empty() {
                self.err(
                    sat,
                    &format!("{key}.secret_env"),
                    "name the env var holding the secret",
                );
            }
            if svc.allow.is_empty() {
                self.err(
                    sat,
                    &format!("{key}.allow"),
                    "list what the service may do ([[...allow]] operations, keys): nothing is allowed by default",
                );
            }
            let mut rules = Vec::new();
            for (i, r) in svc.allow.into_iter().enumerate() {
                let rkey = format!("{key}.allow[{i}]");
                let ops_at = r.operations.span().start;
                let keys_at = r.keys.span().start;
                let mut permissions = Vec::new();
                for op in r.operations.get_ref() {
                    match Permission::parse(op) {
                        Some(ps) => permissions.extend(ps),
                        None => self.err(
                            ops_at,
                            &format!("{rkey}.operations"),
                            format!("unknown operation {op:?} (GetObject, HeadObject, PutObject, DeleteObject, ListObjectsV2, read, write, delete, *)"),
                        ),
                    }
                }
                permissions.sort();
                permissions.dedup();
                let mut keys = Vec::new();
                for k in r.keys.get_ref() {
                    match KeyGlob::new(k) {
                        Ok(g) => keys.push(g),
                        Err(m) => self.err(keys_at, &format!("{rkey}.keys"), format!("{k:?}: {m}")),
                    }
                }
                if r.operations.get_ref().is_empty() {
                    self.err(
                        ops_at,
                        &format!("{rkey}.operations"),
                        "list at least one operation",
                    );
                }
                if r.keys.get_ref().is_empty() {
                    self.err(
                        keys_at,
                        &format!("{rkey}.keys"),
                        "list at least one key pattern",
                    );
                }
                let rule = Rule { permissions, keys };
                if rules.contains(&rule) {
                    self.err(ops_at, &rkey, "the same rule is listed twice");
                }
                rules.push(rule);
            }
            services.insert(
                name.clone(),
                EgressService {
                    name,
                    access_key_id: ak,
                    secret_env: svc.secret_env,
                    rules,
                },
            );
        }
        Some(EgressConfig {
            listen: listen?,
            bucket: e
                .bucket
                .map(Spanned::into_inner)
                .unwrap_or_else(|| s3.target.bucket().to_string()),
            region: e.region.unwrap_or_else(|| s3.target.region().to_string()),
            services,
        })
    }

    /// `[s3.credentials]`, or the static env names, or the default chain.
    fn s3_credentials(
        &mut self,
        s3_at: usize,
        r: &RawS3,
        base: &Path,
    ) -> Option<crate::s3::CredentialSpec> {
        use crate::s3::{AssumeRole, CredentialSource, CredentialSpec};
        let names_given = r.access_key_id_env.is_some()
            || r.secret_access_key_env.is_some()
            || r.session_token_env.is_some();
        let names = || crate::s3::EnvNames {
            access_key_id: r
                .access_key_id_env
                .as_ref()
                .map_or_else(default_ak_env, |s| s.get_ref().clone()),
            secret_access_key: r
                .secret_access_key_env
                .as_ref()
                .map_or_else(default_sk_env, |s| s.get_ref().clone()),
            session_token: r
                .session_token_env
                .as_ref()
                .map_or_else(default_token_env, |s| s.get_ref().clone()),
        };
        let Some(c) = &r.credentials else {
            let source = if names_given {
                CredentialSource::Static(names())
            } else {
                CredentialSource::Default { profile: None }
            };
            return Some(CredentialSpec {
                source,
                assume_role: None,
                refresh_before: Duration::from_secs(default_refresh_before()),
            });
        };
        let at = c.span().start;
        let c = c.get_ref();
        let mut ok = true;
        let mut need = |field: &Option<String>, key: &str, what: &str| -> String {
            match field {
                Some(v) if !v.is_empty() => v.clone(),
                _ => {
                    ok = false;
                    self.err(
                        at,
                        &format!("s3.credentials.{key}"),
                        format!("{what} needs {key}"),
                    );
                    String::new()
                }
            }
        };
        let source = match c.source {
            RawCredentialSource::Default => CredentialSource::Default {
                profile: c.profile.clone(),
            },
            RawCredentialSource::Static => CredentialSource::Static(names()),
            RawCredentialSource::Env => CredentialSource::Env,
            RawCredentialSource::Profile => CredentialSource::Profile {
                name: need(&c.profile, "profile", "source = \"profile\""),
                config_file: c.config_file.as_ref().map(|f| base.join(f)),
                credentials_file: c.credentials_file.as_ref().map(|f| base.join(f)),
            },
            RawCredentialSource::WebIdentity => CredentialSource::WebIdentity {
                token_file: base.join(need(
                    &c.token_file,
                    "token_file",
                    "source = \"web_identity\"",
                )),
                role_arn: need(&c.role_arn, "role_arn", "source = \"web_identity\""),
                session_name: c.session_name.clone().unwrap_or_else(|| "portier".into()),
            },
            RawCredentialSource::Container => CredentialSource::Container,
            RawCredentialSource::InstanceMetadata => CredentialSource::InstanceMetadata {
                endpoint: c.endpoint.clone(),
            },
        };
        if names_given && c.source != RawCredentialSource::Static {
            self.err(
                s3_at,
                "s3.access_key_id_env",
                "env var names are the \"static\" source: remove them or set source = \"static\"",
            );
            ok = false;
        }
        let assume_role = c.assume_role_arn.as_ref().map(|arn| AssumeRole {
            role_arn: arn.clone(),
            session_name: c
                .assume_role_session_name
                .clone()
                .unwrap_or_else(|| "portier".into()),
            external_id: c.assume_role_external_id.clone(),
            duration: c.assume_role_duration_seconds.map(Duration::from_secs),
            sts_endpoint: c.sts_endpoint.clone(),
        });
        if assume_role.is_some() && matches!(source, CredentialSource::Static(_)) {
            self.err(
                at,
                "s3.credentials.assume_role_arn",
                "assume a role on top of an SDK source (default, env, profile, ...), not static keys",
            );
            ok = false;
        }
        if c.refresh_before_seconds == 0 {
            self.err(
                at,
                "s3.credentials.refresh_before_seconds",
                "must be positive",
            );
            ok = false;
        }
        ok.then_some(CredentialSpec {
            source,
            assume_role,
            refresh_before: Duration::from_secs(c.refresh_before_seconds),
        })
    }

    fn s3(&mut self, raw: Spanned<RawS3>, base: &Path) -> Option<S3Config> {
        let at = raw.span().start;
        let r = raw.into_inner();
        let addressing = match r.addressing {
            S3Addressing::Path => crate::s3::Addressing::Path,
            S3Addressing::VirtualHosted => crate::s3::Addressing::VirtualHosted,
        };
        let max = crate::s3::MAX_PRESIGN_EXPIRY.as_secs();
        if r.presign_stable_seconds > r.presign_max_seconds / 2 {
            self.err(
                at,
                "s3.presign_stable_seconds",
                "at most half of presign_max_seconds (a stable URL lives that much less)",
            );
        }
        if r.presign_max_seconds == 0
            || r.presign_max_seconds > max
            || r.presign_default_seconds == 0
            || r.presign_default_seconds > r.presign_max_seconds
        {
            self.err(
                at,
                "s3.presign_max_seconds",
                format!("0 < presign_default_seconds <= presign_max_seconds <= {max}"),
            );
        }
        let credentials = self.s3_credentials(at, &r, base);
        match crate::s3::S3Target::new(
            r.endpoint.get_ref(),
            r.region.get_ref(),
            r.bucket.get_ref(),
            addressing,
        ) {
            Ok(target) => Some(S3Config {
                target,
                credentials: credentials?,
                presign_default: Duration::from_secs(r.presign_default_seconds),
                presign_max: Duration::from_secs(r.presign_max_seconds),
                presign_stable: Duration::from_secs(r.presign_stable_seconds),
                spool_dir: r
                    .spool_dir
                    .as_ref()
                    .map(|d| base.join(d))
                    .unwrap_or_else(std::env::temp_dir),
                connect_timeout: Duration::from_millis(r.connect_timeout_ms),
                read_timeout: Duration::from_millis(r.read_timeout_ms),
            }),
            Err(e) => {
                use crate::s3::SignError;
                let (at, key) = match e {
                    SignError::InvalidBucket(_) => (r.bucket.span().start, "s3.bucket"),
                    SignError::InvalidRegion => (r.region.span().start, "s3.region"),
                    _ => (r.endpoint.span().start, "s3.endpoint"),
                };
                self.err(at, key, e.to_string());
                None
            }
        }
    }
}
