//! A raw edge-agent connection: the harness's own reading of the wire. It
//! can send what a well-behaved agent never would (invalid UTF-8, reserved
//! opcodes, oversized frames), and reports what came back as JSON, text, a
//! close code, or a dropped connection.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{lookup_host, TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// The size of the `largest` frame: 60 KiB, well inside the 64 KiB a
/// backend must take (§3) and past the 16 or 32 KiB some libraries default to.
const LARGEST_TAKEN: usize = 60 * 1024;

/// §3: a text frame over 64 KiB is closed with 1009; 64 KiB itself is taken.
const FRAME_LIMIT: usize = 64 * 1024;

/// A `status` message of exactly `size` bytes with `data.n` = `n`, padded.
fn padded_status(n: u32, size: usize) -> String {
    let head = format!("{{\"type\":\"status\",\"data\":{{\"n\":{n},\"pad\":\"");
    let tail = "\"}}";
    let pad = "x".repeat(size - head.len() - tail.len());
    format!("{head}{pad}{tail}")
}

/// What the backend did with an upgrade request.
pub enum Upgrade {
    Open(Box<Conn>),
    Refused {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
}

/// A JSON text message: the parsed value, and the text as it arrived
/// (WS-CMD-2 compares member order, which a parsed `Value` loses).
#[derive(Debug, Clone, PartialEq)]
pub struct Json {
    pub value: Value,
    pub text: String,
}

impl std::ops::Deref for Json {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

/// Something that arrived on a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(Json),
    /// A text frame that is not JSON.
    NotJson(String),
    Binary(usize),
    Closed {
        code: u16,
        reason: String,
    },
    /// The TCP connection ended without a close frame.
    Dropped(String),
    /// Nothing arrived before the deadline.
    Nothing,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Message(v) => write!(f, "{v}"),
            Event::NotJson(t) => write!(
                f,
                "non-JSON text {:?}",
                t.chars().take(120).collect::<String>()
            ),
            Event::Binary(n) => write!(f, "a binary frame of {n} bytes"),
            Event::Closed { code, reason } => write!(f, "close {code} {reason:?}"),
            Event::Dropped(why) => write!(f, "connection dropped without a close frame ({why})"),
            Event::Nothing => write!(f, "nothing"),
        }
    }
}

/// A frame as [`Conn::read`] saw it: Pongs matter only to [`Conn::ping`].
enum Read {
    Event(Event),
    Pong(Vec<u8>),
}

pub struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// While waiting for events, send a WebSocket Ping this often, as a
    /// live agent would ping: a long wait must not end in a ping timeout.
    pub keepalive: Option<Duration>,
    /// When the harness last sent a frame: the next keepalive is due
    /// `keepalive` after it, however the waits between steps fall.
    last_sent: Instant,
    /// Messages read ahead (e.g. while probing) that a later step may want.
    pending: VecDeque<Json>,
    ended: Option<Event>,
}

/// Small buffers: the harness holds many sockets.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

/// Opens a TCP connection, from `source` when given (to spread the
/// backend's per-address limits over loopback addresses).
pub(crate) async fn tcp(
    host: &str,
    port: u16,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = lookup_host((host, port)).await?.collect();
    let mut last = std::io::Error::other(format!("{host} has no address"));
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Sends an upgrade request to `url` with these headers; a `wss://` one
/// trusts `tls` (the public roots when None). A certificate that does not
/// verify is an error naming the cause and `--ca-cert`.
pub async fn connect(
    url: &str,
    headers: &[(String, String)],
    source: Option<IpAddr>,
    deadline: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Upgrade, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad URL {url}: {e}"))?;
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name}: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("header value: {e}"))?;
        request.headers_mut().insert(name, value);
    }
    let host = request
        .uri()
        .host()
        .unwrap_or("localhost")
        .trim_matches(['[', ']'])
        .to_string();
    let secure = request.uri().scheme_str() == Some("wss");
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let attempt = async {
        let stream = tcp(&host, port, source)
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        match tokio_tungstenite::client_async_tls_with_config(
            request,
            stream,
            Some(ws_config()),
            tls.map(Connector::Rustls),
        )
        .await
        {
            Ok((ws, _)) => Ok(Upgrade::Open(Box::new(Conn {
                ws,
                keepalive: None,
                last_sent: Instant::now(),
                pending: VecDeque::new(),
                ended: None,
            }))),
            Err(tungstenite::Error::Http(response)) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .unwrap_or_default();
                Ok(Upgrade::Refused {
                    status: response.status().as_u16(),
                    body,
                    retry_after,
                })
            }
            Err(e) => Err(format!(
                "upgrade failed: {}",
                crate::tls::hint(e.to_string())
            )),
        }
    };
    tokio::time::timeout(deadline, attempt)
        .await
        .map_err(|_| format!("no answer to the upgrade within {deadline:?}"))?
}

