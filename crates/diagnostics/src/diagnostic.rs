//! Located, human-readable problems in configuration and scenario files.

use std::fmt;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file is usable but probably not what was intended.
    Warning,
}

impl Severity {
    /// The lowercase label used when printing (`"error"` or `"warning"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in a configuration or scenario file.
///
/// Displays as `{file}:{line}:{column}: {severity}: {key_path}: {message}`.
/// When the key path is empty (syntax errors, unreadable files) that segment is
/// omitted, and when the line is unknown (`0`) the position is omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Whether this is an error or a warning.
    pub severity: Severity,
    /// Name of the file the problem was found in.
    pub file: String,
    /// Dotted key path of the offending value, e.g. `pools.web.backends[1].weight`.
    pub key_path: String,
    /// 1-based line of the offending value (or key), `0` if unknown.
    pub line: usize,
    /// 1-based column (in characters) of the offending value (or key).
    pub column: usize,
    /// What is wrong, including the bad value and what would be valid.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: ", self.file, self.severity)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}: ",
                self.file, self.line, self.column, self.severity
            )?;
        }
        if !self.key_path.is_empty() {
            write!(f, "{}: ", self.key_path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration or scenario file.
///
/// Displays one diagnostic per line followed by a summary line such as
/// `2 errors, 0 warnings`.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    /// Problems that make the file unusable.
    pub errors: Vec<Diagnostic>,
    /// Problems that do not prevent the configuration from being used.
    pub warnings: Vec<Diagnostic>,
}

impl Diagnostics {
    /// True when there are neither errors nor warnings.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty() && self.warnings.is_empty()
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in self.errors.iter().chain(self.warnings.iter()) {
            writeln!(f, "{d}")?;
        }
        write!(
            f,
            "{}, {}",
            plural(self.errors.len(), "error"),
            plural(self.warnings.len(), "warning")
        )
    }
}

impl std::error::Error for Diagnostics {}
