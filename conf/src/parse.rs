//! The syntax: turns text into the tree in `value.rs`, stopping at the first syntax error.

use crate::error::Error;
use crate::value::{join, Node, TableData, Value};

/// Deepest `[a.b.c]` header accepted; keeps the tree (and the recursion over it) shallow.
const MAX_DEPTH: usize = 32;

/// Parses a whole file into its root table.
pub(crate) fn parse(text: &str) -> Result<TableData, Error> {
    let mut parser = Parser {
        text,
        pos: 0,
        line: 1,
        root: TableData::new(None),
        current: Vec::new(),
        path: String::new(),
    };
    parser.eat('\u{feff}');
    parser.document()?;
    Ok(parser.root)
}

struct Parser<'t> {
    text: &'t str,
    /// Byte offset into `text`, always on a char boundary.
    pos: usize,
    line: usize,
    root: TableData,
    /// Names in the last `[header]`: key = value lines go into that table.
    current: Vec<String>,
    /// Display path of the current table, like `forward[1]`, for error messages.
    path: String,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.pos += c.len_utf8();
        }
        found
    }

    fn err(&self, key: &str, message: impl Into<String>) -> Error {
        let key = (!key.is_empty()).then(|| key.to_string());
        Error::at(self.line, key, message)
    }

    fn skip_ws(&mut self) {
        while self.eat(' ') || self.eat('\t') {}
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' || c == '\r' {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    /// Consumes `\n` or `\r\n`.
    fn newline(&mut self) -> Result<(), Error> {
        if self.eat('\r') && self.peek() != Some('\n') {
            return Err(self.err("", "carriage return without a line feed; save the file with \\n or \\r\\n line endings"));
        }
        self.eat('\n');
        self.line += 1;
        Ok(())
    }

    /// Skips spaces, comments and line breaks (inside arrays).
    fn skip_blank(&mut self) -> Result<(), Error> {
        loop {
            self.skip_ws();
            match self.peek() {
                Some('#') => self.skip_comment(),
                Some('\n' | '\r') => self.newline()?,
                _ => return Ok(()),
            }
        }
    }

    /// After a header or value only a comment may follow on the line.
    fn end_line(&mut self, what: &str, key: &str) -> Result<(), Error> {
        self.skip_ws();
        match self.peek() {
            None | Some('\n' | '\r') => Ok(()),
            Some('#') => {
                self.skip_comment();
                Ok(())
            }
            Some(c) => Err(self.err(
                key,
                format!("unexpected {c:?} after {what}; a line holds one `key = value` or `[table]`, and comments start with '#'"),
            )),
        }
    }

    fn document(&mut self) -> Result<(), Error> {
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(()),
                Some('#') => self.skip_comment(),
                Some('\n' | '\r') => self.newline()?,
                Some('[') => self.header()?,
                Some(_) => self.key_value()?,
            }
        }
    }

    /// A bare key: letters, digits, `_` and `-`.
    fn key(&mut self) -> Result<String, Error> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                break;
            }
            self.pos += 1;
        }
        let text = self.text;
        let key = text.get(start..self.pos).unwrap_or("");
        if !key.is_empty() {
            return Ok(key.to_string());
        }
        let message = match self.peek() {
            Some('"' | '\'') => "quoted keys are not supported; write the key bare, using letters, digits, '_' and '-'".to_string(),
            None | Some('\n' | '\r' | '#') => "expected a key name".to_string(),
            Some('=') => "missing key name before '='".to_string(),
            Some(']') => "expected a table name before ']'".to_string(),
            Some(c) => format!("unexpected {c:?}; a key name may use only letters, digits, '_' and '-'"),
        };
        Err(self.err(&self.path, message))
    }

    /// `[a.b]` or `[[a.b]]`, which becomes the current table.
    fn header(&mut self) -> Result<(), Error> {
        let line = self.line;
        self.eat('[');
        let array = self.eat('[');
        let mut names = Vec::new();
        loop {
            self.skip_ws();
            names.push(self.key()?);
            self.skip_ws();
            if !self.eat('.') {
                break;
            }
        }
        let shown = names.join(".");
        if names.len() > MAX_DEPTH {
            return Err(self.err(
                &shown,
                format!("tables nested more than {MAX_DEPTH} deep are not supported"),
            ));
        }
        let close = if array { "]]" } else { "]" };
        if !self.rest().starts_with(close) {
            return Err(self.err(
                &shown,
                format!("expected '{close}' to close the table header"),
            ));
        }
        self.pos += close.len();
        self.end_line("the table header", &shown)?;
        self.path = open_table(&mut self.root, &names, array, line)?;
        self.current = names;
        Ok(())
    }

    /// `key = value` into the current table.
    fn key_value(&mut self) -> Result<(), Error> {
        let line = self.line;
        let key = self.key()?;
        let path = join(&self.path, &key);
        self.skip_ws();
        if self.peek() == Some('.') {
            return Err(self.err(
                &path,
                "dotted keys are not supported; put the key under a [table] header",
            ));
        }
        if !self.eat('=') {
            let found = match self.peek() {
                None | Some('\n' | '\r') => "the end of the line".to_string(),
                Some(c) => format!("{c:?}; a key name may use only letters, digits, '_' and '-'"),
            };
            return Err(self.err(&path, format!("expected '=' after the key, found {found}")));
        }
        self.skip_ws();
        let value = self.value(&path, None)?;
        self.end_line("the value", &path)?;
        let table = current_table(&mut self.root, &self.current).ok_or_else(|| {
            Error::at(
                line,
                Some(path.clone()),
                "internal error: lost the current table",
            )
        })?;
        if let Some(first) = table.get(&key).map(|n| n.line) {
            return Err(Error::at(
                line,
                Some(path),
                format!("duplicate key; it is already set on line {first}"),
            ));
        }
        table.entries.push((key, Node::new(value, line)));
        Ok(())
    }

    /// One value; `array_line` is the line of the enclosing `[` when inside an array.
    fn value(&mut self, path: &str, array_line: Option<usize>) -> Result<Value, Error> {
        match self.peek() {
            Some('"') => self.basic_string(path),
            Some('\'') => self.literal_string(path),
            Some('[') if array_line.is_some() => Err(self.err(path, "nested arrays are not supported")),
            Some('[') => self.array(path),
            Some('{') => Err(self.err(path, "inline tables { ... } are not supported; use a [table] header")),
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_') => {
                let start = self.pos;
                while let Some(c) = self.peek() {
                    if !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | ':')) {
                        break;
                    }
                    self.pos += 1;
                }
                let text = self.text;
                let word = text.get(start..self.pos).unwrap_or("");
                scalar(word).map_err(|mut message| {
                    if let Some(open) = array_line.filter(|&open| open != self.line) {
                        message.push_str(&format!(" (is the ']' of the array on line {open} missing?)"));
                    }
                    self.err(path, message)
                })
            }
            None | Some('\n' | '\r' | '#') => Err(self.err(path, "missing value after '='")),
            Some(c) => Err(self.err(
                path,
                format!("unexpected {c:?}; expected a value: a \"string\", an integer, true, false or an [array]"),
            )),
        }
    }

    /// `"..."` with escapes.
    fn basic_string(&mut self, path: &str) -> Result<Value, Error> {
        self.eat('"');
        if self.rest().starts_with("\"\"") {
            return Err(self.err(
                path,
                "multi-line strings (\"\"\") are not supported; use \\n in a one-line string",
            ));
        }
        let mut out = String::new();
        loop {
            let c = match self.peek() {
                None | Some('\n' | '\r') => {
                    return Err(self.err(
                        path,
                        "unterminated string; close it with '\"' on the same line",
                    ))
                }
                Some(c) => c,
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(Value::Str(out)),
                '\\' => out.push(self.escape().map_err(|m| self.err(path, m))?),
                c if is_control(c) => return Err(self.err(path, control_message(c))),
                c => out.push(c),
            }
        }
    }

    fn escape(&mut self) -> Result<char, String> {
        let c = match self.peek() {
            None | Some('\n' | '\r') => {
                return Err("unterminated string; close it with '\"' on the same line".to_string())
            }
            Some(c) => c,
        };
        self.pos += c.len_utf8();
        Ok(match c {
            '"' => '"',
            '\\' => '\\',
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'u' => self.hex(4)?,
            'U' => self.hex(8)?,
            other => {
                return Err(format!(
                    "unknown escape \\{}; the escapes are \\\" \\\\ \\n \\t \\r \\uXXXX (write \\\\ for a backslash)",
                    other.escape_debug()
                ))
            }
        })
    }

    fn hex(&mut self, digits: usize) -> Result<char, String> {
        let mut code: u32 = 0;
        for _ in 0..digits {
            let digit = self.peek().and_then(|c| c.to_digit(16));
            let Some(digit) = digit else {
                return Err(format!("a \\u escape needs exactly {digits} hex digits"));
            };
            self.pos += 1;
            code = code.wrapping_mul(16).wrapping_add(digit);
        }
        char::from_u32(code).ok_or_else(|| format!("\\u{code:X} is not a valid Unicode character"))
    }

    /// `'...'`, taken as written.
    fn literal_string(&mut self, path: &str) -> Result<Value, Error> {
        self.eat('\'');
        if self.rest().starts_with("''") {
            return Err(self.err(path, "multi-line strings (''') are not supported"));
        }
        let mut out = String::new();
        loop {
            match self.peek() {
                None | Some('\n' | '\r') => {
                    return Err(self.err(
                        path,
                        "unterminated string; close it with \"'\" on the same line",
                    ))
                }
                Some('\'') => {
                    self.pos += 1;
                    return Ok(Value::Str(out));
                }
                Some(c) if is_control(c) => return Err(self.err(path, control_message(c))),
                Some(c) => {
                    self.pos += c.len_utf8();
                    out.push(c);
                }
            }
        }
    }

    /// `[v, v, ...]`, possibly over several lines, trailing comma allowed.
    fn array(&mut self, path: &str) -> Result<Value, Error> {
        let open = self.line;
        self.eat('[');
        let mut items = Vec::new();
        let unclosed = || {
            Error::at(
                open,
                Some(path.to_string()),
                "the array is not closed; add ']'",
            )
        };
        loop {
            self.skip_blank()?;
            if self.eat(']') {
                return Ok(Value::Array(items));
            }
            if self.peek().is_none() {
                return Err(unclosed());
            }
            items.push(self.value(path, Some(open))?);
            self.skip_blank()?;
            if self.eat(']') {
                return Ok(Value::Array(items));
            }
            match self.peek() {
                Some(',') => self.pos += 1,
                None => return Err(unclosed()),
                Some(c) => {
                    let mut message =
                        format!("expected ',' or ']' after an array element, found {c:?}");
                    if self.line != open {
                        message.push_str(&format!(
                            " (is the ']' of the array on line {open} missing?)"
                        ));
                    }
                    return Err(self.err(path, message));
                }
            }
        }
    }
}

