//! Just enough HTTP/1.1 for the local API: one request per connection, `Content-Length` bodies,
//! bounded sizes. Parsing is sans-IO: feed it the bytes read so far.

use std::fmt::Write as _;

/// Largest request or response head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The head is longer than [`MAX_HEAD`].
    #[error("message head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The body is longer than [`MAX_BODY`].
    #[error("message body of {0} bytes is longer than {MAX_BODY}")]
    BodyTooLarge(usize),
    /// The head is not valid HTTP/1.x.
    #[error("malformed HTTP message: {0}")]
    Malformed(&'static str),
}

/// A parsed message head and where its body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request: method; response: "HTTP/1.1".
    pub first: String,
    /// Request: path; response: status code.
    pub second: String,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    /// Bytes of head, including the blank line.
    pub head_len: usize,
    /// Bytes of body.
    pub body_len: usize,
}

/// Parses `buf` (a whole message or a prefix). `Ok(None)` means more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, ParseError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err(ParseError::HeadTooLarge) } else { Ok(None) };
    };
    if end > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Malformed("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let start = lines.next().ok_or(ParseError::Malformed("empty head"))?;
    let mut parts = start.splitn(3, ' ');
    let first = parts.next().filter(|s| !s.is_empty()).ok_or(ParseError::Malformed("no method"))?;
    let second = parts.next().filter(|s| !s.is_empty()).ok_or(ParseError::Malformed("no target"))?;
    let third = parts.next().ok_or(ParseError::Malformed("start line has fewer than three parts"))?;
    if !(first.starts_with("HTTP/1.") || third.starts_with("HTTP/1.")) {
        return Err(ParseError::Malformed("not HTTP/1.x"));
    }
    let mut headers = Vec::new();
    let mut body_len = 0usize;
    for line in lines {
        let (k, v) = line.split_once(':').ok_or(ParseError::Malformed("header without ':'"))?;
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().to_owned();
        if k == "content-length" {
            body_len = v.parse().map_err(|_| ParseError::Malformed("bad Content-Length"))?;
            if body_len > MAX_BODY {
                return Err(ParseError::BodyTooLarge(body_len));
            }
        }
        if k == "transfer-encoding" {
            return Err(ParseError::Malformed("chunked bodies are not supported"));
        }
        headers.push((k, v));
    }
    let head_len = end + 4;
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    Ok(Some(Head { first: first.to_owned(), second: second.to_owned(), headers, head_len, body_len }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes a request with a JSON body (or none).
pub fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut head = String::new();
    let _ = write!(head, "{method} {path} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Writes a response with a JSON body.
pub fn response(status: u16, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips() {
        let msg = request("POST", "/ipam/allocate", br#"{"container_id":"c1"}"#);
        let head = parse(&msg).unwrap().unwrap();
        assert_eq!((head.first.as_str(), head.second.as_str()), ("POST", "/ipam/allocate"));
        assert_eq!(&msg[head.head_len..head.head_len + head.body_len], br#"{"container_id":"c1"}"#);
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "prefix of {cut} bytes needs more");
        }
    }

    #[test]
    fn a_response_round_trips() {
        let msg = response(404, b"{}");
        let head = parse(&msg).unwrap().unwrap();
        assert_eq!((head.first.as_str(), head.second.as_str(), head.body_len), ("HTTP/1.1", "404", 2));
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        assert_eq!(parse(b"GARBAGE\r\n\r\n"), Err(ParseError::Malformed("no target")));
        assert_eq!(parse(b"GET / FTP/1\r\n\r\n"), Err(ParseError::Malformed("not HTTP/1.x")));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"), Err(ParseError::BodyTooLarge(_) | ParseError::Malformed(_))));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nbroken\r\n\r\n"), Err(ParseError::Malformed("header without ':'")));
        assert_eq!(parse(&vec![b'a'; MAX_HEAD + 1]), Err(ParseError::HeadTooLarge));
        assert_eq!(parse(b"\xff\xfe / HTTP/1.1\r\n\r\n"), Err(ParseError::Malformed("head is not UTF-8")));
    }
}
