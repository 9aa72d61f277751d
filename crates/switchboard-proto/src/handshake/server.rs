//! The server's side: read the client's request, answer it (RFC 6455 §4.2).

use super::{
    fields::{self, Repeated},
    http1,
    key::accept_key,
};
use crate::deflate::{DeflateConfig, DeflateParams, negotiate_server};
use base64::{Engine, engine::general_purpose::STANDARD};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version,
    header::{
        ALLOW, CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
    },
    request,
};

/// Why a request is not an opening handshake the server can accept.
///
/// "If the server, while reading the handshake, finds that the client did not send a
/// handshake that matches the description below ..., the server MUST stop processing the
/// client's handshake and return an HTTP response with an appropriate error code (such as
/// 400 Bad Request)" (§4.2.1). [`HandshakeError::response`] is that response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// "An HTTP/1.1 or higher GET request" (§4.2.1, item 1). Answered with 405 and
    /// `Allow: GET`.
    #[error("method {0} is not GET")]
    MethodNotAllowed(Method),
    /// Not HTTP/1.1: "An HTTP/1.1 or higher GET request" (§4.2.1, item 1) rules out 1.0
    /// and 0.9, and HTTP/2 and HTTP/3 carry WebSocket only over extended CONNECT (RFC 8441,
    /// RFC 9220), which this crate does not implement.
    #[error("http version {0:?} is not supported")]
    UnsupportedHttpVersion(Version),
    /// "A |Host| header field containing the server's authority" (§4.2.1, item 2).
    #[error("no host header")]
    MissingHost,
    /// More than one `Host`: "A server MUST respond with a 400 (Bad Request) status code
    /// to any ... request message that contains more than one Host header field line"
    /// (RFC 9112 §3.2).
    #[error("more than one host header")]
    DuplicateHost,
    /// No `Upgrade` at all: an ordinary HTTP request reached a WebSocket endpoint.
    /// Answered with 426 Upgrade Required naming `websocket`.
    #[error("no upgrade header")]
    MissingUpgrade,
    /// "An |Upgrade| header field containing the value "websocket", treated as an ASCII
    /// case-insensitive value" (§4.2.1, item 3): there is one, but it asks for something
    /// else.
    #[error("upgrade header does not name websocket")]
    UpgradeNotWebSocket,
    /// "A |Connection| header field that includes the token "Upgrade", treated as an ASCII
    /// case-insensitive value" (§4.2.1, item 4).
    #[error("connection header does not include upgrade")]
    MissingConnectionUpgrade,
    /// "A |Sec-WebSocket-Key| header field" (§4.2.1, item 5) is absent.
    #[error("no sec-websocket-key header")]
    MissingKey,
    /// "The |Sec-WebSocket-Key| header field MUST NOT appear more than once in an HTTP
    /// request" (§11.3.1).
    #[error("more than one sec-websocket-key header")]
    DuplicateKey,
    /// The key is not "a base64-encoded (see Section 4 of \[RFC4648\]) value" (§4.2.1,
    /// item 5).
    #[error("sec-websocket-key is not base64")]
    KeyNotBase64,
    /// The key is base64 but "when decoded, is 16 bytes in length" (§4.2.1, item 5) does
    /// not hold; holds the decoded length.
    #[error("sec-websocket-key decodes to {0} bytes, not 16")]
    InvalidKeyLength(usize),
    /// "A |Sec-WebSocket-Version| header field, with a value of 13" (§4.2.1, item 6) is
    /// absent. Answered with 426 and `Sec-WebSocket-Version: 13`.
    #[error("no sec-websocket-version header")]
    MissingVersion,
    /// The version is not 13. "If this version does not match a version understood by
    /// the server, the server MUST ... send an appropriate HTTP error code (such as 426
    /// Upgrade Required) and a |Sec-WebSocket-Version| header field indicating the
    /// version(s) the server is capable of understanding" (§4.2.2, item 4).
    #[error("sec-websocket-version is not 13")]
    UnsupportedVersion,
}

