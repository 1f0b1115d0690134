//! One HTTP/1.1 request on a connection of its own that reads the answer
//! while it still writes the body. A backend may refuse a body it will not
//! take (413) after its first bytes and close the connection; reqwest then
//! reports the broken pipe, not the answer, and a check would fail a backend
//! that did right. Used for the big bodies of `pad` (WS-HTTP-4).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// What came back: the status, `Retry-After` if there, the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Sends `method url` with these headers and body; `tls` is whom an
/// `https://` URL trusts (None: the public roots).
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    tls: Option<Arc<rustls::ClientConfig>>,
    within: Duration,
) -> Result<Answer, String> {
    let url = reqwest::Url::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = url.host_str().ok_or(format!("{url} names no host"))?;
    let host = host.trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let exchange = async {
        let tcp = crate::client::tcp(&host, port, None)
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let stream: Box<dyn Io> = if url.scheme() == "https" {
            let config = match tls {
                Some(config) => config,
                None => crate::tls::trust(None).map_err(|e| e.to_string())?.0,
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host}: {e}"))?;
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| crate::tls::hint(e.to_string()))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut reader, mut writer) = tokio::io::split(stream);
        let head = request_head(method, &url, headers, body.len());
        let write = async {
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(body).await?;
            writer.flush().await
        };
        // What was read stays read when the connection ends in a reset.
        let read = async {
            let mut raw = Vec::new();
            let ended = reader.read_to_end(&mut raw).await;
            (raw, ended)
        };
        let (written, (raw, ended)) = tokio::join!(write, read);
        parse(&raw).ok_or_else(|| {
            let why = ended
                .err()
                .or(written.err())
                .map_or_else(|| "the connection closed".to_string(), |e| e.to_string());
            format!("no HTTP answer ({} bytes read): {why}", raw.len())
        })
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
}

/// The request line and headers, for one request on its own connection.
fn request_head(
    method: &str,
    url: &reqwest::Url,
    headers: &[(String, String)],
    length: usize,
) -> String {
    // An IPv6 host comes in brackets, as a Host header wants it.
    let host = url.host_str().unwrap_or_default();
    let host = match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    let mut head = format!(
        "{method} {}{query} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {length}\r\nconnection: close\r\n",
        url.path()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head + "\r\n"
}

/// An HTTP/1.1 answer read to the end of its connection: `Content-Length`,
/// chunked, or everything after the head. None when the head is incomplete.
pub fn parse(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .strip_prefix("HTTP/1.")?
        .get(2..5)?
        .parse::<u16>()
        .ok()?;
    let headers: Vec<(String, &str)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let rest = &raw[end + 4..];
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        rest.get(..length.parse::<usize>().ok()?)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Answer {
        status,
        retry_after: header("retry-after").map(str::to_string),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A chunked body, whole (None when it stops short).
pub fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_the_answers_servers_write() {
        let answer =
            parse(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!(answer.status, 413);
        assert_eq!(answer.body, "{}");
        assert_eq!(answer.retry_after, None);
        let chunked = parse(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (chunked.status, chunked.retry_after.as_deref()),
            (429, Some("3"))
        );
        assert_eq!(chunked.body, "{\"a\":1}");
        let to_the_end = parse(b"HTTP/1.0 200 OK\r\n\r\nhello").unwrap();
        assert_eq!(
            (to_the_end.status, to_the_end.body.as_str()),
            (200, "hello")
        );
    }

    #[test]
    fn the_request_names_its_host_and_length() {
        let head = |url: &str| {
            let url = reqwest::Url::parse(url).unwrap();
            request_head("POST", &url, &[("x-a".into(), "1".into())], 7)
        };
        assert_eq!(
            head("http://127.0.0.1:8080/api/x?y=1"),
            "POST /api/x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-length: 7\r\nconnection: close\r\nx-a: 1\r\n\r\n"
        );
        assert!(head("https://[::1]/p").contains("\r\nhost: [::1]:443\r\n"));
        assert!(head("http://edge.example/p").contains("\r\nhost: edge.example:80\r\n"));
    }

    #[test]
    fn an_answer_cut_short_is_none() {
        for raw in [
            &b""[..],
            b"HTTP/1.1 413 Payload",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(parse(raw), None, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    proptest! {
        /// Whatever a server sends, reading it never panics.
        #[test]
        fn never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&raw);
        }

        /// A body written with a Content-Length, or in chunks of any sizes,
        /// reads back as written.
        #[test]
        fn bodies_read_back(body in "[ -~]{0,200}", cuts in proptest::collection::vec(1usize..50, 0..8)) {
            let plain = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            prop_assert_eq!(parse(plain.as_bytes()).unwrap().body, body.clone());
            let mut chunked = String::from("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            let mut rest = body.as_str();
            for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                if !chunk.is_empty() {
                    chunked.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
                }
                rest = tail;
            }
            chunked.push_str("0\r\n\r\n");
            prop_assert_eq!(parse(chunked.as_bytes()).unwrap().body, body);
        }
    }
}
