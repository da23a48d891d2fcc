//! [`Table`]: typed getters over one table, and the unknown-key check in [`Table::finish`].

use crate::error::{Error, Errors};
use crate::units::{parse_bytes, parse_duration};
use crate::value::{join, Node, TableData, Value};
use std::time::Duration;

/// A view onto one table of a [`Document`](crate::Document).
///
/// Every getter marks its key as read, in the document itself, so [`Table::finish`] can report
/// the keys nobody read: those are misspellings or leftovers, and silently ignoring them would
/// hide mistakes. Getters return `Ok(None)` when the key is absent and `Err` when it is present
/// but unusable; errors carry the key's full path and line.
#[derive(Debug)]
pub struct Table<'a> {
    data: &'a TableData,
    path: String,
}

impl<'a> Table<'a> {
    pub(crate) fn new(data: &'a TableData, path: String) -> Table<'a> {
        Table { data, path }
    }

    /// The table's path, like `link.tls` or `forward[1]`; empty for the root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The line of the table's `[header]`, if it has one (the root and implied tables do not).
    pub fn line(&self) -> Option<usize> {
        self.data.line
    }

    /// All keys of this table in file order, for free-form maps (like labels); marks nothing read.
    pub fn keys(&self) -> Vec<&'a str> {
        self.data.entries.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The line `key` is on, for callers that validate a value themselves. Marks nothing read.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.data.get(key).map(|n| n.line)
    }

    /// An error about `key` at its line (or at this table's header when the key is absent, e.g.
    /// "missing"). Pass `""` to blame the table itself.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        let path = join(&self.path, key);
        let line = if key.is_empty() {
            None
        } else {
            self.line_of(key)
        };
        Error::new(
            line.or(self.data.line),
            (!path.is_empty()).then_some(path),
            message,
        )
    }

    /// Looks `key` up, marking it read and remembering that the program knows it.
    fn lookup(&self, key: &str) -> Option<&'a Node> {
        if let Ok(mut asked) = self.data.asked.try_borrow_mut() {
            if !asked.iter().any(|k| k == key) {
                asked.push(key.to_string());
            }
        }
        let node = self.data.get(key)?;
        node.read.set(true);
        Some(node)
    }

    fn expected(&self, key: &str, node: &Node, what: &str) -> Error {
        self.error(key, format!("expected {what}, found {}", node.value.kind()))
    }

    /// Re-locates an error from the unit parsers at `key`.
    fn locate(&self, key: &str, error: Error) -> Error {
        self.error(key, error.message)
    }

    /// A string.
    pub fn str(&mut self, key: &str) -> Result<Option<&'a str>, Error> {
        let Some(node) = self.lookup(key) else {
            return Ok(None);
        };
        match &node.value {
            Value::Str(s) => Ok(Some(s.as_str())),
            _ => Err(self.expected(key, node, "a string in quotes")),
        }
    }

    /// A non-negative integer.
    pub fn u64(&mut self, key: &str) -> Result<Option<u64>, Error> {
        let Some(node) = self.lookup(key) else {
            return Ok(None);
        };
        match &node.value {
            Value::Int(n) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| self.error(key, format!("must not be negative, found {n}"))),
            _ => Err(self.expected(key, node, "a whole number")),
        }
    }

    /// `true` or `false`.
    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, Error> {
        let Some(node) = self.lookup(key) else {
            return Ok(None);
        };
        match &node.value {
            Value::Bool(b) => Ok(Some(*b)),
            _ => Err(self.expected(key, node, "true or false")),
        }
    }

    /// A duration string, see [`parse_duration`]. A bare integer is an error: its unit would be a guess.
    pub fn duration(&mut self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(node) = self.lookup(key) else {
            return Ok(None);
        };
        match &node.value {
            Value::Str(s) => parse_duration(s).map(Some).map_err(|e| self.locate(key, e)),
            Value::Int(n) => Err(self.error(
                key,
                format!("expected a duration like \"30s\", found the integer {n}; write \"{n}s\" or \"{n}ms\""),
            )),
            _ => Err(self.expected(key, node, "a duration like \"30s\"")),
        }
    }

    /// A byte size: a non-negative integer, or a string like "64KiB", see [`parse_bytes`].
    pub fn bytes(&mut self, key: &str) -> Result<Option<u64>, Error> {
        let Some(node) = self.lookup(key) else {
            return Ok(None);
        };
        match &node.value {
            Value::Int(n) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| self.error(key, format!("a size cannot be negative, found {n}"))),
            Value::Str(s) => parse_bytes(s).map(Some).map_err(|e| self.locate(key, e)),
            _ => Err(self.expected(key, node, "a size like \"64KiB\" or a number of bytes")),
        }
    }

    /// Gets the elements of an array, converting each; errors name the element, like `peers[2]`.
    fn array<T>(
        &mut self,
        key: &str,
        what: &str,
        convert: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>, Error> {
        let Some(node) = self.lookup(key) else {
            return Ok(None);
        };
        let Value::Array(items) = &node.value else {
            return Err(self.expected(key, node, &format!("an array of {what}")));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Some(value) = convert(item) else {
                let path = join(&self.path, &format!("{key}[{i}]"));
                let message = format!("expected {what}, found {}", item.kind());
                return Err(Error::at(node.line, Some(path), message));
            };
            out.push(value);
        }
        Ok(Some(out))
    }

    /// An array of strings.
    pub fn str_array(&mut self, key: &str) -> Result<Option<Vec<&'a str>>, Error> {
        self.array(key, "strings", |v| match v {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// An array of non-negative integers.
    pub fn u64_array(&mut self, key: &str) -> Result<Option<Vec<u64>>, Error> {
        self.array(key, "non-negative whole numbers", |v| match v {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        })
    }

    /// The sub-table written as a `[key]` header (or implied by `[key.x]`).
    pub fn table(&mut self, key: &str) -> Result<Option<Table<'a>>, Error> {
        let Some(node) = self.lookup(key) else {
            return Ok(None);
        };
        let path = join(&self.path, key);
        match &node.value {
            Value::Table(t) => Ok(Some(Table::new(t, path))),
            _ => Err(self.expected(key, node, &format!("a table [{path}]"))),
        }
    }

    /// The elements of an array of tables written as repeated `[[key]]` headers; empty if absent.
    /// Element paths are `key[0]`, `key[1]`, ...
    pub fn tables(&mut self, key: &str) -> Result<Vec<Table<'a>>, Error> {
        let Some(node) = self.lookup(key) else {
            return Ok(Vec::new());
        };
        let path = join(&self.path, key);
        match &node.value {
            Value::Tables(list) => Ok(list
                .iter()
                .enumerate()
                .map(|(i, t)| Table::new(t, format!("{path}[{i}]")))
                .collect()),
            _ => Err(self.expected(key, node, &format!("[[{path}]] (an array of tables)"))),
        }
    }

    /// Named children of `[key]`, written as `[key.NAME]` headers, like `[upstream.kube-apiserver]`;
    /// in file order, empty if absent. Every child must be a table.
    pub fn sub_tables(&mut self, key: &str) -> Result<Vec<(&'a str, Table<'a>)>, Error> {
        let Some(mut parent) = self.table(key)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let data = parent.data;
        for (name, _) in &data.entries {
            if let Some(child) = parent.table(name)? {
                out.push((name.as_str(), child));
            }
        }
        Ok(out)
    }

    /// Checks that every key in this table and in every sub-table read through it was read;
    /// reports each one nobody read (a sub-table nobody read is reported once, as a whole).
    ///
    /// Call it on the root last: the read marks live in the document, so the root's `finish`
    /// covers the whole file, including sub-tables whose own `finish` was never called.
    pub fn finish(self) -> Result<(), Errors> {
        let mut errors = Errors::new();
        unread(self.data, &self.path, &mut errors);
        errors.into_result()
    }
}

