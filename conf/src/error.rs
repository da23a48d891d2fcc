//! The error types: one located [`Error`], and [`Errors`] for collecting every mistake in a file.

use std::fmt;

/// One mistake in a configuration file, located by line and key so a person can find and fix it.
///
/// Displays as `line 12: link.keepalive: expected a duration like "30s", found the integer 30`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The 1-based line the mistake is on, when known.
    pub line: Option<usize>,
    /// The full key path, like `link.keepalive` or `forward[1].listen` (array indexes count from 0).
    pub key: Option<String>,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl Error {
    /// Builds an error; used by callers that check values this crate cannot know about.
    pub fn new(line: Option<usize>, key: Option<String>, message: impl Into<String>) -> Error {
        Error {
            line,
            key,
            message: message.into(),
        }
    }

    /// Builds an error on a known line, the common case inside the crate.
    pub(crate) fn at(line: usize, key: Option<String>, message: impl Into<String>) -> Error {
        Error::new(Some(line), key, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Several errors, so one run can report every mistake in a file instead of only the first.
///
/// Collect with [`Errors::take`] / [`Errors::opt`], then turn into a result with
/// [`Errors::into_result`]. Displays one error per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Errors(pub Vec<Error>);

impl Errors {
    /// An empty collection.
    pub fn new() -> Errors {
        Errors(Vec::new())
    }

    /// Records one error.
    pub fn push(&mut self, error: Error) {
        self.0.push(error);
    }

    /// Keeps going after a failed step: records the error(s) and returns `None`, or returns the value.
    pub fn take<T, E: Into<Errors>>(&mut self, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(errors) => {
                self.0.extend(errors.into().0);
                None
            }
        }
    }

    /// Like [`Errors::take`] for getters that return `Result<Option<T>, _>`: a missing key and a
    /// bad key both give `None`, but only the bad one is recorded.
    pub fn opt<T, E: Into<Errors>>(&mut self, result: Result<Option<T>, E>) -> Option<T> {
        self.take(result).flatten()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was recorded, otherwise every error sorted by line (stable, so errors
    /// on one line keep their order; errors without a line go last).
    pub fn into_result(mut self) -> Result<(), Errors> {
        if self.0.is_empty() {
            return Ok(());
        }
        self.0.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(self)
    }
}

impl From<Error> for Errors {
    fn from(error: Error) -> Errors {
        Errors(vec![error])
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}
