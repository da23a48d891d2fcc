//! `tether-hub manifests`: the Kubernetes objects that install the hub into
//! an existing cluster (issue 7), as one multi-document YAML on stdout for
//! `kubectl apply -f -`, and the steps around it as comments: the Secret
//! (made by the operator from `tether-hub init`'s files, never printed) and
//! kube-apiserver's egress selector. `kubectl delete -f -` of the same text
//! is the reverse (ARCHITECTURE.md §4.2).
//!
//! The YAML is written by hand: a few fixed shapes with validated values
//! (a DNS label, a port, an image without spaces) need no emitter crate.
//! The RBAC and the webhook registration are not written twice: they come
//! from `cloudside/rbac.yaml` and `cloudside/webhook.yaml` as shipped, with
//! the namespace put in.

use crate::config::Egress;
use crate::{egress, pki};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_link::der::base64;

/// Namespace of the hub's objects unless `--namespace` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "tether-system";

/// The link port edges dial unless `--link-port` says otherwise.
pub const DEFAULT_LINK_PORT: u16 = 7443;

/// Image of the hub container unless `--image` says otherwise.
pub const DEFAULT_IMAGE: &str = concat!("tether-hub:", env!("CARGO_PKG_VERSION"));

/// The Secret holding the hub's certificates, made by the operator.
pub const PKI_SECRET: &str = "tether-hub-pki";

/// The Secret key (file name) of the CA of kube-apiserver's egress client
/// certificate: `[egress] client_ca`.
pub const EGRESS_CLIENT_CA: &str = "egress-client-ca.pem";

/// Where kube-apiserver's `cluster` egress reaches the hub (the ClusterIP
/// Service `tether-hub`, and the container).
pub const EGRESS_PORT: u16 = 8131;

/// The admin port (`/healthz` for the probes); in no Service.
pub const ADMIN_PORT: u16 = 7080;

/// The container port of the autonomy webhook; the Service `tether-hub`
/// serves it on 443, where `webhook.yaml`'s `clientConfig` points.
pub const WEBHOOK_PORT: u16 = 8443;

/// The hub's RBAC for `[autonomy]` (and its ServiceAccount), as shipped.
pub const RBAC_YAML: &str = include_str!("../rbac.yaml");

/// The MutatingWebhookConfiguration of the autonomy webhook, as shipped.
pub const WEBHOOK_YAML: &str = include_str!("../webhook.yaml");

/// The namespace the shipped YAML files name, replaced by `--namespace`.
const SHIPPED_NAMESPACE: &str = "tether-system";

/// `webhook.yaml`'s stand-in for the CA bundle.
const CA_PLACEHOLDER: &str = "REPLACE_WITH_BASE64_CA_PEM";

/// Where the pod mounts its config, Secret, state and ServiceAccount.
const CONFIG_DIR: &str = "/etc/tether-hub/config";
const PKI_DIR: &str = "/etc/tether-hub/pki";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The unprivileged user the hub runs as (distroless' `nonroot`).
const RUN_AS: u32 = 65532;

/// How edges reach the link Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// A cloud load balancer (TCP passthrough) in front of the link port.
    LoadBalancer,
    /// A port on every node's address, assigned by the cluster.
    NodePort,
}

impl ServiceType {
    fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
        }
    }
}

/// What `tether-hub manifests` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Namespace of the hub's objects (a DNS label).
    pub namespace: String,
    /// The hub's container image.
    pub image: String,
    /// The port edges link to.
    pub link_port: u16,
    /// The link Service's type.
    pub service_type: ServiceType,
    /// Include `[autonomy]`, its RBAC and the webhook Service.
    pub autonomy: bool,
    /// The CA that signed the webhook's certificate: with it the
    /// MutatingWebhookConfiguration is included, `caBundle` filled.
    pub webhook_ca: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            namespace: DEFAULT_NAMESPACE.into(),
            image: DEFAULT_IMAGE.into(),
            link_port: DEFAULT_LINK_PORT,
            service_type: ServiceType::LoadBalancer,
            autonomy: false,
            webhook_ca: None,
        }
    }
}

