//! The dashboard's accept loop: `GET /` (the page), `GET /events` (server-
//! sent events), `GET /status` (the status as JSON, for scripts) and
//! `POST /shard` (a [`LiveFrame`] from another shard's run). One request
//! per connection; parsing is `http.rs`'s.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;

use super::http::{self, Head, Request};
use super::{Board, LiveFrame};

pub const PAGE: &str = include_str!("page.html");

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A comment line this often keeps idle event streams (and proxies) open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Serves `board` on `listener` until `shutdown` completes (STYLE.md habit 1).
pub async fn serve(listener: TcpListener, board: Arc<Board>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    tokio::spawn(connection(socket, board.clone()));
                }
                // Out of file descriptors and the like: wait, do not spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
}

async fn connection(mut socket: TcpStream, board: Arc<Board>) {
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut socket)).await {
        Err(_) => http::response(408, "text/plain", b"request timeout\n"),
        Ok(Err(e)) => http::response(e.status(), "text/plain", format!("{e}\n").as_bytes()),
        Ok(Ok(None)) => return,
        Ok(Ok(Some((request, body)))) => match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/") | ("GET", "/index.html") => {
                http::response(200, "text/html; charset=utf-8", PAGE.as_bytes())
            }
            ("GET", "/status") => http::response(
                200,
                "application/json",
                &serde_json::to_vec(&board.status()).unwrap_or_default(),
            ),
            ("GET", "/events") => return events(socket, board).await,
            ("POST", "/shard") => match serde_json::from_slice::<LiveFrame>(&body)
                .map_err(|e| e.to_string())
                .and_then(|frame| board.push(frame))
            {
                Ok(()) => http::response(204, "text/plain", b""),
                Err(e) => {
                    http::response(400, "text/plain", format!("not a frame: {e}\n").as_bytes())
                }
            },
            (_, "/" | "/index.html" | "/status" | "/events" | "/shard") => {
                http::response(405, "text/plain", b"method not allowed\n")
            }
            _ => http::response(404, "text/plain", b"not found\n"),
        },
    };
    let _ = socket.write_all(&answer).await;
    let _ = socket.shutdown().await;
}

/// Reads one request and its body; None when the client left first.
async fn read_request(
    socket: &mut TcpStream,
) -> Result<Option<(Request, Vec<u8>)>, http::HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let request = loop {
        if let Head::Complete(request) = http::parse_head(&buf)? {
            break request;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let want = request.head_len + request.content_length;
    while buf.len() < want {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[request.head_len..want].to_vec();
    Ok(Some((request, body)))
}

/// The stream ends once the run has (after its last status), so a page
/// opened then loads completely: headless browsers wait for that.
async fn events(mut socket: TcpStream, board: Arc<Board>) {
    let (replay, mut rx) = board.subscribe();
    if socket.write_all(http::event_stream_head()).await.is_err() {
        return;
    }
    let mut next = replay;
    loop {
        if socket.write_all(next.text.as_bytes()).await.is_err() || next.last {
            return;
        }
        next = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Ok(message)) => message,
            // Too slow a reader: start it over from the current state.
            Ok(Err(RecvError::Lagged(_))) => {
                let (replay, again) = board.subscribe();
                rx = again;
                replay
            }
            Ok(Err(RecvError::Closed)) => return,
            Err(_) => super::board::Message {
                text: ": keepalive\n\n".into(),
                last: false,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_pages_frames_and_bad_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let board = Board::new(Vec::new());
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            board.clone(),
            stop.clone().cancelled_owned(),
        ));

        let page = ask(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n") && page.contains("EventSource"));
        let frame = serde_json::to_string(&LiveFrame {
            shard: "1/2".into(),
            t: 5,
            connected: 3,
            ..LiveFrame::default()
        })
        .unwrap();
        let post = format!(
            "POST /shard HTTP/1.1\r\ncontent-length: {}\r\n\r\n{frame}",
            frame.len()
        );
        assert!(ask(addr, post.as_bytes()).await.starts_with("HTTP/1.1 204"));
        assert_eq!(board.status().connected, 3);
        let status = ask(addr, b"GET /status HTTP/1.1\r\n\r\n").await;
        assert!(status.contains("\"expected_shards\":2"), "{status}");
        let bad = "POST /shard HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}";
        assert!(ask(addr, bad.as_bytes()).await.starts_with("HTTP/1.1 400"));
        assert!(ask(addr, b"BREW / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        assert!(ask(addr, b"GET /x HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(ask(addr, b"\x00\x01 garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400"));

        // The event stream: the replay, then what comes.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /events HTTP/1.1\r\n\r\n").await.unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("event: status") {
            let n = s.read(&mut buf).await.unwrap();
            seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        assert!(seen.contains("content-type: text/event-stream"));
        assert!(seen.contains("event: point\ndata: {\"t\":5,"));
        board.finish(false);
        // After the run's last status the stream ends.
        s.read_to_string(&mut seen).await.unwrap();
        assert!(seen.contains("\"done\":true"));
        stop.cancel();
        server.await.unwrap();
    }
}
