//! The node's Kubernetes identity: kubelet's TLS bootstrap, done by
//! `tether-edge join --kube-token` through the hub, so the node gets the
//! client certificate a kubeadm-joined node has (CN `system:node:<name>`,
//! O `system:nodes`, signer `kubernetes.io/kube-apiserver-client-kubelet`)
//! and keeps it the way kubelet does: one PEM file (certificate and key)
//! named by the time it was written, and the symlink
//! `kubelet-client-current.pem` to it, which kubelet's own rotation
//! (`--cert-dir`, `rotateCertificates: true`) later replaces.
//!
//! The exchange is kubelet's (`pkg/kubelet/certificate/bootstrap`): a
//! CertificateSigningRequest created with the bootstrap token, then polled
//! until kube-controller-manager's approver and signer put the certificate
//! in `status.certificate`. It travels as the proxy's requests do
//! ([`crate::apiclient`], `[apiserver]` of the written config): through a
//! link to the hub and its `kube-apiserver` upstream, or direct.

use super::files::{self, Planned};
use super::key::NodeKey;
use crate::apiclient::{ApiClient, ApiConn, Identity};
use crate::config::EdgeConfig;
use crate::http::{self, BodyDecoder, Limits};
use crate::kube::json;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tether_link::topic::NodeName;

/// The signer kubelet asks for its client certificate.
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The usages kubelet asks for with an ECDSA key (it adds `key
/// encipherment` only for RSA keys; the approver accepts both sets).
pub const USAGES: [&str; 2] = ["digital signature", "client auth"];
/// kubelet's `--cert-dir` on kubeadm nodes.
pub const DEFAULT_PKI: &str = "/var/lib/kubelet/pki";
/// The cluster CA on kubeadm nodes.
pub const DEFAULT_CA: &str = "/etc/kubernetes/pki/ca.crt";
/// The symlink kubelet and the edge read the current certificate from.
pub const CURRENT: &str = "kubelet-client-current.pem";
/// How long join waits for the certificate without `--kube-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The CSR collection.
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
/// Between two looks at a pending request.
const POLL: Duration = Duration::from_secs(1);
/// Largest answer read: a CSR object is a few KiB.
const MAX_ANSWER: usize = 1024 * 1024;

/// What the bootstrap needs besides the written config.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The Kubernetes bootstrap token, `ID.SECRET` (`kubeadm token create`).
    pub token: String,
    /// The cluster CA (`--kube-ca`); `None`: the board file's, else
    /// [`DEFAULT_CA`].
    pub ca: Option<PathBuf>,
    /// kubelet's certificate directory (`--kubelet-pki`).
    pub pki: PathBuf,
    /// How long to wait for the certificate (`--kube-timeout`).
    pub timeout: Duration,
}

impl KubeOptions {
    /// The symlink to the current certificate and key.
    pub fn current(&self) -> PathBuf {
        self.pki.join(CURRENT)
    }
}