/// Reads the command line after `manifests`. `Ok(None)`: `--help`. The
/// error is one line naming the flag, for exit status 2.
pub fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs {what}"))
        };
        match arg.as_str() {
            "--namespace" | "-n" => {
                let ns = value("a namespace")?;
                if !is_dns_label(&ns) {
                    return Err(format!(
                        "--namespace {ns:?} is not a namespace name (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)"
                    ));
                }
                opts.namespace = ns;
            }
            "--image" => {
                let image = value("an image, like registry.example.com/tether-hub:0.1")?;
                if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c == '"') {
                    return Err(format!("--image {image:?} is not an image reference"));
                }
                opts.image = image;
            }
            "--link-port" => {
                let p = value("a TCP port")?;
                opts.link_port = match p.parse::<u16>() {
                    Ok(n) if n > 0 && ![ADMIN_PORT, EGRESS_PORT, WEBHOOK_PORT].contains(&n) => n,
                    Ok(n) if n > 0 => {
                        return Err(format!(
                            "--link-port {n} is taken in the pod (admin {ADMIN_PORT}, egress {EGRESS_PORT}, webhook {WEBHOOK_PORT})"
                        ))
                    }
                    _ => return Err(format!("--link-port {p:?} is not a TCP port (1 to 65535)")),
                };
            }
            "--service-type" => {
                let t = value("LoadBalancer or NodePort")?;
                opts.service_type = match t.as_str() {
                    "LoadBalancer" => ServiceType::LoadBalancer,
                    "NodePort" => ServiceType::NodePort,
                    _ => {
                        return Err(format!(
                            "--service-type {t:?}: LoadBalancer or NodePort (edges dial in from outside the cluster)"
                        ))
                    }
                };
            }
            "--autonomy" => opts.autonomy = true,
            "--webhook-ca" => opts.webhook_ca = Some(value("a CA file (PEM)")?.into()),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if opts.webhook_ca.is_some() && !opts.autonomy {
        return Err("--webhook-ca goes with --autonomy: the webhook is part of [autonomy]".into());
    }
    Ok(Some(opts))
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || c == '-')
        && s.starts_with(ok)
        && s.ends_with(ok)
}

/// Reads the webhook's CA file and gives the base64 `caBundle` of it.
/// The error names the file and says what it should be.
pub fn read_ca_bundle(path: &Path) -> Result<String, String> {
    let pem = std::fs::read(path).map_err(|e| format!("--webhook-ca {}: {e}", path.display()))?;
    if !pem.starts_with(b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "--webhook-ca {}: not a PEM certificate (-----BEGIN CERTIFICATE-----): give the CA that signed the webhook's certificate, such as the ca.pem tether-hub init wrote",
            path.display()
        ));
    }
    Ok(base64(&pem))
}

/// Reads `--webhook-ca` if given and renders everything.
pub fn manifests(opts: &Options) -> Result<String, String> {
    let bundle = match &opts.webhook_ca {
        Some(p) => Some(read_ca_bundle(p)?),
        None => None,
    };
    Ok(render(opts, bundle.as_deref()))
}

/// The whole output: the install steps as comments, then the objects.
/// `ca_bundle` is the base64 `caBundle` of the webhook's CA, if known.
pub fn render(opts: &Options, ca_bundle: Option<&str>) -> String {
    let mut docs = vec![namespace(opts), service_account(opts)];
    if opts.autonomy {
        docs.extend(rbac_documents(&opts.namespace));
    }
    docs.push(config_map(opts));
    docs.push(state_claim(opts));
    docs.push(deployment(opts));
    docs.push(link_service(opts));
    docs.push(cluster_service(opts));
    if let (true, Some(bundle)) = (opts.autonomy, ca_bundle) {
        docs.push(webhook_configuration(&opts.namespace, bundle));
    }
    let mut out = steps(opts);
    out.push_str(&docs.join("---\n"));
    if opts.autonomy && ca_bundle.is_none() {
        // A comment, not an empty document.
        out.push_str(&webhook_left_out(&opts.namespace));
    }
    out
}

/// The shipped YAML with `--namespace` put in, split into documents, and
/// the file's leading comment kept on the first.
fn shipped_documents(text: &str, ns: &str) -> Vec<String> {
    text.replace(SHIPPED_NAMESPACE, ns)
        .split("\n---\n")
        .map(|d| format!("{}\n", d.trim_end()))
        .collect()
}

