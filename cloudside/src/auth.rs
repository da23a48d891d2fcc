//! Who may link: node tokens and client certificates, and the verdict on
//! each CONNECT.
//!
//! A node proves its name either with a client certificate verified by the
//! TLS layer (subject CN `system:node:<name>`) or with the token the hub's
//! token file lists for that name. Either way the name must equal the
//! CONNECT's client id, so a node cannot claim another's topics.

use ring::digest::{digest, SHA256};
use std::collections::HashMap;
use std::path::Path;
use tether_link::accept::Hello;
use tether_link::mqtt::ConnectReturnCode;
use tether_link::topic::NodeName;

/// Node tokens, kept only as SHA-256 digests.
#[derive(Debug, Default)]
pub struct Tokens {
    by_node: HashMap<NodeName, [u8; 32]>,
}

impl Tokens {
    /// Reads a token file: one `<node> <token>` per line, `#` comments.
    /// Errors name the line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read token file: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses token file text.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut by_node = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(node), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("line {}: expected \"<node> <token>\"", n + 1));
            };
            let node = NodeName::new(node).map_err(|e| format!("line {}: {e}", n + 1))?;
            if token.len() < 16 {
                return Err(format!(
                    "line {}: token of {node} is shorter than 16 characters",
                    n + 1
                ));
            }
            if by_node
                .insert(node.clone(), hash(token.as_bytes()))
                .is_some()
            {
                return Err(format!("line {}: second token for {node}", n + 1));
            }
        }
        Ok(Tokens { by_node })
    }

    /// Whether `token` is `node`'s, compared in constant time.
    pub fn check(&self, node: &NodeName, token: &[u8]) -> bool {
        let Some(want) = self.by_node.get(node) else {
            return false;
        };
        let got = hash(token);
        want.iter()
            .zip(got.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Number of nodes with a token.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether no node has a token.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// How a link proved its node name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A verified client certificate.
    Certificate,
    /// A token from the token file.
    Token,
}

impl Method {
    /// For logs and the node list.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Certificate => "certificate",
            Method::Token => "token",
        }
    }
}

/// Why a CONNECT was refused: the CONNACK code and a line for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Sent to the edge.
    pub code: ConnectReturnCode,
    /// Short label for metrics.
    pub label: &'static str,
    /// Logged.
    pub reason: String,
}

/// Decides whether `hello` may link. `cert_cn` is the subject CN of the
/// verified client certificate, if one was presented.
pub fn verdict(hello: &Hello, cert_cn: Option<&str>, tokens: &Tokens) -> Result<Method, Refusal> {
    let claimed = hello.node.as_str();
    if let Some(cn) = cert_cn {
        return match cn.strip_prefix("system:node:") {
            Some(name) if name == claimed => Ok(Method::Certificate),
            Some(name) => Err(Refusal {
                code: ConnectReturnCode::NotAuthorized,
                label: "certificate_mismatch",
                reason: format!("certificate is for node {name:?} but CONNECT claims {claimed:?}"),
            }),
            None => Err(Refusal {
                code: ConnectReturnCode::NotAuthorized,
                label: "certificate_not_a_node",
                reason: format!("certificate subject CN {cn:?} is not system:node:<name>"),
            }),
        };
    }
    if let Some(user) = &hello.username {
        if user != claimed {
            return Err(Refusal {
                code: ConnectReturnCode::BadUsernamePassword,
                label: "username_mismatch",
                reason: format!("username {user:?} differs from client id {claimed:?}"),
            });
        }
    }
    match &hello.password {
        Some(token) if tokens.check(&hello.node, token) => Ok(Method::Token),
        Some(_) => Err(Refusal {
            code: ConnectReturnCode::BadUsernamePassword,
            label: "bad_token",
            reason: format!("token is not node {claimed:?}'s"),
        }),
        None => Err(Refusal {
            code: ConnectReturnCode::NotAuthorized,
            label: "no_credentials",
            reason: "neither a client certificate nor a token".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str, token: Option<&str>) -> Hello {
        Hello {
            node: NodeName::new(node).expect("name"),
            username: token.map(|_| node.to_owned()),
            password: token.map(|t| t.as_bytes().to_vec()),
            clean_session: true,
            keep_alive: 60,
        }
    }

    #[test]
    fn verdicts() {
        let tokens = Tokens::parse("# fleet\nedge-1 aaaaaaaaaaaaaaaa1\nedge-2 bbbbbbbbbbbbbbbb2\n")
            .expect("tokens");
        assert_eq!(
            verdict(&hello("edge-1", Some("aaaaaaaaaaaaaaaa1")), None, &tokens),
            Ok(Method::Token)
        );
        let other = verdict(&hello("edge-1", Some("bbbbbbbbbbbbbbbb2")), None, &tokens)
            .expect_err("other's token");
        assert_eq!(other.code, ConnectReturnCode::BadUsernamePassword);
        assert!(verdict(&hello("edge-3", Some("aaaaaaaaaaaaaaaa1")), None, &tokens).is_err());
        assert!(verdict(&hello("edge-1", None), None, &tokens).is_err());
        assert_eq!(
            verdict(&hello("edge-1", None), Some("system:node:edge-1"), &tokens),
            Ok(Method::Certificate)
        );
        assert_eq!(
            verdict(&hello("edge-1", None), Some("system:node:edge-2"), &tokens)
                .expect_err("mismatch")
                .label,
            "certificate_mismatch"
        );
        assert!(verdict(&hello("edge-1", None), Some("admin"), &tokens).is_err());
    }

    #[test]
    fn bad_token_files() {
        assert!(Tokens::parse("edge-1\n").is_err());
        assert!(Tokens::parse("Edge aaaaaaaaaaaaaaaa\n").is_err());
        assert!(Tokens::parse("edge-1 short\n").is_err());
        assert!(Tokens::parse("edge-1 aaaaaaaaaaaaaaaa\nedge-1 bbbbbbbbbbbbbbbb\n").is_err());
    }
}
