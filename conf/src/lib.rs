//! Reads the configuration files of tether-edge and tether-hub.
//!
//! The format is a strict subset of TOML 1.0, so files open in any TOML-aware editor, but
//! everything this crate accepts means exactly one thing:
//!
//! - comments `# ...` (whole line or after a value) and blank lines;
//! - `key = value` with bare keys (`A-Z a-z 0-9 _ -`); dotted and quoted keys are errors;
//! - tables `[name]` and `[a.b]`, arrays of tables `[[name]]`;
//! - values: basic strings `"..."` (escapes `\" \\ \n \t \r \b \f \uXXXX \UXXXXXXXX`),
//!   literal strings `'...'`, integers (`-12`, `1_000`), `true`/`false`, and arrays
//!   `[v, v]` of those, which may span lines and end in a trailing comma;
//! - floats, dates, inline tables, multi-line strings and nested arrays are errors.
//!
//! Duplicate keys and tables are errors, and so are keys the program never reads.
//!
//! # Errors
//!
//! Every [`Error`] carries the line and the full key path (`link.keepalive`,
//! `forward[1].listen`, indexes from 0) and a message saying what to write instead.
//!
//! Design: syntax errors stop [`Document::parse`] at the first one (after a syntax error
//! the rest of the file cannot be trusted). Getters on a [`Table`] return
//! `Result<Option<T>, Error>`: with `?` a program stops at the first bad value; to report
//! every bad value at once it passes each result through an [`Errors`] collector instead
//! ([`Errors::opt`] records the error and yields `None`). Each lookup marks the key read
//! inside the document, so [`Table::finish`] on the root, called last, reports *every* key
//! nobody read anywhere in the file, with a "did you mean" hint when one is close.
//!
//! ```
//! use std::time::Duration;
//! use tether_conf::{Document, Errors};
//!
//! let text = "name = \"gw-1\"\n[link]\nkeepalive = 30\nbuffer = \"64KiB\"\nretires = 3\n";
//! let doc = Document::parse(text)?;
//! let mut errors = Errors::new();
//! let mut root = doc.root();
//! let name = errors.opt(root.str("name")).unwrap_or("edge");
//! if let Some(mut link) = errors.opt(root.table("link")) {
//!     let keepalive = errors.opt(link.duration("keepalive")).unwrap_or(Duration::from_secs(30));
//!     let buffer = errors.opt(link.bytes("buffer")).unwrap_or(4096);
//!     let retries = errors.opt(link.u64("retries")).unwrap_or(5);
//! #   let _ = (name, keepalive, buffer, retries);
//! }
//! errors.take(root.finish());
//! let report = errors.into_result().unwrap_err().to_string();
//! assert_eq!(
//!     report,
//!     "line 3: link.keepalive: expected a duration like \"30s\", found the integer 30; write \"30s\" or \"30ms\"\n\
//!      line 5: link.retires: unknown key; did you mean retries?"
//! );
//! # Ok::<(), tether_conf::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
mod error;
mod parse;
mod table;
mod units;
mod value;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

pub use error::{Error, Errors};
pub use table::Table;
pub use units::{parse_bytes, parse_duration};

/// A parsed configuration file; read it through [`Document::root`].
#[derive(Debug)]
pub struct Document {
    root: value::TableData,
}

impl Document {
    /// Parses a whole file, failing at the first syntax error with its line.
    pub fn parse(text: &str) -> Result<Document, Error> {
        parse::parse(text).map(|root| Document { root })
    }

    /// The top-level table. Views share the document's read marks, so calling this twice is fine.
    pub fn root(&self) -> Table<'_> {
        Table::new(&self.root, String::new())
    }
}
