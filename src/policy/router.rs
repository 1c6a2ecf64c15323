//! A segment trie: lookup cost grows with the path's depth, not with the number of routes.
//! At every segment a static child beats a `{param}` child, which beats a `{tail..}`
//! wildcard; the search backtracks, so the most specific pattern that matches wins.

use std::collections::HashMap;

/// One segment of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatSeg {
    Static(String),
    Param(String),
    Tail(String),
}

#[derive(Debug, Default)]
struct Node {
    statics: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes whose pattern ends exactly here.
    here: Vec<usize>,
    /// Routes whose pattern ends with a tail wildcard at this depth.
    tail: Vec<usize>,
}

/// Byte range of a parameter value inside the canonical path.
pub type Span = (usize, usize);

#[derive(Debug, Default)]
pub struct Router {
    root: Node,
}

impl Router {
    /// The slot holding every route with exactly this pattern shape (parameter names aside);
    /// the caller checks the slot for conflicting methods before pushing.
    pub fn slot(&mut self, pattern: &[PatSeg]) -> &mut Vec<usize> {
        let mut node = &mut self.root;
        for seg in pattern {
            match seg {
                PatSeg::Static(s) => node = node.statics.entry(s.as_str().into()).or_default(),
                PatSeg::Param(_) => node = node.param.get_or_insert_with(Default::default),
                PatSeg::Tail(_) => return &mut node.tail,
            }
        }
        &mut node.here
    }

    /// Finds the most specific slot matching `path` (a canonical path) and fills `params` with
    /// the value spans of its parameters, in pattern order.
    pub fn lookup<'r>(&'r self, path: &str, params: &mut Vec<Span>) -> Option<&'r [usize]> {
        let mut segs: Vec<Span> = Vec::with_capacity(8);
        let bytes = path.as_bytes();
        let mut start = None;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'/' {
                if let Some(s) = start.take() {
                    segs.push((s, i));
                }
            } else if start.is_none() {
                start = Some(i);
            }
        }
        if let Some(s) = start {
            segs.push((s, bytes.len()));
        }
        params.clear();
        find(&self.root, path, &segs, params)
    }
}

fn find<'r>(
    node: &'r Node,
    path: &str,
    segs: &[Span],
    params: &mut Vec<Span>,
) -> Option<&'r [usize]> {
    let Some((&(s, e), rest)) = segs.split_first() else {
        if !node.here.is_empty() {
            return Some(&node.here);
        }
        if !node.tail.is_empty() {
            params.push((path.len(), path.len()));
            return Some(&node.tail);
        }
        return None;
    };
    if let Some(child) = node.statics.get(&path[s..e]) {
        if let Some(found) = find(child, path, rest, params) {
            return Some(found);
        }
    }
    if let Some(child) = &node.param {
        let mark = params.len();
        params.push((s, e));
        if let Some(found) = find(child, path, rest, params) {
            return Some(found);
        }
        params.truncate(mark);
    }
    if !node.tail.is_empty() {
        let end = segs.last().map(|&(_, e)| e).unwrap_or(e);
        params.push((s, end));
        return Some(&node.tail);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(s: &str) -> PatSeg {
        PatSeg::Static(s.into())
    }
    fn pa(s: &str) -> PatSeg {
        PatSeg::Param(s.into())
    }
    fn tl(s: &str) -> PatSeg {
        PatSeg::Tail(s.into())
    }

    fn router() -> Router {
        let mut r = Router::default();
        r.slot(&[st("api"), st("books")]).push(0);
        r.slot(&[st("api"), st("books"), pa("id")]).push(1);
        r.slot(&[st("api"), tl("rest")]).push(2);
        r.slot(&[st("api"), st("books"), st("new")]).push(3);
        r.slot(&[pa("a"), st("x")]).push(4);
        r.slot(&[]).push(5);
        r
    }

    fn hit(r: &Router, path: &str) -> Option<(usize, Vec<String>)> {
        let mut p = Vec::new();
        let slot = r.lookup(path, &mut p)?;
        Some((
            slot[0],
            p.iter().map(|&(s, e)| path[s..e].to_string()).collect(),
        ))
    }

    #[test]
    fn most_specific_wins() {
        let r = router();
        assert_eq!(hit(&r, "/api/books"), Some((0, vec![])));
        assert_eq!(hit(&r, "/api/books/"), Some((0, vec![])));
        assert_eq!(hit(&r, "/api/books/new"), Some((3, vec![])));
        assert_eq!(hit(&r, "/api/books/42"), Some((1, vec!["42".into()])));
        assert_eq!(
            hit(&r, "/api/books/42/x"),
            Some((2, vec!["books/42/x".into()]))
        );
        assert_eq!(hit(&r, "/api"), Some((2, vec!["".into()])));
        assert_eq!(hit(&r, "/"), Some((5, vec![])));
    }

    #[test]
    fn backtracks_from_static_to_param() {
        let r = router();
        // "api" is a static child, but /api/x only matches {a}/x.
        assert_eq!(hit(&r, "/zzz/x"), Some((4, vec!["zzz".into()])));
        assert_eq!(hit(&r, "/api/x"), Some((2, vec!["x".into()])));
        assert_eq!(hit(&r, "/nope"), None);
    }
}
