//! One join or renewal exchange with the hub: TCP, TLS, the request in a
//! CONNECT, the answer in a PUBLISH ([`tether_link::join`]), all within a
//! deadline.

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use rustls::pki_types::ServerName;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tether_link::join::{self, Answer, Request};
use tether_link::topic::NodeName;

/// Why an exchange brought no answer.
#[derive(Debug)]
pub enum ExchangeError {
    /// The address did not resolve or refused the connection.
    Connect(String),
    /// The TLS handshake failed (a wrong CA hash shows here).
    Tls(String),
    /// The hub answered something that is not a join answer.
    Protocol(String),
    /// No answer within the deadline.
    Timeout(Duration),
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Connect(e) => write!(f, "cannot reach the hub: {e}"),
            ExchangeError::Tls(e) => write!(f, "TLS with the hub failed: {e}"),
            ExchangeError::Protocol(e) => write!(f, "the hub's answer is not understood: {e}"),
            ExchangeError::Timeout(d) => write!(f, "no answer from the hub within {d:?}"),
        }
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed),
/// which the hub's certificate must name.
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Sends `request` for `node` to the hub at `address` (verified by `tls`
/// under `server_name`) and returns its answer.
pub async fn exchange(
    address: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    node: &NodeName,
    request: &Request,
    deadline: Duration,
) -> Result<Answer, ExchangeError> {
    let bytes =
        join::encode_request(node, request).map_err(|e| ExchangeError::Protocol(e.to_string()))?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| ExchangeError::Connect(format!("{server_name:?} is not a host name: {e}")))?;
    let work = async {
        let tcp = smol::net::TcpStream::connect(address)
            .await
            .map_err(|e| ExchangeError::Connect(format!("{address}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = futures_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| ExchangeError::Tls(e.to_string()))?;
        conn.write_all(&bytes)
            .await
            .map_err(|e| ExchangeError::Tls(e.to_string()))?;
        conn.flush()
            .await
            .map_err(|e| ExchangeError::Tls(e.to_string()))?;
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(answer) =
                join::decode_answer(&buf).map_err(|e| ExchangeError::Protocol(e.to_string()))?
            {
                return Ok(answer);
            }
            if buf.len() > join::MAX_ANSWER + 16 {
                return Err(ExchangeError::Protocol("answer too large".into()));
            }
            match conn.read(&mut chunk).await {
                Ok(0) => {
                    return Err(ExchangeError::Protocol(
                        "the hub closed the connection without an answer (is it a tether-hub with [join] configured?)"
                            .into(),
                    ))
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(ExchangeError::Tls(e.to_string())),
            }
        }
    };
    work.or(async {
        async_io::Timer::after(deadline).await;
        Err(ExchangeError::Timeout(deadline))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("hub.example.com:7443"), "hub.example.com");
        assert_eq!(host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7443"), "::1");
    }
}