/// Records an error for each unread entry under `table`, descending into the read sub-tables.
fn unread(table: &TableData, path: &str, errors: &mut Errors) {
    for (name, node) in &table.entries {
        let key = join(path, name);
        if node.read.get() {
            match &node.value {
                Value::Table(t) => unread(t, &key, errors),
                Value::Tables(list) => {
                    for (i, t) in list.iter().enumerate() {
                        unread(t, &format!("{key}[{i}]"), errors);
                    }
                }
                _ => {}
            }
            continue;
        }
        let what = match node.value {
            Value::Table(_) => "unknown table",
            Value::Tables(_) => "unknown array of tables",
            _ => "unknown key",
        };
        let message = format!("{what}{}", hint(table, name));
        errors.push(Error::at(node.line, Some(key), message));
    }
}

/// Suggests the known key an unknown one was probably meant to be, or lists the known keys.
fn hint(table: &TableData, name: &str) -> String {
    let Ok(asked) = table.asked.try_borrow() else {
        return String::new();
    };
    let best = asked
        .iter()
        .map(|k| (distance(name, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.chars().count())
        .min_by_key(|(d, _)| *d);
    if let Some((_, k)) = best {
        return format!("; did you mean {k}?");
    }
    if asked.is_empty() {
        return "; nothing is read from this table".to_string();
    }
    let mut known: Vec<&str> = asked.iter().map(String::as_str).collect();
    known.sort_unstable();
    format!("; known keys here: {}", known.join(", "))
}

/// Edit distance, treating `-`/`_` and letter case as equal; gives up (returns 3) on long keys.
fn distance(a: &str, b: &str) -> usize {
    let norm = |s: &str| -> Vec<char> {
        s.chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    };
    let (a, b) = (norm(a), norm(b));
    if a.len().abs_diff(b.len()) > 2 || a.len() > 64 {
        return 3;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}
