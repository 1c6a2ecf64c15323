//! The checked form of an egress service's `[[allow]]` rules: what each grants
//! ([`Permission`]) on which keys ([`KeyGlob`]), and when one rule covers another. A leaf
//! module (it imports nothing of the crate): the config checker builds these and the egress
//! listener matches requests against them, so config never imports egress.

/// What a rule grants: the object permissions operations are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// GetObject (and the source of a copy).
    Get,
    Head,
    /// PutObject, the multipart family and the destination of a copy.
    Put,
    /// DeleteObject (each key of DeleteObjects).
    Delete,
    /// ListObjectsV2 of a prefix.
    List,
}

impl Permission {
    /// The names a rule's `operations` may list.
    pub fn parse(name: &str) -> Option<Vec<Permission>> {
        use Permission::*;
        Some(match name {
            "GetObject" => vec![Get],
            "HeadObject" => vec![Head],
            "PutObject" => vec![Put],
            "DeleteObject" => vec![Delete],
            "ListObjectsV2" => vec![List],
            "read" => vec![Get, Head, List],
            "write" => vec![Put],
            "delete" => vec![Delete],
            "*" => vec![Get, Head, Put, Delete, List],
            _ => return None,
        })
    }
}

/// A key pattern: `*` matches within one segment (no `/`), `**` matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGlob(String);

impl KeyGlob {
    pub fn new(p: &str) -> Result<KeyGlob, &'static str> {
        if p.is_empty() {
            return Err("a key pattern cannot be empty");
        }
        if p.contains("***") {
            return Err("use * (one segment) or ** (anything)");
        }
        Ok(KeyGlob(p.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, key: &str) -> bool {
        glob(self.0.as_bytes(), key.as_bytes())
    }

    /// Whether every key under `prefix` that this pattern could match starts there: a listing
    /// of `prefix` is allowed when the prefix itself is matched by the pattern's `**` form.
    pub fn covers_prefix(&self, prefix: &str) -> bool {
        self.grants_listing() && glob(self.0.as_bytes(), prefix.as_bytes())
    }

    /// Whether the pattern can allow a listing at all (it ends with `**`).
    pub fn grants_listing(&self) -> bool {
        self.0.ends_with("**")
    }

    /// Whether every key this pattern matches, `other` matches too (`user_*/images/**` is
    /// within `user_*/**` and within `**`). Decided on the patterns themselves: `other`'s `**`
    /// takes any run of this pattern's pieces, its `*` any run without a `/` or a `**`, its
    /// other characters only themselves. Sound (a `true` is always right); a pattern that
    /// is within another only through some coincidence of letters may be reported `false`.
    pub fn within(&self, other: &KeyGlob) -> bool {
        within(&tokens(&self.0), &tokens(&other.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: anything but `/`.
    Star,
    /// `**`: anything.
    Stars,
}

fn tokens(p: &str) -> Vec<Token> {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'*' {
            if b.get(i + 1) == Some(&b'*') {
                out.push(Token::Stars);
                i += 2;
            } else {
                out.push(Token::Star);
                i += 1;
            }
        } else {
            out.push(Token::Byte(b[i]));
            i += 1;
        }
    }
    out
}

/// Whether the pattern `inner` (as tokens) is within the pattern `outer`.
fn within(inner: &[Token], outer: &[Token]) -> bool {
    match outer.first() {
        None => inner.is_empty(),
        Some(Token::Stars) => (0..=inner.len()).any(|i| within(&inner[i..], &outer[1..])),
        Some(Token::Star) => {
            let mut i = 0;
            loop {
                if within(&inner[i..], &outer[1..]) {
                    return true;
                }
                match inner.get(i) {
                    None | Some(Token::Byte(b'/')) | Some(Token::Stars) => return false,
                    Some(_) => i += 1,
                }
            }
        }
        Some(Token::Byte(c)) => {
            inner.first() == Some(&Token::Byte(*c)) && within(&inner[1..], &outer[1..])
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// One rule of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub permissions: Vec<Permission>,
    pub keys: Vec<KeyGlob>,
}

impl Rule {
    /// Whether `other` alone allows everything this rule allows: each permission on each key
    /// pattern (HeadObject is also allowed by GetObject; a listing needs a `**` pattern).
    pub fn covered_by(&self, other: &Rule) -> bool {
        self.permissions.iter().all(|&p| {
            self.keys.iter().all(|k| {
                if p == Permission::List && !k.grants_listing() {
                    // This pattern allows no listing: nothing to cover.
                    return true;
                }
                other.keys.iter().any(|o| {
                    let granted = other.permissions.contains(&p)
                        || (p == Permission::Head && other.permissions.contains(&Permission::Get));
                    granted && k.within(o) && (p != Permission::List || o.grants_listing())
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str) -> KeyGlob {
        KeyGlob::new(p).unwrap()
    }

    #[test]
    fn globs() {
        let g1 = g("user_*/images/**");
        assert!(g1.matches("user_2abc/images/cat.png"));
        assert!(g1.matches("user_2abc/images/a/b.png"));
        assert!(!g1.matches("user_2abc/videos/v.mp4"));
        assert!(
            !g1.matches("user_a/b/images/x.png"),
            "* stays in one segment"
        );
        assert!(g1.covers_prefix("user_2abc/images/"));
        assert!(!g1.covers_prefix("user_2abc/"));
        assert!(!g1.covers_prefix(""));
        assert!(g("**").covers_prefix(""));
    }

    #[test]
    fn pattern_inclusion() {
        for (inner, outer) in [
            ("user_*/images/**", "**"),
            ("user_*/images/**", "user_*/**"),
            ("user_a/images/x.png", "user_*/images/*"),
            ("user_*/images/*.png", "user_*/images/*"),
            ("user_*/images/*", "user_*/images/**"),
            ("a/**", "a/**"),
            ("a*b/c", "**"),
        ] {
            assert!(g(inner).within(&g(outer)), "{inner} within {outer}");
        }
        for (inner, outer) in [
            ("**", "user_*/**"),
            ("user_*/**", "user_*/images/**"),
            ("user_*/images/**", "user_*/images/*"),
            ("user_*/x", "user_a/x"),
            ("a/**", "a/*"),
            ("*", "a*"),
        ] {
            assert!(!g(inner).within(&g(outer)), "{inner} not within {outer}");
        }
    }

    fn rule(ops: &[&str], keys: &[&str]) -> Rule {
        Rule {
            permissions: ops
                .iter()
                .flat_map(|o| Permission::parse(o).unwrap())
                .collect(),
            keys: keys.iter().map(|k| g(k)).collect(),
        }
    }

    #[test]
    fn rule_coverage() {
        let read_all = rule(&["read"], &["**"]);
        assert!(rule(&["GetObject"], &["user_*/images/**"]).covered_by(&read_all));
        assert!(rule(&["HeadObject", "ListObjectsV2"], &["user_*/**"]).covered_by(&read_all));
        assert!(
            rule(&["HeadObject"], &["a/*"]).covered_by(&rule(&["GetObject"], &["a/*"])),
            "GetObject allows HeadObject"
        );
        assert!(!rule(&["PutObject"], &["user_*/**"]).covered_by(&read_all));
        assert!(!read_all.covered_by(&rule(&["read"], &["user_*/**"])));
        // Listing needs a ** pattern on the covering side.
        assert!(!rule(&["ListObjectsV2"], &["a/**"]).covered_by(&rule(&["read"], &["a/*"])));
        assert!(rule(&["read"], &["a/*"]).covered_by(&rule(&["GetObject", "HeadObject"], &["a/*"])));
    }
}
