//! The parsed tree: tables of named nodes, each remembering its line and whether a caller read it.

use std::cell::{Cell, RefCell};

/// One table: its entries in file order.
#[derive(Debug)]
pub(crate) struct TableData {
    pub(crate) entries: Vec<(String, Node)>,
    /// Line of the `[header]` that defined it; `None` for the root and for tables only implied
    /// by a deeper header such as `[a.b]` (which implies `[a]`).
    pub(crate) line: Option<usize>,
    /// Every key a caller looked up here, present or not: the keys the program knows, used to
    /// suggest a fix for an unknown key.
    pub(crate) asked: RefCell<Vec<String>>,
}

impl TableData {
    pub(crate) fn new(line: Option<usize>) -> TableData {
        TableData {
            entries: Vec::new(),
            line,
            asked: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }
}

/// A value with the line its key is on and a flag set once a caller looked it up.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) line: usize,
    pub(crate) read: Cell<bool>,
}

impl Node {
    pub(crate) fn new(value: Value, line: usize) -> Node {
        Node {
            value,
            line,
            read: Cell::new(false),
        }
    }
}

/// The kinds of value the format has.
#[derive(Debug)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    /// Elements are never arrays: nested arrays are rejected by the parser.
    Array(Vec<Value>),
    Table(TableData),
    Tables(Vec<TableData>),
}

impl Value {
    /// Describes the value for "found ..." in error messages.
    pub(crate) fn kind(&self) -> String {
        match self {
            Value::Str(_) => "a string".to_string(),
            Value::Int(n) => format!("the integer {n}"),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Array(_) => "an array".to_string(),
            Value::Table(_) => "a [table]".to_string(),
            Value::Tables(_) => "an array of tables [[...]]".to_string(),
        }
    }
}

/// Joins a table path and a key: `join("link", "tls")` is `link.tls`, `join("", "name")` is `name`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else if key.is_empty() {
        path.to_string()
    } else {
        format!("{path}.{key}")
    }
}
