//! A fault-injecting proxy in front of a correct edge-server: each [`Fault`]
//! turns it into a backend with one realistic bug, so the tests can show
//! that the suite catches it and names the right rule. Fault code lives
//! here, in the tests, never in the server's request path.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Transparent.
    None,
    /// Any token opens the socket (the proxy swaps in the real secret).
    AcceptsAnyToken,
    /// On a duplicate connection the old socket is never closed.
    KeepsOldSocket,
    /// A silent agent is never closed for its missing pings.
    NeverTimesOut,
    /// Commands queued while the agent was away are lost on connect.
    DropsQueuedCommands,
    /// Unacked commands are never sent again.
    NeverRedelivers,
    /// Non-JSON text takes the connection down with 1011.
    CrashesOnBadJson,
    /// Acks from the agent are ignored.
    IgnoresAcks,
    /// Pending commands arrive lowest priority first.
    WrongPriorityOrder,
    /// The edge secret opens the control API.
    AdminApiOpenToEdgeSecret,
    /// Pings are never answered.
    NoPong,
    /// Acks for unknown commands get no `unknown_command`.
    SilentOnUnknownAck,
    /// No message rate limit.
    NoMessageRateLimit,
    /// No `connected` welcome.
    NoWelcome,
}

pub struct Secrets {
    pub edge: String,
    pub admin: String,
}

/// Starts the proxy on an ephemeral loopback port; it runs until the test ends.
pub async fn start(upstream: SocketAddr, fault: Fault, secrets: Secrets) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let secrets = std::sync::Arc::new(secrets);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(handle(client, upstream, fault, secrets.clone()));
        }
    });
    addr
}

/// Reads up to the end of an HTTP head; returns (head, bytes read past it).
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).to_string(), rest));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn set_header(head: &str, name: &str, value: &str) -> String {
    let mut lines: Vec<String> = head
        .trim_end()
        .lines()
        .filter(|l| {
            !l.split(':')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(name)
        })
        .map(str::to_string)
        .collect();
    lines.push(format!("{name}: {value}"));
    lines.join("\r\n") + "\r\n\r\n"
}

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    secrets: std::sync::Arc<Secrets>,
) {
    let Some((mut head, rest)) = read_head(&mut client).await else {
        return;
    };
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let upgrade = header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if fault == Fault::AcceptsAnyToken && path.starts_with("/edge/ws") {
        head = set_header(&head, "authorization", &format!("Bearer {}", secrets.edge));
    }
    if fault == Fault::AdminApiOpenToEdgeSecret
        && path.starts_with("/api")
        && header(&head, "authorization") == Some(&format!("Bearer {}", secrets.edge))
    {
        head = set_header(&head, "authorization", &format!("Bearer {}", secrets.admin));
    }
    if !upgrade {
        // One request per connection, so every request passes through here.
        head = set_header(&head, "connection", "close");
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(head.as_bytes()).await.is_err() || server.write_all(&rest).await.is_err() {
        return;
    }
    if !upgrade {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    let Some((response, server_rest)) = read_head(&mut server).await else {
        return;
    };
    if client.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    if !response.starts_with("HTTP/1.1 101") {
        let _ = client.write_all(&server_rest).await;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let client_ws = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
    let server_ws =
        WebSocketStream::from_partially_read(server, server_rest, Role::Client, Some(config)).await;
    pump(client_ws, server_ws, fault).await;
}

fn json(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

async fn pump(
    mut client: WebSocketStream<TcpStream>,
    mut server: WebSocketStream<TcpStream>,
    fault: Fault,
) {
    let opened = Instant::now();
    let mut held: Vec<Message> = Vec::new();
    let release_at = opened + Duration::from_millis(300);
    let mut server_gone = false;
    let mut lost: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = sleep_until(release_at), if !held.is_empty() => {
                // WrongPriorityOrder: what arrived at connect, reversed.
                for message in held.drain(..).rev() {
                    if client.send(message).await.is_err() {
                        return;
                    }
                }
            }
            from_client = client.next() => {
                let Some(Ok(message)) = from_client else {
                    let _ = server.close(None).await;
                    return;
                };
                if server_gone {
                    continue;
                }
                let value = json(&message);
                if fault == Fault::CrashesOnBadJson && matches!(message, Message::Text(_)) && value.is_none() {
                    let frame = CloseFrame { code: CloseCode::Error, reason: "internal error".into() };
                    let _ = client.send(Message::Close(Some(frame))).await;
                    let _ = server.close(None).await;
                    return;
                }
                if fault == Fault::IgnoresAcks && value.as_ref().is_some_and(|v| v["type"] == "command_ack") {
                    continue;
                }
                if server.send(message).await.is_err() {
                    return;
                }
            }
            from_server = server.next(), if !server_gone => {
                let Some(Ok(message)) = from_server else {
                    let _ = client.close(None).await;
                    return;
                };
                if let Message::Close(Some(frame)) = &message {
                    let code = u16::from(frame.code);
                    if (fault == Fault::KeepsOldSocket && code == 4000) || (fault == Fault::NeverTimesOut && code == 4008) {
                        // The agent's socket stays up; nothing reaches it any more.
                        server_gone = true;
                        continue;
                    }
                }
                let value = json(&message);
                let kind = value.as_ref().map(|v| v["type"].as_str().unwrap_or("").to_string()).unwrap_or_default();
                let code = value.as_ref().and_then(|v| v["data"]["code"].as_str().map(str::to_string)).unwrap_or_default();
                let attempt = value.as_ref().and_then(|v| v["data"]["attempt"].as_u64()).unwrap_or(1);
                let early = opened.elapsed() < Duration::from_millis(300);
                let drop = match fault {
                    // Lost for good: every later delivery of them too.
                    Fault::DropsQueuedCommands if kind == "command" => {
                        let id = value.as_ref().and_then(|v| v["data"]["command_id"].as_str()).unwrap_or("").to_string();
                        if opened.elapsed() < Duration::from_millis(500) {
                            lost.insert(id.clone());
                        }
                        lost.contains(&id)
                    }
                    Fault::NeverRedelivers => kind == "command" && attempt > 1,
                    Fault::NoPong => kind == "pong",
                    Fault::SilentOnUnknownAck => kind == "error" && code == "unknown_command",
                    Fault::NoMessageRateLimit => kind == "error" && code == "rate_limited",
                    Fault::NoWelcome => kind == "connected",
                    _ => false,
                };
                if drop {
                    continue;
                }
                if fault == Fault::WrongPriorityOrder && kind == "command" && early {
                    held.push(message);
                    continue;
                }
                if client.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}
