//! Keeping the node's certificate fresh while the edge runs: at a set
//! fraction of its life (two thirds by default) the edge makes a new key,
//! proves possession of the current one, and swaps the identity file in one
//! rename; the link presents the new certificate from its next connection.
//!
//! A certificate that expired while the board was offline is renewed the
//! same way, as long as the hub's grace period allows; past it, or once the
//! node is revoked, the hub refuses with a message that says what to do (a
//! new token and `tether-edge join --force`), logged once, and the edge
//! asks again hourly in case the operator changed something.

use super::exchange::{exchange, ExchangeError};
use super::files::{self, Planned};
use super::key::NodeKey;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use log::{error, info, warn};
use rustls::pki_types::ServerName;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_link::join::{proof_message, Answer, Request};
use tether_link::mqtt::{self, Connect, ConnectReturnCode, Packet, Protocol};
use tether_link::topic::NodeName;

/// Longest sleep between looks at the certificate file (a join --force or
/// a hand-placed certificate is noticed within it).
const LOOK_EVERY: Duration = Duration::from_secs(3600);
/// First wait after a failed attempt; doubles up to [`LOOK_EVERY`].
const RETRY_FIRST: Duration = Duration::from_secs(30);
/// One exchange with the hub.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// What renewal needs to know.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// This node.
    pub node: NodeName,
    /// The hub, `host:port`.
    pub address: String,
    /// The name the hub's certificate carries.
    pub server_name: String,
    /// The hub's CA.
    pub ca: PathBuf,
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file (may be the certificate file: then one rename swaps both).
    pub key: PathBuf,
    /// Renew once this percentage of the certificate's life has passed.
    pub at_percent: u8,
}

/// When a certificate valid from `from` to `until` (unix seconds) is due.
pub fn due_at(from: i64, until: i64, percent: u8) -> i64 {
    from + (until - from).max(0) * i64::from(percent) / 100
}

/// Renews forever.
pub async fn run(r: Renewal) {
    let mut retry = RETRY_FIRST;
    let mut last_error = String::new();
    loop {
        let wait = match next_wait(&r) {
            Ok(None) => match renew_once(&r).await {
                Ok(until) => {
                    info!(
                        "node certificate renewed, valid until {}",
                        tether_link::logger::rfc3339(until)
                    );
                    last_error.clear();
                    retry = RETRY_FIRST;
                    // Never renew in a tight loop, whatever the new
                    // certificate's dates say.
                    async_io::Timer::after(Duration::from_secs(1)).await;
                    continue;
                }
                Err((e, refused)) => {
                    if e != last_error {
                        if refused {
                            error!("node certificate renewal refused: {e}");
                        } else {
                            warn!("node certificate renewal failed, will retry: {e}");
                        }
                        last_error = e;
                    }
                    let wait = if refused { LOOK_EVERY } else { retry };
                    retry = (retry * 2).min(LOOK_EVERY);
                    wait
                }
            },
            Ok(Some(wait)) => wait.min(LOOK_EVERY),
            Err(e) => {
                if e != last_error {
                    error!("node certificate renewal: {e}");
                    last_error = e;
                }
                LOOK_EVERY
            }
        };
        async_io::Timer::after(wait).await;
    }
}