/// The documents of `rbac.yaml` other than its ServiceAccount (written
/// whatever the flags, below): what `[autonomy]` needs, and nothing more.
fn rbac_documents(ns: &str) -> Vec<String> {
    let mut docs: Vec<String> = shipped_documents(RBAC_YAML, ns)
        .into_iter()
        .filter(|d| !d.lines().any(|l| l == "kind: ServiceAccount"))
        .collect();
    // The file's leading comment (why each rule) was on the
    // ServiceAccount's document: keep it with the rules.
    if let Some(first) = docs.first_mut() {
        *first = format!("{}{first}", rbac_comment(ns));
    }
    docs
}

/// `rbac.yaml`'s leading comment (why each rule), with the namespace put in.
fn rbac_comment(ns: &str) -> String {
    let mut out = String::new();
    for line in RBAC_YAML.lines().take_while(|l| l.starts_with('#')) {
        out.push_str(&line.replace(SHIPPED_NAMESPACE, ns));
        out.push('\n');
    }
    out
}

/// The ServiceAccount document of `rbac.yaml` (without the file's comment).
fn service_account(opts: &Options) -> String {
    let doc = shipped_documents(RBAC_YAML, &opts.namespace)
        .into_iter()
        .find(|d| d.lines().any(|l| l == "kind: ServiceAccount"))
        .unwrap_or_default();
    let body: Vec<&str> = doc.lines().skip_while(|l| l.starts_with('#')).collect();
    let why = if opts.autonomy {
        "# The hub's identity at kube-apiserver for [autonomy] (token_file).\n"
    } else {
        "# The hub's pod runs as this ServiceAccount; without --autonomy it has no\n\
         # RBAC (relaying edges' streams asks nothing of kube-apiserver) and its\n\
         # token is not mounted.\n"
    };
    format!("{why}{}\n", body.join("\n"))
}

/// Why the MutatingWebhookConfiguration is not there without
/// `--webhook-ca`, and how to add it.
fn webhook_left_out(ns: &str) -> String {
    format!(
        "# The MutatingWebhookConfiguration of the autonomy webhook is left out:\n\
         # kube-apiserver needs the CA of the hub's certificate as its caBundle.\n\
         # Once `tether-hub init` has made it, print these objects again with\n\
         #   --webhook-ca {dir}/{ca}\n\
         # and apply them again (or see cloudside/webhook.yaml). The hub's\n\
         # certificate must carry the name tether-hub.{ns}.svc (init --san).\n",
        dir = pki::DEFAULT_DIR,
        ca = pki::CA_CERT,
    )
}

/// The MutatingWebhookConfiguration of `webhook.yaml` (without its leading
/// comment, which is about a hand-written hub.toml), `caBundle` filled.
fn webhook_configuration(ns: &str, bundle: &str) -> String {
    let mut out = format!(
        "# The autonomy webhook (cloudside/webhook.yaml): pods labelled\n\
         # tether.io/offline: autonomy get tolerations without a time limit.\n\
         # kube-apiserver checks the hub's certificate (it must carry\n\
         # tether-hub.{ns}.svc) against caBundle.\n"
    );
    let text = WEBHOOK_YAML.replace(SHIPPED_NAMESPACE, ns);
    for line in text.lines().skip_while(|l| l.starts_with('#')) {
        out.push_str(&line.replace(CA_PLACEHOLDER, bundle));
        out.push('\n');
    }
    out
}

fn labels(indent: usize) -> String {
    let pad = " ".repeat(indent);
    format!("{pad}app.kubernetes.io/name: tether-hub\n{pad}app.kubernetes.io/part-of: tether\n")
}

fn namespace(opts: &Options) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n{}",
        opts.namespace,
        labels(4)
    )
}

