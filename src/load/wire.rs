//! A lean WebSocket client for simulated agents (RFC 6455, client side,
//! `ws://` or `wss://`). A general library keeps ~5 KiB per idle socket
//! (its stream state alone is 1.4 KiB); an agent here keeps a socket and an
//! empty buffer, so tens of thousands fit in one process. (Over TLS, the
//! TLS session's own buffers come on top.)
//!
//! [`parse_frame`] is sans-I/O (property-tested); [`LeanWs`] adds the
//! socket. Server frames must be unmasked and unfragmented (edge backends
//! send small whole messages); anything else is an error and the agent
//! reconnects.

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// A plain socket, or a TLS one (boxed, so a plain agent does not carry
/// the TLS session's size).
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Frames larger than this are refused (the protocol's are at most 64 KiB).
pub const MAX_FRAME: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a server frame must not be masked (RFC 6455 §5.1)")]
    Masked,
    #[error("fragmented frames are not supported")]
    Fragmented,
    #[error("reserved bits or opcode {0:#x} (RFC 6455 §5.2)")]
    Reserved(u8),
    #[error("frame of {0} bytes is too large")]
    TooLarge(u64),
    #[error("text frame is not UTF-8")]
    Utf8,
    #[error("control frame longer than 125 bytes")]
    LongControl,
}

/// One whole frame from the front of `buf`, and how many bytes it used;
/// `Ok(None)` when `buf` does not hold a whole frame yet.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let opcode = b0 & 0x0f;
    if b0 & 0x70 != 0 {
        return Err(WireError::Reserved(b0));
    }
    if b1 & 0x80 != 0 {
        return Err(WireError::Masked);
    }
    let (len, head) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
            10,
        ),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let total = head + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[head..total];
    if opcode >= 0x8 && len > 125 {
        return Err(WireError::LongControl);
    }
    if b0 & 0x80 == 0 || opcode == 0x0 {
        return Err(WireError::Fragmented);
    }
    let frame = match opcode {
        0x1 => Frame::Text(String::from_utf8(payload.to_vec()).map_err(|_| WireError::Utf8)?),
        0x2 => Frame::Binary(payload.to_vec()),
        0x8 => Frame::Close(match payload {
            [a, b, reason @ ..] => Some((
                u16::from_be_bytes([*a, *b]),
                String::from_utf8_lossy(reason).into_owned(),
            )),
            _ => None,
        }),
        0x9 => Frame::Ping(payload.to_vec()),
        0xA => Frame::Pong(payload.to_vec()),
        other => return Err(WireError::Reserved(other)),
    };
    Ok(Some((frame, total)))
}

/// A client frame: FIN, the opcode, masked with `mask` (RFC 6455 §5.3).
pub fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// RFC 6455 §4.2.2: the server's proof that it read our key.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

pub struct LeanWs {
    stream: Stream,
    /// Bytes read and not yet parsed; empty (no allocation) while idle.
    buf: Vec<u8>,
}

impl LeanWs {
    /// The upgrade (RFC 6455 §4.1); an HTTP refusal comes back as `http_STATUS`.
    pub async fn handshake(
        mut stream: Stream,
        host: &str,
        path: &str,
        token: &str,
    ) -> Result<LeanWs, String> {
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        let mut buf = Vec::with_capacity(512);
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err("upgrade: response head too long".into());
            }
            if stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("upgrade: {e}"))?
                == 0
            {
                return Err("upgrade: connection closed".into());
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "101" {
            return Err(format!("http_{status}"));
        }
        let accept = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim().to_string())
        });
        if accept.as_deref() != Some(accept_key(&key).as_str()) {
            return Err("upgrade: wrong Sec-WebSocket-Accept".into());
        }
        let rest = buf.split_off(end);
        Ok(LeanWs { stream, buf: rest })
    }

    /// The next frame. Cancel-safe: what was read stays in the buffer.
    pub async fn next(&mut self) -> Result<Frame, String> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf).map_err(|e| e.to_string())? {
                self.buf.drain(..used);
                if self.buf.is_empty() {
                    // Give the memory back while the socket idles.
                    self.buf = Vec::new();
                }
                return Ok(frame);
            }
            self.buf.reserve(256);
            if self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection lost".into());
            }
        }
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        let frame = encode_frame(opcode, payload, rand::random());
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.send(0x1, text.as_bytes()).await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), String> {
        self.send(0xA, payload).await
    }

    /// A normal close (1000); the answer is not awaited.
    pub async fn close(&mut self) {
        let _ = self.send(0x8, &1000u16.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        // A server frame is a client frame without the mask.
        let mut f = encode_frame(opcode, payload, [0; 4]);
        let mask_at = match payload.len() {
            n if n < 126 => 2,
            n if n <= 0xffff => 4,
            _ => 10,
        };
        f[1] &= 0x7f;
        f.drain(mask_at..mask_at + 4);
        f
    }

    #[test]
    fn rfc_6455_accept_key_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_of_every_kind_and_length() {
        let text = server_frame(0x1, b"{\"type\":\"pong\"}");
        assert_eq!(
            parse_frame(&text),
            Ok(Some((
                Frame::Text("{\"type\":\"pong\"}".into()),
                text.len()
            )))
        );
        let close = server_frame(0x8, &[0x03, 0xe8, b'b', b'y', b'e']);
        assert_eq!(
            parse_frame(&close).unwrap().unwrap().0,
            Frame::Close(Some((1000, "bye".into())))
        );
        let long = server_frame(0x2, &[7; 70_000]);
        assert_eq!(parse_frame(&long).unwrap().unwrap().1, long.len());
        assert_eq!(parse_frame(&long[..long.len() - 1]), Ok(None));
        let mut masked = text.clone();
        masked[1] |= 0x80;
        assert_eq!(parse_frame(&masked), Err(WireError::Masked));
        let mut fragment = text.clone();
        fragment[0] &= 0x7f;
        assert_eq!(parse_frame(&fragment), Err(WireError::Fragmented));
        assert_eq!(
            parse_frame(&server_frame(0x3, b"")),
            Err(WireError::Reserved(3))
        );
        assert_eq!(
            parse_frame(&server_frame(0x1, &[0xff])),
            Err(WireError::Utf8)
        );
    }

    #[test]
    fn client_frames_are_masked() {
        let f = encode_frame(0x1, b"hi", [1, 2, 3, 4]);
        assert_eq!(f, vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    }

    proptest! {
        /// Any bytes: a frame, "need more", or an error; never a panic, and a
        /// frame never claims more bytes than were given.
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, used))) = parse_frame(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        /// Every frame round-trips, and any prefix of it asks for more.
        #[test]
        fn round_trip(payload in prop::collection::vec(any::<u8>(), 0..70_000usize), cut in any::<prop::sample::Index>()) {
            let wire = server_frame(0x2, &payload);
            prop_assert_eq!(parse_frame(&wire), Ok(Some((Frame::Binary(payload), wire.len()))));
            let prefix = cut.index(wire.len());
            prop_assert_eq!(parse_frame(&wire[..prefix]), Ok(None));
        }
    }
}