/// `Ok(None)`: due now; `Ok(Some(d))`: due in `d`.
fn next_wait(r: &Renewal) -> Result<Option<Duration>, String> {
    let certs = tether_link::tls::load_certs(&r.cert).map_err(|e| e.to_string())?;
    let cert = certs
        .first()
        .ok_or_else(|| format!("{}: no certificate", r.cert.display()))?;
    let (from, until) = tether_link::tls::validity_of_certificate(cert)
        .ok_or_else(|| format!("{}: validity does not parse", r.cert.display()))?;
    let now = unix_now() as i64;
    let due = due_at(from, until, r.at_percent);
    Ok((due > now).then(|| Duration::from_secs((due - now) as u64)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One renewal. The error says whether the hub refused (`true`) or could
/// not be asked.
async fn renew_once(r: &Renewal) -> Result<SystemTime, (String, bool)> {
    let fail = |e: String| (e, false);
    let certs = tether_link::tls::load_certs(&r.cert).map_err(|e| fail(e.to_string()))?;
    let cert = certs
        .first()
        .ok_or_else(|| fail(format!("{}: no certificate", r.cert.display())))?
        .to_vec();
    let old = NodeKey::load(&r.key).map_err(fail)?;
    let new = NodeKey::generate().map_err(fail)?;
    let csr = new.csr(&r.node).map_err(fail)?;
    let signed_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let proof = old
        .sign(&proof_message(&r.node, &csr, signed_at_ms))
        .map_err(fail)?;
    let tls = tether_link::tls::client_config(&r.ca, None).map_err(|e| fail(e.to_string()))?;
    let request = Request::Renew {
        certificate: cert,
        csr,
        signed_at_ms,
        proof,
    };
    let answer = exchange(
        &r.address,
        &r.server_name,
        Arc::new(tls),
        &r.node,
        &request,
        EXCHANGE_TIMEOUT,
    )
    .await
    .map_err(|e: ExchangeError| fail(e.to_string()))?;
    let issued = match answer {
        Answer::Issued { certificate, .. } => certificate,
        Answer::Refused { reason, message } => return Err((format!("{reason}: {message}"), true)),
    };
    if !new.matches(&issued)
        || tether_link::tls::node_of_certificate(&issued).as_deref() != Some(r.node.as_str())
    {
        return Err(fail(
            "the hub's certificate does not fit the request; keeping the current one".into(),
        ));
    }
    let until = tether_link::tls::validity_of_certificate(&issued)
        .map(|(_, u)| UNIX_EPOCH + Duration::from_secs(u.max(0) as u64))
        .ok_or_else(|| fail("the new certificate's validity does not parse".into()))?;
    let cert_pem = tether_link::der::pem("CERTIFICATE", &issued);
    let plan = if r.cert == r.key {
        vec![Planned {
            path: r.cert.clone(),
            data: format!("{cert_pem}{}", new.pem()).into_bytes(),
            mode: 0o600,
        }]
    } else {
        // Two files cannot change in one step; between the renames the
        // link may fail one handshake and retry.
        vec![
            Planned {
                path: r.key.clone(),
                data: new.pem().into_bytes(),
                mode: 0o600,
            },
            Planned {
                path: r.cert.clone(),
                data: cert_pem.into_bytes(),
                mode: 0o644,
            },
        ]
    };
    files::write_all(&plan).map_err(fail)?;
    Ok(until)
}

/// Brings a link up with `tls`'s client certificate and takes it down at
/// once: `join`'s last step, proving the new identity works.
pub async fn check_link(
    address: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    node: &NodeName,
    deadline: Duration,
) -> Result<(), String> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let work = async {
        let tcp = smol::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let mut conn = futures_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let mut out = Vec::new();
        mqtt::encode(
            &Packet::Connect(Connect {
                protocol: Protocol::MQTT311,
                keep_alive: 30,
                client_id: node.as_str(),
                clean_session: true,
                last_will: None,
                username: None,
                password: None,
            }),
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        conn.write_all(&out).await.map_err(|e| e.to_string())?;
        conn.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf)
            .await
            .map_err(|e| format!("no CONNACK: {e}"))?;
        match mqtt::decode(&buf, 4) {
            Ok(Some((Packet::Connack(c), _))) if c.code == ConnectReturnCode::Accepted => {}
            Ok(Some((Packet::Connack(c), _))) => {
                return Err(format!("the hub refused the link ({:?})", c.code))
            }
            _ => return Err("the hub did not answer with a CONNACK".into()),
        }
        let _ = conn.write_all(&[0xe0, 0x00]).await; // DISCONNECT
        let _ = conn.flush().await;
        let _ = conn.close().await;
        Ok(())
    };
    work.or(async {
        async_io::Timer::after(deadline).await;
        Err(format!("no CONNACK within {deadline:?}"))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_the_fraction_of_life() {
        assert_eq!(due_at(0, 300, 67), 201);
        assert_eq!(due_at(1000, 1090, 50), 1045);
        assert_eq!(due_at(1000, 900, 67), 1000);
    }
}
