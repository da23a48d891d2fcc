//! Garbage-input tests: random bytes and mutated documents must never panic, parsing or reading.

use crate::{Document, Table};

/// xorshift64: tiny, deterministic, good enough to shake a parser.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const VALID: &str = "# edge\nname = \"gw-1\" # inline\nports = [80, 443,\n  8080,]\n\
[link]\nkeepalive = '1m30s'\nbuffer = \"64KiB\"\nretries = 3\nsecure = true\n\
[link.tls]\nca = \"\\u00e9\\n\"\n[[forward]]\nlisten = 1\n[[forward]]\nlisten = 2\n\
[upstream.kube-apiserver]\nport = 6443\n";

/// Characters the syntax cares about, so mutations reach the interesting branches.
const SPICE: &[&str] = &[
    "[", "]", "[[", "]]", "\"", "'", "=", "#", "\n", "\r", "\r\n", ",", ".", "\\", "\\u", "_", "-",
    "+", "0", "9", "e", "x", "{", " ", "\t", "é", "\u{0}", "\u{feff}", "true", "1.5", ":",
    "\"\"\"",
];

/// Reads everything a document holds through every getter, then finishes; must not panic.
fn exercise(mut table: Table<'_>, depth: usize) {
    for key in table.keys() {
        let _ = table.str(key);
        let _ = table.u64(key);
        let _ = table.bool(key);
        let _ = table.duration(key);
        let _ = table.bytes(key);
        let _ = table.str_array(key);
        let _ = table.u64_array(key);
        let _ = table.line_of(key);
        let _ = table.error(key, "x").to_string();
        if depth < 40 {
            if let Ok(Some(t)) = table.table(key) {
                exercise(t, depth + 1);
            }
            for t in table.tables(key).unwrap_or_default() {
                exercise(t, depth + 1);
            }
            for (_, t) in table.sub_tables(key).unwrap_or_default() {
                exercise(t, depth + 1);
            }
        }
    }
    let _ = table.finish().map_err(|e| e.to_string());
}

fn run(text: &str) {
    match Document::parse(text) {
        Ok(doc) => {
            let root = doc.root();
            let _ = doc.root().finish();
            exercise(root, 0);
        }
        Err(e) => {
            assert!(e.line.is_some(), "syntax errors carry a line: {e}");
            let _ = e.to_string();
        }
    }
}

#[test]
fn valid_document_reads_cleanly() {
    assert!(Document::parse(VALID).is_ok());
    run(VALID);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let len = rng.below(120);
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
        run(&String::from_utf8_lossy(&bytes));
        // Mostly printable ASCII, which gets further into the syntax.
        let ascii: String = (0..len)
            .map(|_| char::from(b' ' + (rng.next() % 95) as u8))
            .collect();
        run(&ascii);
    }
}

#[test]
fn mutated_documents_never_panic() {
    let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
    let base: Vec<char> = VALID.chars().collect();
    for _ in 0..4000 {
        let mut text = base.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(text.len() + 1);
            match rng.below(4) {
                0 if at < text.len() => {
                    text.remove(at);
                }
                1 => {
                    let spice = SPICE[rng.below(SPICE.len())];
                    for (i, c) in spice.chars().enumerate() {
                        text.insert(at + i, c);
                    }
                }
                2 if at < text.len() => {
                    let end = (at + rng.below(20)).min(text.len());
                    let copy: Vec<char> = text[at..end].to_vec();
                    let to = rng.below(text.len() + 1);
                    for (i, c) in copy.into_iter().enumerate() {
                        text.insert(to + i, c);
                    }
                }
                _ => text.truncate(at),
            }
        }
        run(&text.into_iter().collect::<String>());
    }
}

#[test]
fn pathological_sizes_do_not_panic() {
    run(&"[".repeat(10_000));
    run(&format!("a = [{}]", "1,".repeat(10_000)));
    run(&format!("[{}]", vec!["a"; 10_000].join(".")));
    run(&format!("a = {}", "9".repeat(10_000)));
    run(&format!("{} = 1", "k".repeat(10_000)));
    run(&"[[a]]\n".repeat(2_000));
}
