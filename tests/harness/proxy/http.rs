//! One HTTP/1.1 message, read whole and rewritten in place.

use super::*;

/// A parsed HTTP message: the head without its blank line, and the body.
#[derive(Clone)]
pub(super) struct Http {
    pub(super) head: String,
    pub(super) body: Vec<u8>,
}

impl Http {
    /// A whole message as read to the end of the connection.
    pub(super) fn parse(raw: &[u8]) -> Option<Http> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let mut http = Http {
            head: String::from_utf8_lossy(&raw[..end + 4]).to_string(),
            body: raw[end + 4..].to_vec(),
        };
        if http
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            // A body cut short stays as it came.
            http.body = dechunk(&http.body).unwrap_or_else(|| http.body.clone());
            http.remove_header("transfer-encoding");
            http.set_header("content-length", &http.body.len().to_string());
        }
        Some(http)
    }

    /// An answer made by the proxy.
    pub(super) fn answer(status: u16, body: Value) -> Http {
        let mut http = Http {
            head: format!("HTTP/1.1 {status} X\r\n\r\n"),
            body: Vec::new(),
        };
        http.set_json(body);
        http.set_header("connection", "close");
        http
    }

    pub(super) fn first_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    pub(super) fn method(&self) -> &str {
        self.first_line().split_whitespace().next().unwrap_or("")
    }

    pub(super) fn path(&self) -> &str {
        self.first_line().split_whitespace().nth(1).unwrap_or("")
    }

    pub(super) fn status(&self) -> u16 {
        self.path().parse().unwrap_or(0)
    }

    pub(super) fn set_path(&mut self, path: &str) {
        let line = format!("{} {path} HTTP/1.1", self.method());
        let rest = self
            .head
            .split_once("\r\n")
            .map_or("", |(_, r)| r)
            .to_string();
        self.head = format!("{line}\r\n{rest}");
    }

    pub(super) fn set_status(&mut self, status: u16) {
        let rest = self
            .head
            .split_once("\r\n")
            .map_or("", |(_, r)| r)
            .to_string();
        self.head = format!("HTTP/1.1 {status} X\r\n{rest}");
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub(super) fn remove_header(&mut self, name: &str) {
        let lines: Vec<&str> = self
            .head
            .trim_end()
            .lines()
            .filter(|l| {
                !l.split(':')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(name)
            })
            .collect();
        self.head = lines.join("\r\n") + "\r\n\r\n";
    }

    pub(super) fn set_header(&mut self, name: &str, value: &str) {
        self.remove_header(name);
        self.head = format!("{}\r\n{name}: {value}\r\n\r\n", self.head.trim_end());
    }

    pub(super) fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub(super) fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub(super) fn set_body(&mut self, content_type: &str, body: &str) {
        self.body = body.as_bytes().to_vec();
        self.set_header("content-type", content_type);
        self.set_header("content-length", &self.body.len().to_string());
    }

    pub(super) fn set_json(&mut self, body: Value) {
        self.set_body("application/json", &body.to_string());
    }

    /// Edits the JSON body in place, keeping its members' order.
    pub(super) fn edit_json(&mut self, edit: impl FnOnce(&mut Json)) {
        let Ok(mut body) = serde_json::from_slice::<Json>(&self.body) else {
            return;
        };
        edit(&mut body);
        self.set_body("application/json", &body.to_text());
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.head.clone().into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}