impl HandshakeError {
    /// The status to answer the request with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::MissingUpgrade | Self::MissingVersion | Self::UnsupportedVersion => {
                StatusCode::UPGRADE_REQUIRED
            }
            Self::UnsupportedHttpVersion(_)
            | Self::MissingHost
            | Self::DuplicateHost
            | Self::UpgradeNotWebSocket
            | Self::MissingConnectionUpgrade
            | Self::MissingKey
            | Self::DuplicateKey
            | Self::KeyNotBase64
            | Self::InvalidKeyLength(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The response to answer the request with: [`HandshakeError::status`] and the
    /// headers that status requires, with no body.
    ///
    /// Writing it with [`http1::write_response`](super::http1::write_response) adds
    /// `Content-Length: 0`; [`http1::write_response_with_body`](super::http1::write_response_with_body)
    /// can carry this error's message instead.
    pub fn response(&self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        match self.status() {
            StatusCode::METHOD_NOT_ALLOWED => {
                // "The origin server MUST generate an Allow header field in a 405
                // response" (RFC 9110 §15.5.6).
                headers.insert(ALLOW, HeaderValue::from_static("GET"));
            }
            StatusCode::UPGRADE_REQUIRED => {
                // "The server MUST send an Upgrade header field in a 426 response"
                // (RFC 9110 §15.5.22), and "A sender of Upgrade MUST also send an
                // "Upgrade" connection option in the Connection header field" (§7.8).
                headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            }
            _ => {}
        }
        if matches!(self, Self::MissingVersion | Self::UnsupportedVersion) {
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// A client's opening handshake, checked and ready to be answered with 101.
///
/// It keeps what the answer depends on: the `Sec-WebSocket-Accept` value, the
/// subprotocols and extensions the client offered, and the server's choices among them.
///
/// ```
/// use http::Request;
/// use switchboard_proto::handshake::ServerHandshake;
///
/// let request = Request::get("/chat")
///     .header("Host", "server.example.com")
///     .header("Upgrade", "websocket")
///     .header("Connection", "Upgrade")
///     .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
///     .header("Sec-WebSocket-Protocol", "chat, superchat")
///     .header("Sec-WebSocket-Version", "13")
///     .body(())?;
///
/// let mut handshake = ServerHandshake::from_request(&request)?;
/// assert_eq!(handshake.select_protocol(&["superchat"]), Some("superchat"));
///
/// let response = handshake.response();
/// assert_eq!(response.status(), 101);
/// assert_eq!(response.headers()["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// assert_eq!(response.headers()["sec-websocket-protocol"], "superchat");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerHandshake {
    accept: HeaderValue,
    /// One value per offered subprotocol, in the client's order of preference.
    protocols: Vec<HeaderValue>,
    /// Index into `protocols` of the one selected.
    selected: Option<usize>,
    /// The offered `Sec-WebSocket-Extensions` lines, unparsed.
    offered_extensions: Vec<HeaderValue>,
    /// The `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<HeaderValue>,
}

impl ServerHandshake {
    /// Checks a request (of any body type, e.g. hyper's) as an opening handshake.
    pub fn from_request<B>(request: &Request<B>) -> Result<Self, HandshakeError> {
        Self::from_head(request.method(), request.version(), request.headers())
    }

    /// Checks a request head split from its body, as axum's extractors see it.
    pub fn from_parts(parts: &request::Parts) -> Result<Self, HandshakeError> {
        Self::from_head(&parts.method, parts.version, &parts.headers)
    }

    /// Checks the pieces of a request head, for callers with their own request type.
    ///
    /// The checks run in the order of §4.2.1, except that the WebSocket version is checked
    /// before the key: a client of another version learns from the 426 which version to
    /// retry with, whatever its key looks like.
    pub fn from_head(
        method: &Method,
        version: Version,
        headers: &HeaderMap,
    ) -> Result<Self, HandshakeError> {
        check_method(method)?;
        check_http_version(version)?;
        check_host(headers)?;
        check_upgrade(headers)?;
        check_connection(headers)?;
        check_version(headers)?;
        let key = check_key(headers)?;
        Ok(Self {
            accept: accept_key(key),
            protocols: offered_protocols(headers),
            selected: None,
            offered_extensions: headers
                .get_all(SEC_WEBSOCKET_EXTENSIONS)
                .into_iter()
                .cloned()
                .collect(),
            extensions: None,
        })
    }

    /// The `Sec-WebSocket-Accept` value the response carries.
    pub fn accept(&self) -> &HeaderValue {
        &self.accept
    }

    /// The subprotocols the client offered, most preferred first: "a list of values
    /// indicating which protocols the client would like to speak, ordered by preference"
    /// (§4.2.1, item 8).
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        self.protocols.iter().filter_map(|p| p.to_str().ok())
    }

    /// Selects the first subprotocol, in the client's order of preference, that is among
    /// `supported`, and remembers it for [`ServerHandshake::response`]. Returns it, or
    /// `None` (and selects none) when the client offered none of them.
    ///
    /// "The value chosen MUST be derived from the client's handshake, specifically by
    /// selecting one of the values from the |Sec-WebSocket-Protocol| field that the server
    /// is willing to use for this connection (if any)" (§4.2.2, item 4). Names compare
    /// exactly.
    pub fn select_protocol(&mut self, supported: &[&str]) -> Option<&str> {
        self.selected = self
            .protocols
            .iter()
            .position(|p| p.to_str().is_ok_and(|p| supported.contains(&p)));
        self.protocol()
    }

    /// The selected subprotocol, if any.
    pub fn protocol(&self) -> Option<&str> {
        let value = self.protocols.get(self.selected?)?;
        value.to_str().ok()
    }

    /// The `Sec-WebSocket-Extensions` lines the client sent, unparsed and in order, for an
    /// extension's negotiation to read. Lines that are not ASCII are skipped: the
    /// extension grammar (§9.1) has no room for other bytes.
    pub fn extensions(&self) -> impl Iterator<Item = &str> {
        self.offered_extensions
            .iter()
            .filter_map(|e| e.to_str().ok())
    }

    /// Sets the `Sec-WebSocket-Extensions` value of the response, replacing any set
    /// before: the outcome of negotiating [`ServerHandshake::extensions`].
    pub fn set_extensions(&mut self, value: HeaderValue) {
        self.extensions = Some(value);
    }

    /// Negotiates permessage-deflate (RFC 7692) under `config`: accepts the first of the
    /// client's offers, in its order of preference, that the server can honour, sets the
    /// answer as the response's `Sec-WebSocket-Extensions` (replacing any set before),
    /// and returns the agreement to run the connection with.
    ///
    /// `None` when the client offered none that can be accepted; the response then
    /// names no extension and the connection goes uncompressed. Malformed offers are
    /// declined, not refused: "A server MUST decline an extension negotiation offer for
    /// this extension if any of the following conditions are met" (RFC 7692 §7).
    pub fn negotiate_deflate(&mut self, config: &DeflateConfig) -> Option<DeflateParams> {
        let (params, answer) = negotiate_server(self.extensions(), config)?;
        // Built from tokens only, so always a valid value.
        self.extensions = Some(HeaderValue::try_from(answer).ok()?);
        Some(params)
    }

    /// The 101 Switching Protocols response that accepts the connection (§4.2.2, item 5).
    pub fn response(&self) -> Response<()> {
        let mut response = Response::new(());
        // "A Status-Line with a 101 response code as per RFC 2616".
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        for (name, value) in self.response_fields() {
            headers.insert(name, value.clone());
        }
        response
    }

    /// [`ServerHandshake::response`] as HTTP/1.1 bytes, written without building it: the
    /// answer of a server that speaks HTTP/1.1 itself.
    pub fn write_response(&self, dst: &mut Vec<u8>) {
        http1::write_status_line(StatusCode::SWITCHING_PROTOCOLS, dst);
        for (name, value) in self.response_fields() {
            http1::write_field(name.as_str(), value.as_bytes(), dst);
        }
        dst.extend_from_slice(b"\r\n");
    }

    /// The header fields of the 101 response, in order.
    fn response_fields(&self) -> impl Iterator<Item = (HeaderName, &HeaderValue)> {
        static WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
        static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("Upgrade");
        let protocol = self.selected.and_then(|i| self.protocols.get(i));
        [
            // "An |Upgrade| header field with value "websocket"".
            Some((UPGRADE, &WEBSOCKET)),
            // "A |Connection| header field with value "Upgrade"".
            Some((CONNECTION, &UPGRADE_TOKEN)),
            // "A |Sec-WebSocket-Accept| header field".
            Some((SEC_WEBSOCKET_ACCEPT, &self.accept)),
            // "Optionally, a |Sec-WebSocket-Protocol| header field, with a value
            // /subprotocol/".
            protocol.map(|p| (SEC_WEBSOCKET_PROTOCOL, p)),
            // "Optionally, a |Sec-WebSocket-Extensions| header field".
            self.extensions
                .as_ref()
                .map(|e| (SEC_WEBSOCKET_EXTENSIONS, e)),
        ]
        .into_iter()
        .flatten()
    }
}

/// "An HTTP/1.1 or higher GET request" (§4.2.1, item 1).
fn check_method(method: &Method) -> Result<(), HandshakeError> {
    if method == Method::GET {
        Ok(())
    } else {
        Err(HandshakeError::MethodNotAllowed(method.clone()))
    }
}

/// "An HTTP/1.1 or higher GET request" (§4.2.1, item 1), over HTTP/1.1 only: the
/// higher versions need RFC 8441 or RFC 9220.
fn check_http_version(version: Version) -> Result<(), HandshakeError> {
    if version == Version::HTTP_11 {
        Ok(())
    } else {
        Err(HandshakeError::UnsupportedHttpVersion(version))
    }
}

/// "A |Host| header field containing the server's authority" (§4.2.1, item 2), once.
fn check_host(headers: &HeaderMap) -> Result<(), HandshakeError> {
    match fields::at_most_once(headers, HOST) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(HandshakeError::MissingHost),
        Err(Repeated) => Err(HandshakeError::DuplicateHost),
    }
}

