//! A spanned TOML reader shared by the proxy configuration and scenario files: tables with
//! key paths and locations, typed accessors, and a collector of located diagnostics.
//!
//! Accessors that meet a value of the wrong type report it to the [`Ctx`] and return `None`,
//! so a parser carries on and finds every other problem in the same pass.

use std::ops::Range;

use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use crate::{suggest, Diagnostic, Diagnostics, Severity};

/// A TOML value with its byte span.
pub type Value<'i> = Spanned<DeValue<'i>>;

/// Collects located diagnostics for one source file.
pub struct Ctx<'s> {
    file: &'s str,
    src: &'s str,
    line_starts: Vec<usize>,
    /// Errors found so far, in the order they were found.
    pub errors: Vec<Diagnostic>,
    /// Warnings found so far, in the order they were found.
    pub warnings: Vec<Diagnostic>,
}

impl<'s> Ctx<'s> {
    /// A collector for `src`, labelling every diagnostic with `file`.
    pub fn new(src: &'s str, file: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Ctx {
            file,
            src,
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .src
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }

    fn diagnostic(
        &self,
        severity: Severity,
        span: Option<&Range<usize>>,
        path: &str,
        message: String,
    ) -> Diagnostic {
        let (line, column) = span.map_or((1, 1), |s| self.position(s.start));
        Diagnostic {
            severity,
            file: self.file.to_string(),
            key_path: path.to_string(),
            line,
            column,
            message,
        }
    }

    /// Record an error at `span` (line 1, column 1 without one) about the key at `path`.
    pub fn error(&mut self, span: Option<&Range<usize>>, path: &str, message: impl Into<String>) {
        let d = self.diagnostic(Severity::Error, span, path, message.into());
        self.errors.push(d);
    }

    /// Record a warning at `span` (line 1, column 1 without one) about the key at `path`.
    pub fn warning(&mut self, span: Option<&Range<usize>>, path: &str, message: impl Into<String>) {
        let d = self.diagnostic(Severity::Warning, span, path, message.into());
        self.warnings.push(d);
    }
}

/// A table with its entries in file order and its own key path and location.
pub struct Table<'a, 'i> {
    /// Keys and values, sorted by where the key is written.
    pub entries: Vec<(&'a Spanned<DeString<'i>>, &'a Value<'i>)>,
    /// Dotted key path of the table itself (empty for the document root).
    pub path: String,
    /// Where the table is written (`None` for the document root).
    pub span: Option<Range<usize>>,
}

impl<'a, 'i> Table<'a, 'i> {
    /// Wrap `table`, found at key path `path` and byte range `span`.
    pub fn new(table: &'a DeTable<'i>, path: String, span: Option<Range<usize>>) -> Self {
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        Table {
            entries,
            path,
            span,
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| *v)
    }

    /// The key path of `key` inside this table.
    pub fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Report every key not in `known`, with a suggestion when one is close.
    pub fn check_keys(&self, ctx: &mut Ctx<'_>, known: &[&str]) {
        for (key, _) in &self.entries {
            let name: &str = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let scope = if self.path.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{}`", self.path)
            };
            let mut msg = format!("unknown key `{name}` {scope}");
            if let Some(s) = suggest(name, known.iter().copied()) {
                msg.push_str(&format!(" (did you mean `{s}`?)"));
            }
            msg.push_str(&format!("; valid keys: {}", known.join(", ")));
            ctx.error(Some(&key.span()), &self.child(name), msg);
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A short description of a value for "expected X, got Y" messages.
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

/// Report that `v` at `path` is not `expected` (e.g. `"a string"`), naming what it is instead.
pub fn type_error(ctx: &mut Ctx<'_>, v: &Value<'_>, path: &str, expected: &str) {
    ctx.error(
        Some(&v.span()),
        path,
        format!("expected {expected}, got {}", describe(v.get_ref())),
    );
}

/// `v` as a table at key path `path`; anything else is reported as not `expected`.
pub fn as_table<'a, 'i>(
    ctx: &mut Ctx<'_>,
    v: &'a Value<'i>,
    path: String,
    expected: &str,
) -> Option<Table<'a, 'i>> {
    match v.get_ref() {
        DeValue::Table(t) => Some(Table::new(t, path, Some(v.span()))),
        _ => {
            type_error(ctx, v, &path, expected);
            None
        }
    }
}

/// `v` as a string; anything else is reported.
pub fn as_str<'a>(ctx: &mut Ctx<'_>, v: &'a Value<'_>, path: &str) -> Option<&'a str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => {
            type_error(ctx, v, path, "a string");
            None
        }
    }
}

/// `v` as an integer; anything else, or an integer beyond `i128`, is reported.
pub fn as_int(ctx: &mut Ctx<'_>, v: &Value<'_>, path: &str) -> Option<i128> {
    match v.get_ref() {
        DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                ctx.error(
                    Some(&v.span()),
                    path,
                    format!("integer {i} is out of range"),
                );
                None
            }
        },
        _ => {
            type_error(ctx, v, path, "an integer");
            None
        }
    }
}

/// `v` as a finite number; integers are accepted, anything else is reported.
pub fn number(ctx: &mut Ctx<'_>, v: &Value<'_>, path: &str) -> Option<f64> {
    match v.get_ref() {
        DeValue::Integer(_) => as_int(ctx, v, path).map(|n| n as f64),
        DeValue::Float(f) => match f.as_str().parse::<f64>() {
            Ok(x) if x.is_finite() => Some(x),
            _ => {
                ctx.error(
                    Some(&v.span()),
                    path,
                    format!("expected a finite number, got float {f}"),
                );
                None
            }
        },
        _ => {
            type_error(ctx, v, path, "a number");
            None
        }
    }
}

impl Ctx<'_> {
    /// Parse `source` as TOML; a syntax error is reported and ends the walk.
    pub fn parse_document<'i>(&mut self, source: &'i str) -> Option<Spanned<DeTable<'i>>> {
        match DeTable::parse(source) {
            Ok(doc) => Some(doc),
            Err(e) => {
                let span = e.span();
                let msg = format!("invalid TOML: {}", e.message().trim_end());
                self.error(Some(&span.unwrap_or(0..0)), "", msg);
                None
            }
        }
    }

    /// The collected diagnostics, each list sorted by position.
    pub fn finish(mut self) -> Diagnostics {
        self.errors.sort_by_key(|d| (d.line, d.column));
        self.warnings.sort_by_key(|d| (d.line, d.column));
        Diagnostics {
            errors: self.errors,
            warnings: self.warnings,
        }
    }
}