/// The hub.toml the Deployment runs with: every path is a mount of the pod.
pub fn hub_toml(opts: &Options) -> String {
    let mut t = format!(
        "# tether-hub in the cluster (tether-hub manifests): paths are the\n\
         # pod's mounts of the ConfigMap, the Secret {PKI_SECRET} and the\n\
         # ServiceAccount.\n\
         log_level = \"info\"\n\
         \n\
         [listen]\n\
         link = \"0.0.0.0:{link}\"\n\
         # On the pod's address for the kubelet's probes; in no Service.\n\
         admin = \"0.0.0.0:{ADMIN_PORT}\"\n\
         \n\
         # Nodes authenticate by client certificates signed by the hub's CA.\n\
         [tls]\n\
         cert = \"{PKI_DIR}/{cert}\"\n\
         key = \"{PKI_DIR}/{key}\"\n\
         client_ca = \"{PKI_DIR}/{ca}\"\n\
         \n\
         # Edges reach kube-apiserver through the hub, by this name.\n\
         [upstream.kube-apiserver]\n\
         address = \"kubernetes.default.svc:443\"\n\
         \n\
         # Boards join with `tether-edge join` and a token made in this pod\n\
         # (see the top): the CA in the Secret signs their certificates;\n\
         # tokens and node records live on the state volume.\n\
         [join]\n\
         dir = \"{state}\"\n\
         ca = \"{PKI_DIR}/{ca}\"\n\
         ca_key = \"{PKI_DIR}/{ca_key}\"\n\
         \n\
         # kube-apiserver's egress selector dials here (the Service tether-hub).\n\
         # Hosts that are no node's (webhooks, aggregated APIs) are dialled from\n\
         # this pod: direct = \"cluster\" is the default; direct_allow narrows it.\n\
         [egress]\n\
         listen = \"0.0.0.0:{EGRESS_PORT}\"\n\
         cert = \"{PKI_DIR}/{cert}\"\n\
         key = \"{PKI_DIR}/{key}\"\n\
         client_ca = \"{PKI_DIR}/{EGRESS_CLIENT_CA}\"\n",
        link = opts.link_port,
        cert = pki::HUB_CERT,
        key = pki::HUB_KEY,
        ca = pki::CA_CERT,
        ca_key = pki::CA_KEY,
        state = pki::DEFAULT_DIR,
    );
    if opts.autonomy {
        let _ = write!(
            t,
            "\n\
             # Renew cut-off nodes' Leases as the ServiceAccount tether-hub\n\
             # (its RBAC is in these manifests); the token is re-read per\n\
             # request, as kubelet rotates it.\n\
             [autonomy]\n\
             apiserver = \"https://kubernetes.default.svc:443\"\n\
             ca = \"{SA_DIR}/ca.crt\"\n\
             token_file = \"{SA_DIR}/token\"\n\
             webhook_listen = \"0.0.0.0:{WEBHOOK_PORT}\"\n\
             webhook_cert = \"{PKI_DIR}/{cert}\"\n\
             webhook_key = \"{PKI_DIR}/{key}\"\n",
            cert = pki::HUB_CERT,
            key = pki::HUB_KEY,
        );
    }
    t
}

fn config_map(opts: &Options) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tether-hub-config\n  namespace: {}\n  labels:\n{}data:\n  hub.toml: |\n",
        opts.namespace,
        labels(4)
    );
    for line in hub_toml(opts).lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

