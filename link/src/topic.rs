//! Node names and the MQTT topics a node may use.
//!
//! A node publishes only to `tether/<node>/up` and subscribes only to
//! `tether/<node>/down`; the hub does the reverse. Node names are Kubernetes
//! node names (DNS-1123 subdomains), which also keeps MQTT's wildcard and
//! separator characters out of topics.

use std::fmt;

/// A validated Kubernetes node name, safe to put into a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

/// Why a string is not a node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadNodeName {
    /// The rejected name (cut to 64 characters for logs).
    pub name: String,
}

impl fmt::Display for BadNodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a valid node name (lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit, at most 253 characters)",
            self.name
        )
    }
}

impl std::error::Error for BadNodeName {}

impl NodeName {
    /// Checks `name` against the DNS-1123 subdomain rules Kubernetes uses.
    pub fn new(name: &str) -> Result<NodeName, BadNodeName> {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                let b = label.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                    && b[0] != b'-'
                    && b[b.len() - 1] != b'-'
            });
        if ok {
            Ok(NodeName(name.to_owned()))
        } else {
            Err(BadNodeName {
                name: name.chars().take(64).collect(),
            })
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic this node publishes to: `tether/<node>/up`.
    pub fn up(&self) -> String {
        format!("tether/{}/up", self.0)
    }

    /// The topic this node subscribes to: `tether/<node>/down`.
    pub fn down(&self) -> String {
        format!("tether/{}/down", self.0)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sub-topic of `up` owned by hub replica `hub` behind a broker:
/// `tether/<node>/up/<hub as 8 hex digits>`.
pub fn replica_topic(up: &str, hub: u32) -> String {
    format!("{up}/{hub:08x}")
}

/// Which way a topic carries frames, as seen from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `tether/<node>/up`: edge to hub.
    Up,
    /// `tether/<node>/down`: hub to edge.
    Down,
}

/// Splits a link topic into its node name and direction.
///
/// Returns `None` for anything that is not exactly `tether/<node>/up` or
/// `tether/<node>/down` with a valid node name.
pub fn parse(topic: &str) -> Option<(NodeName, Direction)> {
    let rest = topic.strip_prefix("tether/")?;
    let (node, dir) = rest.rsplit_once('/')?;
    let dir = match dir {
        "up" => Direction::Up,
        "down" => Direction::Down,
        _ => return None,
    };
    Some((NodeName::new(node).ok()?, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["edge-1", "pi.site-a.example", "a", "0"] {
            assert!(NodeName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "Edge", "a/b", "+", "#", "-a", "a-", "a..b", "a b", "ä"] {
            assert!(NodeName::new(bad).is_err(), "{bad}");
        }
        assert!(NodeName::new(&"a".repeat(254)).is_err());
    }

    #[test]
    fn topics() {
        let n = NodeName::new("edge-1").expect("name");
        assert_eq!(n.up(), "tether/edge-1/up");
        assert_eq!(parse(&n.down()), Some((n.clone(), Direction::Down)));
        assert_eq!(parse("tether/edge-1/up/x"), None);
        assert_eq!(parse("tether/+/up"), None);
        assert_eq!(parse("other/edge-1/up"), None);
    }
}
