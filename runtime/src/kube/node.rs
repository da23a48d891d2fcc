//! What a Node object says about where its node can be reached: the
//! addresses in `status.addresses`, read from either encoding. The edge
//! tells the hub, so kube-apiserver's egress can find the node by them.

use super::{json, pb, Encoding, Error, Result};

/// The `status.addresses[].address` of a Node body (GET or PATCH answer).
pub fn addresses(encoding: Encoding, body: &[u8]) -> Result<Vec<String>> {
    match encoding {
        Encoding::Json => json_addresses(body),
        Encoding::Protobuf => pb_addresses(body),
    }
}

fn json_addresses(body: &[u8]) -> Result<Vec<String>> {
    let doc = json::document(body)?;
    let (mut kind, mut out) = (String::new(), Vec::new());
    json::for_each_member(body, doc.start, &mut |key, value| {
        match key {
            b"kind" => kind = json::string(body, value)?,
            b"status" if !json::is_null(body, &value) => {
                json::for_each_member(body, value.start, &mut |key, value| {
                    if key == b"addresses" && !json::is_null(body, &value) {
                        json::for_each_element(body, value.start, &mut |entry| {
                            json::for_each_member(body, entry.start, &mut |key, value| {
                                if key == b"address" {
                                    out.push(json::string(body, value)?);
                                }
                                Ok(())
                            })?;
                            Ok(())
                        })?;
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    })?;
    if kind != "Node" {
        return Err(Error::Invalid("not a Node"));
    }
    Ok(out)
}

/// Node{metadata=1, spec=2, status=3}; NodeStatus.addresses is field 5,
/// NodeAddress{type=1, address=2}.
fn pb_addresses(body: &[u8]) -> Result<Vec<String>> {
    let env = pb::parse_envelope(body)?;
    if env.kind != "Node" {
        return Err(Error::Invalid("not a Node"));
    }
    let mut out = Vec::new();
    let Some(status) = pb::find_len_field(env.raw, 3)? else {
        return Ok(out);
    };
    let mut r = pb::Reader::new(status);
    while let Some((field, v)) = r.next_field()? {
        if field != 5 {
            continue;
        }
        let mut a = pb::Reader::new(v.bytes("NodeStatus.addresses")?);
        while let Some((f, v)) = a.next_field()? {
            if f == 2 {
                out.push(v.str("NodeAddress.address")?.to_owned());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture;

    #[test]
    fn recorded_nodes() {
        let want = vec!["192.168.10.11".to_string(), "edge-1".to_string()];
        for (encoding, file) in [
            (Encoding::Json, "get-node-edge-1-json.response.body.json"),
            (Encoding::Protobuf, "get-node-edge-1-pb.response.body.bin"),
        ] {
            assert_eq!(
                addresses(encoding, &fixture(file)),
                Ok(want.clone()),
                "{file}"
            );
        }
        // A pod is not a node.
        assert!(addresses(Encoding::Json, &fixture("get-pod-json.response.body.json")).is_err());
        assert!(addresses(Encoding::Protobuf, &fixture("get-pod-pb.response.body.bin")).is_err());
        assert!(addresses(Encoding::Json, b"{\"kind\":\"Node\",\"status\":").is_err());
    }
}