impl Conn {
    /// The next event before `deadline`; read-ahead messages come first.
    pub async fn next_event(&mut self, deadline: Instant) -> Event {
        self.next(deadline, true).await
    }

    /// Like [`next_event`](Self::next_event), but sends no keepalive: for
    /// waiting on a ping-timeout close.
    pub async fn next_event_silently(&mut self, deadline: Instant) -> Event {
        self.next(deadline, false).await
    }

    async fn next(&mut self, deadline: Instant, alive: bool) -> Event {
        if let Some(message) = self.pending.pop_front() {
            return Event::Message(message);
        }
        loop {
            match self.read(deadline, alive).await {
                Read::Event(event) => return event,
                Read::Pong(_) => continue,
            }
        }
    }

    /// Sends a WebSocket Ping carrying `payload` and waits until `deadline`
    /// for the Pong that echoes it (RFC 6455 §5.5.3; WS-CONN-3). Messages
    /// read meanwhile are kept for the next reader. Err says what came
    /// instead.
    pub async fn ping(&mut self, payload: &[u8], deadline: Instant) -> Result<(), String> {
        self.ws
            .send(Message::Ping(payload.to_vec().into()))
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        self.last_sent = Instant::now();
        let mut other_pongs = Vec::new();
        loop {
            match self.read(deadline, true).await {
                Read::Pong(echo) if echo == payload => return Ok(()),
                Read::Pong(echo) => {
                    let echo = format!("{:?}", String::from_utf8_lossy(&echo));
                    if !other_pongs.contains(&echo) {
                        other_pongs.push(echo);
                    }
                }
                Read::Event(Event::Message(message)) => self.pending.push_back(message),
                Read::Event(Event::NotJson(_) | Event::Binary(_)) => {}
                Read::Event(Event::Nothing) if other_pongs.is_empty() => {
                    return Err("no Pong".into())
                }
                Read::Event(Event::Nothing) => {
                    return Err(format!("only Pongs carrying {}", other_pongs.join(", ")))
                }
                Read::Event(ended) => return Err(ended.to_string()),
            }
        }
    }

