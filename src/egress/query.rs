//! The query string of an egress request, decoded once by one function for all three uses:
//! the SigV4 canonical query ([`super::sigv4`]), the operation and its parameters
//! ([`super::ops`]), and the query sent to the store. `%XX` is decoded (a malformed escape is
//! an error, not a literal); `+` is a literal plus everywhere, as SigV4's canonical form has
//! it (clients encode a space as `%20` and a plus as `%2B`; boto3 does). What goes to the
//! store is rebuilt from the decoded pairs, encoded the SigV4 way and sorted, never the
//! client's bytes, so the store cannot read a parameter differently from Portier.

use crate::s3::encode_query_component;

/// Why a query cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("a query parameter is not validly percent-encoded UTF-8")]
    Encoding,
}

/// The presign parameters of a SigV4 query signature: checked by the verifier, never sent on.
pub const PRESIGN: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// Whether a decoded name is one of the [`PRESIGN`] parameters.
pub fn is_presign(name: &str) -> bool {
    PRESIGN.contains(&name)
}

/// Percent-decodes `s` (every `%XX`, nothing else: `+` is a literal) into UTF-8.
pub fn decode(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).and_then(|&c| crate::path::hex(c));
            let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
                return Err(QueryError::Encoding);
            };
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::Encoding)
}

/// Every `name=value` pair of `raw`, decoded, in the order sent (empty parts skipped; a part
/// without `=` has an empty value).
pub fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, QueryError> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The first name given more than once, if any.
pub fn repeated(pairs: &[(String, String)]) -> Option<&str> {
    pairs
        .iter()
        .enumerate()
        .find(|(i, (k, _))| pairs[..*i].iter().any(|(o, _)| o == k))
        .map(|(_, (k, _))| k.as_str())
}

/// SigV4's canonical query of `pairs`: each name and value encoded (unreserved characters
/// kept, everything else `%XX`), sorted by name then value, joined with `&`. Also the query
/// Portier sends to the store, which is therefore exactly what its own signature covers.
pub fn canonical<'a>(pairs: impl IntoIterator<Item = &'a (String, String)>) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| (encode_query_component(k), encode_query_component(v)))
        .collect();
    enc.sort();
    let mut out = String::new();
    for (k, v) in enc {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&k);
        out.push('=');
        out.push_str(&v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_once_plus_is_literal_and_rebuilt_sorted() {
        let p = pairs(Some("prefix=user_a/a+b%20c&list-type=2&&uploads")).unwrap();
        assert_eq!(
            p,
            vec![
                ("prefix".to_string(), "user_a/a+b c".to_string()),
                ("list-type".to_string(), "2".to_string()),
                ("uploads".to_string(), String::new()),
            ]
        );
        assert_eq!(
            canonical(&p),
            "list-type=2&prefix=user_a%2Fa%2Bb%20c&uploads="
        );
        // The same pairs however they were encoded.
        let q = pairs(Some("uploads=&prefix=user_a%2Fa%2Bb%20c&list%2Dtype=2")).unwrap();
        assert_eq!(canonical(&q), canonical(&p));
        for bad in ["a=%2", "a=%zz", "%=1", "a=%FF"] {
            assert_eq!(pairs(Some(bad)), Err(QueryError::Encoding), "{bad}");
        }
    }

    #[test]
    fn repeated_names() {
        let p = pairs(Some("prefix=a&list-type=2&prefix=b")).unwrap();
        assert_eq!(repeated(&p), Some("prefix"));
        let p = pairs(Some("prefix=a&list-type=2")).unwrap();
        assert_eq!(repeated(&p), None);
        let p = pairs(Some("prefix=a&pre%66ix=b")).unwrap();
        assert_eq!(repeated(&p), Some("prefix"), "decoded before comparing");
    }

    #[test]
    fn presign_names_are_exact() {
        assert!(is_presign("X-Amz-Signature"));
        assert!(!is_presign("x-amz-signature"));
        assert!(!is_presign("X-Amz-Foo"));
    }
}
