//! Reason codes: the stable, client-facing vocabulary of every refusal Portier makes.
//!
//! A [`Reason`] maps to one HTTP status and one JSON body. Messages are fixed strings so that no
//! internal detail (key ids, upstream addresses, parser output) can reach a client; the detail
//! goes to the log next to the reason code instead.

use serde::Serialize;

/// Why a request was refused (or, for `Allowed`, not refused). The `code()` strings are a public
/// contract: clients and dashboards match on them, so they never change once shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The request path uses an ambiguous encoding (`%2e`, `%2f`, `..`, `;`, NUL...).
    BadPath,
    /// No session token in `Authorization` or a `__session` cookie.
    TokenMissing,
    /// The token is malformed, has the wrong `typ`/`cat`, a bad `sub`/`sid`, or claims of the wrong type.
    TokenInvalid,
    /// The token's `alg` is not in the configured allow-list.
    TokenInvalidAlgorithm,
    /// The signature does not verify with the key named by `kid`.
    TokenInvalidSignature,
    /// No key in the JWKS has the token's `kid`, even after a refresh.
    TokenUnknownKey,
    /// `exp` is in the past (beyond the leeway).
    TokenExpired,
    /// `nbf` is in the future (beyond the leeway).
    TokenNotYetValid,
    /// `iat` is in the future (beyond the leeway).
    TokenIatInFuture,
    /// The token is longer than the configured maximum.
    TokenTooLarge,
    /// `iss` is not the configured issuer.
    IssuerMismatch,
    /// `azp` is missing (when required) or not an authorized party.
    AzpMismatch,
    /// `sts` is `pending`: the session is not complete, treated as signed out.
    SessionPending,
    /// No signing key could be obtained: the key server is down and nothing usable is cached.
    JwksUnavailable,
    /// No route matches the path: deny by default.
    NoRoute,
    /// A route matches the path but not the method.
    MethodNotAllowed,
    /// The caller has none of the plans the route requires.
    PlanRequired,
    /// The caller has none of the features the route requires.
    FeatureRequired,
    /// The caller's active organization role is not one the route accepts.
    OrgRoleRequired,
    /// The caller lacks every organization permission the route accepts.
    OrgPermissionRequired,
    /// The path names a resource of another user.
    NotOwner,
    /// A custom claim does not have the value the route requires.
    ClaimMismatch,
    /// The upstream could not be reached or failed mid-response.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The client stopped sending its request body (`server.body_idle_timeout_seconds`).
    ClientTimeout,
    /// The request body is over the route's limit (announced or counted).
    BodyTooLarge,
    /// The request headers are over the configured size.
    HeadersTooLarge,
    /// The caller went over the route's rate limit.
    RateLimited,
    /// The shared rate-limit store is unreachable and the config says fail closed.
    RateLimitUnavailable,
    /// A webhook signature is missing or matches no configured secret.
    WebhookSignatureInvalid,
    /// A webhook timestamp is malformed or outside the tolerance.
    WebhookTimestampOutOfRange,
    /// A webhook message id was already accepted within the tolerance window.
    WebhookReplayed,
    /// The shared replay store is unreachable; webhooks are refused rather than risk a replay.
    ReplayCheckUnavailable,
    /// The request (e.g. a JSON body) is malformed.
    BadRequest,
    /// The object key is malformed (empty segments, dot segments, control characters...).
    BadKey,
    /// The key's kind folder is not one the route lists.
    KindNotAllowed,
    /// An upload without `Content-Length` (S3 needs the length up front).
    LengthRequired,
    /// The body's first bytes are not one of the route's content types.
    UnsupportedMediaType,
    /// An S3 request Portier does not perform (copy, aws-chunked bodies, multi-delete...).
    OperationNotSupported,
    /// No such object.
    NotFound,
    /// The store refused Portier's signature or credentials: a configuration problem.
    UpstreamAuthFailed,
    /// Two different session cookies of the same name were sent (cookie tossing).
    SessionCookieConflict,
    /// A protocol upgrade (WebSocket) on a route that does not allow one.
    UpgradeNotAllowed,
    /// No usable AWS credentials (the source failed and the last set expired).
    S3CredentialsUnavailable,
    /// A fault inside Portier; details are in the log.
    Internal,
}

