//! The autonomy controller's HTTPS client to kube-apiserver: TLS 1.3 with
//! the hub's client certificate or a bearer token (re-read before every
//! request, as kubelet rotates ServiceAccount tokens in place), HTTP/1.1
//! requests with JSON bodies, answers read by Content-Length or chunked,
//! one kept-alive connection, every exchange under [`REQUEST_TIMEOUT`].
//!
//! Written here on smol and futures-rustls (which the hub already uses for
//! its links) rather than taking an HTTP client crate: the controller sends
//! a handful of small requests per period from the hub's one thread, and a
//! blocking client would need a thread of its own and a second TLS stack
//! configuration.

use crate::config::{ApiIdentity, Autonomy};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use futures_lite::FutureExt;
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;
use smol::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One request and its answer must be done within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A longer answer head is refused.
const MAX_HEAD: usize = 64 * 1024;
/// A longer answer body is refused (kube-apiserver's own request limit;
/// a Node or Lease is a few KiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// An answer from kube-apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// The client: where kube-apiserver is, how to reach it, one idle
/// connection kept for the next request.
pub struct Client {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token_file: Option<PathBuf>,
    idle: Option<TlsStream<TcpStream>>,
}

impl Client {
    /// Builds the TLS setup from `cfg`; an error names the file at fault.
    pub fn new(cfg: &Autonomy) -> Result<Client, String> {
        let (identity, token_file) = match &cfg.identity {
            ApiIdentity::Certificate { cert, key } => (Some((cert.as_path(), key.as_path())), None),
            ApiIdentity::Token(path) => (None, Some(path.clone())),
        };
        let tls = tether_link::tls::client_config(&cfg.ca, identity)
            .map_err(|e| format!("autonomy: {e}"))?;
        let server_name = ServerName::try_from(cfg.server_name.clone()).map_err(|e| {
            format!(
                "autonomy.server_name {:?} is neither a DNS name nor an IP: {e}",
                cfg.server_name
            )
        })?;
        if let Some(path) = &token_file {
            read_token(path)?;
        }
        Ok(Client {
            host: cfg.host.clone(),
            port: cfg.port,
            server_name,
            tls: TlsConnector::from(Arc::new(tls)),
            token_file,
            idle: None,
        })
    }

    /// `https://host:port`, for log lines.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }

    /// Sends `method path` with an optional JSON `body` and reads the
    /// answer. An error is a network or protocol failure (any HTTP status
    /// is an answer). A request on a kept-alive connection the server has
    /// closed meanwhile is sent again once on a new one.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, String> {
        let head = self.head(method, path, body)?;
        let mut message = head.into_bytes();
        message.extend_from_slice(body.unwrap_or_default());
        if let Some(conn) = self.idle.take() {
            if let Ok(answer) = self.exchange(conn, &message).await {
                return Ok(answer);
            }
        }
        let conn = self.connect().await?;
        self.exchange(conn, &message).await
    }

    fn head(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<String, String> {
        let host = self.address().trim_start_matches("https://").to_owned();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tether-hub/{}\r\nAccept: application/json\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(path) = &self.token_file {
            head.push_str(&format!("Authorization: Bearer {}\r\n", read_token(path)?));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        Ok(head)
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, String> {
        let address = self.address();
        async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect to kube-apiserver at {address}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            self.tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS with kube-apiserver at {address} failed: {e}"))
        }
        .or(async {
            async_io::Timer::after(REQUEST_TIMEOUT).await;
            Err(format!(
                "no TLS connection to kube-apiserver at {address} within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
        })
        .await
    }

    async fn exchange(
        &mut self,
        mut conn: TlsStream<TcpStream>,
        message: &[u8],
    ) -> Result<Answer, String> {
        let address = self.address();
        let result = async {
            conn.write_all(message)
                .await
                .map_err(|e| format!("sending to kube-apiserver at {address}: {e}"))?;
            conn.flush()
                .await
                .map_err(|e| format!("sending to kube-apiserver at {address}: {e}"))?;
            read_answer(&mut conn)
                .await
                .map_err(|e| format!("answer of kube-apiserver at {address}: {e}"))
        }
        .or(async {
            async_io::Timer::after(REQUEST_TIMEOUT).await;
            Err(format!(
                "kube-apiserver at {address} did not answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
        })
        .await;
        let (answer, keep) = result?;
        if keep {
            self.idle = Some(conn);
        }
        Ok(answer)
    }
}

/// The token in `path`, trimmed; an error says what is wrong with it.
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("autonomy.token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(['\r', '\n']) {
        return Err(format!(
            "autonomy.token_file {}: not one token on one line",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// Reads one HTTP/1.1 answer: (answer, whether the connection may be used
/// again).
pub async fn read_answer<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Answer, bool), String> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("answer head longer than {MAX_HEAD} bytes"));
        }
        if fill(r, &mut buf).await? == 0 {
            return Err("connection closed before an answer".into());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "answer head is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = status_line.starts_with("HTTP/1.1");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?,
                )
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep &= !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut rest = buf.split_off(head_end + 4);
    let body = if chunked {
        read_chunked(r, rest).await?
    } else if let Some(len) = length {
        if len > MAX_BODY {
            return Err(format!("answer body of {len} bytes, more than {MAX_BODY}"));
        }
        while rest.len() < len {
            if fill(r, &mut rest).await? == 0 {
                return Err("connection closed inside the answer body".into());
            }
        }
        rest.truncate(len);
        rest
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        // Until the server closes.
        keep = false;
        while fill(r, &mut rest).await? > 0 {
            if rest.len() > MAX_BODY {
                return Err(format!("answer body longer than {MAX_BODY} bytes"));
            }
        }
        rest
    };
    Ok((Answer { status, body }, keep))
}

async fn read_chunked<R: AsyncRead + Unpin>(
    r: &mut R,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf, b"\r\n") {
                break i;
            }
            if buf.len() > 1024 || fill(r, &mut buf).await? == 0 {
                return Err("bad or missing chunk size line".into());
            }
        };
        let line = std::str::from_utf8(&buf[..line_end]).map_err(|_| "chunk size is not text")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(i) = find(&buf, b"\r\n") {
                    if i == 0 {
                        return Ok(body);
                    }
                    buf.drain(..i + 2);
                    continue;
                }
                if buf.len() > MAX_HEAD || fill(r, &mut buf).await? == 0 {
                    return Err("chunked answer ends without its last line".into());
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(format!("answer body longer than {MAX_BODY} bytes"));
        }
        while buf.len() < size + 2 {
            if fill(r, &mut buf).await? == 0 {
                return Err("connection closed inside a chunk".into());
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 8192];
    let n = r.read(&mut chunk).await.map_err(|e| e.to_string())?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<(Answer, bool), String> {
        smol::block_on(read_answer(&mut futures_lite::io::Cursor::new(
            bytes.to_vec(),
        )))
    }

    #[test]
    fn answers_by_length_chunked_and_close() {
        let (a, keep) = read(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        .expect("read");
        assert_eq!((a.status, a.body.as_slice(), keep), (200, &b"{}"[..], true));
        let (a, keep) = read(
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .expect("read");
        assert_eq!(
            (a.status, a.body.as_slice(), keep),
            (409, &b"abcde"[..], true)
        );
        let (a, keep) =
            read(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nno").expect("read");
        assert_eq!(
            (a.status, a.body.as_slice(), keep),
            (403, &b"no"[..], false)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..],
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200",
        ] {
            assert!(read(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
