//! Fleet files: one per site, naming the site's nodes, the board model each
//! runs on, and the settings the site shares. This module reads one and
//! renders a node's effective edge config from three layers, later wins:
//! the board's file (`<boards>/<board>.toml`), the fleet's site settings,
//! then the node's `[[node]]` entry. The result is checked as an edge config
//! and every problem is named with the file, line and key it comes from, so
//! a mistake in a fleet is fixed in the fleet, not in the rendered file.
//!
//! The format is described in board-configs/README.md:
//!
//! ```toml
//! site = "greenhouse"               # the fleet's own key: the site's name
//! [hub]                             # site settings: any edge config keys
//! address = "hub.example.net:7443"
//! token_file = "/etc/tether/tokens/{node}"
//!
//! [[node]]                          # one per node: name, board, and any
//! name = "gh-01"                    # edge config keys for this node only
//! board = "rpi-zero-w"
//! unit = "bench-a"
//! [node.labels]
//! row = "3"
//! ```

use crate::config;
use std::fmt;
use std::path::{Path, PathBuf};
use tether_conf::{Document, Error, Table};

/// Placeholders a fleet's strings may hold, filled in for each node: e.g.
/// `cert = "/etc/tether/pki/{node}.crt"`.
const PLACEHOLDERS: &str = "{node}, {site} and {board}";

/// Keys of one table that only make sense together: a layer that sets any
/// of them replaces all of them, so a fleet's `token_file` replaces the
/// board file's `cert` and `key` instead of clashing with them.
const GROUPS: &[(&str, &[&str])] = &[
    ("hub", &["cert", "key", "token_file"]),
    ("apiserver", &["upstream", "direct"]),
];

/// Where a rendered config is checked from: the folder `edge.toml` lives in
/// on a board, against which relative paths are read.
const EDGE_DIR: &str = "/etc/tether";

/// Which of a node's two files a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Board,
    Fleet,
}

/// Where a value was written: file, line and its key there (like
/// `node[2].link.keepalive`), to name in errors about the rendered config.
#[derive(Debug, Clone)]
struct Origin {
    source: Source,
    line: Option<usize>,
    key: String,
}

/// A config value as read, kept whole so a layer can replace it.
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
    Strs(Vec<String>),
    Ints(Vec<u64>),
    Table(Tree),
    Tables(Vec<Tree>),
}

/// One key's value and where it was written.
#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    origin: Origin,
}

/// A table: its entries in file order, and where its header was written.
#[derive(Debug, Clone)]
struct Tree {
    origin: Origin,
    entries: Vec<(String, Entry)>,
}

/// One node of a fleet.
#[derive(Debug, Clone)]
struct Node {
    name: String,
    /// Where `name` was written (becomes the rendered `node` key).
    name_origin: Origin,
    board: String,
    board_origin: Origin,
    /// The entry's edge config keys, without `name` and `board`.
    settings: Tree,
}

/// One mistake, located in the file it is in and naming the node whose
/// rendering found it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    file: PathBuf,
    error: Error,
    node: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.error)?;
        if let Some(node) = &self.node {
            write!(f, " (node {node})")?;
        }
        Ok(())
    }
}

/// A fleet file, read and checked for its own keys (site, node names,
/// boards named); the edge config keys in it are checked when a node is
/// rendered.
#[derive(Debug, Clone)]
pub struct Fleet {
    path: PathBuf,
    boards: PathBuf,
    site: String,
    /// The site settings: every top-level key but `site` and `node`.
    settings: Tree,
    nodes: Vec<Node>,
}

/// Whether `text` is a fleet file rather than an edge config: it has a
/// `site` key or `[[node]]` tables (in an edge config `node` is a string).
/// Text that does not parse is no fleet: checking it as an edge config
/// reports the syntax error.
pub fn is_fleet(text: &str) -> bool {
    let Ok(doc) = Document::parse(text) else {
        return false;
    };
    let mut root = doc.root();
    root.keys().contains(&"site") || root.tables("node").is_ok_and(|list| !list.is_empty())
}