fn deployment(opts: &Options) -> String {
    let ns = &opts.namespace;
    let webhook_port = if opts.autonomy {
        format!("            - name: webhook\n              containerPort: {WEBHOOK_PORT}\n")
    } else {
        String::new()
    };
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: tether-hub
  namespace: {ns}
  labels:
{labels4}spec:
  # One replica: each edge holds one link to one hub, and a hub knows only
  # the nodes linked to it. Two replicas behind one Service would split the
  # edges, and kube-apiserver's egress (and /nodes, and autonomy's votes)
  # would find a node only on the replica it happens to reach. Several
  # replicas need the broker mode (ARCHITECTURE.md §8).
  replicas: 1
  # Recreate, for the same reason: never two hubs at once during a rollout.
  # Edges relink on their own within seconds of the new pod being ready.
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app.kubernetes.io/name: tether-hub
  template:
    metadata:
      labels:
{labels8}    spec:
      serviceAccountName: tether-hub
      # The relay asks nothing of kube-apiserver: mount the token only for
      # [autonomy].
      automountServiceAccountToken: {autonomy}
      securityContext:
        runAsNonRoot: true
        runAsUser: {RUN_AS}
        runAsGroup: {RUN_AS}
        # The Secret's files are group-readable by this group only.
        fsGroup: {RUN_AS}
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: tether-hub
          image: {image}
          command: [\"tether-hub\", \"run\", \"--config\", \"{CONFIG_DIR}/hub.toml\"]
          ports:
            - name: link
              containerPort: {link}
            - name: egress
              containerPort: {EGRESS_PORT}
            - name: admin
              containerPort: {ADMIN_PORT}
{webhook_port}          readinessProbe:
            httpGet:
              path: /healthz
              port: admin
            periodSeconds: 5
          livenessProbe:
            httpGet:
              path: /healthz
              port: admin
            initialDelaySeconds: 10
            periodSeconds: 10
            failureThreshold: 3
          # The hub runs on one thread: more than one CPU is never used.
          # About 20 KiB per link (BENCHMARKS.md): 512Mi holds some 20,000
          # links with room for their streams; raise it with the fleet.
          resources:
            requests:
              cpu: 100m
              memory: 64Mi
            limits:
              cpu: \"1\"
              memory: 512Mi
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            privileged: false
            capabilities:
              drop: [\"ALL\"]
          volumeMounts:
            - name: config
              mountPath: {CONFIG_DIR}
              readOnly: true
            - name: pki
              mountPath: {PKI_DIR}
              readOnly: true
            - name: state
              mountPath: {state}
      volumes:
        - name: config
          configMap:
            name: tether-hub-config
        # Made by the operator from tether-hub init's files (see the top):
        # until it exists the pod waits in ContainerCreating.
        - name: pki
          secret:
            secretName: {PKI_SECRET}
            defaultMode: 288 # 0440: the hub's user through fsGroup
        # The hub's state directory, the one writable place under the
        # read-only root: join's tokens and node records (§4.1), which must
        # survive a restart (a lost node record would let a revoked node's
        # certificate in again).
        - name: state
          persistentVolumeClaim:
            claimName: tether-hub-state
",
        labels4 = labels(4),
        labels8 = labels(8),
        autonomy = opts.autonomy,
        image = opts.image,
        link = opts.link_port,
        state = pki::DEFAULT_DIR,
    )
}

/// The state volume: a few KiB per node (tokens and node records).
fn state_claim(opts: &Options) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: tether-hub-state\n  namespace: {}\n  labels:\n{}spec:\n  accessModes: [\"ReadWriteOnce\"]\n  resources:\n    requests:\n      storage: 1Gi\n",
        opts.namespace,
        labels(4)
    )
}

fn link_service(opts: &Options) -> String {
    let (why, policy) = match opts.service_type {
        ServiceType::LoadBalancer => (
            "# Edges dial the load balancer's address (a TCP passthrough: the hub\n\
             # terminates TLS itself). Local keeps the edges' addresses for the\n\
             # hub's log and /nodes.\n",
            "  externalTrafficPolicy: Local\n",
        ),
        ServiceType::NodePort => (
            "# Edges dial any node's address at the nodePort the cluster assigns\n\
             # (kubectl get service tether-hub-link shows it).\n",
            "",
        ),
    };
    format!(
        "{why}apiVersion: v1\nkind: Service\nmetadata:\n  name: tether-hub-link\n  namespace: {ns}\n  labels:\n{labels}spec:\n  type: {ty}\n{policy}  selector:\n    app.kubernetes.io/name: tether-hub\n  ports:\n    - name: link\n      protocol: TCP\n      port: {port}\n      targetPort: link\n",
        ns = opts.namespace,
        labels = labels(4),
        ty = opts.service_type.as_str(),
        port = opts.link_port,
    )
}

/// The in-cluster Service: the egress kube-apiserver dials and, with
/// `--autonomy`, the webhook on 443 as `webhook.yaml` registers it.
fn cluster_service(opts: &Options) -> String {
    let webhook = if opts.autonomy {
        "    - name: webhook\n      protocol: TCP\n      port: 443\n      targetPort: webhook\n"
    } else {
        ""
    };
    format!(
        "# kube-apiserver's egress (and, with --autonomy, its webhook calls) reach\n\
         # the hub here: tether-hub.{ns}.svc, or its ClusterIP.\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: tether-hub\n  namespace: {ns}\n  labels:\n{labels}spec:\n  type: ClusterIP\n  selector:\n    app.kubernetes.io/name: tether-hub\n  ports:\n    - name: egress\n      protocol: TCP\n      port: {EGRESS_PORT}\n      targetPort: egress\n{webhook}",
        ns = opts.namespace,
        labels = labels(4),
    )
}