/// Why the bootstrap did not give the node its certificate. Nothing of
/// kubelet's was written.
#[derive(Debug)]
pub enum KubeError {
    /// kube-apiserver did not know the token (401).
    Unauthorized(String),
    /// The token's group may not create CSRs (403).
    Forbidden(String),
    /// The request was denied or failed.
    Denied(String),
    /// No certificate within the timeout.
    Timeout(Duration, String),
    /// kube-apiserver could not be reached, or answered something else.
    Unreachable(String),
    /// The certificate does not fit the request.
    BadAnswer(String),
    /// Writing failed (nothing was left half written).
    Write(String),
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::Unauthorized(m) => write!(
                f,
                "kube-apiserver does not accept the bootstrap token ({m}): it is unknown or expired; make one on a control-plane node with `kubeadm token create` and pass it as --kube-token"
            ),
            KubeError::Forbidden(m) => write!(
                f,
                "the bootstrap token may not request certificates ({m}): its group system:bootstrappers:kubeadm:default-node-token needs the ClusterRoleBinding kubeadm makes, kubeadm:kubelet-bootstrap (ClusterRole system:node-bootstrapper); `kubeadm init phase bootstrap-token` creates it"
            ),
            KubeError::Denied(m) => write!(f, "the certificate request was {m}"),
            KubeError::Timeout(t, name) => write!(
                f,
                "no certificate for {name} within {t:?}: is it approved? `kubectl get csr {name}`; kubeadm's ClusterRoleBinding kubeadm:node-autoapprove-bootstrap lets kube-controller-manager approve it, else `kubectl certificate approve {name}`"
            ),
            KubeError::Unreachable(m) => write!(f, "kube-apiserver: {m}"),
            KubeError::BadAnswer(m) => write!(f, "the cluster's certificate is not usable: {m}"),
            KubeError::Write(m) => write!(f, "{m} (nothing of kubelet's was written)"),
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrState {
    /// Neither issued nor refused yet.
    Pending,
    /// `status.certificate`: PEM text of the certificate (and any chain).
    Issued(String),
    /// A `Denied` or `Failed` condition: the type, reason and message.
    Refused(String),
}

/// The CertificateSigningRequest kubelet creates for `csr_der`, as JSON.
pub fn csr_object(csr_der: &[u8]) -> String {
    let request =
        tether_link::der::base64(tether_link::der::pem("CERTIFICATE REQUEST", csr_der).as_bytes());
    let usages = USAGES.map(|u| format!("\"{u}\"")).join(",");
    format!(
        "{{\"kind\":\"CertificateSigningRequest\",\"apiVersion\":\"certificates.k8s.io/v1\",\"metadata\":{{\"generateName\":\"node-csr-\"}},\"spec\":{{\"request\":\"{request}\",\"signerName\":\"{SIGNER}\",\"usages\":[{usages}]}}}}"
    )
}

/// Reads a CertificateSigningRequest object: its name and state.
pub fn parse_csr(body: &[u8]) -> Result<(String, CsrState), String> {
    let bad = |e: crate::kube::Error| format!("not a CertificateSigningRequest: {e}");
    let doc = json::document(body).map_err(bad)?;
    let (mut name, mut status) = (None, None);
    json::for_each_member(body, doc.start, &mut |key, v| {
        match key {
            b"metadata" => {
                json::for_each_member(body, v.start, &mut |k, v| {
                    if k == b"name" {
                        name = Some(json::string(body, v)?);
                    }
                    Ok(())
                })?;
            }
            b"status" => status = Some(v),
            _ => {}
        }
        Ok(())
    })
    .map_err(bad)?;
    let name = name.ok_or("a CertificateSigningRequest without metadata.name")?;
    let Some(status) = status else {
        return Ok((name, CsrState::Pending));
    };
    let (mut certificate, mut refused) = (None, None);
    json::for_each_member(body, status.start, &mut |key, v| {
        match key {
            b"certificate" if !json::is_null(body, &v) => {
                certificate = Some(json::string(body, v)?);
            }
            b"conditions" if !json::is_null(body, &v) => {
                json::for_each_element(body, v.start, &mut |c| {
                    let (mut kind, mut reason, mut message) = (None, None, None);
                    json::for_each_member(body, c.start, &mut |k, v| {
                        let slot = match k {
                            b"type" => &mut kind,
                            b"reason" => &mut reason,
                            b"message" => &mut message,
                            _ => return Ok(()),
                        };
                        *slot = Some(json::string(body, v)?);
                        Ok(())
                    })?;
                    if let Some(kind @ ("Denied" | "Failed")) = kind.as_deref() {
                        refused.get_or_insert(format!(
                            "{} ({}): {}",
                            kind.to_lowercase(),
                            reason.unwrap_or_default(),
                            message.unwrap_or_default()
                        ));
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    })
    .map_err(bad)?;
    let state = match (refused, certificate) {
        (Some(why), _) => CsrState::Refused(why),
        (None, Some(b64)) if !b64.is_empty() => {
            let pem = tether_link::der::unbase64(&b64).ok_or("status.certificate is not base64")?;
            CsrState::Issued(String::from_utf8(pem).map_err(|_| "status.certificate is not PEM")?)
        }
        _ => CsrState::Pending,
    };
    Ok((name, state))
}

/// The `message` of a `Status` answer, or the body's start.
pub fn status_message(body: &[u8]) -> String {
    let mut message = None;
    if let Ok(doc) = json::document(body) {
        let _ = json::for_each_member(body, doc.start, &mut |k, v| {
            if k == b"message" {
                message = json::string(body, v).ok();
            }
            Ok(())
        });
    }
    message.unwrap_or_else(|| {
        String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_owned()
    })
}

/// kubelet's file name for a certificate written at `t`:
/// `kubelet-client-YYYY-MM-DD-HH-MM-SS.pem` (UTC here).
pub fn file_name(t: SystemTime) -> String {
    let stamp: String = tether_link::logger::rfc3339(t)
        .trim_end_matches('Z')
        .chars()
        .map(|c| if c == 'T' || c == ':' { '-' } else { c })
        .collect();
    format!("kubelet-client-{stamp}.pem")
}

/// Runs the bootstrap for `node` with `cfg` (the config join wrote; its
/// `[apiserver]` says how to reach kube-apiserver, its `[hub]` how to
/// reach the hub) and writes kubelet's files. `say` reports progress.
/// Returns the file written.
pub fn bootstrap(
    cfg: &EdgeConfig,
    opts: &KubeOptions,
    link_timeout: Duration,
    say: &mut dyn FnMut(String),
) -> Result<PathBuf, KubeError> {
    let api = cfg
        .apiserver
        .clone()
        .ok_or_else(|| KubeError::Unreachable("the config has no [apiserver]".into()))?;
    let key = NodeKey::generate().map_err(KubeError::BadAnswer)?;
    let csr = key.csr(&cfg.node).map_err(KubeError::BadAnswer)?;
    let body = csr_object(&csr);
    let link = match api.direct {
        Some(_) => None,
        None => Some(crate::uplink::new_link(
            cfg.node.clone(),
            &cfg.link,
            cfg.hub.broker,
        )),
    };
    let tls = match link {
        Some(_) => crate::uplink::tls_connector(&cfg.hub).map_err(KubeError::Unreachable)?,
        None => None,
    };
    let client = ApiClient::without_node_certificate(api.clone(), link.clone())
        .map_err(KubeError::Unreachable)?;
    let host = api.server_name.as_str();
    let work = async {
        if let Some(link) = &link {
            let until = Instant::now() + link_timeout;
            while !link.with_session(|s| s.is_up()) {
                if Instant::now() > until {
                    return Err(KubeError::Unreachable(format!(
                        "no link to the hub within {link_timeout:?}"
                    )));
                }
                async_io::Timer::after(Duration::from_millis(50)).await;
            }
        }
        let (status, answer) =
            request(&client, host, "POST", CSRS, &opts.token, Some(&body)).await?;
        let name = match status {
            201 | 200 => parse_csr(&answer).map_err(KubeError::Unreachable)?.0,
            401 => return Err(KubeError::Unauthorized(status_message(&answer))),
            403 => return Err(KubeError::Forbidden(status_message(&answer))),
            s => {
                return Err(KubeError::Unreachable(format!(
                    "creating the certificate request was answered {s}: {}",
                    status_message(&answer)
                )))
            }
        };
        say(format!(
            "      sent certificate request {name} (signer {SIGNER}); waiting for its approval"
        ));
        let until = Instant::now() + opts.timeout;
        let path = format!("{CSRS}/{name}");
        loop {
            let (status, answer) = request(&client, host, "GET", &path, &opts.token, None).await?;
            match status {
                200 => match parse_csr(&answer).map_err(KubeError::Unreachable)?.1 {
                    CsrState::Issued(pem) => return Ok(pem),
                    CsrState::Refused(why) => {
                        return Err(KubeError::Denied(format!("{why} (kubectl get csr {name})")))
                    }
                    CsrState::Pending => {}
                },
                401 => return Err(KubeError::Unauthorized(status_message(&answer))),
                403 => return Err(KubeError::Forbidden(status_message(&answer))),
                s => {
                    return Err(KubeError::Unreachable(format!(
                        "reading {name} was answered {s}: {}",
                        status_message(&answer)
                    )))
                }
            }
            if Instant::now() + POLL > until {
                return Err(KubeError::Timeout(opts.timeout, name));
            }
            async_io::Timer::after(POLL).await;
        }
    };
    let pem = smol::block_on(async {
        let Some(link) = &link else {
            return work.await;
        };
        // The link lives only while the bootstrap runs: `run` never ends,
        // `work` does; then a DISCONNECT, as the edge sends when it stops.
        let driver = crate::uplink::run(link.clone(), cfg.hub.clone(), cfg.link.clone(), tls);
        futures_lite::pin!(driver);
        let result = work
            .or(async {
                driver.as_mut().await;
                Err(KubeError::Unreachable("the link to the hub ended".into()))
            })
            .await;
        link.with_session(|s| s.disconnect());
        driver
            .as_mut()
            .or(async {
                async_io::Timer::after(Duration::from_millis(300)).await;
            })
            .await;
        result
    })?;
    write(&key, &pem, &cfg.node, opts)
}

/// Checks the issued certificate and writes it as kubelet would.
fn write(
    key: &NodeKey,
    pem: &str,
    node: &NodeName,
    opts: &KubeOptions,
) -> Result<PathBuf, KubeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| KubeError::BadAnswer(format!("status.certificate: {e}")))?;
    let Some(leaf) = certs.first() else {
        return Err(KubeError::BadAnswer(
            "status.certificate holds no certificate".into(),
        ));
    };
    if !key.matches(leaf) {
        return Err(KubeError::BadAnswer(
            "it does not certify the key this board made".into(),
        ));
    }
    let cn = tether_link::tls::subject_common_name(leaf);
    if cn.as_deref() != Some(format!("system:node:{node}").as_str()) {
        return Err(KubeError::BadAnswer(format!(
            "its subject is {cn:?}, not system:node:{node}"
        )));
    }
    let mut text = String::new();
    for c in &certs {
        text.push_str(&tether_link::der::pem("CERTIFICATE", c));
    }
    text.push_str(&key.pem());
    let file = opts.pki.join(file_name(SystemTime::now()));
    files::write_all(&[Planned {
        path: file.clone(),
        data: text.into_bytes(),
        mode: 0o600,
    }])
    .map_err(KubeError::Write)?;
    if let Err(e) = link_current(&file, &opts.current()) {
        let _ = std::fs::remove_file(&file);
        return Err(KubeError::Write(e));
    }
    Ok(file)
}

/// Points `current` at `file` in one rename, as kubelet's certificate
/// store does, so a reader never finds it missing.
fn link_current(file: &Path, current: &Path) -> Result<(), String> {
    let target = file.file_name().unwrap_or_default();
    let mut tmp = current.file_name().unwrap_or_default().to_os_string();
    tmp.push(format!(".tether-new-{}", std::process::id()));
    let tmp = current.with_file_name(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, current))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!(
                "{}: cannot link it to {}: {e}",
                current.display(),
                file.display()
            )
        })
}

/// One request with the bootstrap token on a fresh connection: the
/// status and the de-chunked body.
async fn request(
    client: &ApiClient,
    host: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Result<(u16, Vec<u8>), KubeError> {
    let unreachable = |e: String| KubeError::Unreachable(e);
    let mut conn = client
        .connect(Identity::Own)
        .await
        .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tether-edge/{} (join)\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n",
        host,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());
    conn.write_all(head.as_bytes())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    conn.flush().await.map_err(|e| unreachable(e.to_string()))?;
    read_answer(&mut conn, method)
        .or(async {
            async_io::Timer::after(Duration::from_secs(30)).await;
            Err("no answer within 30s".to_string())
        })
        .await
        .map_err(unreachable)
}

async fn read_answer(conn: &mut ApiConn, method: &str) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let (head, used) = loop {
        if let Some(h) =
            http::parse_response_head(&buf, &Limits::default()).map_err(|e| e.to_string())?
        {
            break h;
        }
        match conn.read(&mut chunk).await {
            Ok(0) => return Err("connection closed before an answer".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    };
    buf.drain(..used);
    let mut decoder = BodyDecoder::new(head.body_kind(method).map_err(|e| e.to_string())?);
    let mut body = Vec::new();
    loop {
        let (n, done) = decoder.decode(&buf, &mut body).map_err(|e| e.to_string())?;
        buf.drain(..n);
        if done {
            return Ok((head.status, body));
        }
        if body.len() > MAX_ANSWER {
            return Err(format!("an answer of more than {MAX_ANSWER} bytes"));
        }
        match conn.read(&mut chunk).await {
            Ok(0) => {
                decoder.finish_eof().map_err(|e| e.to_string())?;
                return Ok((head.status, body));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSR as kube-apiserver 1.24 answers a GET of it once
    /// kube-controller-manager approved and signed it (fields in Go's
    /// order, managedFields shortened).
    fn approved(certificate: &str) -> String {
        format!(
            r#"{{"kind":"CertificateSigningRequest","apiVersion":"certificates.k8s.io/v1","metadata":{{"name":"node-csr-x7k2p","generateName":"node-csr-","uid":"8d4c2b1e-0a57-4c1f-9b51-3f0e2f0c9a11","resourceVersion":"1207","creationTimestamp":"2026-11-22T02:28:17Z","managedFields":[{{"manager":"tether-edge","operation":"Update","apiVersion":"certificates.k8s.io/v1","time":"2026-11-22T02:28:17Z","fieldsType":"FieldsV1","fieldsV1":{{"f:spec":{{"f:request":{{}}}}}}}}]}},"spec":{{"request":"LS0t","signerName":"kubernetes.io/kube-apiserver-client-kubelet","usages":["digital signature","client auth"],"username":"system:bootstrap:abcdef","groups":["system:bootstrappers","system:bootstrappers:kubeadm:default-node-token","system:authenticated"]}},"status":{{"conditions":[{{"type":"Approved","status":"True","reason":"AutoApproved","message":"Auto approving kubelet client certificate after SubjectAccessReview.","lastUpdateTime":"2026-11-22T02:28:17Z","lastTransitionTime":"2026-11-22T02:28:17Z"}}]{certificate}}}}}"#
        )
    }

    #[test]
    fn the_csr_object_is_what_kubelet_sends() {
        let key = NodeKey::generate().expect("key");
        let node = NodeName::new("edge-1").expect("name");
        let der = key.csr(&node).expect("csr");
        let body = csr_object(&der);
        let b = body.as_bytes();
        let doc = json::document(b).expect("one JSON object");
        let mut seen = Vec::new();
        json::for_each_member(b, doc.start, &mut |k, v| {
            seen.push((String::from_utf8_lossy(k).into_owned(), b[v].to_vec()));
            Ok(())
        })
        .expect("members");
        let text = |k: &str| {
            let v = &seen.iter().find(|(n, _)| n == k).expect(k).1;
            String::from_utf8_lossy(v).into_owned()
        };
        assert_eq!(text("kind"), "\"CertificateSigningRequest\"");
        assert_eq!(text("apiVersion"), "\"certificates.k8s.io/v1\"");
        assert_eq!(text("metadata"), r#"{"generateName":"node-csr-"}"#);
        let spec = text("spec");
        assert!(spec.contains(r#""signerName":"kubernetes.io/kube-apiserver-client-kubelet""#));
        assert!(spec.ends_with(r#""usages":["digital signature","client auth"]}"#));
        // spec.request: base64 of the PEM of a request that verifies, for
        // this node, with this key.
        let start = spec.find(r#""request":""#).expect("request") + 11;
        let b64 = &spec[start..start + spec[start..].find('"').expect("end")];
        let pem = tether_link::der::unbase64(b64).expect("base64");
        let pem = String::from_utf8(pem).expect("text");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        assert_eq!(
            pem,
            tether_link::der::pem("CERTIFICATE REQUEST", &der),
            "the PEM of the request"
        );
        let req = tether_link::csr::parse_and_verify(&der).expect("verifies");
        assert_eq!(req.node(), Some(node));
        assert_eq!(req.public_point, key.public_point());
    }

    #[test]
    fn answers_parse_into_pending_issued_or_refused() {
        // Just created: status is empty.
        let created = br#"{"kind":"CertificateSigningRequest","apiVersion":"certificates.k8s.io/v1","metadata":{"name":"node-csr-x7k2p","generateName":"node-csr-"},"spec":{"request":"LS0t","signerName":"kubernetes.io/kube-apiserver-client-kubelet","usages":["digital signature","client auth"]},"status":{}}"#;
        assert_eq!(
            parse_csr(created).expect("parses"),
            ("node-csr-x7k2p".to_string(), CsrState::Pending)
        );
        // Approved, not signed yet: still pending.
        assert_eq!(
            parse_csr(approved("").as_bytes()).expect("parses").1,
            CsrState::Pending
        );
        // Signed: the PEM, decoded from base64.
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let with = approved(&format!(
            r#","certificate":"{}""#,
            tether_link::der::base64(pem.as_bytes())
        ));
        assert_eq!(
            parse_csr(with.as_bytes()).expect("parses").1,
            CsrState::Issued(pem.into())
        );
        // Denied wins over anything else.
        let denied = approved("").replace(
            r#""type":"Approved","status":"True","reason":"AutoApproved","message":"Auto approving kubelet client certificate after SubjectAccessReview.""#,
            r#""type":"Denied","status":"True","reason":"KubectlDeny","message":"This CSR was denied by kubectl certificate deny.""#,
        );
        assert_eq!(
            parse_csr(denied.as_bytes()).expect("parses").1,
            CsrState::Refused(
                "denied (KubectlDeny): This CSR was denied by kubectl certificate deny.".into()
            )
        );
        let failed = approved(r#","certificate":"LS0t""#).replace(
            r#"}]"#,
            r#"},{"type":"Failed","status":"True","reason":"SignerValidationFailure","message":"invalid usage for client certificate: server auth","lastUpdateTime":"2026-11-22T02:28:18Z","lastTransitionTime":"2026-11-22T02:28:18Z"}]"#,
        );
        assert!(matches!(
            parse_csr(failed.as_bytes()).expect("parses").1,
            CsrState::Refused(why) if why.starts_with("failed (SignerValidationFailure)")
        ));
        // Not base64, not an object, no name: errors, not panics.
        let bad = approved(r#","certificate":"!!!!""#);
        assert!(parse_csr(bad.as_bytes()).is_err());
        assert!(parse_csr(b"[]").is_err());
        assert!(parse_csr(br#"{"metadata":{}}"#).is_err());
        assert!(parse_csr(&approved("").as_bytes()[..100]).is_err());
    }

    #[test]
    fn status_messages_and_file_names() {
        let unauthorized = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
        assert_eq!(status_message(unauthorized), "Unauthorized");
        assert_eq!(
            status_message(b"  404 page not found\n"),
            "404 page not found"
        );
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_614_209);
        assert_eq!(file_name(t), "kubelet-client-2026-12-07-03-30-09.pem");
    }
}
