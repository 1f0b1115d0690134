//! The dashboard's HTTP/1.1, without sockets (STYLE.md habit 2): parse a
//! request head out of the bytes read so far, and format responses and
//! server-sent events. The network feeds the parser, so it never panics,
//! bounds what it keeps, and answers bad input with a status to send.
//!
//! Only what the dashboard needs: a request line, headers, and a body of
//! `Content-Length` bytes (no chunked bodies, no keep-alive).

/// A request head larger than this is refused (431).
pub const MAX_HEAD: usize = 16 * 1024;
/// A body larger than this is refused (413); a frame is a few KiB.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without its query.
    pub path: String,
    pub content_length: usize,
    /// Bytes of the head, blank line included: the body starts here.
    pub head_len: usize,
}

/// What the bytes so far make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// Not a whole head yet: read more.
    Partial,
    Complete(Request),
}

/// Why a request is refused, as the status to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("400 Bad Request: {0}")]
    Bad(&'static str),
    #[error("413 Content Too Large")]
    BodyTooLarge,
    #[error("431 Request Header Fields Too Large")]
    HeadTooLarge,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Bad(_) => 400,
            HttpError::BodyTooLarge => 413,
            HttpError::HeadTooLarge => 431,
        }
    }
}

/// Parses the head at the start of `buf` (what was read so far).
pub fn parse_head(buf: &[u8]) -> Result<Head, HttpError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(HttpError::HeadTooLarge)
        } else {
            Ok(Head::Partial)
        };
    };
    if end > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Bad("the head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Bad(
            "the request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Bad("the method is not a token"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::Bad("the target is not an absolute path"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Bad("not HTTP/1.x"));
    }
    let mut content_length: Option<usize> = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Bad("a header line has no colon"))?;
        if name.is_empty() || name.bytes().any(|b| !is_token(b)) {
            return Err(HttpError::Bad("a header name is not a token"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| HttpError::Bad("Content-Length is not a number"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::Bad("two different Content-Lengths"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Bad("chunked bodies are not accepted"));
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Head::Complete(Request {
        method: method.to_string(),
        path: path.to_string(),
        content_length,
        head_len: end + 4,
    }))
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// A whole response; the connection closes after it.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The head of an event stream; events follow until either side hangs up.
pub fn event_stream_head() -> &'static [u8] {
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
}

/// One server-sent event: each line of `data` becomes a `data:` line (a
/// bare CR would end a line too, so it does), and a blank line ends it.
pub fn sse_event(event: &str, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + event.len() + 16);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(&line.replace('\r', ""));
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(text: &str) -> Request {
        match parse_head(text.as_bytes()) {
            Ok(Head::Complete(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_requests() {
        let r =
            complete("GET /events?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n");
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/events"));
        assert_eq!(r.content_length, 0);
        let text = "POST /shard HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello";
        let r = complete(text);
        assert_eq!((r.content_length, &text[r.head_len..]), (5, "hello"));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost"), Ok(Head::Partial));
    }

    #[test]
    fn refuses_bad_requests() {
        let bad = |text: &str| parse_head(text.as_bytes()).unwrap_err().status();
        assert_eq!(bad("GET /\r\n\r\n"), 400);
        assert_eq!(bad("get / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(bad("GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(bad("GET / HTTP/2\r\n\r\n"), 400);
        assert_eq!(bad("GET / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(bad("POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n"), 400);
        assert_eq!(
            bad("POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            bad("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            bad("POST / HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n"),
            413
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(bad(&long), 431);
    }

    #[test]
    fn formats_events() {
        assert_eq!(
            sse_event("point", "{\"t\":1}"),
            "event: point\ndata: {\"t\":1}\n\n"
        );
        assert_eq!(
            sse_event("x", "a\nb\r\nc"),
            "event: x\ndata: a\ndata: b\ndata: c\n\n"
        );
        let r = String::from_utf8(response(404, "text/plain", b"no")).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("content-length: 2\r\n") && r.ends_with("\r\n\r\nno"));
    }

    proptest! {
        /// Whatever the network sends, the parser answers without panicking.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_head(&bytes);
        }

        /// Noise after a plausible request line and headers, too.
        #[test]
        fn never_panics_on_near_misses(line in "[A-Z]{0,7} /[ -~]{0,40} HTTP/1\\.[01]", headers in proptest::collection::vec("[ -~]{0,60}", 0..8)) {
            let text = format!("{line}\r\n{}\r\n\r\n", headers.join("\r\n"));
            let _ = parse_head(text.as_bytes());
        }

        /// A well-formed request parses back to what was sent, and every
        /// shorter prefix of its head is Partial.
        #[test]
        fn round_trips(
            method in "(GET|POST|PUT)",
            path in "/[a-z0-9/._-]{0,30}",
            query in proptest::option::of("[a-z0-9=&]{0,20}"),
            body in "[ -~]{0,100}",
            names in proptest::collection::vec("[A-Za-z][A-Za-z0-9-]{0,15}", 0..5),
        ) {
            let mut head = format!("{method} {path}{} HTTP/1.1\r\n", query.as_ref().map(|q| format!("?{q}")).unwrap_or_default());
            for name in names.iter().filter(|n| !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("transfer-encoding")) {
                head.push_str(&format!("{name}: v\r\n"));
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let text = format!("{head}{body}");
            let r = complete(&text);
            prop_assert_eq!(&r.method, &method);
            prop_assert_eq!(&r.path, &path);
            prop_assert_eq!(r.content_length, body.len());
            prop_assert_eq!(&text[r.head_len..], body.as_str());
            for cut in 0..head.len() {
                prop_assert_eq!(parse_head(&text.as_bytes()[..cut]), Ok(Head::Partial));
            }
        }
    }
}