/// The boards folder a fleet file uses by default: `boards/` next to the
/// fleet's folder, as in board-configs/ (`fleets/x.toml` → `boards/`).
pub fn default_boards(fleet: &Path) -> PathBuf {
    fleet
        .parent()
        .unwrap_or(Path::new(""))
        .join("..")
        .join("boards")
}

impl Fleet {
    /// Reads the fleet file at `path`, whose boards are files in `boards`.
    /// The error lists every problem with file, line and key.
    pub fn read(path: &Path, boards: &Path) -> Result<Fleet, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Fleet::parse(&text, path, boards)
    }

    /// A fleet from `text`, named `path` in its messages (`tether-edge
    /// join --board` renders a one-node fleet it never writes).
    pub fn parse(text: &str, path: &Path, boards: &Path) -> Result<Fleet, String> {
        let doc = Document::parse(text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut errors = Vec::new();
        let mut root = doc.root();
        let site = match root.str("site") {
            Ok(Some(site)) if config::is_dns_label(site) => site.to_owned(),
            Ok(Some(site)) => {
                errors.push(root.error(
                    "site",
                    format!(
                        "{site:?} is not a site name: 1-63 lowercase letters, digits and '-', \
                         starting and ending with a letter or digit"
                    ),
                ));
                String::new()
            }
            Ok(None) => {
                errors.push(root.error(
                    "site",
                    "missing: the site's name, e.g. site = \"greenhouse\"",
                ));
                String::new()
            }
            Err(e) => {
                errors.push(e);
                String::new()
            }
        };
        let tables = root.tables("node").unwrap_or_else(|_| {
            errors.push(root.error(
                "node",
                "in a fleet file each node is a [[node]] table with name and board",
            ));
            Vec::new()
        });
        if tables.is_empty() && root.line_of("node").is_none() {
            errors.push(Error::new(
                None,
                None,
                "no [[node]] tables: a fleet names its nodes, each with name = \"...\" and board = \"...\"",
            ));
        }
        let mut nodes: Vec<Node> = Vec::new();
        for mut t in tables {
            let Some(node) = read_node(&mut t, &mut errors) else {
                continue;
            };
            if let Some(first) = nodes.iter().find(|n| n.name == node.name) {
                errors.push(Error::new(
                    node.name_origin.line,
                    Some(node.name_origin.key.clone()),
                    format!(
                        "duplicate node name {:?}; {} already has it{}",
                        node.name,
                        first.name_origin.key,
                        first
                            .name_origin
                            .line
                            .map_or(String::new(), |l| format!(" on line {l}"))
                    ),
                ));
                continue;
            }
            nodes.push(node);
        }
        let settings = read_tree(&mut root, Source::Fleet, &["site", "node"], &mut errors);
        // The image build reads [board] from the board file itself, so a
        // fleet's change would not reach the board's systemd unit.
        if let Some(board) = settings.get(&["board"]) {
            errors.push(Error::new(
                board.origin.line,
                Some("board".to_owned()),
                "[board] comes only from the board file (the image build reads it there); \
                 for a variant, add a board file (like rpi-4-8gb.toml) and name it in board",
            ));
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            return Err(list(errors.into_iter().map(|error| Problem {
                file: path.to_owned(),
                error,
                node: None,
            })));
        }
        Ok(Fleet {
            path: path.to_owned(),
            boards: boards.to_owned(),
            site,
            settings,
            nodes,
        })
    }

    /// The names of the fleet's nodes, in file order.
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// The effective config of node `name` as a TOML file that
    /// `tether-edge check-config` accepts; the error names every problem
    /// with file, line and key (or lists the nodes when `name` is none).
    pub fn render(&self, name: &str) -> Result<String, String> {
        let Some(node) = self.nodes.iter().find(|n| n.name == name) else {
            return Err(format!(
                "{}: no node {name:?} in this fleet; its nodes are: {}",
                self.path.display(),
                self.node_names().join(", ")
            ));
        };
        self.render_node(node).map_err(list)
    }

    /// Renders and checks every node; the error lists every problem once,
    /// with the first node that showed it.
    pub fn check(&self) -> Result<(), String> {
        let mut problems: Vec<Problem> = Vec::new();
        for node in &self.nodes {
            for p in self.render_node(node).err().unwrap_or_default() {
                // A board file's mistake shows in every node on that board.
                let seen = problems
                    .iter()
                    .any(|q| q.file == p.file && q.error == p.error);
                if !seen {
                    problems.push(p);
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(list(problems))
        }
    }

    /// The board file's path for `board`.
    fn board_path(&self, board: &str) -> PathBuf {
        self.boards.join(format!("{board}.toml"))
    }

    /// Merges and checks one node's layers into its config text.
    fn render_node(&self, node: &Node) -> Result<String, Vec<Problem>> {
        let board_path = self.board_path(&node.board);
        let at = |source: Source, error: Error| Problem {
            file: match source {
                Source::Board => board_path.clone(),
                Source::Fleet => self.path.clone(),
            },
            error,
            node: Some(node.name.clone()),
        };
        let text = match std::fs::read_to_string(&board_path) {
            Ok(text) => text,
            Err(e) => {
                let message = if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "unknown board {:?}: there is no {}; the boards are: {}",
                        node.board,
                        board_path.display(),
                        self.known_boards()
                    )
                } else {
                    format!("cannot read {}: {e}", board_path.display())
                };
                let o = &node.board_origin;
                return Err(vec![at(
                    Source::Fleet,
                    Error::new(o.line, Some(o.key.clone()), message),
                )]);
            }
        };
        let doc = Document::parse(&text).map_err(|e| vec![at(Source::Board, e)])?;
        let mut errors = Vec::new();
        let mut tree = read_tree(&mut doc.root(), Source::Board, &[], &mut errors);
        let mut problems: Vec<Problem> = errors.into_iter().map(|e| at(Source::Board, e)).collect();
        if let Some(model) = tree.get(&["board", "model"]) {
            if let Value::Str(m) = &model.value {
                if *m != node.board {
                    problems.push(at(
                        Source::Board,
                        Error::new(
                            model.origin.line,
                            Some(model.origin.key.clone()),
                            format!(
                                "{m:?}, but this is the file of board {:?}; a board file's \
                                 model is its file name",
                                node.board
                            ),
                        ),
                    ));
                }
            }
        }
        let vars = [
            ("node", node.name.as_str()),
            ("site", self.site.as_str()),
            ("board", node.board.as_str()),
        ];
        let mut errors = Vec::new();
        let mut site = self.settings.clone();
        site.fill(&vars, &mut errors);
        let mut own = node.settings.clone();
        own.fill(&vars, &mut errors);
        problems.extend(errors.into_iter().map(|e| at(Source::Fleet, e)));
        tree.merge(site, "");
        tree.merge(own, "");
        tree.set(
            "node",
            Entry {
                value: Value::Str(node.name.clone()),
                origin: node.name_origin.clone(),
            },
        );
        if tree
            .get(&["hub", "address"])
            .is_some_and(|a| a.origin.source == Source::Board)
        {
            problems.push(at(
                Source::Fleet,
                Error::new(
                    self.settings.get(&["hub"]).and_then(|h| h.origin.line),
                    Some("hub.address".to_owned()),
                    "missing: the site's hub, [hub] address = \"host:port\" (the board \
                     file's is a placeholder)",
                ),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let rendered = self.write(node, &tree);
        match config::validate(&rendered.text, Path::new(EDGE_DIR)) {
            Ok(()) => Ok(rendered.text),
            Err(errors) => Err(errors
                .0
                .into_iter()
                .map(|e| match rendered.locate(e) {
                    (Some(source), e) => at(source, e),
                    (None, e) => at(Source::Fleet, e),
                })
                .collect()),
        }
    }

    /// The rendered file: a header saying where it comes from, then the tree.
    fn write(&self, node: &Node, tree: &Tree) -> Rendered {
        let mut out = Rendered::default();
        let clean = |s: &str| s.escape_debug().to_string();
        let lines = [
            format!(
                "# tether-edge config of node {} (site {}, board {}),",
                clean(&node.name),
                clean(&self.site),
                clean(&node.board)
            ),
            "# rendered by `tether-edge render-config` from".to_owned(),
            format!("#   {}", clean(&self.path.display().to_string())),
            format!(
                "#   {}",
                clean(&self.board_path(&node.board).display().to_string())
            ),
            "# Change those files and render again rather than editing this one.".to_owned(),
        ];
        for line in lines {
            out.line(line, None);
        }
        out.table(tree, "", "");
        out
    }

    /// The board files in the boards folder, for "unknown board".
    fn known_boards(&self) -> String {
        let Ok(dir) = std::fs::read_dir(&self.boards) else {
            return format!("none (cannot read {})", self.boards.display());
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".toml").map(str::to_owned)
            })
            .collect();
        names.sort();
        if names.is_empty() {
            format!("none in {}", self.boards.display())
        } else {
            names.join(", ")
        }
    }
}

/// One problem per line.
fn list(problems: impl IntoIterator<Item = Problem>) -> String {
    problems
        .into_iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads one `[[node]]` table: `name` and `board`, then its own settings.
fn read_node(t: &mut Table<'_>, errors: &mut Vec<Error>) -> Option<Node> {
    let origin = |t: &Table<'_>, key: &str| Origin {
        source: Source::Fleet,
        line: t.line_of(key).or(t.line()),
        key: join(t.path(), key),
    };
    let mut required = |t: &mut Table<'_>, key: &str, what: &str| match t.str(key) {
        Ok(Some(v)) => Some(v.to_owned()),
        Ok(None) => {
            errors.push(t.error(key, format!("missing: {what}")));
            None
        }
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let name = required(
        t,
        "name",
        "the node's Kubernetes name, e.g. name = \"gh-01\"",
    );
    let board = required(
        t,
        "board",
        "the board model, the name of a file in the boards folder, e.g. board = \"rpi-zero-w\"",
    );
    if let Some(b) = &board {
        if !config::is_dns_label(b) {
            errors.push(t.error(
                "board",
                format!("{b:?} is not a board model: lowercase letters, digits and '-', like \"rpi-zero-w\""),
            ));
        }
    }
    if t.line_of("node").is_some() {
        errors.push(t.error(
            "node",
            "a node's Kubernetes name is its name = \"...\"; remove node",
        ));
    }
    let settings = read_tree(t, Source::Fleet, &["name", "board", "node"], errors);
    let board = board.filter(|b| config::is_dns_label(b))?;
    Some(Node {
        name: name?,
        name_origin: origin(t, "name"),
        board,
        board_origin: origin(t, "board"),
        settings,
    })
}

/// Reads every key of `t` (but `skip`) as a value, whatever its kind; the
/// edge config check of the rendered file says which keys are wrong.
fn read_tree(t: &mut Table<'_>, source: Source, skip: &[&str], errors: &mut Vec<Error>) -> Tree {
    let mut entries = Vec::new();
    for key in t.keys() {
        if skip.contains(&key) {
            continue;
        }
        let origin = Origin {
            source,
            line: t.line_of(key),
            key: join(t.path(), key),
        };
        let Some(value) = read_value(t, key, source, errors) else {
            errors.push(t.error(
                key,
                "expected a string, a whole number that is not negative, true or false, \
                 an array of strings or of numbers, or a table",
            ));
            continue;
        };
        entries.push((key.to_owned(), Entry { value, origin }));
    }
    Tree {
        origin: Origin {
            source,
            line: t.line(),
            key: t.path().to_owned(),
        },
        entries,
    }
}

/// `key`'s value: each getter is tried in turn, since the reader has no
/// getter for a value of any kind; `None` when none fits.
fn read_value(
    t: &mut Table<'_>,
    key: &str,
    source: Source,
    errors: &mut Vec<Error>,
) -> Option<Value> {
    if let Ok(Some(s)) = t.str(key) {
        return Some(Value::Str(s.to_owned()));
    }
    if let Ok(Some(b)) = t.bool(key) {
        return Some(Value::Bool(b));
    }
    if let Ok(Some(n)) = t.u64(key) {
        return Some(Value::Int(n));
    }
    if let Ok(Some(list)) = t.str_array(key) {
        return Some(Value::Strs(list.into_iter().map(str::to_owned).collect()));
    }
    if let Ok(Some(list)) = t.u64_array(key) {
        return Some(Value::Ints(list));
    }
    if let Ok(Some(mut sub)) = t.table(key) {
        return Some(Value::Table(read_tree(&mut sub, source, &[], errors)));
    }
    match t.tables(key) {
        Ok(list) if !list.is_empty() => Some(Value::Tables(
            list.into_iter()
                .map(|mut sub| read_tree(&mut sub, source, &[], errors))
                .collect(),
        )),
        _ => None,
    }
}

impl Tree {
    /// The entry at a path of keys through sub-tables.
    fn get(&self, path: &[&str]) -> Option<&Entry> {
        let (first, rest) = path.split_first()?;
        let entry = self
            .entries
            .iter()
            .find(|(k, _)| k == first)
            .map(|(_, e)| e)?;
        match (&entry.value, rest.is_empty()) {
            (_, true) => Some(entry),
            (Value::Table(sub), false) => sub.get(rest),
            _ => None,
        }
    }

    /// Sets `key`, replacing its value in place or adding it first (the
    /// node's name opens the rendered file, as in a hand-written one).
    fn set(&mut self, key: &str, entry: Entry) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, e)) => *e = entry,
            None => self.entries.insert(0, (key.to_owned(), entry)),
        }
    }

    /// Lays `over` on this table, which sits at `path` in the config:
    /// tables merge key by key, anything else (arrays of tables included)
    /// is replaced whole.
    fn merge(&mut self, over: Tree, path: &str) {
        for (table, keys) in GROUPS {
            let sets_group = over.entries.iter().any(|(k, _)| keys.contains(&k.as_str()));
            if *table == path && sets_group {
                self.entries.retain(|(k, _)| !keys.contains(&k.as_str()));
            }
        }
        for (key, entry) in over.entries {
            let Some((_, mine)) = self.entries.iter_mut().find(|(k, _)| *k == key) else {
                self.entries.push((key, entry));
                continue;
            };
            match (&mut mine.value, entry.value) {
                (Value::Table(mine), Value::Table(theirs)) => mine.merge(theirs, &join(path, &key)),
                (_, value) => {
                    *mine = Entry {
                        value,
                        origin: entry.origin,
                    }
                }
            }
        }
    }

    /// Fills the placeholders in every string of the tree.
    fn fill(&mut self, vars: &[(&str, &str)], errors: &mut Vec<Error>) {
        for (_, entry) in &mut self.entries {
            let origin = &entry.origin;
            let mut fill_one = |s: &mut String| match fill(s, vars) {
                Ok(filled) => *s = filled,
                Err(message) => {
                    errors.push(Error::new(origin.line, Some(origin.key.clone()), message))
                }
            };
            match &mut entry.value {
                Value::Str(s) => fill_one(s),
                Value::Strs(list) => list.iter_mut().for_each(fill_one),
                Value::Table(sub) => sub.fill(vars, errors),
                Value::Tables(list) => list.iter_mut().for_each(|sub| sub.fill(vars, errors)),
                Value::Int(_) | Value::Bool(_) | Value::Ints(_) => {}
            }
        }
    }
}

