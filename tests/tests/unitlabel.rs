//! Health units from a node label (issue 6, `[health] unit_label`), with
//! real binaries: three edges (`edge-1`..`edge-3`) with no unit in their
//! config read it from a stand-in kube-apiserver through their links, with
//! their node certificates. The stand-in serves three Nodes labelled
//! `tether.io/unit=site-a`, each with an InternalIP of its own on loopback
//! (127.0.0.2, .3, .4: the edges share one health port number, as members
//! on a site network do, and each binds its own address). The edges form
//! the unit and the hub's `/nodes` shows their votes; an edge restarted
//! while kube-apiserver is down starts from the membership it saved; a
//! Node whose label changes leaves the others' unit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tether_tests::apiserver::{Kind, StandIn};
use tether_tests::cluster::{self, start_hub, token_of, Transport};
use tether_tests::healthunit::{
    free_udp_port, shown_verdicts, start_edge, voted, wait_until, write_key,
};
use tether_tests::pki::Pki;
use tether_tests::procs::{free_port, Proc};

const NAMES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const LABEL: &str = "tether.io/unit";

/// Edge `i`'s health address: its Node's InternalIP.
fn health_ip(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

/// Puts Nodes `edge-1`..`edge-3` in the stand-in, each a copy of the
/// recorded `edge-1` with its name and InternalIP, labelled `LABEL=site-a`.
fn seed_nodes(standin: &StandIn) {
    let (json, pb) = standin
        .object(Kind::Node, "", "edge-1")
        .expect("the recorded Node edge-1");
    for (i, name) in NAMES.iter().enumerate() {
        let json = String::from_utf8(json.clone())
            .expect("UTF-8")
            .replace("192.168.10.11", &health_ip(i))
            .replace("edge-1", name);
        // The edges ask for JSON; the protobuf keeps the recorded address
        // (same-length edits only, so its lengths stay right).
        let pb = replace(&pb, b"edge-1", name.as_bytes());
        standin
            .put(Kind::Node, "", name, json.as_bytes(), &pb)
            .expect("put a Node");
        standin
            .modify_label(Kind::Node, "", name, LABEL, "site-a")
            .expect("label a Node");
    }
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

/// One edge's config: no top-level unit, `[health] unit_label`, the API
/// proxy through the link with the node's certificate, its cache (and so
/// the saved membership) in a folder of its own.
fn edge_config(pki: &Pki, i: usize, link: SocketAddr, port: u16, key: &std::path::Path) -> PathBuf {
    let name = NAMES[i];
    let token = pki.write(&format!("token-{name}"), &token_of(name));
    let (cert, cert_key) = pki.node_cert(&format!("system:node:{name}"));
    let cache_dir = pki.dir.join(format!("cache-{name}"));
    std::fs::create_dir_all(&cache_dir).expect("a cache folder");
    let status = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = format!(
        "node = \"{name}\"\nlog_level = \"debug\"\n[hub]\naddress = \"{link}\"\nplaintext = true\n\
         token_file = \"{}\"\n[link]\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n\
         [status]\nlisten = \"{status}\"\n\
         [apiserver]\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [proxy]\nlisten = \"{proxy}\"\ncache = \"{}\"\n\
         [health]\nlisten = \"{}:{port}\"\nkey_file = \"{}\"\nunit_label = \"{LABEL}\"\n\
         interval = \"2s\"\nrefresh = \"2s\"\n",
        token.display(),
        pki.ca.display(),
        cert.display(),
        cert_key.display(),
        cache_dir.join("cache.db").display(),
        health_ip(i),
        key.display(),
    );
    pki.write(&format!("edge-{name}.toml"), &text)
}

fn logs(hub: &Proc, edges: &[Proc]) -> String {
    let mut out = format!("--- hub\n{}", hub.logs());
    for (name, p) in NAMES.iter().zip(edges) {
        out.push_str(&format!("--- {name}\n{}", p.logs()));
    }
    out
}

#[test]
fn edges_form_their_unit_from_a_node_label() {
    let pki = Pki::new();
    let standin = StandIn::start_tls(&pki);
    seed_nodes(&standin);
    let hub_extra = format!(
        "[upstream.kube-apiserver]\naddress = \"{}\"\n",
        standin.addr()
    );
    let hub = start_hub(&pki, Transport::Plain, &NAMES, &hub_extra);
    let admin = hub.admin;
    let (key, _) = write_key(&pki, "unit.key", 7);
    // One port number for all: each member binds its own address.
    let port = free_udp_port();
    let configs: Vec<PathBuf> = (0..NAMES.len())
        .map(|i| edge_config(&pki, i, hub.link, port, &key))
        .collect();
    let mut edges: Vec<Proc> = NAMES
        .iter()
        .zip(&configs)
        .map(|(name, config)| start_edge(name, config))
        .collect();
    for name in NAMES {
        assert!(
            cluster::wait_linked(admin, name, Duration::from_secs(30)),
            "{name} did not link:\n{}",
            logs(&hub.proc, &edges)
        );
    }

    // The unit forms: each member voted alive by the other two.
    let formed = wait_until(Duration::from_secs(30), || {
        NAMES.iter().all(|n| voted(admin, n, "alive", Some((2, 0))))
    });
    assert!(
        formed.is_some(),
        "the unit did not form:\n{}",
        logs(&hub.proc, &edges)
    );
    for (name, edge) in NAMES.iter().zip(&edges) {
        let log = edge.logs();
        assert!(
            log.contains("health unit site-a: members now edge-1 edge-2 edge-3"),
            "{name}:\n{log}"
        );
        // Logged once, not per refresh (several refreshes have passed).
        assert_eq!(log.matches("members now").count(), 1, "{name}:\n{log}");
        let saved = std::fs::read_to_string(pki.dir.join(format!("cache-{name}/health-unit")))
            .expect("the saved membership");
        assert!(
            saved.contains("label tether.io/unit\nunit site-a\n"),
            "{saved}"
        );
    }
    let saved = std::fs::read_to_string(pki.dir.join("cache-edge-1/health-unit"))
        .expect("the saved membership");
    assert!(
        saved.contains(&format!("member edge-2 127.0.0.3:{port}\n"))
            && saved.contains(&format!("member edge-3 127.0.0.4:{port}\n")),
        "{saved}"
    );

    // edge-3 restarts while kube-apiserver is down: it starts from what it
    // saved and is back in its unit.
    edges[2].kill();
    let dead = wait_until(Duration::from_secs(30), || {
        voted(admin, "edge-3", "dead", Some((0, 2)))
    });
    assert!(
        dead.is_some(),
        "edge-3 was not voted dead:\n{}",
        logs(&hub.proc, &edges)
    );
    standin.set_down(true);
    edges[2] = start_edge("edge-3", &configs[2]);
    // Voted alive again: it answers its unit's probes, which it could not
    // without knowing its unit.
    let back = wait_until(Duration::from_secs(30), || {
        shown_verdicts(admin, "edge-3")
            == vec![
                ("edge-1".to_string(), "alive".to_string()),
                ("edge-2".to_string(), "alive".to_string()),
            ]
            && voted(admin, "edge-3", "alive", Some((2, 0)))
            && edges[2].logs().contains("keeping unit site-a as last read")
    });
    let log = edges[2].logs();
    assert!(
        back.is_some()
            && log.contains("health unit site-a: starting from the membership saved in")
            && log.contains("cannot read the unit from node label tether.io/unit"),
        "edge-3 did not start from its saved unit:\n{}",
        logs(&hub.proc, &edges)
    );

    // kube-apiserver is back and edge-3's Node moves to another unit: the
    // others drop it within a refresh or two, and it stands alone.
    standin.set_down(false);
    standin
        .modify_label(Kind::Node, "", "edge-3", LABEL, "site-b")
        .expect("relabel edge-3");
    let left = wait_until(Duration::from_secs(20), || {
        edges[..2]
            .iter()
            .all(|e| e.logs().contains("members now edge-1 edge-2 (-edge-3)"))
            && edges[2]
                .logs()
                .contains("health unit site-b: members now edge-3 (-edge-1 -edge-2); this node was in unit site-a before")
    });
    assert!(
        left.is_some(),
        "edge-3 did not leave site-a:\n{}",
        logs(&hub.proc, &edges)
    );
}
