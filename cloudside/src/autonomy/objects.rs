//! The Kubernetes objects the autonomy controller reads and writes, sans
//! IO: a Lease renewed on a node's behalf, the `tether.io/autonomy`
//! annotation of a Node, the Events it posts, the API paths, and what an
//! error answer means for the operator (which RBAC rule is missing).

use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use tether_link::logger::timestamp;

/// The annotation that keeps a node's pods whatever its unit votes.
pub const ANNOTATION: &str = "tether.io/autonomy";
/// Where kubelet keeps node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Where kubelet posts a Node's Events (a Node has no namespace).
pub const EVENT_NAMESPACE: &str = "default";
/// The Events' `source.component` and `reportingComponent`.
pub const COMPONENT: &str = "tether-hub";

/// What the controller asks of kube-apiserver, to name the RBAC rule a 403
/// lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// GET a Node (its annotation).
    GetNode,
    /// GET a node's Lease.
    GetLease,
    /// PUT a node's Lease.
    UpdateLease,
    /// POST an Event.
    CreateEvent,
}

impl Action {
    /// (verb, resource, API group, namespace) of the RBAC rule it needs.
    pub fn rule(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    ) {
        match self {
            Action::GetNode => ("get", "nodes", "", None),
            Action::GetLease => (
                "get",
                "leases",
                "coordination.k8s.io",
                Some(LEASE_NAMESPACE),
            ),
            Action::UpdateLease => (
                "update",
                "leases",
                "coordination.k8s.io",
                Some(LEASE_NAMESPACE),
            ),
            Action::CreateEvent => ("create", "events", "", Some(EVENT_NAMESPACE)),
        }
    }

    /// The request path for `node`.
    pub fn path(self, node: &impl std::fmt::Display) -> String {
        match self {
            Action::GetNode => format!("/api/v1/nodes/{node}"),
            Action::GetLease | Action::UpdateLease => {
                format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{node}")
            }
            Action::CreateEvent => format!("/api/v1/namespaces/{EVENT_NAMESPACE}/events"),
        }
    }
}

/// A MicroTime as kubelet writes `renewTime`: RFC 3339, UTC, microseconds.
pub fn micro_time(t: SystemTime) -> String {
    let micros = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_micros();
    format!("{}.{micros:06}Z", &timestamp(t)[..19])
}

/// A metav1.Time: RFC 3339, UTC, whole seconds.
pub fn time(t: SystemTime) -> String {
    format!("{}Z", &timestamp(t)[..19])
}

/// A Lease as read, renewed: the whole object (so a PUT loses none of its
/// fields: owner reference, managed fields) with `spec.renewTime` = `now`.
/// Returns the body to PUT and the holder. The holder and duration stay
/// as they are: the hub renews the node's own lease, it does not take it.
pub fn renewed(lease: &[u8], now: SystemTime) -> Result<(Vec<u8>, String), String> {
    let mut v: Value =
        serde_json::from_slice(lease).map_err(|e| format!("the Lease is not JSON: {e}"))?;
    if v["metadata"]["resourceVersion"].as_str().is_none() {
        return Err("the Lease has no metadata.resourceVersion".into());
    }
    let spec = v
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or("the Lease has no spec")?;
    let holder = spec
        .get("holderIdentity")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .ok_or("the Lease has no spec.holderIdentity (kubelet has not held it yet)")?
        .to_owned();
    spec.insert("renewTime".into(), Value::String(micro_time(now)));
    // A GET answer of a namespaced object may omit these; a PUT needs them.
    v["kind"] = json!("Lease");
    v["apiVersion"] = json!("coordination.k8s.io/v1");
    let body = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    Ok((body, holder))
}

/// Whether a Node carries `tether.io/autonomy: "true"`.
pub fn annotated(node: &[u8]) -> Result<bool, String> {
    let v: Value =
        serde_json::from_slice(node).map_err(|e| format!("the Node is not JSON: {e}"))?;
    Ok(v["metadata"]["annotations"][ANNOTATION].as_str() == Some("true"))
}