/// "An |Upgrade| header field containing the value "websocket", treated as an ASCII
/// case-insensitive value" (§4.2.1, item 3).
fn check_upgrade(headers: &HeaderMap) -> Result<(), HandshakeError> {
    let upgrade = headers.get_all(UPGRADE);
    if upgrade.iter().next().is_none() {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !fields::contains(&upgrade, "websocket") {
        return Err(HandshakeError::UpgradeNotWebSocket);
    }
    Ok(())
}

/// "A |Connection| header field that includes the token "Upgrade", treated as an ASCII
/// case-insensitive value" (§4.2.1, item 4).
fn check_connection(headers: &HeaderMap) -> Result<(), HandshakeError> {
    if fields::contains(headers.get_all(CONNECTION), "upgrade") {
        Ok(())
    } else {
        Err(HandshakeError::MissingConnectionUpgrade)
    }
}

/// "A |Sec-WebSocket-Version| header field, with a value of 13" (§4.2.1, item 6).
fn check_version(headers: &HeaderMap) -> Result<(), HandshakeError> {
    match fields::at_most_once(headers, SEC_WEBSOCKET_VERSION) {
        Ok(Some(version)) if version.as_bytes().trim_ascii() == b"13" => Ok(()),
        Ok(None) => Err(HandshakeError::MissingVersion),
        // Another version, or several values where the client must send one.
        Ok(Some(_)) | Err(Repeated) => Err(HandshakeError::UnsupportedVersion),
    }
}

/// "A |Sec-WebSocket-Key| header field with a base64-encoded ... value that, when
/// decoded, is 16 bytes in length" (§4.2.1, item 5). Returns the key as sent, which is
/// what the accept value hashes.
fn check_key(headers: &HeaderMap) -> Result<&[u8], HandshakeError> {
    let key = match fields::at_most_once(headers, SEC_WEBSOCKET_KEY) {
        Ok(Some(key)) => key.as_bytes().trim_ascii(),
        Ok(None) => return Err(HandshakeError::MissingKey),
        Err(Repeated) => return Err(HandshakeError::DuplicateKey),
    };
    let decoded = STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::KeyNotBase64)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::InvalidKeyLength(decoded.len()));
    }
    Ok(key)
}