/// The same command line, for the comments: what to run again.
fn command_line(opts: &Options) -> String {
    let mut c = String::from("tether-hub manifests");
    if opts.namespace != DEFAULT_NAMESPACE {
        let _ = write!(c, " --namespace {}", opts.namespace);
    }
    if opts.image != DEFAULT_IMAGE {
        let _ = write!(c, " --image {}", opts.image);
    }
    if opts.link_port != DEFAULT_LINK_PORT {
        let _ = write!(c, " --link-port {}", opts.link_port);
    }
    if opts.service_type != ServiceType::LoadBalancer {
        let _ = write!(c, " --service-type {}", opts.service_type.as_str());
    }
    if opts.autonomy {
        c.push_str(" --autonomy");
    }
    if let Some(ca) = &opts.webhook_ca {
        let _ = write!(c, " --webhook-ca {}", ca.display());
    }
    c
}

/// The install steps, as YAML comments at the top of the output.
fn steps(opts: &Options) -> String {
    let ns = &opts.namespace;
    let dir = pki::DEFAULT_DIR;
    let cmd = command_line(opts);
    let egress = egress::selector_config(&Egress {
        listen: Some(([0, 0, 0, 0], EGRESS_PORT).into()),
        tls: None,
        uds: None,
        connect_timeout: Duration::from_secs(5),
        direct: Default::default(),
        direct_policy: Default::default(),
    })
    .replace("HUB-HOST", "EGRESS-IP");
    let mut out = format!(
        "# tether-hub in an existing cluster (ARCHITECTURE.md §4.2), made by\n\
         #   {cmd}\n\
         #\n\
         # 1. Apply these objects (the hub's pod waits for the Secret of step 3):\n\
         #      {cmd} | kubectl apply -f -\n\
         #\n\
         # 2. The hub's CA and certificate, naming every address it is reached by:\n\
         #    the name edges dial (the link Service's load balancer or a node),\n\
         #    tether-hub.{ns}.svc (the webhook) and the ClusterIP kube-apiserver's\n\
         #    egress dials:\n\
         #      EGRESS_IP=$(kubectl -n {ns} get service tether-hub -o jsonpath='{{.spec.clusterIP}}')\n\
         #      tether-hub init --dir {dir} --san HUB.EXAMPLE.COM --san tether-hub.{ns}.svc --san \"$EGRESS_IP\"\n\
         #    Its CA hash is what edges pin (tether-edge join --ca-hash).\n\
         #\n\
         # 3. The Secret (its keys are never printed here). {EGRESS_CLIENT_CA} is\n\
         #    the CA of the client certificate kube-apiserver shows the egress:\n\
         #    on kubeadm the cluster CA, which signed apiserver-kubelet-client.crt.\n\
         #    The CA's key ({ca_key}) signs the boards' certificates (join).\n\
         #      kubectl -n {ns} create secret generic {PKI_SECRET} \\\n\
         #        --from-file={dir}/{ca} \\\n\
         #        --from-file={dir}/{ca_key} \\\n\
         #        --from-file={dir}/{cert} \\\n\
         #        --from-file={dir}/{key} \\\n\
         #        --from-file={EGRESS_CLIENT_CA}=/etc/kubernetes/pki/ca.crt\n\
         #\n\
         # 4. kube-apiserver's egress to the kubelets through the hub, on every\n\
         #    control-plane node: copy {dir}/{ca} to\n\
         #    /etc/kubernetes/pki/tether-hub-ca.crt, a client certificate signed by\n\
         #    {EGRESS_CLIENT_CA} to tether-egress-client.crt/.key there (kubeadm:\n\
         #    copies of apiserver-kubelet-client.crt/.key), put $EGRESS_IP for\n\
         #    EGRESS-IP below and save it; a static kube-apiserver pod must also\n\
         #    mount the file (kubeadm mounts only /etc/kubernetes/pki: add a\n\
         #    hostPath). Then add the flags to kube-apiserver:\n\
         #\n",
        ca = pki::CA_CERT,
        ca_key = pki::CA_KEY,
        cert = pki::HUB_CERT,
        key = pki::HUB_KEY,
    );
    for line in egress.lines() {
        let _ = writeln!(out, "#      {line}");
    }
    let _ = write!(
        out,
        "#\n\
         #    kube-apiserver then sends all its `cluster` traffic to the hub:\n\
         #    the kubelets by node name, webhooks (this hub's own too) and\n\
         #    aggregated APIs by a Service's or pod's address, which the hub\n\
         #    dials from its pod ([egress] direct, \"cluster\" by default; add\n\
         #    direct_allow with the cluster's Service and pod CIDRs to narrow\n\
         #    it; §4.2).\n"
    );
    let _ = write!(
        out,
        "#\n\
         # Boards: a bootstrap token and the command to run on each board:\n\
         #      kubectl -n {ns} exec deploy/tether-hub -- tether-hub token create \\\n\
         #        --dir {state} --ca {PKI_DIR}/{ca} --hub HUB.EXAMPLE.COM:{link} --print-join-command\n\
         #    (`token list`, `node list`, `node revoke NAME` likewise.)\n",
        ns = opts.namespace,
        state = pki::DEFAULT_DIR,
        ca = pki::CA_CERT,
        link = opts.link_port,
    );
    if opts.autonomy && opts.webhook_ca.is_none() {
        let _ = write!(
            out,
            "#\n\
             # 5. The webhook's registration, once {dir}/{ca} exists:\n\
             #      {cmd} --webhook-ca {dir}/{ca} | kubectl apply -f -\n",
            ca = pki::CA_CERT,
        );
    }
    let _ = write!(
        out,
        "#\n\
         # Detach (the reverse): first remove --egress-selector-config-file\n\
         # from kube-apiserver (else its logs, exec and port-forward go to a\n\
         # hub that is gone) and the files of step 4, then delete with the\n\
         # flags these objects were applied with (--webhook-ca too, or the\n\
         # webhook's registration stays):\n\
         #      {cmd} | kubectl delete -f -\n\
         # The namespace takes the Secret with it. Edges' links drop and they\n\
         # keep retrying; their nodes go NotReady (nothing renews their Leases\n\
         # any more) and Kubernetes evicts their pods as for any lost node,\n\
         # except pods the webhook gave unlimited tolerations. The cluster is\n\
         # left as before.\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags() {
        assert_eq!(parse_args(&[]), Ok(Some(Options::default())));
        assert_eq!(parse_args(&args(&["--help"])), Ok(None));
        let o = parse_args(&args(&[
            "--namespace",
            "edge-sys",
            "--image",
            "r.example/hub:1",
            "--link-port",
            "443",
            "--service-type",
            "NodePort",
            "--autonomy",
            "--webhook-ca",
            "ca.pem",
        ]))
        .expect("valid")
        .expect("not help");
        assert_eq!(o.namespace, "edge-sys");
        assert_eq!(o.image, "r.example/hub:1");
        assert_eq!(o.link_port, 443);
        assert_eq!(o.service_type, ServiceType::NodePort);
        assert!(o.autonomy);
        assert_eq!(o.webhook_ca, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (bad, names) in [
            (&["--namespace", "Tether_System"][..], "--namespace"),
            (&["--namespace", "-x"][..], "--namespace"),
            (&["--namespace"][..], "--namespace needs"),
            (&["--link-port", "0"][..], "--link-port"),
            (&["--link-port", "70000"][..], "--link-port"),
            (&["--link-port", "8131"][..], "taken"),
            (&["--service-type", "ClusterIP"][..], "--service-type"),
            (&["--image", "a b"][..], "--image"),
            (&["--webhook-ca", "ca.pem"][..], "--autonomy"),
            (&["--frobnicate"][..], "unknown argument"),
        ] {
            let e = parse_args(&args(bad)).expect_err("invalid");
            assert!(e.contains(names), "{bad:?}: {e}");
        }
    }

    #[test]
    fn relay_only_has_no_rbac_and_no_token() {
        let out = render(&Options::default(), None);
        for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
            assert!(!out.contains(&format!("\nkind: {kind}\n")), "{kind}");
        }
        assert!(!out.contains("MutatingWebhookConfiguration"));
        assert!(out.contains("automountServiceAccountToken: false\n"));
        assert!(!hub_toml(&Options::default()).contains("[autonomy]"));
    }

    #[test]
    fn autonomy_brings_the_shipped_rbac() {
        let opts = Options {
            autonomy: true,
            ..Options::default()
        };
        let out = render(&opts, None);
        // Every document of rbac.yaml, word for word.
        for doc in RBAC_YAML.split("\n---\n") {
            let body: Vec<&str> = doc.lines().skip_while(|l| l.starts_with('#')).collect();
            assert!(out.contains(&body.join("\n")), "{doc}");
        }
        assert!(out.contains("automountServiceAccountToken: true\n"));
        assert!(out.contains("--webhook-ca /var/lib/tether-hub/ca.pem"));
        assert!(!out.contains("kind: MutatingWebhookConfiguration"));
        assert!(hub_toml(&opts)
            .contains("token_file = \"/var/run/secrets/kubernetes.io/serviceaccount/token\"\n"));
    }

    #[test]
    fn another_namespace_everywhere() {
        let opts = Options {
            namespace: "edge-sys".into(),
            autonomy: true,
            ..Options::default()
        };
        let out = render(&opts, Some("QUJD"));
        assert!(!out.contains("tether-system"));
        // The ServiceAccount, its two bindings' subjects, and webhook.yaml's
        // Service reference.
        assert!(out.matches("    namespace: edge-sys\n").count() >= 3);
        assert!(out.contains("      caBundle: QUJD\n"));
        assert!(!out.contains(CA_PLACEHOLDER));
    }

    /// The Service `tether-hub` serves the webhook where webhook.yaml points.
    #[test]
    fn webhook_yaml_points_at_the_service() {
        assert!(WEBHOOK_YAML.contains("      service:\n        namespace: tether-system\n        name: tether-hub\n        path: /mutate-pods\n        port: 443\n"));
        assert!(WEBHOOK_YAML.contains(&format!("      caBundle: {CA_PLACEHOLDER}\n")));
    }

    #[test]
    fn the_config_parses() {
        for autonomy in [false, true] {
            let opts = Options {
                autonomy,
                ..Options::default()
            };
            let cfg = crate::config::parse(&hub_toml(&opts), Path::new("/")).expect("valid");
            assert_eq!(
                cfg.listen_link,
                Some(([0, 0, 0, 0], DEFAULT_LINK_PORT).into())
            );
            assert_eq!(cfg.autonomy.is_some(), autonomy);
            assert_eq!(
                cfg.egress.and_then(|e| e.listen),
                Some(([0, 0, 0, 0], EGRESS_PORT).into())
            );
        }
    }

    #[test]
    fn steps_show_the_secret_and_the_egress_flag() {
        let out = steps(&Options::default());
        assert!(out.lines().all(|l| l.starts_with('#')));
        assert!(out.contains(
            "kubectl -n tether-system create secret generic tether-hub-pki \\\n#        --from-file=/var/lib/tether-hub/ca.pem \\\n"
        ));
        assert!(out.contains("--from-file=/var/lib/tether-hub/ca-key.pem \\"));
        assert!(out.contains("exec deploy/tether-hub -- tether-hub token create"));
        assert!(out.contains("--egress-selector-config-file="));
        assert!(out.contains("url: https://EGRESS-IP:8131"));
        assert!(out.contains("| kubectl delete -f -"));
    }

    #[test]
    fn ca_bundle_from_a_pem_file_only() {
        let dir = std::env::temp_dir().join(format!("tether-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("ca.pem");
        std::fs::write(&good, "-----BEGIN CERTIFICATE-----\nAA==\n").expect("write");
        assert_eq!(
            read_ca_bundle(&good),
            Ok(base64(b"-----BEGIN CERTIFICATE-----\nAA==\n"))
        );
        let bad = dir.join("key.pem");
        std::fs::write(&bad, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        assert!(read_ca_bundle(&bad)
            .expect_err("not a certificate")
            .contains("key.pem"));
        assert!(read_ca_bundle(&dir.join("missing.pem")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
