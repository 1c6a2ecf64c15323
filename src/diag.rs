//! Diagnostics for config and policy files: `file:line:col: key: message`, collected, never
//! stopped at the first one, so a platform engineer fixes a whole edit in one pass.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable finding code (`syntax`, `invalid`, `shadowed_route`, ...), for CI tooling.
    pub code: &'static str,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub key: String,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic located at byte `offset` of `src` (the text of `file`).
    pub fn at(
        file: &Path,
        src: &str,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, col) = line_col(src, offset);
        Diagnostic {
            severity: Severity::Error,
            code: "invalid",
            file: file.to_path_buf(),
            line,
            col,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A diagnostic about a whole file (missing, unreadable).
    pub fn file(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code: "io",
            file: file.to_path_buf(),
            line: 1,
            col: 1,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A diagnostic at the start of a known line.
    pub fn line(
        file: &Path,
        line: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code: "invalid",
            file: file.to_path_buf(),
            line,
            col: 1,
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}:{}: {}{}: {} [{}]",
            self.file.display(),
            self.line,
            self.col,
            sev,
            self.key,
            self.message,
            self.code
        )
    }
}

/// A list of diagnostics that is an error when it holds at least one error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn errors(&self) -> usize {
        self.0
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
    pub fn warnings(&self) -> usize {
        self.0.len() - self.errors()
    }
    pub fn sorted(mut self) -> Self {
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Line starts of a source, so that the line of each of many offsets is a binary search
/// rather than a rescan (compiling 10,000 routes rescanned the file 10,000 times).
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(src: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based line of byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Turns a `toml` parse/deserialize error into a diagnostic. The key is the text the error
/// points at when it is a bare key, so `deny_unknown_fields` errors name the offending key.
pub fn from_toml_error(file: &Path, src: &str, err: &toml::de::Error) -> Diagnostic {
    let span = err.span().unwrap_or(0..0);
    let snippet = src.get(span.clone()).unwrap_or("").trim();
    let key = if !snippet.is_empty()
        && snippet.len() <= 64
        && snippet
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'))
    {
        snippet.trim_matches('"').to_string()
    } else {
        "toml".to_string()
    };
    Diagnostic::at(file, src, span.start, key, err.message().trim().to_string()).code("syntax")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn line_index_agrees_with_line_col() {
        let src = "a = 1\nbb = 2\n\nccc\n";
        let idx = LineIndex::new(src);
        for off in 0..=src.len() {
            assert_eq!(idx.line(off), line_col(src, off).0, "offset {off}");
        }
    }

    #[test]
    fn display_is_file_line_col_key_message() {
        let d = Diagnostic::at(Path::new("p.toml"), "x\ny", 2, "route.path", "bad");
        assert_eq!(d.to_string(), "p.toml:2:1: route.path: bad [invalid]");
    }
}