/// The offered subprotocols, one value each, from every `Sec-WebSocket-Protocol` line.
fn offered_protocols(headers: &HeaderMap) -> Vec<HeaderValue> {
    fields::list(headers.get_all(SEC_WEBSOCKET_PROTOCOL))
        // An element of a header value is itself a valid header value, so nothing is
        // dropped here.
        .filter_map(|protocol| HeaderValue::from_str(protocol).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_response_is_the_response_written() {
        let Ok(mut handshake) = ServerHandshake::from_request(&rfc_request()) else {
            panic!("the RFC's request is valid");
        };
        for step in 0..3 {
            match step {
                1 => drop(handshake.select_protocol(&["superchat"])),
                2 => handshake.set_extensions(HeaderValue::from_static("permessage-deflate")),
                _ => {}
            }
            let mut built = Vec::new();
            http1::write_response(&handshake.response(), &mut built);
            let mut written = Vec::new();
            handshake.write_response(&mut written);
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&built)
            );
        }
        let text = {
            let mut out = Vec::new();
            handshake.write_response(&mut out);
            String::from_utf8(out).unwrap_or_default()
        };
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("sec-websocket-protocol: superchat\r\n"));
        assert!(text.ends_with("permessage-deflate\r\n\r\n"));
    }

    /// The client handshake of RFC 6455 §1.2, with lowercase names as `http` stores them.
    fn rfc_request() -> Request<()> {
        Request::get("/chat")
            .header("host", "server.example.com")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("origin", "http://example.com")
            .header("sec-websocket-protocol", "chat, superchat")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap()
    }

    fn with(name: &'static str, values: &[&'static str]) -> Request<()> {
        let mut request = rfc_request();
        request.headers_mut().remove(name);
        for value in values {
            request
                .headers_mut()
                .append(name, HeaderValue::from_static(value));
        }
        request
    }

    fn reject(request: &Request<()>) -> HandshakeError {
        ServerHandshake::from_request(request).unwrap_err()
    }

    #[test]
    fn accepts_the_rfc_example() {
        let handshake = ServerHandshake::from_request(&rfc_request()).unwrap();
        let response = handshake.response();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers();
        assert_eq!(headers[UPGRADE], "websocket");
        assert_eq!(headers[CONNECTION], "Upgrade");
        assert_eq!(
            headers[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(!headers.contains_key(SEC_WEBSOCKET_PROTOCOL));
        assert!(!headers.contains_key(SEC_WEBSOCKET_EXTENSIONS));
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn parts_and_head_check_alike() {
        let (parts, ()) = rfc_request().into_parts();
        let handshake = ServerHandshake::from_parts(&parts).unwrap();
        assert_eq!(handshake.accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut parts = parts;
        parts.method = Method::POST;
        assert_eq!(
            ServerHandshake::from_parts(&parts).unwrap_err(),
            HandshakeError::MethodNotAllowed(Method::POST)
        );
    }

    #[test]
    fn each_rejection_has_its_status_and_headers() {
        let mut post = rfc_request();
        *post.method_mut() = Method::POST;
        let mut http10 = rfc_request();
        *http10.version_mut() = Version::HTTP_10;
        let mut http2 = rfc_request();
        *http2.version_mut() = Version::HTTP_2;
        let cases = [
            (post, HandshakeError::MethodNotAllowed(Method::POST), 405),
            (
                http10,
                HandshakeError::UnsupportedHttpVersion(Version::HTTP_10),
                400,
            ),
            (
                http2,
                HandshakeError::UnsupportedHttpVersion(Version::HTTP_2),
                400,
            ),
            (with("host", &[]), HandshakeError::MissingHost, 400),
            (
                with("host", &["a", "b"]),
                HandshakeError::DuplicateHost,
                400,
            ),
            (with("upgrade", &[]), HandshakeError::MissingUpgrade, 426),
            (
                with("upgrade", &["h2c"]),
                HandshakeError::UpgradeNotWebSocket,
                400,
            ),
            (
                with("upgrade", &[""]),
                HandshakeError::UpgradeNotWebSocket,
                400,
            ),
            (
                with("connection", &[]),
                HandshakeError::MissingConnectionUpgrade,
                400,
            ),
            (
                with("connection", &["keep-alive"]),
                HandshakeError::MissingConnectionUpgrade,
                400,
            ),
            (
                with("sec-websocket-key", &[]),
                HandshakeError::MissingKey,
                400,
            ),
            (
                with(
                    "sec-websocket-key",
                    &["dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=="],
                ),
                HandshakeError::DuplicateKey,
                400,
            ),
            (
                with("sec-websocket-version", &[]),
                HandshakeError::MissingVersion,
                426,
            ),
            (
                with("sec-websocket-version", &["8"]),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with("sec-websocket-version", &["13, 8"]),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with("sec-websocket-version", &["13", "13"]),
                HandshakeError::UnsupportedVersion,
                426,
            ),
        ];
        for (request, error, status) in cases {
            let got = reject(&request);
            assert_eq!(got, error);
            assert_eq!(got.status(), status, "{got}");
            let response = got.response();
            assert_eq!(response.status(), status, "{got}");
            let headers = response.headers();
            match status {
                405 => assert_eq!(headers[ALLOW], "GET"),
                426 => {
                    assert_eq!(headers[UPGRADE], "websocket");
                    assert_eq!(headers[CONNECTION], "Upgrade");
                }
                _ => assert!(headers.is_empty(), "{got}: {headers:?}"),
            }
            let version = headers.get(SEC_WEBSOCKET_VERSION);
            let wants_version = matches!(
                got,
                HandshakeError::MissingVersion | HandshakeError::UnsupportedVersion
            );
            assert_eq!(version.is_some_and(|v| v == "13"), wants_version, "{got}");
        }
    }

    #[test]
    fn plain_http_gets_upgrade_required() {
        let request = Request::get("/")
            .header("host", "example.com")
            .body(())
            .unwrap();
        let error = reject(&request);
        assert_eq!(error, HandshakeError::MissingUpgrade);
        assert_eq!(error.response().headers()[UPGRADE], "websocket");
    }

    #[test]
    fn keys_must_be_base64_of_16_bytes() {
        let fifteen = STANDARD.encode([1u8; 15]);
        let seventeen = STANDARD.encode([1u8; 17]);
        for (key, error) in [
            (fifteen.as_str(), HandshakeError::InvalidKeyLength(15)),
            (seventeen.as_str(), HandshakeError::InvalidKeyLength(17)),
            ("", HandshakeError::InvalidKeyLength(0)),
            ("not base64 at all!!!!!!=", HandshakeError::KeyNotBase64),
            // Padding is required, as RFC 4648 §4 has it.
            ("dGhlIHNhbXBsZSBub25jZQ", HandshakeError::KeyNotBase64),
            // URL-safe alphabet is not the alphabet of §4.
            ("_____________________w==", HandshakeError::KeyNotBase64),
        ] {
            let mut request = rfc_request();
            request
                .headers_mut()
                .insert(SEC_WEBSOCKET_KEY, HeaderValue::from_str(key).unwrap());
            let got = reject(&request);
            assert_eq!(got, error, "{key}");
            assert_eq!(got.status(), 400);
        }
    }

    #[test]
    fn token_lists_ignore_case_whitespace_and_line_splits() {
        for (upgrade, connection) in [
            (&["WebSocket"][..], &["upgrade"][..]),
            (&["WEBSOCKET"], &["keep-alive, Upgrade"]),
            (&["h2c, websocket"], &["keep-alive", "  UPGRADE  "]),
            (&["h2c", "websocket"], &["keep-alive,,upgrade,"]),
            (&[" websocket\t"], &["Keep-Alive ,\tUpGrAdE"]),
        ] {
            let mut request = with("upgrade", upgrade);
            request.headers_mut().remove(CONNECTION);
            for value in connection {
                request
                    .headers_mut()
                    .append(CONNECTION, HeaderValue::from_static(value));
            }
            assert!(
                ServerHandshake::from_request(&request).is_ok(),
                "{upgrade:?} {connection:?}"
            );
        }
        // A token that merely starts like the right one is not it.
        assert_eq!(
            reject(&with("upgrade", &["websocket2"])),
            HandshakeError::UpgradeNotWebSocket
        );
        assert_eq!(
            reject(&with("connection", &["upgrades"])),
            HandshakeError::MissingConnectionUpgrade
        );
    }

    #[test]
    fn selects_in_the_clients_order_of_preference() {
        let request = with("sec-websocket-protocol", &["b, a", " c ,, d", "a"]);
        let mut handshake = ServerHandshake::from_request(&request).unwrap();
        assert_eq!(
            handshake.protocols().collect::<Vec<_>>(),
            ["b", "a", "c", "d", "a"]
        );
        // The client prefers b to a, whatever order the server lists them in.
        assert_eq!(handshake.select_protocol(&["a", "b"]), Some("b"));
        assert_eq!(handshake.protocol(), Some("b"));
        assert_eq!(handshake.response().headers()[SEC_WEBSOCKET_PROTOCOL], "b");
        assert_eq!(handshake.select_protocol(&["d", "c"]), Some("c"));
        // Names compare exactly.
        assert_eq!(handshake.select_protocol(&["B"]), None);
        assert_eq!(handshake.protocol(), None);
        assert!(
            !handshake
                .response()
                .headers()
                .contains_key(SEC_WEBSOCKET_PROTOCOL)
        );
    }

    #[test]
    fn negotiates_deflate_from_the_offers() {
        let request = with(
            "sec-websocket-extensions",
            &[
                "x-webkit-deflate-frame, permessage-deflate; bogus",
                "permessage-deflate; server_max_window_bits=10",
            ],
        );
        let mut handshake = ServerHandshake::from_request(&request).unwrap();
        let params = handshake
            .negotiate_deflate(&DeflateConfig::default())
            .unwrap();
        assert_eq!(params.server_max_window_bits, 10);
        assert_eq!(
            handshake.response().headers()[SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate; server_max_window_bits=10"
        );
        let mut plain = ServerHandshake::from_request(&rfc_request()).unwrap();
        assert_eq!(plain.negotiate_deflate(&DeflateConfig::default()), None);
        assert!(
            !plain
                .response()
                .headers()
                .contains_key(SEC_WEBSOCKET_EXTENSIONS)
        );
    }

    #[test]
    fn keeps_offered_extensions_and_answers_with_the_chosen_ones() {
        let offer = "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame";
        let request = with("sec-websocket-extensions", &[offer, "foo"]);
        let mut handshake = ServerHandshake::from_request(&request).unwrap();
        assert_eq!(handshake.extensions().collect::<Vec<_>>(), [offer, "foo"]);
        handshake.set_extensions(HeaderValue::from_static("permessage-deflate"));
        assert_eq!(
            handshake.response().headers()[SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate"
        );
    }
}