/// A core/v1 Event about Node `node`, as kubelet writes its own (its name
/// `<node>.<hex time>`, `involvedObject.uid` the node name).
pub fn event(node: &str, reason: &str, warning: bool, message: &str, now: SystemTime) -> Vec<u8> {
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let at = time(now);
    let v = json!({
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": {"name": format!("{node}.{nanos:x}"), "namespace": EVENT_NAMESPACE},
        "involvedObject": {"kind": "Node", "name": node, "uid": node, "apiVersion": "v1"},
        "reason": reason,
        "message": message,
        "source": {"component": COMPONENT},
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
        "type": if warning { "Warning" } else { "Normal" },
        "reportingComponent": COMPONENT,
        "reportingInstance": "",
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// What an answer other than success means, for the log: the Status
/// message, and for a 401 or 403 what to change.
pub fn explain(action: Action, node: &impl std::fmt::Display, status: u16, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let (verb, resource, group, namespace) = action.rule();
    match (status, action) {
        (403, _) => {
            let scope = match namespace {
                Some(ns) => format!("in namespace {ns}"),
                None => "at the cluster scope".to_owned(),
            };
            let group = if group.is_empty() {
                "\"\" (core)"
            } else {
                group
            };
            format!(
                "kube-apiserver refused (403): the hub's identity lacks RBAC verb \"{verb}\" on \
                 resource \"{resource}\" in API group {group} {scope}; apply cloudside/rbac.yaml \
                 ({message})"
            )
        }
        (401, _) => format!(
            "kube-apiserver does not accept the hub's credentials (401): check [autonomy] \
             cert/key or token_file ({message})"
        ),
        (404, Action::GetLease | Action::UpdateLease) => format!(
            "node {node} has no Lease in {LEASE_NAMESPACE} (kubelet creates it when the node \
             registers; nothing to renew)"
        ),
        (404, Action::GetNode) => format!("node {node} has no Node object ({message})"),
        _ => format!("kube-apiserver answered {status} to {verb} {resource}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_is_renewed_whole() {
        let lease = br#"{"metadata":{"name":"edge-1","namespace":"kube-node-lease","resourceVersion":"224","ownerReferences":[{"kind":"Node","name":"edge-1"}]},"spec":{"holderIdentity":"edge-1","leaseDurationSeconds":40,"renewTime":"2026-11-22T02:10:31.000000Z"}}"#;
        let now = UNIX_EPOCH + Duration::from_micros(1_795_312_486_945_213);
        let (body, holder) = renewed(lease, now).expect("renewed");
        assert_eq!(holder, "edge-1");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["spec"]["renewTime"], "2026-11-22T01:54:46.945213Z");
        assert_eq!(v["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(v["metadata"]["resourceVersion"], "224");
        assert_eq!(v["metadata"]["ownerReferences"][0]["name"], "edge-1");
        assert_eq!(v["kind"], "Lease");
        assert!(renewed(br#"{"metadata":{"resourceVersion":"1"},"spec":{}}"#, now).is_err());
        assert!(renewed(b"{", now).is_err());
    }

    #[test]
    fn annotation_events_and_errors() {
        assert!(
            annotated(br#"{"metadata":{"annotations":{"tether.io/autonomy":"true"}}}"#)
                .expect("node")
        );
        assert!(
            !annotated(br#"{"metadata":{"annotations":{"tether.io/autonomy":"yes"}}}"#)
                .expect("node")
        );
        assert!(!annotated(br#"{"metadata":{}}"#).expect("node"));
        let e: Value = serde_json::from_slice(&event(
            "edge-1",
            "TetherAutonomyStarted",
            true,
            "why",
            UNIX_EPOCH,
        ))
        .expect("json");
        assert_eq!(e["involvedObject"]["name"], "edge-1");
        assert_eq!(e["source"]["component"], "tether-hub");
        assert_eq!(e["firstTimestamp"], "1970-01-01T00:00:00Z");
        let forbidden = br#"{"kind":"Status","message":"leases.coordination.k8s.io \"edge-1\" is forbidden: User \"x\" cannot update resource \"leases\""}"#;
        let text = explain(Action::UpdateLease, &"edge-1", 403, forbidden);
        assert!(
            text.contains("lacks RBAC verb \"update\" on resource \"leases\" in API group coordination.k8s.io in namespace kube-node-lease"),
            "{text}"
        );
        assert!(explain(Action::GetLease, &"edge-1", 404, b"").contains("has no Lease"));
        assert!(explain(Action::GetNode, &"edge-1", 403, b"").contains("at the cluster scope"));
    }
}
