//! What Portier knows about Next.js's own URLs, shared by the config checks, the policy
//! compiler, `portier test` and admission (a leaf: it imports none of them): the page a Pages
//! Router data request belongs to, and which redirect targets a person may be sent to.

/// A Pages Router data request, as Next.js reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataRequest {
    /// The page Next.js renders the data of: its route decides.
    Page(String),
    /// A path Next.js reads in a way Portier does not follow (an interception-route marker):
    /// refused rather than guessed at.
    Unclear,
}

/// `/_next/data/<build>/<page>.json`: the page Next.js renders, exactly as Next.js 16 maps it
/// (`NextDataPathnameNormalizer`: strip the prefix and `.json`, then `denormalizePagePath`,
/// which drops a leading `/index/` unless the rest is a dynamic-route pattern, and turns
/// `/index` into `/`). So `index.json` -> `/`, `.json` -> `/`, `a/index.json` -> `/a/index`,
/// `index/a.json` -> `/a`, `index/index.json` -> `/index`. `None` for anything else. The build
/// id is not checked (Next.js 404s a stale one).
pub fn data_request(path: &str) -> Option<DataRequest> {
    let rest = path.strip_prefix("/_next/data/")?;
    let (build, tail) = rest.split_once('/')?;
    if build.is_empty() || !path.ends_with(".json") {
        return None;
    }
    let page = format!("/{}", &tail[..tail.len() - ".json".len()]);
    // `isDynamicRoute` first extracts interception routes, and throws on a malformed one.
    const MARKERS: [&str; 4] = ["(..)(..)", "(.)", "(..)", "(...)"];
    if page
        .split('/')
        .any(|seg| MARKERS.iter().any(|m| seg.starts_with(m)))
    {
        return Some(DataRequest::Unclear);
    }
    // `isDynamicRoute` (strict): a segment that is `[` name `]`.
    let dynamic = page
        .split('/')
        .any(|seg| seg.len() >= 3 && seg.starts_with('[') && seg.ends_with(']'));
    let page = match page.strip_prefix("/index") {
        Some(rest) if rest.starts_with('/') && !dynamic => rest.to_owned(),
        Some("") => "/".to_owned(),
        _ => page,
    };
    Some(DataRequest::Page(page))
}

/// A configured redirect target (`sign_in_url`, `upgrade_url`): a path on this site or an
/// https URL. The error says what is expected.
pub fn check_redirect_target(v: &str) -> Result<(), &'static str> {
    let path_ok = v.starts_with('/')
        && !v.starts_with("//")
        && !v.contains('\\')
        && v.parse::<http::Uri>().is_ok();
    let abs_ok = v
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| u.scheme_str() == Some("https") && u.host().is_some());
    if path_ok || abs_ok {
        Ok(())
    } else {
        Err("a path on this site (/sign-in) or an https:// URL")
    }
}
