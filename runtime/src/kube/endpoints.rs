//! Node awareness for kube-proxy's objects, sans-IO: an EndpointSlice
//! (`discovery.k8s.io/v1`) or Endpoints (`v1`) object, in either encoding,
//! with the endpoints on given nodes left out and every other byte copied
//! as it was.
//!
//! Protobuf is walked field by field without decoding what is kept:
//! `EndpointSlice{endpoints=2}` with `Endpoint{nodeName=6}`, and
//! `Endpoints{subsets=2}` with `EndpointSubset{addresses=1,
//! notReadyAddresses=2}` and `EndpointAddress{nodeName=4}` (k8s.io/api
//! `discovery/v1` and `core/v1` `generated.proto`). A body in its `k8s\0`
//! envelope (a GET answer, a watch event's object) and a bare list item
//! are both accepted. JSON is scanned the same way: only the arrays that
//! lose an entry are written anew.

use super::{json, pb, Encoding, Error, Result};
use std::collections::BTreeSet;
use std::ops::Range;

/// The kinds whose endpoints name the node they are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `discovery.k8s.io/v1` EndpointSlice: `endpoints[].nodeName`.
    EndpointSlice,
    /// `v1` Endpoints: `subsets[].addresses[].nodeName` and
    /// `subsets[].notReadyAddresses[].nodeName`.
    Endpoints,
}

impl Kind {
    /// The kind served under a resource path as the cache names it
    /// (`discovery.k8s.io/v1/endpointslices`, `v1/endpoints`); `None` for
    /// any other resource, whose objects are never filtered.
    pub fn of_resource(resource_path: &str) -> Option<Kind> {
        match resource_path {
            "discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "v1/endpoints" => Some(Kind::Endpoints),
            _ => None,
        }
    }
}

/// `object` without the endpoints on the nodes in `dead`, or `None` if
/// none of its endpoints is on one of them (the object stands as it is).
/// `object` is a whole body or watch object (protobuf in its `k8s\0`
/// envelope) or a list item (protobuf without envelope; JSON either way).
/// An endpoint without a `nodeName` is always kept.
pub fn without_nodes(
    encoding: Encoding,
    kind: Kind,
    object: &[u8],
    dead: &BTreeSet<String>,
) -> Result<Option<Vec<u8>>> {
    if dead.is_empty() {
        return Ok(None);
    }
    let is_dead = |node: Option<&str>| node.is_some_and(|n| dead.contains(n));
    match encoding {
        Encoding::Protobuf => match object.strip_prefix(pb::MAGIC) {
            // The envelope's `raw` (field 2) is the object; its other
            // fields are copied as they are.
            Some(rest) => {
                let envelope = pb_edit(rest, &mut |field, value| match field {
                    2 => Ok(Edit::from(pb_object(
                        kind,
                        value.bytes("Unknown.raw")?,
                        &is_dead,
                    )?)),
                    _ => Ok(Edit::Keep),
                })?;
                Ok(envelope.map(|e| [pb::MAGIC.as_slice(), &e].concat()))
            }
            None => pb_object(kind, object, &is_dead),
        },
        Encoding::Json => {
            let doc = json::document(object)?;
            let edited = json_object(kind, object, doc.clone(), &is_dead)?;
            Ok(edited.map(|e| [&object[..doc.start], e.as_slice(), &object[doc.end..]].concat()))
        }
    }
}

/// What becomes of one field or array element.
enum Edit {
    /// Copied as it was.
    Keep,
    /// Left out.
    Drop,
    /// Written anew with these bytes (a protobuf message's or a JSON
    /// value's).
    Replace(Vec<u8>),
}

impl From<Option<Vec<u8>>> for Edit {
    fn from(edited: Option<Vec<u8>>) -> Edit {
        edited.map_or(Edit::Keep, Edit::Replace)
    }
}

// ---------------------------------------------------------------- protobuf

/// The object message (no envelope) with its dead endpoints left out.
fn pb_object(
    kind: Kind,
    msg: &[u8],
    is_dead: &dyn Fn(Option<&str>) -> bool,
) -> Result<Option<Vec<u8>>> {
    match kind {
        Kind::EndpointSlice => pb_edit(msg, &mut |field, value| {
            if field != 2 {
                return Ok(Edit::Keep);
            }
            let endpoint = value.bytes("EndpointSlice.endpoints")?;
            Ok(drop_if(is_dead(pb_string(
                endpoint,
                6,
                "Endpoint.nodeName",
            )?)))
        }),
        Kind::Endpoints => pb_edit(msg, &mut |field, value| {
            if field != 2 {
                return Ok(Edit::Keep);
            }
            let subset = value.bytes("Endpoints.subsets")?;
            let edited = pb_edit(subset, &mut |field, value| {
                if !matches!(field, 1 | 2) {
                    return Ok(Edit::Keep);
                }
                let address = value.bytes("EndpointSubset.addresses")?;
                Ok(drop_if(is_dead(pb_string(
                    address,
                    4,
                    "EndpointAddress.nodeName",
                )?)))
            })?;
            Ok(Edit::from(edited))
        }),
    }
}