    /// The next frame off the wire (no read-ahead), sending keepalives
    /// meanwhile when `alive`.
    async fn read(&mut self, deadline: Instant, alive: bool) -> Read {
        if let Some(ended) = &self.ended {
            return Read::Event(ended.clone());
        }
        loop {
            let next_ping = self.keepalive_due().filter(|_| alive);
            let wake = next_ping.map_or(deadline, |p| p.min(deadline));
            let frame = match timeout_at(wake, self.ws.next()).await {
                Err(_) if wake < deadline => {
                    self.send_keepalive().await;
                    continue;
                }
                Err(_) => return Read::Event(Event::Nothing),
                Ok(frame) => frame,
            };
            let event = match frame {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                    Ok(value) => Event::Message(Json {
                        value,
                        text: text.to_string(),
                    }),
                    Err(_) => Event::NotJson(text.to_string()),
                },
                Some(Ok(Message::Binary(b))) => Event::Binary(b.len()),
                Some(Ok(Message::Pong(echo))) => return Read::Pong(echo.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let frame: Option<CloseFrame> = frame;
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    // Complete the closing handshake as a live agent would:
                    // the library queued our reply, this sends it, so the
                    // backend need not wait out its linger.
                    let _ = timeout_at(
                        deadline.max(Instant::now() + Duration::from_millis(200)),
                        self.ws.flush(),
                    )
                    .await;
                    Event::Closed { code, reason }
                }
                Some(Err(e)) => Event::Dropped(e.to_string()),
                None => Event::Dropped("end of stream".into()),
            };
            if matches!(event, Event::Closed { .. } | Event::Dropped(_)) {
                self.ended = Some(event.clone());
            }
            return Read::Event(event);
        }
    }

    /// When this socket's next keepalive Ping is due: `keepalive` after the
    /// last frame sent, not after a wait began (a wait starting just before a
    /// Ping was due must not stretch the silence to twice `keepalive`). None
    /// when it sends none, or has ended.
    pub fn keepalive_due(&self) -> Option<Instant> {
        self.keepalive
            .filter(|_| self.ended.is_none())
            .map(|every| self.last_sent + every)
    }

    /// Sends a keepalive: an empty WebSocket Ping, as a live agent pings.
    pub async fn send_keepalive(&mut self) {
        let _ = self.ws.send(Message::Ping(Vec::new().into())).await;
        self.last_sent = Instant::now();
    }

    /// Puts a message back for the next reader.
    pub fn unread(&mut self, message: Json) {
        self.pending.push_back(message);
    }

    pub fn unread_front(&mut self, message: Json) {
        self.pending.push_front(message);
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), String> {
        self.last_sent = Instant::now();
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.last_sent = Instant::now();
        self.ws
            .send(Message::binary(bytes))
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    /// A hand-made frame: an empty WebSocket `ping` (a control frame, for
    /// WS-RATE-2), one a well-behaved client would never send (§3
    /// bad-input table), or the largest a backend must take (`largest`).
    pub async fn send_frame(&mut self, kind: &str) -> Result<(), String> {
        self.last_sent = Instant::now();
        match kind {
            "ping" => self
                .ws
                .send(Message::Ping(Vec::new().into()))
                .await
                .map_err(|e| format!("send failed: {e}")),
            "invalid_utf8" => {
                let frame =
                    Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
                self.ws
                    .send(Message::Frame(frame))
                    .await
                    .map_err(|e| format!("send failed: {e}"))
            }
            "oversized" => {
                self.send_text(format!(
                    "{{\"type\":\"status\",\"data\":{{\"pad\":\"{}\"}}}}",
                    "x".repeat(70 * 1024)
                ))
                .await
            }
            "largest" => self.send_text(padded_status(60, LARGEST_TAKEN)).await,
            "at_limit" => self.send_text(padded_status(64, FRAME_LIMIT)).await,
            "over_limit" => self.send_text(padded_status(65, FRAME_LIMIT + 1)).await,
            "reserved_opcode" => {
                let mut bytes = Vec::new();
                FrameHeader {
                    opcode: OpCode::Data(Data::Reserved(3)),
                    mask: Some([1, 2, 3, 4]),
                    ..FrameHeader::default()
                }
                .format(0, &mut bytes)
                .map_err(|e| e.to_string())?;
                let stream = self.ws.get_mut();
                stream
                    .write_all(&bytes)
                    .await
                    .map_err(|e| format!("send failed: {e}"))?;
                stream
                    .flush()
                    .await
                    .map_err(|e| format!("send failed: {e}"))
            }
            other => Err(format!(
                "unknown frame `{other}`: use ping, invalid_utf8, oversized, largest, at_limit, over_limit or reserved_opcode"
            )),
        }
    }

    /// Closes normally (1000) and waits briefly for the backend's answer.
    pub async fn close(&mut self, within: Duration) {
        let _ = self.ws.close(None).await;
        let deadline = Instant::now() + within;
        while !matches!(
            self.next_event(deadline).await,
            Event::Closed { .. } | Event::Dropped(_) | Event::Nothing
        ) {}
    }
}
