//! Reading and writing handshake heads as HTTP/1.1 bytes (RFC 9112), for callers without
//! an HTTP library.
//!
//! The parsers have the decoder's contract: `Ok(None)` means the head is not complete and
//! nothing was consumed; on success they return the head's length, and the bytes after
//! it (a first frame the peer sent without waiting) stay with the caller.
//!
//! A raw server answers a handshake like this:
//!
//! ```
//! use http::{HeaderValue, header::CONTENT_TYPE};
//! use switchboard_proto::handshake::{ServerHandshake, http1};
//!
//! # let mut read_buf = b"POST /chat HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
//! let Some((request, head_len)) = http1::parse_request(&read_buf)? else {
//!     return Ok(()); // read more, then try again
//! };
//! read_buf.drain(..head_len); // what is left is frames
//!
//! let mut reply = Vec::new();
//! match ServerHandshake::from_request(&request) {
//!     Ok(handshake) => http1::write_response(&handshake.response(), &mut reply),
//!     Err(error) => {
//!         // Answer with the status and say why, then close the connection.
//!         let mut response = error.response();
//!         let text = HeaderValue::from_static("text/plain; charset=utf-8");
//!         response.headers_mut().insert(CONTENT_TYPE, text);
//!         http1::write_response_with_body(&response, error.to_string().as_bytes(), &mut reply);
//!     }
//! }
//! assert!(reply.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
//! assert!(reply.ends_with(b"\r\n\r\nmethod POST is not GET"));
//! # Ok::<(), http1::ParseError>(())
//! ```

use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::CONTENT_LENGTH,
};

/// The most header lines a head may have.
///
/// A browser's handshake has about 15; the limit bounds the parser's stack array and
/// the work a hostile peer can cause.
pub const MAX_HEADERS: usize = 64;

/// The longest head accepted, in bytes.
///
/// Room for a few large cookies (browsers allow 4 KiB each) while bounding what a peer
/// that never ends its head can make the caller buffer.
pub const MAX_HEAD_LEN: usize = 32 * 1024;

/// Why bytes are not a valid HTTP/1.1 head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// More than [`MAX_HEADERS`] header lines.
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// A head longer than [`MAX_HEAD_LEN`] bytes.
    #[error("head longer than {MAX_HEAD_LEN} bytes")]
    HeadTooLarge,
    /// A header name with bytes outside a token (RFC 9110 §5.1).
    #[error("invalid header name")]
    InvalidHeaderName,
    /// A header value with control characters (RFC 9110 §5.5).
    #[error("invalid header value")]
    InvalidHeaderValue,
    /// A line not ended by CRLF (RFC 9112 §2.2).
    #[error("invalid line ending")]
    InvalidNewLine,
    /// A request line whose method or target has bytes they may not (RFC 9112 §3).
    #[error("invalid request line")]
    InvalidRequestLine,
    /// A method `http` does not accept.
    #[error("invalid method")]
    InvalidMethod,
    /// A request target that is not a URI (RFC 9112 §3.2).
    #[error("invalid request target")]
    InvalidTarget,
    /// Not `HTTP/1.0` or `HTTP/1.1`.
    #[error("invalid http version")]
    InvalidVersion,
    /// A status line whose code is not three digits from 100 to 999 (RFC 9112 §4).
    #[error("invalid status")]
    InvalidStatus,
}

impl ParseError {
    /// The status a server answers a request that failed to parse with.
    pub fn status(&self) -> StatusCode {
        match self {
            // "The 431 status code indicates that the server is unwilling to process the
            // request because its header fields are too large" (RFC 6585 §5).
            Self::TooManyHeaders | Self::HeadTooLarge => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::InvalidHeaderName
            | Self::InvalidHeaderValue
            | Self::InvalidNewLine
            | Self::InvalidRequestLine
            | Self::InvalidMethod
            | Self::InvalidTarget
            | Self::InvalidVersion
            | Self::InvalidStatus => StatusCode::BAD_REQUEST,
        }
    }
}