/// Control characters TOML forbids in strings (tab is allowed).
fn is_control(c: char) -> bool {
    (c < ' ' && c != '\t') || c == '\u{7f}'
}

fn control_message(c: char) -> String {
    format!(
        "control character U+{:04X} in a string; write it as an escape like \\n or \\u{:04X}",
        c as u32, c as u32
    )
}

/// An unquoted value: `true`, `false` or an integer; everything else gets a message saying why not.
fn scalar(word: &str) -> Result<Value, String> {
    match word {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
        return Err(format!(
            "`{word}`: booleans are written in lowercase, true or false"
        ));
    }
    let (negative, digits) = match word.as_bytes().first() {
        Some(b'-') => (true, word.get(1..).unwrap_or("")),
        Some(b'+') => (false, word.get(1..).unwrap_or("")),
        _ => (false, word),
    };
    if matches!(digits, "inf" | "nan") {
        return Err("floats are not supported".to_string());
    }
    if !digits.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "unquoted text `{word}`; put strings in quotes, like \"{word}\""
        ));
    }
    if ["0x", "0o", "0b"].iter().any(|p| digits.starts_with(p)) {
        return Err(
            "hexadecimal, octal and binary numbers are not supported; write the number in decimal"
                .to_string(),
        );
    }
    if digits.contains(':') {
        return Err("dates and times are not supported; use a string".to_string());
    }
    if digits.contains(['.', 'e', 'E']) {
        return Err("floats are not supported".to_string());
    }
    if digits.contains(['-', '+']) {
        return Err("dates and times are not supported; use a string".to_string());
    }
    if digits.ends_with('_') || digits.contains("__") {
        return Err(format!(
            "`{word}`: an underscore in a number must sit between two digits"
        ));
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if !clean.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{word}` is not a number; put strings in quotes"));
    }
    if clean.len() > 1 && clean.starts_with('0') {
        return Err(format!("`{word}`: leading zeros are not allowed"));
    }
    let out_of_range = || {
        format!("the integer {word} is out of range (-9223372036854775808 to 9223372036854775807)")
    };
    let magnitude: u64 = clean.parse().map_err(|_| out_of_range())?;
    let signed = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    i64::try_from(signed)
        .map(Value::Int)
        .map_err(|_| out_of_range())
}

/// Creates (or, for `[[...]]`, extends) the table a header names; returns its display path.
fn open_table(
    root: &mut TableData,
    names: &[String],
    array: bool,
    line: usize,
) -> Result<String, Error> {
    let Some((last, parents)) = names.split_last() else {
        return Err(Error::at(line, None, "expected a table name"));
    };
    let mut table = root;
    let mut path = String::new();
    for name in parents {
        path = join(&path, name);
        table = descend(table, name, line, &mut path)?;
    }
    path = join(&path, last);
    let shown = names.join(".");
    let Some((_, node)) = table.entries.iter_mut().find(|(k, _)| k == last) else {
        let value = if array {
            path.push_str("[0]");
            Value::Tables(vec![TableData::new(Some(line))])
        } else {
            Value::Table(TableData::new(Some(line)))
        };
        table.entries.push((last.clone(), Node::new(value, line)));
        return Ok(path);
    };
    let first = node.line;
    let message = match (&mut node.value, array) {
        (Value::Tables(list), true) => {
            list.push(TableData::new(Some(line)));
            path.push_str(&format!("[{}]", list.len() - 1));
            return Ok(path);
        }
        (Value::Table(t), false) => match t.line {
            None => {
                t.line = Some(line);
                node.line = line;
                return Ok(path);
            }
            Some(first) => {
                format!("table [{shown}] is defined twice; the first is on line {first}")
            }
        },
        (Value::Table(_), true) => {
            format!("[{shown}] is already a table on line {first}; it cannot also be an array of tables [[{shown}]]")
        }
        (Value::Tables(_), false) => {
            format!("[[{shown}]] is an array of tables (line {first}); write [[{shown}]] to add an element")
        }
        (other, _) => format!(
            "already set to {} on line {first}; a key cannot also be a table",
            other.kind()
        ),
    };
    Err(Error::at(line, Some(path), message))
}

/// Steps into table `name` for a header, creating it if needed; an array of tables means its last element.
fn descend<'x>(
    table: &'x mut TableData,
    name: &str,
    line: usize,
    path: &mut String,
) -> Result<&'x mut TableData, Error> {
    let index = match table.entries.iter().position(|(k, _)| k == name) {
        Some(i) => i,
        None => {
            let node = Node::new(Value::Table(TableData::new(None)), line);
            table.entries.push((name.to_string(), node));
            table.entries.len() - 1
        }
    };
    let lost = || Error::at(line, Some(path.clone()), "internal error: lost a table");
    let Some((_, node)) = table.entries.get_mut(index) else {
        return Err(lost());
    };
    let first = node.line;
    match &mut node.value {
        Value::Table(t) => Ok(t),
        Value::Tables(list) => {
            path.push_str(&format!("[{}]", list.len().saturating_sub(1)));
            let path = path.clone();
            list.last_mut()
                .ok_or_else(|| Error::at(line, Some(path), "internal error: empty array of tables"))
        }
        other => Err(Error::at(
            line,
            Some(path.clone()),
            format!(
                "already set to {} on line {first}; a key cannot also be a table",
                other.kind()
            ),
        )),
    }
}

/// Finds the table the last header opened.
fn current_table<'x>(root: &'x mut TableData, names: &[String]) -> Option<&'x mut TableData> {
    let mut table = root;
    for name in names {
        let node = table
            .entries
            .iter_mut()
            .find(|(k, _)| k == name)
            .map(|(_, n)| n)?;
        table = match &mut node.value {
            Value::Table(t) => t,
            Value::Tables(list) => list.last_mut()?,
            _ => return None,
        };
    }
    Some(table)
}