impl Reason {
    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: [Reason; 45] = [
        Reason::BadPath,
        Reason::TokenMissing,
        Reason::TokenInvalid,
        Reason::TokenInvalidAlgorithm,
        Reason::TokenInvalidSignature,
        Reason::TokenUnknownKey,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::TokenIatInFuture,
        Reason::TokenTooLarge,
        Reason::IssuerMismatch,
        Reason::AzpMismatch,
        Reason::SessionPending,
        Reason::JwksUnavailable,
        Reason::NoRoute,
        Reason::MethodNotAllowed,
        Reason::PlanRequired,
        Reason::FeatureRequired,
        Reason::OrgRoleRequired,
        Reason::OrgPermissionRequired,
        Reason::NotOwner,
        Reason::ClaimMismatch,
        Reason::UpstreamUnavailable,
        Reason::UpstreamTimeout,
        Reason::ClientTimeout,
        Reason::BodyTooLarge,
        Reason::HeadersTooLarge,
        Reason::RateLimited,
        Reason::RateLimitUnavailable,
        Reason::WebhookSignatureInvalid,
        Reason::WebhookTimestampOutOfRange,
        Reason::WebhookReplayed,
        Reason::ReplayCheckUnavailable,
        Reason::BadRequest,
        Reason::BadKey,
        Reason::KindNotAllowed,
        Reason::LengthRequired,
        Reason::UnsupportedMediaType,
        Reason::OperationNotSupported,
        Reason::NotFound,
        Reason::UpstreamAuthFailed,
        Reason::SessionCookieConflict,
        Reason::UpgradeNotAllowed,
        Reason::S3CredentialsUnavailable,
        Reason::Internal,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::BadPath => "bad_path",
            Reason::TokenMissing => "token_missing",
            Reason::TokenInvalid => "token_invalid",
            Reason::TokenInvalidAlgorithm => "token_invalid_algorithm",
            Reason::TokenInvalidSignature => "token_invalid_signature",
            Reason::TokenUnknownKey => "token_unknown_key",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenIatInFuture => "token_iat_in_future",
            Reason::TokenTooLarge => "token_too_large",
            Reason::IssuerMismatch => "issuer_mismatch",
            Reason::AzpMismatch => "azp_mismatch",
            Reason::SessionPending => "session_pending",
            Reason::JwksUnavailable => "jwks_unavailable",
            Reason::NoRoute => "no_route",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::PlanRequired => "plan_required",
            Reason::FeatureRequired => "feature_required",
            Reason::OrgRoleRequired => "org_role_required",
            Reason::OrgPermissionRequired => "org_permission_required",
            Reason::NotOwner => "not_owner",
            Reason::ClaimMismatch => "claim_mismatch",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::ClientTimeout => "client_timeout",
            Reason::BodyTooLarge => "body_too_large",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::RateLimited => "rate_limited",
            Reason::RateLimitUnavailable => "rate_limit_unavailable",
            Reason::WebhookSignatureInvalid => "webhook_signature_invalid",
            Reason::WebhookTimestampOutOfRange => "webhook_timestamp_out_of_range",
            Reason::WebhookReplayed => "webhook_replayed",
            Reason::ReplayCheckUnavailable => "replay_check_unavailable",
            Reason::BadRequest => "bad_request",
            Reason::BadKey => "bad_key",
            Reason::KindNotAllowed => "kind_not_allowed",
            Reason::LengthRequired => "length_required",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::OperationNotSupported => "operation_not_supported",
            Reason::NotFound => "not_found",
            Reason::UpstreamAuthFailed => "upstream_auth_failed",
            Reason::SessionCookieConflict => "session_cookie_conflict",
            Reason::UpgradeNotAllowed => "upgrade_not_allowed",
            Reason::S3CredentialsUnavailable => "s3_credentials_unavailable",
            Reason::Internal => "internal_error",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::BadPath
            | Reason::BadRequest
            | Reason::BadKey
            | Reason::OperationNotSupported => 400,
            Reason::KindNotAllowed => 403,
            Reason::NotFound => 404,
            Reason::LengthRequired => 411,
            Reason::UnsupportedMediaType => 415,
            Reason::UpstreamAuthFailed => 502,
            Reason::TokenMissing
            | Reason::TokenInvalid
            | Reason::TokenInvalidAlgorithm
            | Reason::TokenInvalidSignature
            | Reason::TokenUnknownKey
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::TokenIatInFuture
            | Reason::TokenTooLarge
            | Reason::IssuerMismatch
            | Reason::AzpMismatch
            | Reason::SessionPending
            | Reason::WebhookSignatureInvalid
            | Reason::WebhookTimestampOutOfRange
            | Reason::WebhookReplayed => 401,
            Reason::BodyTooLarge => 413,
            Reason::HeadersTooLarge => 431,
            Reason::RateLimited => 429,
            Reason::PlanRequired
            | Reason::FeatureRequired
            | Reason::OrgRoleRequired
            | Reason::OrgPermissionRequired
            | Reason::NotOwner
            | Reason::ClaimMismatch => 403,
            Reason::NoRoute => 404,
            Reason::MethodNotAllowed => 405,
            Reason::SessionCookieConflict => 401,
            Reason::UpgradeNotAllowed => 400,
            Reason::S3CredentialsUnavailable => 503,
            Reason::Internal => 500,
            Reason::UpstreamUnavailable => 502,
            Reason::JwksUnavailable
            | Reason::RateLimitUnavailable
            | Reason::ReplayCheckUnavailable => 503,
            Reason::UpstreamTimeout => 504,
            Reason::ClientTimeout => 408,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Reason::BadPath => "the request path uses an ambiguous encoding",
            Reason::TokenMissing => "sign in required: no session token was sent",
            Reason::TokenInvalid => "the session token is malformed or has invalid claims",
            Reason::TokenInvalidAlgorithm => {
                "the session token uses an algorithm that is not accepted"
            }
            Reason::TokenInvalidSignature => "the session token signature does not verify",
            Reason::TokenUnknownKey => "the session token was signed by an unknown key",
            Reason::TokenExpired => "the session token has expired",
            Reason::TokenNotYetValid => "the session token is not valid yet",
            Reason::TokenIatInFuture => "the session token was issued in the future",
            Reason::TokenTooLarge => "the session token is too large",
            Reason::IssuerMismatch => "the session token was issued by another instance",
            Reason::AzpMismatch => "the session token was minted for another origin",
            Reason::SessionPending => "the session is pending and not signed in",
            Reason::JwksUnavailable => "signing keys are unavailable; try again shortly",
            Reason::NoRoute => "no route matches this path",
            Reason::MethodNotAllowed => "this method is not allowed on this path",
            Reason::PlanRequired => "your subscription plan does not include this",
            Reason::FeatureRequired => "your account does not have the feature this requires",
            Reason::OrgRoleRequired => "your organization role does not allow this",
            Reason::OrgPermissionRequired => "your organization permissions do not allow this",
            Reason::NotOwner => "this resource belongs to another user",
            Reason::ClaimMismatch => "your account does not meet this route's requirements",
            Reason::UpstreamUnavailable => "the service behind this route is unavailable",
            Reason::UpstreamTimeout => "the service behind this route did not answer in time",
            Reason::ClientTimeout => "the request stopped arriving",
            Reason::BodyTooLarge => "the request body is too large for this route",
            Reason::HeadersTooLarge => "the request headers are too large",
            Reason::RateLimited => "too many requests; retry after the time in Retry-After",
            Reason::RateLimitUnavailable => "rate limiting is unavailable; try again shortly",
            Reason::WebhookSignatureInvalid => "the webhook signature is missing or invalid",
            Reason::WebhookTimestampOutOfRange => {
                "the webhook timestamp is outside the accepted window"
            }
            Reason::WebhookReplayed => "this webhook message was already delivered",
            Reason::ReplayCheckUnavailable => {
                "webhooks cannot be checked for replays right now; retry later"
            }
            Reason::BadRequest => "the request is malformed",
            Reason::BadKey => "the object key is not a valid key",
            Reason::KindNotAllowed => "objects of this kind cannot be stored here",
            Reason::LengthRequired => "uploads need a Content-Length",
            Reason::UnsupportedMediaType => {
                "the content is not one of the types this route accepts"
            }
            Reason::OperationNotSupported => "this storage operation is not supported",
            Reason::NotFound => "no such object",
            Reason::UpstreamAuthFailed => {
                "the storage backend refused the request; this is a server configuration problem"
            }
            Reason::SessionCookieConflict => "the request carries conflicting session cookies",
            Reason::UpgradeNotAllowed => "this route does not accept protocol upgrades",
            Reason::S3CredentialsUnavailable => {
                "the storage credentials are unavailable; try again shortly"
            }
            Reason::Internal => "internal error",
        }
    }

    /// True when the client should authenticate (again): drives `WWW-Authenticate`.
    pub fn is_unauthenticated(self) -> bool {
        self.status() == 401
            && !matches!(
                self,
                Reason::WebhookSignatureInvalid
                    | Reason::WebhookTimestampOutOfRange
                    | Reason::WebhookReplayed
            )
    }

    /// A whole HTTP/1.1 answer with this reason, closing the connection: for the few places
    /// that write to a client below Pingora's HTTP layer (a request head that never ended).
    pub fn raw_response(self) -> Vec<u8> {
        let body = self.body();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status(),
            http::StatusCode::from_u16(self.status())
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }

    /// The JSON body sent to the client.
    pub fn body(self) -> String {
        // Codes and messages are fixed ASCII without quotes or backslashes, so plain
        // formatting yields valid JSON without an allocation-heavy serializer on the hot path.
        format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"}}",
            self.code(),
            self.message()
        )
    }

    /// The `WWW-Authenticate` value for 401 answers (RFC 6750 section 3).
    pub fn www_authenticate(self) -> String {
        if self == Reason::TokenMissing {
            "Bearer realm=\"portier\"".to_string()
        } else {
            format!(
                "Bearer realm=\"portier\", error=\"invalid_token\", error_description=\"{}\"",
                self.code()
            )
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_json_with_stable_codes() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let v: serde_json::Value = serde_json::from_str(&r.body()).expect("valid json");
            assert_eq!(v["error"], r.code());
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert!(r
                .code()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(Reason::TokenExpired.status(), 401);
        assert_eq!(Reason::PlanRequired.status(), 403);
        assert_eq!(Reason::NotOwner.status(), 403);
        assert_eq!(Reason::JwksUnavailable.status(), 503);
        assert_eq!(Reason::NoRoute.status(), 404);
        assert_eq!(Reason::BadPath.status(), 400);
        assert!(Reason::TokenExpired
            .www_authenticate()
            .contains("error_description=\"token_expired\""));
    }
}