impl ParseError {
    /// A private conversion rather than `From`, to keep httparse out of the public API.
    fn from_httparse(error: httparse::Error) -> Self {
        match error {
            httparse::Error::HeaderName => Self::InvalidHeaderName,
            httparse::Error::HeaderValue => Self::InvalidHeaderValue,
            httparse::Error::NewLine => Self::InvalidNewLine,
            httparse::Error::Status => Self::InvalidStatus,
            httparse::Error::Token => Self::InvalidRequestLine,
            httparse::Error::TooManyHeaders => Self::TooManyHeaders,
            httparse::Error::Version => Self::InvalidVersion,
        }
    }
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a head: read more and call again
/// with the whole of it. On success, returns the request and the head's length; bytes
/// after it are not part of the request.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request<()>, usize)>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Some(len) = head_len(parsed.parse(buf), buf)? else {
        return Ok(None);
    };
    let mut request = Request::new(());
    let method = parsed.method.ok_or(ParseError::InvalidRequestLine)?;
    *request.method_mut() =
        Method::from_bytes(method.as_bytes()).map_err(|_| ParseError::InvalidMethod)?;
    let target = parsed.path.ok_or(ParseError::InvalidRequestLine)?;
    *request.uri_mut() = Uri::try_from(target).map_err(|_| ParseError::InvalidTarget)?;
    *request.version_mut() = version(parsed.version)?;
    *request.headers_mut() = header_map(parsed.headers)?;
    Ok(Some((request, len)))
}

/// Parses a response head from the start of `buf`, like [`parse_request`].
///
/// The reason phrase is dropped: "A client SHOULD ignore the reason-phrase content"
/// (RFC 9112 §4).
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response<()>, usize)>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let Some(len) = head_len(parsed.parse(buf), buf)? else {
        return Ok(None);
    };
    let mut response = Response::new(());
    let code = parsed.code.ok_or(ParseError::InvalidStatus)?;
    *response.status_mut() = StatusCode::from_u16(code).map_err(|_| ParseError::InvalidStatus)?;
    *response.version_mut() = version(parsed.version)?;
    *response.headers_mut() = header_map(parsed.headers)?;
    Ok(Some((response, len)))
}

/// Writes a response head as HTTP/1.1, adding `Content-Length: 0` when the status allows
/// content and the response has no `Content-Length`: the response ends at its head, and
/// the client must know it does.
///
/// The added line counts toward a reader's header limit: written from a response of
/// [`MAX_HEADERS`] headers, the head has one more than [`parse_response`] reads.
pub fn write_response(response: &Response<()>, dst: &mut Vec<u8>) {
    let needs_length =
        has_content(response.status()) && !response.headers().contains_key(CONTENT_LENGTH);
    write_response_head(response, needs_length.then_some(0), dst);
}

/// Writes a response head as HTTP/1.1, with a `Content-Length` of `body`'s length in
/// place of any it had, then `body`: a short message to explain a refusal.
///
/// A status that has no content (1xx, 204, 304) is written as [`write_response`] writes
/// it, without `body`: "Any response to a HEAD request and any response with a 1xx
/// (Informational), 204 (No Content), or 304 (Not Modified) status code is always
/// terminated by the first empty line after the header fields" (RFC 9112 §6.3).
pub fn write_response_with_body(response: &Response<()>, body: &[u8], dst: &mut Vec<u8>) {
    if has_content(response.status()) {
        write_response_head(response, Some(body.len()), dst);
        dst.extend_from_slice(body);
    } else {
        write_response(response, dst);
    }
}

