//! Health units from a Kubernetes node label (issue 6, `[health]
//! unit_label`): which unit this edge is in and who else is, read from
//! kube-apiserver instead of the config's `unit` and `[health] peers`, and
//! the last membership kept in a small file, so that an edge restarted
//! while cut off still knows its unit.
//!
//! Every `refresh` (60 s by default) the edge reads its own Node
//! (`GET /api/v1/nodes/<node>`): the label's value is its unit. Then it
//! lists the Nodes with the same value (`GET /api/v1/nodes?labelSelector=`
//! `<key>%3D<value>`): they are the members, each reached at its
//! `status.addresses` InternalIP (else ExternalIP, else Hostname) on
//! `peer_port`. Both requests carry the node's own credentials, through the
//! link or direct, as the API proxy's do; the answers are bounded
//! ([`MAX_NODE_BYTES`], [`MAX_LIST_BYTES`], at most
//! [`MAX_UNIT_MEMBERS`] members).
//!
//! Here: the parsing ([`unit_of`], [`members_of`]) and the saved file
//! ([`encode_state`], [`decode_state`], [`save_state`]), all without IO but
//! the file's, and [`Source::fetch`], the two requests. Applying a new
//! membership to the running health peer is [`super::io`]'s job.

use super::PeerAddr;
use crate::apiclient::{ApiClient, Identity};
use crate::http::{parse_response_head, BodyDecoder, Limits};
use crate::kube::json;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_link::health::MAX_UNIT_MEMBERS;
use tether_link::topic::NodeName;

/// How often the membership is read again by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
/// The largest answer to the GET of this node's Node accepted: a Node is a
/// few KiB, its image list at most 50 entries (kubelet's default).
pub const MAX_NODE_BYTES: usize = 1 << 20;
/// The largest answer to the LIST of the unit's Nodes accepted: 64 Nodes of
/// up to 64 KiB each.
pub const MAX_LIST_BYTES: usize = 4 << 20;
/// The largest saved membership file read (64 members' lines are ~20 KiB).
const MAX_STATE_BYTES: u64 = 64 << 10;
/// Connecting, asking and reading one answer must end within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `[health] unit_label` and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitLabel {
    /// The label key whose value names the unit, e.g. `tether.io/unit`.
    pub key: String,
    /// The UDP port the members' health ports listen on.
    pub peer_port: u16,
    /// How often the membership is read again.
    pub refresh: Duration,
    /// Where the last membership read is kept (next to the proxy's cache);
    /// `None` without a cache: nothing survives a restart.
    pub state_file: Option<PathBuf>,
}

/// One reading of the unit: its name and this node's peers in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The label's value on this node.
    pub unit: String,
    /// The other Nodes with that value, sorted by name; `addr` is empty for
    /// one whose Node has no address yet (it gets no probes).
    pub peers: Vec<PeerAddr>,
}

