//! Diagnostics for fulcrum's TOML files: the proxy configuration and the scenario files read
//! by the simulator, the testbed and the lab.
//!
//! Every problem is a [`Diagnostic`] carrying `file:line:column`, the key path of the offending
//! value, the bad value and what would be valid. [`reader`] walks a TOML document with the
//! byte span of every key and value and collects diagnostics in a [`reader::Ctx`], so a parser
//! reports every problem at once; [`suggest()`] offers "did you mean" corrections for misspelt
//! names; [`load_with`] reads a file and hands it to a parser.
//!
//! ```
//! use fulcrum_diagnostics::reader::{as_int, Ctx, Table};
//!
//! let src = "port = \"80\"\n";
//! let mut ctx = Ctx::new(src, "demo.toml");
//! let doc = ctx.parse_document(src).unwrap();
//! let root = Table::new(doc.get_ref(), String::new(), None);
//! assert_eq!(as_int(&mut ctx, root.get("port").unwrap(), "port"), None);
//! let diags = ctx.finish();
//! assert_eq!(
//!     diags.errors[0].to_string(),
//!     "demo.toml:1:8: error: port: expected an integer, got string \"80\""
//! );
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod diagnostic;
pub mod reader;
mod suggest;

use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use suggest::suggest;

/// Read `path` and hand its text and name to `parse`; an unreadable file is a single
/// diagnostic naming `what` (`"configuration"`, `"scenario"`).
pub fn load_with<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&str, &str) -> Result<(T, Vec<Diagnostic>), Diagnostics>,
) -> Result<(T, Vec<Diagnostic>), Diagnostics> {
    let file_name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(source) => parse(&source, &file_name),
        Err(e) => Err(Diagnostics {
            errors: vec![Diagnostic {
                severity: Severity::Error,
                file: file_name,
                key_path: String::new(),
                line: 0,
                column: 0,
                message: format!("cannot read {what} file: {e}"),
            }],
            warnings: Vec::new(),
        }),
    }
}