/// `text` with each `{name}` replaced by its value from `vars`.
fn fill(text: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some((before, after)) = rest.split_once('{') {
        out.push_str(before);
        let Some((name, after)) = after.split_once('}') else {
            return Err(format!(
                "a '{{' without its '}}'; the placeholders are {PLACEHOLDERS}"
            ));
        };
        let Some((_, value)) = vars.iter().find(|(n, _)| *n == name) else {
            return Err(format!(
                "unknown placeholder {{{name}}}; the placeholders are {PLACEHOLDERS}"
            ));
        };
        out.push_str(value);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// A rendered config, with where each of its lines came from.
#[derive(Debug, Default)]
struct Rendered {
    text: String,
    /// Per line: where it was written and its key path in the rendered file.
    lines: Vec<Option<(Origin, String)>>,
}

impl Rendered {
    fn line(&mut self, text: String, from: Option<(Origin, String)>) {
        self.text.push_str(&text);
        self.text.push('\n');
        self.lines.push(from);
    }

    /// Writes a table's keys, then its sub-tables under their headers.
    /// `header` names it in headers (`forward`), `path` in keys (`forward[0]`).
    fn table(&mut self, tree: &Tree, header: &str, path: &str) {
        for (key, entry) in &tree.entries {
            let text = match &entry.value {
                Value::Str(s) => quote(s),
                Value::Int(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Strs(list) => format!(
                    "[{}]",
                    list.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
                ),
                Value::Ints(list) => format!(
                    "[{}]",
                    list.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Value::Table(_) | Value::Tables(_) => continue,
            };
            self.line(
                format!("{key} = {text}"),
                Some((entry.origin.clone(), join(path, key))),
            );
        }
        for (key, entry) in &tree.entries {
            let (header, key_path) = (join(header, key), join(path, key));
            match &entry.value {
                Value::Table(sub) => {
                    self.line(String::new(), None);
                    self.line(
                        format!("[{header}]"),
                        Some((entry.origin.clone(), key_path.clone())),
                    );
                    self.table(sub, &header, &key_path);
                }
                Value::Tables(list) => {
                    for (i, sub) in list.iter().enumerate() {
                        let element = format!("{key_path}[{i}]");
                        self.line(String::new(), None);
                        self.line(
                            format!("[[{header}]]"),
                            Some((sub.origin.clone(), element.clone())),
                        );
                        self.table(sub, &header, &element);
                    }
                }
                _ => {}
            }
        }
    }

    /// Moves an error about the rendered text to where its line was
    /// written, renaming its key as it is spelled there; `None` when the
    /// line was written by no file (the error stays as it is).
    fn locate(&self, error: Error) -> (Option<Source>, Error) {
        let from = error
            .line
            .and_then(|l| self.lines.get(l.checked_sub(1)?))
            .and_then(|from| from.as_ref());
        let Some((origin, rendered)) = from else {
            return (None, Error::new(None, error.key, error.message));
        };
        let key = error
            .key
            .map(|key| match key.strip_prefix(rendered.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with(['.', '[']) => {
                    format!("{}{rest}", origin.key)
                }
                _ => key,
            });
        (
            Some(origin.source),
            Error::new(origin.line, key, error.message),
        )
    }
}

/// A basic TOML string.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c < ' ' || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `path.key`, or `key` at the top.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const BOARD: &str = "\
node = \"set-by-fleet\"
[hub]
address = \"hub.example.invalid:7443\"
ca = \"/etc/tether/hub-ca.pem\"
cert = \"/etc/tether/node.pem\"
key = \"/etc/tether/node-key.pem\"
[link]
keepalive = \"30s\"
max_inflight = 8
[proxy]
memory_budget = \"16MiB\"
[board]
model = \"pi\"
target = \"arm-unknown-linux-musleabihf\"
memory_max = \"48MiB\"
";

    const FLEET: &str = "\
site = \"farm\"
log_level = \"debug\"
[hub]
address = \"hub.farm.example:7443\"
token_file = \"/etc/tether/tokens/{node}\"
[labels]
site = \"{site}\"
[link]
keepalive = \"45s\"

[[node]]
name = \"a-1\"
board = \"pi\"
unit = \"u1\"
[node.labels]
row = \"3\"
[node.link]
keepalive = \"120s\"

[[node]]
name = \"a-2\"
board = \"pi\"
";

    /// A temporary folder with `boards/pi.toml` and `fleets/site.toml`,
    /// removed when dropped.
    struct Files {
        dir: PathBuf,
        fleet: PathBuf,
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn files(board: &str, fleet: &str) -> Files {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tether-fleet-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("boards")).expect("boards folder");
        std::fs::create_dir_all(dir.join("fleets")).expect("fleets folder");
        std::fs::write(dir.join("boards/pi.toml"), board).expect("board file");
        let path = dir.join("fleets/site.toml");
        std::fs::write(&path, fleet).expect("fleet file");
        Files { dir, fleet: path }
    }

    fn read(fleet: &Path) -> Result<Fleet, String> {
        Fleet::read(fleet, &default_boards(fleet))
    }

    fn check_errors(board: &str, fleet: &str) -> String {
        let files = files(board, fleet);
        match read(&files.fleet) {
            Ok(f) => f.check().expect_err("should fail"),
            Err(e) => e,
        }
    }

    #[test]
    fn layers_merge_later_wins() {
        let files = files(BOARD, FLEET);
        let fleet = read(&files.fleet).expect("valid fleet");
        assert_eq!(fleet.node_names(), ["a-1", "a-2"]);
        fleet.check().expect("every node valid");
        let a1 = fleet.render("a-1").expect("a-1");
        config::validate(&a1, Path::new(EDGE_DIR)).expect("a valid edge config");
        let first = a1.lines().find(|l| !l.starts_with('#')).unwrap_or("");
        assert_eq!(first, "node = \"a-1\"");
        for line in [
            "log_level = \"debug\"",
            "unit = \"u1\"",
            "address = \"hub.farm.example:7443\"",
            "ca = \"/etc/tether/hub-ca.pem\"",
            "token_file = \"/etc/tether/tokens/a-1\"",
            "keepalive = \"120s\"",
            "max_inflight = 8",
            "site = \"farm\"",
            "row = \"3\"",
            "memory_max = \"48MiB\"",
        ] {
            assert!(a1.lines().any(|l| l == line), "{line:?} not in:\n{a1}");
        }
        // The fleet's token replaces the board's certificate as a whole.
        assert!(!a1.contains("cert =") && !a1.contains("\nkey ="), "{a1}");
        let a2 = fleet.render("a-2").expect("a-2");
        assert!(a2.contains("keepalive = \"45s\""), "{a2}");
        assert!(a2.contains("/etc/tether/tokens/a-2"), "{a2}");
        assert!(!a2.contains("unit =") && !a2.contains("row ="), "{a2}");
    }

    #[test]
    fn unknown_node_lists_the_nodes() {
        let files = files(BOARD, FLEET);
        let fleet = read(&files.fleet).expect("valid fleet");
        let e = fleet.render("a-3").expect_err("no such node");
        assert!(
            e.contains("site.toml: no node \"a-3\" in this fleet; its nodes are: a-1, a-2"),
            "{e}"
        );
    }

    #[test]
    fn unknown_board_names_the_line_and_the_boards() {
        let e = check_errors(
            BOARD,
            &FLEET.replacen("board = \"pi\"", "board = \"pi-9\"", 1),
        );
        assert!(
            e.contains("site.toml: line 13: node[0].board: unknown board \"pi-9\""),
            "{e}"
        );
        assert!(e.contains("the boards are: pi (node a-1)"), "{e}");
        let e = check_errors(
            BOARD,
            &FLEET.replacen("board = \"pi\"", "board = \"../pi\"", 1),
        );
        assert!(
            e.contains("line 13: node[0].board: \"../pi\" is not a board model"),
            "{e}"
        );
    }

    #[test]
    fn fleet_keys_checked() {
        let e = check_errors(BOARD, &FLEET.replace("name = \"a-2\"", "name = \"a-1\""));
        assert!(
            e.contains("line 21: node[1].name: duplicate node name \"a-1\"; node[0].name already has it on line 12"),
            "{e}"
        );
        let e = check_errors(BOARD, "[[node]]\nboard = \"pi\"\n");
        assert!(e.contains("site.toml: site: missing"), "{e}");
        assert!(e.contains("line 1: node[0].name: missing"), "{e}");
        let e = check_errors(BOARD, "site = \"farm\"\nnode = \"a-1\"\n");
        assert!(
            e.contains("line 2: node: in a fleet file each node is a [[node]]"),
            "{e}"
        );
        let e = check_errors(BOARD, "site = \"farm\"\n");
        assert!(e.contains("no [[node]] tables"), "{e}");
        let e = check_errors(
            BOARD,
            &FLEET
                .replace("unit = \"u1\"", "node = \"x\"")
                .replace("[labels]", "[board]\nmemory_max = \"64MiB\"\n[labels]"),
        );
        assert!(
            e.contains("line 6: board: [board] comes only from the board file"),
            "{e}"
        );
        assert!(
            e.contains("line 16: node[0].node: a node's Kubernetes name is its name"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_named_where_written() {
        // In a node's entry, in the site settings, and in the board file.
        let fleet = FLEET
            .replace("unit = \"u1\"\n", "unit = \"u1\"\ncolour = \"red\"\n")
            .replace("keepalive = \"45s\"", "keeplive = \"45s\"");
        let board = BOARD.replace("max_inflight = 8", "max_inflight = 8\nmtu = 1400");
        let e = check_errors(&board, &fleet);
        assert!(
            e.contains("site.toml: line 15: node[0].colour: unknown key"),
            "{e}"
        );
        assert!(
            e.contains("site.toml: line 9: link.keeplive: unknown key; did you mean keepalive?"),
            "{e}"
        );
        assert!(e.contains("pi.toml: line 10: link.mtu: unknown key"), "{e}");
        assert!(e.contains("(node a-1)"), "{e}");
        // A board file's mistake is told once, not once per node.
        assert_eq!(e.matches("link.mtu").count(), 1, "{e}");
    }

    #[test]
    fn memory_max_checked_against_overrides() {
        let fleet = FLEET.replace(
            "[node.link]",
            "[node.proxy]\nmemory_budget = \"64MiB\"\n[node.link]",
        );
        let e = check_errors(BOARD, &fleet);
        assert!(
            e.contains(
                "pi.toml: line 15: board.memory_max: 48MiB must be larger than proxy.memory_budget (64MiB)"
            ),
            "{e}"
        );
        assert!(e.contains("(node a-1)") && !e.contains("(node a-2)"), "{e}");
    }

    #[test]
    fn placeholders_and_hub_address() {
        let e = check_errors(BOARD, &FLEET.replace("{node}", "{host}"));
        assert!(
            e.contains("line 5: hub.token_file: unknown placeholder {host}; the placeholders are {node}, {site} and {board}"),
            "{e}"
        );
        let e = check_errors(BOARD, &FLEET.replace("{node}", "{node"));
        assert!(
            e.contains("line 5: hub.token_file: a '{' without its '}'"),
            "{e}"
        );
        let e = check_errors(
            BOARD,
            &FLEET.replace("address = \"hub.farm.example:7443\"\n", ""),
        );
        assert!(
            e.contains("site.toml: line 3: hub.address: missing: the site's hub"),
            "{e}"
        );
    }

    #[test]
    fn board_model_is_the_file_name() {
        let e = check_errors(&BOARD.replace("model = \"pi\"", "model = \"rpi\""), FLEET);
        assert!(
            e.contains(
                "pi.toml: line 13: board.model: \"rpi\", but this is the file of board \"pi\""
            ),
            "{e}"
        );
    }

    #[test]
    fn rendered_values_round_trip() {
        let fleet = FLEET.replace(
            "unit = \"u1\"",
            "unit = \"u1\"\n[[node.forward]]\nlisten = \"127.0.0.1:16443\"\nupstream = \"say \\\"hi\\\" \\\\ \\t\"\n[node.services]\nallow_ports = [10250, 22]",
        );
        let files = files(BOARD, &fleet);
        let text = read(&files.fleet)
            .expect("fleet")
            .render("a-1")
            .expect("a-1");
        assert!(
            text.contains("\n[[forward]]\nlisten = \"127.0.0.1:16443\"\n"),
            "{text}"
        );
        assert!(
            text.contains("upstream = \"say \\\"hi\\\" \\\\ \\t\""),
            "{text}"
        );
        assert!(text.contains("allow_ports = [10250, 22]"), "{text}");
        let c = config::parse(
            &text.replace(
                "token_file = \"/etc/tether/tokens/a-1\"",
                "plaintext = true",
            ),
            Path::new("/"),
        )
        .expect("valid");
        assert_eq!(c.forwards[0].upstream, "say \"hi\" \\ \t");
        assert_eq!(c.allow_ports, [10250, 22]);
        assert_eq!(c.board.map(|b| b.memory_max), Some(48 << 20));
        assert_eq!(c.labels.get("site").map(String::as_str), Some("farm"));
    }

    #[test]
    fn fleet_or_config() {
        assert!(is_fleet(FLEET));
        assert!(is_fleet("site = \"x\"\n"));
        assert!(is_fleet("[[node]]\nname = \"a\"\n"));
        assert!(!is_fleet(BOARD));
        assert!(!is_fleet("node = [\n"));
        assert_eq!(
            default_boards(Path::new("board-configs/fleets/a.toml")),
            Path::new("board-configs/fleets/../boards")
        );
    }
}