/// Writes a request head as HTTP/1.1, in origin form: the URI's path ("/" if it has none)
/// and query (RFC 9112 §3.2.1). The `Host` header is the request's to carry.
pub fn write_request(request: &Request<()>, dst: &mut Vec<u8>) {
    let uri = request.uri();
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    dst.extend_from_slice(request.method().as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(path.as_bytes());
    if let Some(query) = uri.query() {
        dst.push(b'?');
        dst.extend_from_slice(query.as_bytes());
    }
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(request.headers(), None, dst);
}

/// Turns httparse's outcome into the head's length, `None` for "need more bytes", or the
/// error, applying [`MAX_HEAD_LEN`] the same way whether the head arrived whole or not.
fn head_len(
    status: Result<httparse::Status<usize>, httparse::Error>,
    buf: &[u8],
) -> Result<Option<usize>, ParseError> {
    match status.map_err(ParseError::from_httparse)? {
        httparse::Status::Complete(len) if len > MAX_HEAD_LEN => Err(ParseError::HeadTooLarge),
        httparse::Status::Complete(len) => Ok(Some(len)),
        // All of `buf` is the unfinished head.
        httparse::Status::Partial if buf.len() > MAX_HEAD_LEN => Err(ParseError::HeadTooLarge),
        httparse::Status::Partial => Ok(None),
    }
}

/// httparse reads `HTTP/1.x` only, and gives `x`.
fn version(minor: Option<u8>) -> Result<Version, ParseError> {
    match minor {
        Some(0) => Ok(Version::HTTP_10),
        Some(1) => Ok(Version::HTTP_11),
        _ => Err(ParseError::InvalidVersion),
    }
}

fn header_map(headers: &[httparse::Header<'_>]) -> Result<HeaderMap, ParseError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for header in headers {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| ParseError::InvalidHeaderName)?;
        let value =
            HeaderValue::from_bytes(header.value).map_err(|_| ParseError::InvalidHeaderValue)?;
        map.append(name, value);
    }
    Ok(map)
}

/// Whether a response with this status can have content (RFC 9112 §6.3).
fn has_content(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// The status line, then the headers, with `content_length` in place of any
/// `Content-Length` when given.
fn write_response_head(response: &Response<()>, content_length: Option<usize>, dst: &mut Vec<u8>) {
    write_status_line(response.status(), dst);
    write_fields(response.headers(), content_length, dst);
}

pub(crate) fn write_status_line(status: StatusCode, dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    // "status-line = HTTP-version SP status-code SP [ reason-phrase ]" (RFC 9112 §4):
    // the space stays when a code has no reason phrase.
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// Each header line, then the empty line that ends the head.
fn write_fields(headers: &HeaderMap, content_length: Option<usize>, dst: &mut Vec<u8>) {
    for (name, value) in headers {
        if content_length.is_some() && name == CONTENT_LENGTH {
            continue;
        }
        // `HeaderValue` admits no CR or LF, so a value cannot end the line early.
        write_field(name.as_str(), value.as_bytes(), dst);
    }
    if let Some(length) = content_length {
        write_field(CONTENT_LENGTH.as_str(), length.to_string().as_bytes(), dst);
    }
    dst.extend_from_slice(b"\r\n");
}

pub(crate) fn write_field(name: &str, value: &[u8], dst: &mut Vec<u8>) {
    dst.extend_from_slice(name.as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HOST, UPGRADE};

    /// What Chromium sends, then a masked text frame sent before the answer arrived.
    const BROWSER: &[u8] = b"GET /chat?room=7 HTTP/1.1\r\n\
        Host: localhost:9001\r\n\
        Connection: Upgrade\r\n\
        Pragma: no-cache\r\n\
        Cache-Control: no-cache\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
        Upgrade: websocket\r\n\
        Origin: http://localhost:9001\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Accept-Encoding: gzip, deflate, br, zstd\r\n\
        Accept-Language: en-US,en;q=0.9\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        \r\n";
    const FRAME: &[u8] = &[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn parses_a_browser_handshake_and_leaves_the_frame() {
        let buf = [BROWSER, FRAME].concat();
        let (request, len) = parse_request(&buf).unwrap().unwrap();
        assert_eq!(len, BROWSER.len());
        assert_eq!(buf.get(len..), Some(FRAME));
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/chat?room=7");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers().len(), 12);
        assert_eq!(request.headers()[HOST], "localhost:9001");
    }

    #[test]
    fn every_strict_prefix_asks_for_more_bytes() {
        for cut in 0..BROWSER.len() {
            assert!(
                matches!(parse_request(&BROWSER[..cut]), Ok(None)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn limits_headers_and_head_length() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let error = parse_request(&many).unwrap_err();
        assert_eq!(error, ParseError::TooManyHeaders);
        assert_eq!(error.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

        let mut long = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        long.resize(MAX_HEAD_LEN + 1, b'a');
        // Unfinished and too long already ...
        assert_eq!(parse_request(&long).err(), Some(ParseError::HeadTooLarge));
        // ... or finished and too long: the same answer however the bytes arrived.
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&long).err(), Some(ParseError::HeadTooLarge));
        let mut fits = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        fits.resize(MAX_HEAD_LEN - 4, b'a');
        fits.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse_request(&fits), Ok(Some((_, MAX_HEAD_LEN)))));
    }

    #[test]
    fn rejects_malformed_heads_with_400() {
        for (head, error) in [
            (
                &b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
                ParseError::InvalidHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nName: a\x01b\r\n\r\n",
                ParseError::InvalidHeaderValue,
            ),
            (b"GET / HTTP/2.0\r\n\r\n", ParseError::InvalidVersion),
            (b"GET / HTTP/1.1\rX\n\r\n", ParseError::InvalidNewLine),
            (b"G(T / HTTP/1.1\r\n\r\n", ParseError::InvalidRequestLine),
            (
                b"GET /a\x7fb HTTP/1.1\r\n\r\n",
                ParseError::InvalidRequestLine,
            ),
            (
                b"GET http://[::1 HTTP/1.1\r\n\r\n",
                ParseError::InvalidTarget,
            ),
        ] {
            let got = parse_request(head).err();
            assert_eq!(got, Some(error), "{}", head.escape_ascii());
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn parses_a_response_and_leaves_the_frame() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\n\
            Upgrade: websocket\r\n\
            Connection: Upgrade\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let frame = [0x81, 0x02, b'h', b'i'];
        let buf = [&head[..], &frame].concat();
        let (response, len) = parse_response(&buf).unwrap().unwrap();
        assert_eq!(len, head.len());
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[UPGRADE], "websocket");
        for cut in 0..head.len() {
            assert!(
                matches!(parse_response(&head[..cut]), Ok(None)),
                "cut at {cut}"
            );
        }
        assert_eq!(
            parse_response(b"HTTP/1.1 099 Odd\r\n\r\n").err(),
            Some(ParseError::InvalidStatus)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 1x1 Odd\r\n\r\n").err(),
            Some(ParseError::InvalidStatus)
        );
    }

    #[test]
    fn writes_requests_in_origin_form() {
        for (uri, line) in [
            ("ws://example.com", "GET / HTTP/1.1\r\n"),
            ("ws://example.com?q=1", "GET /?q=1 HTTP/1.1\r\n"),
            ("/a/b?c=d&e", "GET /a/b?c=d&e HTTP/1.1\r\n"),
        ] {
            let request = Request::get(uri).header("host", "h").body(()).unwrap();
            let mut out = Vec::new();
            write_request(&request, &mut out);
            let expected = format!("{line}host: h\r\n\r\n");
            assert_eq!(
                out.escape_ascii().to_string(),
                expected.escape_default().to_string()
            );
            let (parsed, len) = parse_request(&out).unwrap().unwrap();
            assert_eq!(len, out.len());
            assert_eq!(parsed.headers()[HOST], "h");
        }
    }

    #[test]
    fn the_added_length_counts_toward_the_readers_header_limit() {
        for (headers, parses) in [(MAX_HEADERS - 1, true), (MAX_HEADERS, false)] {
            let mut response = Response::new(());
            for i in 0..headers {
                let name = HeaderName::try_from(format!("x-{i}")).unwrap();
                response.headers_mut().insert(name, HeaderValue::from(i));
            }
            let mut out = Vec::new();
            write_response(&response, &mut out);
            match parse_response(&out) {
                Ok(Some((parsed, _))) if parses => {
                    assert_eq!(parsed.headers().len(), headers + 1);
                    assert_eq!(parsed.headers()[CONTENT_LENGTH], "0");
                }
                Err(ParseError::TooManyHeaders) if !parses => {}
                other => panic!("{headers} headers: {other:?}"),
            }
        }
    }

    #[test]
    fn writes_status_lines_and_lengths() {
        let mut switching = Response::new(());
        *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        switching
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        let mut out = Vec::new();
        write_response(&switching, &mut out);
        // No Content-Length on a 1xx: RFC 9110 §8.6 forbids it.
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
        );
        out.clear();
        write_response_with_body(&switching, b"ignored", &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
        );

        let mut bad = Response::new(());
        *bad.status_mut() = StatusCode::BAD_REQUEST;
        out.clear();
        write_response(&bad, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"
        );

        bad.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        out.clear();
        write_response_with_body(&bad, b"no", &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\nno"
        );

        let mut odd = Response::new(());
        *odd.status_mut() = StatusCode::from_u16(599).unwrap();
        out.clear();
        write_response(&odd, &mut out);
        assert_eq!(out, b"HTTP/1.1 599 \r\ncontent-length: 0\r\n\r\n");
        let (parsed, _) = parse_response(&out).unwrap().unwrap();
        assert_eq!(parsed.status(), 599);
    }
}