fn drop_if(dead: bool) -> Edit {
    if dead {
        Edit::Drop
    } else {
        Edit::Keep
    }
}

/// The message `msg` with each field edited by `edit`: `None` when every
/// field is kept. Kept fields are copied byte for byte, key included.
fn pb_edit(
    msg: &[u8],
    edit: &mut dyn FnMut(u32, pb::WireValue<'_>) -> Result<Edit>,
) -> Result<Option<Vec<u8>>> {
    let mut r = pb::Reader::new(msg);
    let mut out: Option<Vec<u8>> = None;
    let mut start = 0;
    while let Some((field, value)) = r.next_field()? {
        let end = r.position();
        match edit(field, value)? {
            Edit::Keep => {
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(&msg[start..end]);
                }
            }
            Edit::Drop => {
                out.get_or_insert_with(|| msg[..start].to_vec());
            }
            Edit::Replace(bytes) => {
                let out = out.get_or_insert_with(|| msg[..start].to_vec());
                pb::put_len_field(out, field, &bytes);
            }
        }
        start = end;
    }
    Ok(out)
}

/// The string in field `field` of `msg` (the last one, as protobuf reads
/// a repeated scalar), if present.
fn pb_string<'a>(msg: &'a [u8], field: u32, what: &'static str) -> Result<Option<&'a str>> {
    let mut found = None;
    let mut r = pb::Reader::new(msg);
    while let Some((f, value)) = r.next_field()? {
        if f == field {
            found = Some(value.str(what)?);
        }
    }
    Ok(found)
}

// -------------------------------------------------------------------- JSON

/// The JSON object at `r` in `b` with its dead endpoints left out.
fn json_object(
    kind: Kind,
    b: &[u8],
    r: Range<usize>,
    is_dead: &dyn Fn(Option<&str>) -> bool,
) -> Result<Option<Vec<u8>>> {
    let dead_at = |r: Range<usize>| -> Result<Edit> {
        let node = json_node_name(b, r)?;
        Ok(drop_if(is_dead(node.as_deref())))
    };
    match kind {
        Kind::EndpointSlice => json_members(b, r, &mut |key, v| match key {
            b"endpoints" => json_array(b, v, &mut |e| dead_at(e)),
            _ => Ok(None),
        }),
        Kind::Endpoints => json_members(b, r, &mut |key, v| match key {
            b"subsets" => json_array(b, v, &mut |subset| {
                let edited = json_members(b, subset, &mut |key, v| match key {
                    b"addresses" | b"notReadyAddresses" => json_array(b, v, &mut |a| dead_at(a)),
                    _ => Ok(None),
                })?;
                Ok(Edit::from(edited))
            }),
            _ => Ok(None),
        }),
    }
}

/// Returns new text for a member's value (given its key and range), or
/// `None` to keep it.
type MemberEdit<'a> = dyn FnMut(&[u8], Range<usize>) -> Result<Option<Vec<u8>>> + 'a;

/// The object at `r` with the values `edit` returns new text for replaced;
/// `None` when it replaces none. Everything else is copied byte for byte.
fn json_members(b: &[u8], r: Range<usize>, edit: &mut MemberEdit<'_>) -> Result<Option<Vec<u8>>> {
    if json::is_null(b, &r) {
        return Ok(None);
    }
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    let end = json::for_each_member(b, r.start, &mut |key, v| {
        if let Some(new) = edit(key, v.clone())? {
            edits.push((v, new));
        }
        Ok(())
    })?;
    if edits.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(end - r.start);
    let mut at = r.start;
    for (range, new) in edits {
        out.extend_from_slice(&b[at..range.start]);
        out.extend_from_slice(&new);
        at = range.end;
    }
    out.extend_from_slice(&b[at..end]);
    Ok(Some(out))
}