/// The unit named by label `key` in the JSON Node `body` (this node's own):
/// its value, checked as the config checks a unit's name.
pub fn unit_of(body: &[u8], key: &str) -> Result<String, String> {
    let node = read_node(body, json::document(body).map_err(kube)?.start, key)?;
    if node.kind.as_deref() != Some("Node") {
        return Err("the answer is not a Node".to_owned());
    }
    let name = node.name.unwrap_or_default();
    let Some(value) = node.label else {
        return Err(format!(
            "Node {name} has no label {key}: label it with its unit, e.g. kubectl label node \
             {name} {key}=site-a"
        ));
    };
    if !crate::config::is_dns_label(&value) {
        return Err(format!(
            "Node {name}: label {key}={value:?} is not a unit name: 1-63 lowercase letters, \
             digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(value)
}

/// The members of `unit` in the JSON NodeList `body` (the Nodes whose label
/// `key` is `unit`): every one but `own`, each at its address on `port`.
/// Refused when it lists more than [`MAX_UNIT_MEMBERS`] Nodes (or says
/// there are more), or does not list `own` (its label changed between the
/// two requests: the next refresh sees it).
pub fn members_of(
    body: &[u8],
    key: &str,
    unit: &str,
    own: &NodeName,
    port: u16,
) -> Result<Membership, String> {
    let doc = json::document(body).map_err(kube)?;
    let (mut kind, mut more, mut items) = (String::new(), false, Vec::new());
    json::for_each_member(body, doc.start, &mut |k, v| {
        match k {
            b"kind" => kind = json::string(body, v)?,
            b"metadata" if !json::is_null(body, &v) => {
                json::for_each_member(body, v.start, &mut |k, v| {
                    if k == b"continue" && !json::is_null(body, &v) {
                        more = !json::string(body, v)?.is_empty();
                    }
                    Ok(())
                })?;
            }
            b"items" if !json::is_null(body, &v) => {
                json::for_each_element(body, v.start, &mut |item| {
                    items.push(item);
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    })
    .map_err(kube)?;
    if kind != "NodeList" {
        return Err("the answer is not a NodeList".to_owned());
    }
    if items.len() > MAX_UNIT_MEMBERS || more {
        return Err(format!(
            "more than {MAX_UNIT_MEMBERS} Nodes carry {key}={unit}, and a unit has at most \
             {MAX_UNIT_MEMBERS} members: split it with another label value"
        ));
    }
    let (mut peers, mut found_own) = (Vec::new(), false);
    for item in items {
        let node = read_node(body, item.start, key)?;
        if node.label.as_deref() != Some(unit) {
            // The apiserver selected by the label; a Node without it is
            // not a member whatever the answer says.
            continue;
        }
        let raw = node.name.unwrap_or_default();
        let name = NodeName::new(&raw).map_err(|e| format!("a Node in the list: {e}"))?;
        if name == *own {
            found_own = true;
            continue;
        }
        let addr = match node.address {
            Some(host) => match host.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, port).to_string(),
                Err(_) => format!("{host}:{port}"),
            },
            None => String::new(),
        };
        peers.push(PeerAddr { name, addr });
    }
    if !found_own {
        return Err(format!(
            "Node {own} is not among the Nodes with {key}={unit} (its label changed since it \
             was read?)"
        ));
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers.dedup_by(|a, b| a.name == b.name);
    Ok(Membership {
        unit: unit.to_owned(),
        peers,
    })
}

/// What [`read_node`] finds in one Node.
#[derive(Debug, Default)]
struct NodeFields {
    kind: Option<String>,
    name: Option<String>,
    label: Option<String>,
    /// The best address: InternalIP, else ExternalIP, else Hostname.
    address: Option<String>,
}

/// Reads the fields [`NodeFields`] holds from the Node object at `start`.
fn read_node(body: &[u8], start: usize, key: &str) -> Result<NodeFields, String> {
    let mut out = NodeFields::default();
    // (rank, address): lower ranks win.
    let mut best: Option<(u8, String)> = None;
    json::for_each_member(body, start, &mut |k, v| {
        match k {
            b"kind" => out.kind = Some(json::string(body, v)?),
            b"metadata" if !json::is_null(body, &v) => {
                json::for_each_member(body, v.start, &mut |k, v| {
                    match k {
                        b"name" => out.name = Some(json::string(body, v)?),
                        b"labels" if !json::is_null(body, &v) => {
                            json::for_each_member(body, v.start, &mut |k, v| {
                                if k == key.as_bytes() {
                                    out.label = Some(json::string(body, v)?);
                                }
                                Ok(())
                            })?;
                        }
                        _ => {}
                    }
                    Ok(())
                })?;
            }
            b"status" if !json::is_null(body, &v) => {
                json::for_each_member(body, v.start, &mut |k, v| {
                    if k != b"addresses" || json::is_null(body, &v) {
                        return Ok(());
                    }
                    json::for_each_element(body, v.start, &mut |entry| {
                        let (mut kind, mut address) = (String::new(), String::new());
                        json::for_each_member(body, entry.start, &mut |k, v| {
                            match k {
                                b"type" => kind = json::string(body, v)?,
                                b"address" => address = json::string(body, v)?,
                                _ => {}
                            }
                            Ok(())
                        })?;
                        let rank = match kind.as_str() {
                            "InternalIP" => 0,
                            "ExternalIP" => 1,
                            "Hostname" => 2,
                            _ => return Ok(()),
                        };
                        if !address.is_empty() && best.as_ref().is_none_or(|(r, _)| rank < *r) {
                            best = Some((rank, address));
                        }
                        Ok(())
                    })?;
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    })
    .map_err(kube)?;
    out.address = best.map(|(_, a)| a);
    Ok(out)
}

fn kube(e: crate::kube::Error) -> String {
    e.to_string()
}

/// The request path listing the Nodes whose label `key` is `value`, at most
/// one more than a unit may have (so a larger unit shows as such).
pub fn list_path(key: &str, value: &str) -> String {
    format!(
        "/api/v1/nodes?labelSelector={}&limit={}",
        percent_encode(&format!("{key}={value}")),
        MAX_UNIT_MEMBERS + 1
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The saved form of `m`, read from label `key`: a few lines of text.
pub fn encode_state(key: &str, m: &Membership) -> String {
    let mut out = format!(
        "# tether-edge: the last health unit membership read from kube-apiserver, used while \
         it cannot be reached\nlabel {key}\nunit {}\n",
        m.unit
    );
    for p in &m.peers {
        out.push_str(&format!("member {} {}\n", p.name, p.addr));
    }
    out
}

/// Reads a membership saved by [`encode_state`]; an error says why the
/// file cannot be used (saved for another label key included).
pub fn decode_state(text: &str, key: &str, own: &NodeName) -> Result<Membership, String> {
    let (mut label, mut unit, mut peers) = (None, None, Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}", i + 1);
        match line.split_once(' ') {
            Some(("label", k)) => label = Some(k),
            Some(("unit", u)) if crate::config::is_dns_label(u) => unit = Some(u),
            Some(("member", rest)) => {
                let (name, addr) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = NodeName::new(name).map_err(|e| bad(&e.to_string()))?;
                if name != *own {
                    peers.push(PeerAddr {
                        name,
                        addr: addr.trim().to_owned(),
                    });
                }
            }
            _ => return Err(bad("not `label`, `unit` or `member` with a valid value")),
        }
    }
    if label != Some(key) {
        return Err(format!(
            "saved for label {}, not {key}",
            label.unwrap_or("(none)")
        ));
    }
    let unit = unit.ok_or("no unit line")?.to_owned();
    if peers.len() >= MAX_UNIT_MEMBERS {
        return Err(format!(
            "{} members; a unit has at most {MAX_UNIT_MEMBERS}",
            peers.len() + 1
        ));
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers.dedup_by(|a, b| a.name == b.name);
    Ok(Membership { unit, peers })
}

/// Reads the saved membership from `path`: `Ok(None)` if there is none.
pub fn load_state(path: &Path, key: &str, own: &NodeName) -> Result<Option<Membership>, String> {
    use std::io::Read;
    let shown = path.display();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    let mut text = String::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(format!("{shown} is larger than {MAX_STATE_BYTES} bytes"));
    }
    decode_state(&text, key, own)
        .map(Some)
        .map_err(|e| format!("{shown}: {e}"))
}

/// Writes `text` to `path` atomically (through [`crate::identity::files`]:
/// a temporary file next to it, synced, renamed over it), so a crash leaves
/// the old file or the new one.
pub fn save_state(path: &Path, text: &str) -> Result<(), String> {
    crate::identity::files::write_all(&[crate::identity::files::Planned {
        path: path.to_path_buf(),
        data: text.as_bytes().to_vec(),
        mode: 0o644,
    }])
}

/// Reads the membership from kube-apiserver with the node's credentials.
pub struct Source {
    client: ApiClient,
    /// The `Host` of the requests: the name on the apiserver's certificate.
    host: String,
    own: NodeName,
    label: UnitLabel,
}

impl Source {
    /// A source for `own` asking through `client` (whose certificate names
    /// `host`), by `label`.
    pub fn new(client: ApiClient, host: &str, own: NodeName, label: UnitLabel) -> Source {
        Source {
            client,
            host: host.to_owned(),
            own,
            label,
        }
    }

    /// The label it reads by.
    pub fn label(&self) -> &UnitLabel {
        &self.label
    }

    /// This node's name.
    pub fn own(&self) -> &NodeName {
        &self.own
    }

    /// Whether kube-apiserver is reached through the link and it is down.
    pub fn link_down(&self) -> bool {
        self.client.link_down()
    }

    /// Reads this node's unit, then the unit's members.
    pub async fn fetch(&self) -> Result<Membership, String> {
        let key = &self.label.key;
        let path = format!("/api/v1/nodes/{}", self.own);
        let node = self.get(&path, MAX_NODE_BYTES).await?;
        let unit = unit_of(&node, key)?;
        let path = list_path(key, &unit);
        let list = self.get(&path, MAX_LIST_BYTES).await?;
        members_of(&list, key, &unit, &self.own, self.label.peer_port)
            .map_err(|e| format!("GET {path}: {e}"))
    }

    /// One GET on a connection of its own; the body of a 200 answer of at
    /// most `max` bytes.
    async fn get(&self, path: &str, max: usize) -> Result<Vec<u8>, String> {
        let attempt = async {
            let mut conn = self
                .client
                .connect(Identity::Node)
                .await
                .map_err(|e| e.to_string())?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
                 User-Agent: tether-edge/{} (health unit)\r\nConnection: close\r\n\r\n",
                self.host,
                env!("CARGO_PKG_VERSION")
            );
            conn.write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            conn.flush().await.map_err(|e| e.to_string())?;
            read_answer(&mut conn, max).await
        };
        attempt
            .or(async {
                async_io::Timer::after(REQUEST_TIMEOUT).await;
                Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
            })
            .await
            .map_err(|e| format!("GET {path}: {e}"))
    }
}

/// Reads one answer: its body if the status is 200, else an error with the
/// status and the start of the body (kube-apiserver's Status says why).
async fn read_answer(
    conn: &mut (impl futures_lite::AsyncRead + Unpin),
    max: usize,
) -> Result<Vec<u8>, String> {
    let limits = Limits::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    let (head, used) = loop {
        if let Some(found) = parse_response_head(&buf, &limits).map_err(|e| e.to_string())? {
            break found;
        }
        let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before an answer".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let kind = head.body_kind("GET").map_err(|e| e.to_string())?;
    let mut decoder = BodyDecoder::new(kind);
    let mut body = Vec::new();
    let mut input = buf.split_off(used);
    loop {
        let (_, done) = decoder
            .decode(&input, &mut body)
            .map_err(|e| e.to_string())?;
        if body.len() > max {
            return Err(format!("the answer is larger than {max} bytes; refused"));
        }
        if done {
            break;
        }
        let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            decoder.finish_eof().map_err(|e| e.to_string())?;
            break;
        }
        input.clear();
        input.extend_from_slice(&chunk[..n]);
    }
    if head.status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("{} {}: {text}", head.status, head.reason));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture;

    const KEY: &str = "tether.io/unit";

    fn n(s: &str) -> NodeName {
        NodeName::new(s).expect("test name")
    }

    /// The recorded Node `edge-1` (from its recorded list), labelled
    /// `KEY=unit` unless `unit` is `None`, named `name`, with `addresses`.
    fn node(name: &str, unit: Option<&str>, addresses: &str) -> String {
        let list = fixture("list-nodes-edge-1-rv0-json.response.body.json");
        let text = String::from_utf8(list).expect("UTF-8");
        let start = text.find("{\"metadata\"").expect("an item");
        let end = text.rfind("]}").expect("the end of items");
        let mut item = text[start..end].to_owned();
        assert!(item.contains("\"labels\":{"));
        if let Some(unit) = unit {
            item = item.replacen(
                "\"labels\":{",
                &format!("\"labels\":{{\"{KEY}\":\"{unit}\","),
                1,
            );
        }
        item = item.replace(
            "[{\"type\":\"InternalIP\",\"address\":\"192.168.10.11\"},{\"type\":\"Hostname\",\"address\":\"edge-1\"}]",
            addresses,
        );
        item.replace("edge-1", name)
    }

    /// The recorded GET of Node `edge-1`, labelled `KEY=unit` if given.
    fn get_node(unit: Option<&str>) -> Vec<u8> {
        let body = fixture("get-node-edge-1-json.response.body.json");
        let text = String::from_utf8(body).expect("UTF-8");
        assert!(text.starts_with("{\"kind\":\"Node\""));
        match unit {
            Some(unit) => text
                .replacen(
                    "\"labels\":{",
                    &format!("\"labels\":{{\"{KEY}\":\"{unit}\","),
                    1,
                )
                .into_bytes(),
            None => text.into_bytes(),
        }
    }

    fn list(items: &[String]) -> Vec<u8> {
        format!(
            "{{\"kind\":\"NodeList\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"223\"}},\"items\":[{}]}}",
            items.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn the_recorded_node_list_as_members() {
        // The recording itself: edge-1 has no such label; by another of its
        // labels it is a unit of one, at its InternalIP.
        let body = fixture("list-nodes-edge-1-rv0-json.response.body.json");
        let m = members_of(&body, "edge.example.io/site", "site-1", &n("edge-2"), 10263)
            .expect_err("edge-2 is not in it");
        assert!(m.contains("Node edge-2 is not among"), "{m}");
        let m = members_of(&body, "edge.example.io/site", "site-1", &n("edge-1"), 10263)
            .expect("edge-1's unit");
        assert_eq!(m.unit, "site-1");
        assert!(m.peers.is_empty());
        // Its address, seen from another member.
        let body = list(&[
            node("edge-1", Some("site-a"), ADDRS_1),
            node("edge-2", Some("site-a"), "[]"),
        ]);
        let m = members_of(&body, KEY, "site-a", &n("edge-2"), 10263).expect("members");
        assert_eq!(
            m.peers,
            vec![PeerAddr {
                name: n("edge-1"),
                addr: "192.168.10.11:10263".into()
            }]
        );
    }

    const ADDRS_1: &str = "[{\"type\":\"InternalIP\",\"address\":\"192.168.10.11\"},{\"type\":\"Hostname\",\"address\":\"edge-1\"}]";

    #[test]
    fn addresses_internal_then_external_then_hostname() {
        let body = list(&[
            node("e1", Some("site-a"), "[]"),
            node(
                "e2",
                Some("site-a"),
                "[{\"type\":\"Hostname\",\"address\":\"e2.local\"},{\"type\":\"ExternalIP\",\"address\":\"203.0.113.2\"},{\"type\":\"InternalIP\",\"address\":\"fd00::2\"}]",
            ),
            node(
                "e3",
                Some("site-a"),
                "[{\"type\":\"Hostname\",\"address\":\"e3.local\"},{\"type\":\"ExternalIP\",\"address\":\"203.0.113.3\"}]",
            ),
            node("e4", Some("site-a"), "[{\"type\":\"Hostname\",\"address\":\"e4.local\"}]"),
            node("e5", Some("site-a"), "[]"),
            // Not labelled: not a member, whatever the answer says.
            node("e6", None, "[]"),
            node("e7", Some("site-b"), "[]"),
        ]);
        let m = members_of(&body, KEY, "site-a", &n("e1"), 9000).expect("members");
        let got: Vec<(&str, &str)> = m
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.addr.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("e2", "[fd00::2]:9000"),
                ("e3", "203.0.113.3:9000"),
                ("e4", "e4.local:9000"),
                ("e5", "")
            ]
        );
    }

    #[test]
    fn own_unit_from_the_node() {
        assert_eq!(
            unit_of(&get_node(Some("site-a")), KEY),
            Ok("site-a".to_owned())
        );
        // By one of its recorded labels.
        assert_eq!(
            unit_of(&get_node(None), "edge.example.io/site"),
            Ok("site-1".to_owned())
        );
        let e = unit_of(&get_node(None), KEY).expect_err("no label");
        assert!(
            e.contains("Node edge-1 has no label tether.io/unit")
                && e.contains("kubectl label node edge-1 tether.io/unit=site-a"),
            "{e}"
        );
        for bad in ["Site_A", "", "-a", "a.b"] {
            let e = unit_of(&get_node(Some(bad)), KEY).expect_err("bad value");
            assert!(e.contains("is not a unit name"), "{bad:?}: {e}");
        }
        // A list is not a Node, and garbage is an error, not a panic.
        let e = unit_of(&list(&[]), KEY).expect_err("a list");
        assert!(e.contains("not a Node"), "{e}");
        for garbage in [
            &b""[..],
            b"{",
            b"[1,2]",
            b"{\"kind\":\"Node\",\"metadata\":7}",
        ] {
            assert!(unit_of(garbage, KEY).is_err());
            assert!(members_of(garbage, KEY, "a", &n("e1"), 1).is_err());
        }
    }

    #[test]
    fn too_many_nodes_are_refused() {
        let items: Vec<String> = (0..=MAX_UNIT_MEMBERS)
            .map(|i| node(&format!("e{i}"), Some("site-a"), "[]"))
            .collect();
        let e = members_of(&list(&items), KEY, "site-a", &n("e0"), 1).expect_err("65");
        assert!(
            e.contains("more than 64 Nodes carry tether.io/unit=site-a"),
            "{e}"
        );
        let m = members_of(&list(&items[..64]), KEY, "site-a", &n("e0"), 1).expect("64");
        assert_eq!(m.peers.len(), 63);
        // A list cut by `limit` says there is more.
        let cut = String::from_utf8(list(&items[..2]))
            .expect("UTF-8")
            .replace(
                "\"resourceVersion\":\"223\"",
                "\"resourceVersion\":\"223\",\"continue\":\"x\"",
            );
        assert!(members_of(cut.as_bytes(), KEY, "site-a", &n("e0"), 1).is_err());
    }

    #[test]
    fn list_path_is_encoded() {
        assert_eq!(
            list_path(KEY, "site-a"),
            "/api/v1/nodes?labelSelector=tether.io%2Funit%3Dsite-a&limit=65"
        );
    }

    #[test]
    fn saved_state_round_trip_and_checks() {
        let m = Membership {
            unit: "site-a".into(),
            peers: vec![
                PeerAddr {
                    name: n("e2"),
                    addr: "127.0.0.3:10263".into(),
                },
                PeerAddr {
                    name: n("e3"),
                    addr: String::new(),
                },
            ],
        };
        let text = encode_state(KEY, &m);
        assert_eq!(decode_state(&text, KEY, &n("e1")), Ok(m.clone()));
        let e = decode_state(&text, "other/key", &n("e1")).expect_err("other key");
        assert!(
            e.contains("saved for label tether.io/unit, not other/key"),
            "{e}"
        );
        assert!(decode_state("label x\nmember Bad_Name 1:1\n", "x", &n("e1")).is_err());
        assert!(decode_state("label x\n", "x", &n("e1")).is_err());
        assert!(decode_state("label x\nunit UPPER\n", "x", &n("e1")).is_err());

        let dir = std::env::temp_dir().join(format!("tether-members-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let path = dir.join("health-unit");
        assert_eq!(load_state(&path, KEY, &n("e1")), Ok(None));
        save_state(&path, &text).expect("saved");
        assert_eq!(load_state(&path, KEY, &n("e1")), Ok(Some(m)));
        assert!(!dir.join("health-unit.tmp").exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