/// The array at `r` with each element edited by `edit`, written compactly
/// (as the apiserver writes it); `None` when every element is kept, or the
/// value is `null`.
fn json_array(
    b: &[u8],
    r: Range<usize>,
    edit: &mut dyn FnMut(Range<usize>) -> Result<Edit>,
) -> Result<Option<Vec<u8>>> {
    if json::is_null(b, &r) {
        return Ok(None);
    }
    let mut elements: Vec<(Range<usize>, Edit)> = Vec::new();
    json::for_each_element(b, r.start, &mut |e| {
        let what = edit(e.clone())?;
        elements.push((e, what));
        Ok(())
    })?;
    if elements.iter().all(|(_, e)| matches!(e, Edit::Keep)) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(r.len());
    out.push(b'[');
    for (range, what) in elements {
        let bytes = match &what {
            Edit::Keep => &b[range],
            Edit::Drop => continue,
            Edit::Replace(new) => new.as_slice(),
        };
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(bytes);
    }
    out.push(b']');
    Ok(Some(out))
}

/// `nodeName` of the endpoint or address object at `r`, if it has one.
fn json_node_name(b: &[u8], r: Range<usize>) -> Result<Option<String>> {
    if b.get(r.start) != Some(&b'{') {
        return Err(Error::Invalid("an endpoint is not a JSON object"));
    }
    let mut node = None;
    json::for_each_member(b, r.start, &mut |key, v| {
        if key == b"nodeName" && !json::is_null(b, &v) {
            node = Some(json::string(b, v)?);
        }
        Ok(())
    })?;
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::{item_to_watch_object, parse_list, parse_object};

    const SLICES_PB: &[u8] = fixture!("list-endpointslices-kubeproxy-pb.response.body.bin");
    const SLICES_JSON: &[u8] = fixture!("list-endpointslices-kubeproxy-json.response.body.json");
    const SLICE_JSON: &[u8] = fixture!("get-endpointslice-web-json.response.body.json");
    const ENDPOINTS_JSON: &[u8] = fixture!("list-endpoints-json.response.body.json");

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// `(nodeName, first address)` of each endpoint of a protobuf slice.
    fn pb_endpoints(msg: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut r = pb::Reader::new(msg);
        while let Some((f, v)) = r.next_field().expect("framing") {
            if f == 2 {
                let e = v.bytes("endpoint").expect("message");
                let node = pb_string(e, 6, "node").expect("node").unwrap_or("");
                let addr = pb_string(e, 1, "address").expect("addr").unwrap_or("");
                out.push((node.to_owned(), addr.to_owned()));
            }
        }
        out
    }

    /// `(nodeName, first address)` of each endpoint of a JSON slice.
    fn json_endpoints(b: &[u8]) -> Vec<(String, String)> {
        let doc = json::document(b).expect("document");
        let mut out = Vec::new();
        json::for_each_member(b, doc.start, &mut |k, v| {
            if k == b"endpoints" && !json::is_null(b, &v) {
                json::for_each_element(b, v.start, &mut |e| {
                    let mut node = String::new();
                    let mut addr = String::new();
                    json::for_each_member(b, e.start, &mut |k, v| {
                        match k {
                            b"nodeName" => node = json::string(b, v)?,
                            b"addresses" => {
                                json::for_each_element(b, v.start, &mut |a| {
                                    if addr.is_empty() {
                                        addr = json::string(b, a)?;
                                    }
                                    Ok(())
                                })?;
                            }
                            _ => {}
                        }
                        Ok(())
                    })?;
                    out.push((node, addr));
                    Ok(())
                })?;
            }
            Ok(())
        })
        .expect("slice");
        out
    }

    fn left_out(all: &[(String, String)], node: &str) -> Vec<(String, String)> {
        all.iter().filter(|(n, _)| n != node).cloned().collect()
    }

    #[test]
    fn recorded_slices_lose_the_dead_nodes_endpoints_in_both_encodings() {
        let dead = set(&["edge-2"]);
        let (pb_list, json_list) = (
            parse_list(Encoding::Protobuf, SLICES_PB).expect("pb list"),
            parse_list(Encoding::Json, SLICES_JSON).expect("json list"),
        );
        assert_eq!(pb_list.items.len(), json_list.items.len());
        let mut filtered = 0;
        for p in &pb_list.items {
            // The two recordings list the slices in different orders.
            let j = json_list
                .items
                .iter()
                .find(|j| j.meta.name == p.meta.name)
                .expect("the same slice in JSON");
            let kind = Kind::EndpointSlice;
            let (pb_all, json_all) = (pb_endpoints(p.bytes), json_endpoints(j.bytes));
            assert_eq!(pb_all, json_all, "{}: the encodings agree", p.meta.name);
            let pb_out = without_nodes(Encoding::Protobuf, kind, p.bytes, &dead).expect("pb");
            let json_out = without_nodes(Encoding::Json, kind, j.bytes, &dead).expect("json");
            let on_dead = pb_all.iter().any(|(n, _)| n == "edge-2");
            assert_eq!(pb_out.is_some(), on_dead, "{}", p.meta.name);
            assert_eq!(json_out.is_some(), on_dead, "{}", p.meta.name);
            let (Some(pb_out), Some(json_out)) = (pb_out, json_out) else {
                continue;
            };
            filtered += 1;
            let want = left_out(&pb_all, "edge-2");
            assert!(want.len() < pb_all.len());
            assert_eq!(pb_endpoints(&pb_out), want);
            assert_eq!(json_endpoints(&json_out), want);
            // Only the endpoints changed: metadata and ports are the same.
            assert_eq!(
                crate::kube::meta::pb_object_meta(&pb_out).expect("meta"),
                p.meta
            );
            assert_eq!(
                pb::find_len_field(&pb_out, 3).expect("framing"),
                pb::find_len_field(p.bytes, 3).expect("framing")
            );
            // Leaving out more nodes takes out their endpoints too.
            let both = set(&["edge-2", "edge-3"]);
            let out = without_nodes(Encoding::Protobuf, kind, p.bytes, &both)
                .expect("pb")
                .expect("changed");
            assert_eq!(
                pb_endpoints(&out),
                left_out(&left_out(&pb_all, "edge-2"), "edge-3")
            );
        }
        assert!(filtered > 0, "the fixture has endpoints on edge-2");
    }

    #[test]
    fn nothing_changes_without_dead_nodes_there() {
        let list = parse_list(Encoding::Protobuf, SLICES_PB).expect("list");
        for item in &list.items {
            for dead in [set(&[]), set(&["edge-9"])] {
                let out = without_nodes(Encoding::Protobuf, Kind::EndpointSlice, item.bytes, &dead);
                assert_eq!(out, Ok(None));
            }
        }
        let out = without_nodes(
            Encoding::Json,
            Kind::EndpointSlice,
            SLICE_JSON,
            &set(&["edge-9"]),
        );
        assert_eq!(out, Ok(None));
    }

    #[test]
    fn enveloped_objects_keep_their_envelope() {
        let list = parse_list(Encoding::Protobuf, SLICES_PB).expect("list");
        let dead = set(&["edge-2"]);
        for item in &list.items {
            let object = item_to_watch_object(
                Encoding::Protobuf,
                "discovery.k8s.io/v1",
                "EndpointSlice",
                item.bytes,
            );
            let bare = without_nodes(Encoding::Protobuf, Kind::EndpointSlice, item.bytes, &dead)
                .expect("bare");
            let enveloped = without_nodes(Encoding::Protobuf, Kind::EndpointSlice, &object, &dead)
                .expect("enveloped");
            let Some(enveloped) = enveloped else {
                assert!(bare.is_none());
                continue;
            };
            let env = pb::parse_envelope(&enveloped).expect("envelope");
            assert_eq!(
                (env.api_version, env.kind),
                ("discovery.k8s.io/v1", "EndpointSlice")
            );
            assert_eq!(Some(env.raw.to_vec()), bare);
        }
        // A JSON GET answer: the same object, its trailing newline kept.
        let out = without_nodes(Encoding::Json, Kind::EndpointSlice, SLICE_JSON, &dead)
            .expect("json")
            .expect("changed");
        let (before, after) = (
            parse_object(Encoding::Json, SLICE_JSON).expect("before"),
            parse_object(Encoding::Json, &out).expect("after"),
        );
        assert_eq!(before, after);
        assert_eq!(
            json_endpoints(&out),
            left_out(&json_endpoints(SLICE_JSON), "edge-2")
        );
        assert_eq!(
            out.last() == Some(&b'\n'),
            SLICE_JSON.last() == Some(&b'\n')
        );
    }

    /// The IPs of each subset's addresses and not-ready addresses (JSON).
    fn json_ips(b: &[u8]) -> Vec<String> {
        let doc = json::document(b).expect("document");
        let mut out = Vec::new();
        json::for_each_member(b, doc.start, &mut |k, v| {
            if k == b"subsets" && !json::is_null(b, &v) {
                json::for_each_element(b, v.start, &mut |s| {
                    json::for_each_member(b, s.start, &mut |k, v| {
                        if k == b"addresses" || k == b"notReadyAddresses" {
                            json::for_each_element(b, v.start, &mut |a| {
                                json::for_each_member(b, a.start, &mut |k, v| {
                                    if k == b"ip" {
                                        out.push(json::string(b, v)?);
                                    }
                                    Ok(())
                                })?;
                                Ok(())
                            })?;
                        }
                        Ok(())
                    })?;
                    Ok(())
                })?;
            }
            Ok(())
        })
        .expect("endpoints");
        out
    }

    #[test]
    fn recorded_endpoints_lose_the_dead_nodes_addresses() {
        let list = parse_list(Encoding::Json, ENDPOINTS_JSON).expect("list");
        let dead = set(&["edge-2"]);
        let exporter = list
            .items
            .iter()
            .find(|i| i.meta.name == "node-exporter")
            .expect("node-exporter");
        let out = without_nodes(Encoding::Json, Kind::Endpoints, exporter.bytes, &dead)
            .expect("json")
            .expect("changed");
        assert_eq!(json_ips(exporter.bytes).len(), 3);
        assert_eq!(json_ips(&out), ["192.168.10.11", "192.168.20.13"]);
        assert!(!String::from_utf8_lossy(&out).contains("\"edge-2\""));
        for item in &list.items {
            let text = String::from_utf8_lossy(item.bytes);
            let out =
                without_nodes(Encoding::Json, Kind::Endpoints, item.bytes, &dead).expect("json");
            assert_eq!(out.is_some(), text.contains("\"nodeName\":\"edge-2\""));
        }
    }

    #[test]
    fn protobuf_endpoints_lose_addresses_and_not_ready_addresses() {
        // EndpointAddress{ip=1, nodeName=4}.
        let address = |ip: &str, node: &str| {
            let mut a = Vec::new();
            pb::put_len_field(&mut a, 1, ip.as_bytes());
            pb::put_len_field(&mut a, 4, node.as_bytes());
            a
        };
        // EndpointSubset{addresses=1, notReadyAddresses=2, ports=3}.
        let mut subset = Vec::new();
        pb::put_len_field(&mut subset, 1, &address("10.0.0.1", "edge-1"));
        pb::put_len_field(&mut subset, 1, &address("10.0.0.2", "edge-2"));
        pb::put_len_field(&mut subset, 2, &address("10.0.0.3", "edge-2"));
        pb::put_len_field(&mut subset, 3, b"\x12\x02\x08\x50");
        let mut meta = Vec::new();
        pb::put_len_field(&mut meta, 1, b"web");
        let mut endpoints = Vec::new();
        pb::put_len_field(&mut endpoints, 1, &meta);
        pb::put_len_field(&mut endpoints, 2, &subset);
        let body = pb::encode_envelope("v1", "Endpoints", &endpoints);

        let out = without_nodes(
            Encoding::Protobuf,
            Kind::Endpoints,
            &body,
            &set(&["edge-2"]),
        )
        .expect("pb")
        .expect("changed");
        let mut want_subset = Vec::new();
        pb::put_len_field(&mut want_subset, 1, &address("10.0.0.1", "edge-1"));
        pb::put_len_field(&mut want_subset, 3, b"\x12\x02\x08\x50");
        let mut want = Vec::new();
        pb::put_len_field(&mut want, 1, &meta);
        pb::put_len_field(&mut want, 2, &want_subset);
        assert_eq!(out, pb::encode_envelope("v1", "Endpoints", &want));
        let none = without_nodes(
            Encoding::Protobuf,
            Kind::Endpoints,
            &body,
            &set(&["edge-3"]),
        );
        assert_eq!(none, Ok(None));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dead = set(&["edge-2"]);
        for bad in [&b"k8s\0\x12\xff"[..], b"\x12\x05ab", b"{\"endpoints\":[1,"] {
            for enc in [Encoding::Protobuf, Encoding::Json] {
                let _ = without_nodes(enc, Kind::EndpointSlice, bad, &dead);
                let _ = without_nodes(enc, Kind::Endpoints, bad, &dead);
            }
        }
        assert!(without_nodes(
            Encoding::Json,
            Kind::EndpointSlice,
            b"{\"endpoints\":[1]}",
            &dead
        )
        .is_err());
    }

    #[test]
    fn resources_name_their_kinds() {
        assert_eq!(
            Kind::of_resource("discovery.k8s.io/v1/endpointslices"),
            Some(Kind::EndpointSlice)
        );
        assert_eq!(Kind::of_resource("v1/endpoints"), Some(Kind::Endpoints));
        assert_eq!(Kind::of_resource("v1/pods"), None);
    }
}
