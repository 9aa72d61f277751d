//! The client's side: build the request, check the server's answer (RFC 6455 §4.1).

use super::{
    fields::{self, Repeated},
    key::{accept_key, generate_key},
};
use crate::deflate::{DeflateConfig, DeflateParams, DeflateResponseError, accept_response};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{
        CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
    },
};

/// Why a URI or a subprotocol list cannot make an opening handshake.
///
/// "The components of the WebSocket URI passed into this algorithm ... MUST be valid
/// according to the specification of WebSocket URIs specified in Section 3. If any of
/// the components are invalid, the client MUST _Fail the WebSocket Connection_" (§4.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientRequestError {
    /// The URI is relative: a WebSocket URI starts with `ws:` or `wss:` (§3).
    #[error("uri has no scheme")]
    MissingScheme,
    /// The scheme is not `ws` or `wss` (§3), nor the `http` or `https` they stand for
    /// (§4.1, item 3).
    #[error("uri scheme {0:?} is not ws, wss, http or https")]
    UnsupportedScheme(String),
    /// There is no host to connect to, or to name in `Host` (§3, §4.1 item 4).
    #[error("uri has no host")]
    MissingHost,
    /// The host or resource name do not form a valid `Host` value or request target.
    #[error("uri cannot be sent as a request")]
    InvalidUri,
    /// A subprotocol name that is not a token: names "MUST be non-empty strings with
    /// characters in the range U+0021 to U+007E not including separator characters as
    /// defined in \[RFC2616\]" (§4.1, item 10).
    #[error("subprotocol {0:?} is not a token")]
    InvalidProtocol(String),
    /// A subprotocol offered twice: the names "MUST all be unique strings" (§4.1,
    /// item 10).
    #[error("subprotocol {0:?} offered twice")]
    DuplicateProtocol(String),
}

/// Why the server's response does not accept the handshake. Each fails the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientHandshakeError {
    /// "If the status code received from the server is not 101, the client handles the
    /// response per HTTP \[RFC2616\] procedures" (§4.1, item 1): a redirect, an
    /// authentication challenge or a refusal, for the caller to act on.
    #[error("server answered {0} instead of 101")]
    UnexpectedStatus(StatusCode),
    /// "If the response lacks an |Upgrade| header field ... the client MUST _Fail the
    /// WebSocket Connection_" (§4.1, item 2).
    #[error("no upgrade header")]
    MissingUpgrade,
    /// "If ... the |Upgrade| header field contains a value that is not an ASCII
    /// case-insensitive match for the value "websocket", the client MUST _Fail the
    /// WebSocket Connection_" (§4.1, item 2).
    #[error("upgrade header is not websocket")]
    UpgradeNotWebSocket,
    /// "If the response lacks a |Connection| header field or the |Connection| header field
    /// doesn't contain a token that is an ASCII case-insensitive match for the value
    /// "Upgrade", the client MUST _Fail the WebSocket Connection_" (§4.1, item 3).
    #[error("connection header does not include upgrade")]
    MissingConnectionUpgrade,
    /// "If the response lacks a |Sec-WebSocket-Accept| header field ... the client MUST
    /// _Fail the WebSocket Connection_" (§4.1, item 4).
    #[error("no sec-websocket-accept header")]
    MissingAccept,
    /// "The |Sec-WebSocket-Accept| header MUST NOT appear more than once in an HTTP
    /// response" (§11.3.3).
    #[error("more than one sec-websocket-accept header")]
    DuplicateAccept,
    /// "If ... the |Sec-WebSocket-Accept| contains a value other than the base64-encoded
    /// SHA-1 of the concatenation of the |Sec-WebSocket-Key| ... with the string
    /// "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" ..., the client MUST _Fail the WebSocket
    /// Connection_" (§4.1, item 4).
    #[error("sec-websocket-accept does not match the key")]
    AcceptMismatch,
    /// "If the response includes a |Sec-WebSocket-Extensions| header field and this header
    /// field indicates the use of an extension that was not present in the client's
    /// handshake ..., the client MUST _Fail the WebSocket Connection_" (§4.1, item 5).
    /// Holds the first extension named.
    #[error("server accepted extension {0:?}, which was not offered")]
    UnexpectedExtension(String),
    /// The server's answer to our permessage-deflate offer is one the client must fail
    /// the connection over (RFC 7692 §7), with
    /// [`DeflateResponseError::close_code`] (1010).
    #[error(transparent)]
    Deflate(#[from] DeflateResponseError),
    /// "If the response includes a |Sec-WebSocket-Protocol| header field and this header
    /// field indicates the use of a subprotocol that was not present in the client's
    /// handshake ..., the client MUST _Fail the WebSocket Connection_" (§4.1, item 6).
    #[error("server chose subprotocol {0:?}, which was not offered")]
    UnexpectedProtocol(String),
    /// "The |Sec-WebSocket-Protocol| header field MUST NOT appear more than once in an
    /// HTTP response" (§11.3.4).
    #[error("more than one sec-websocket-protocol header")]
    DuplicateProtocol,
}

/// A client's opening handshake: the request to send and what the answer must hold.
///
/// ```
/// use http::{HeaderValue, header::ORIGIN};
/// use switchboard_proto::handshake::ClientHandshake;
///
/// let uri = "ws://example.com:8080/chat?room=1".parse()?;
/// // The 16 bytes must come from a random source, fresh for each connection.
/// let handshake = ClientHandshake::new(&uri, *b"the sample nonce")?
///     .with_protocols(&["chat", "superchat"])?
///     .with_header(ORIGIN, HeaderValue::from_static("http://example.com"));
///
/// let request = handshake.request();
/// assert_eq!(request.uri(), "/chat?room=1");
/// assert_eq!(request.headers()["host"], "example.com:8080");
/// assert_eq!(request.headers()["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
/// assert_eq!(request.headers()["sec-websocket-protocol"], "chat, superchat");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    /// The request target in origin form: the /resource name/ of §3.
    target: Uri,
    host: HeaderValue,
    key: HeaderValue,
    /// The `Sec-WebSocket-Accept` value the server must answer with.
    accept: HeaderValue,
    /// The offered subprotocols, and the header that offers them.
    protocols: Vec<String>,
    protocol_offer: Option<HeaderValue>,
    extensions: Option<HeaderValue>,
    /// The permessage-deflate offer made, whose answer is checked.
    deflate: Option<DeflateConfig>,
    /// Extra headers from the caller.
    headers: HeaderMap,
}

/// The headers the handshake itself sets, which extra headers may not replace.
const HANDSHAKE_FIELDS: [HeaderName; 6] = [
    UPGRADE,
    CONNECTION,
    SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION,
    SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_EXTENSIONS,
];

impl ClientHandshake {
    /// A handshake for `uri`, with the key made from 16 random bytes.
    ///
    /// `ws` and `http` URIs default to port 80, `wss` and `https` to 443 (§3); connecting,
    /// and TLS for the secure ones, is the caller's. A fragment is ignored: "Fragment
    /// identifiers are meaningless in the context of WebSocket URIs" (§3).
    pub fn new(uri: &Uri, key: [u8; 16]) -> Result<Self, ClientRequestError> {
        let default_port = default_port(uri)?;
        let host = host_header(uri, default_port)?;
        let target = resource_name(uri)?;
        let key = generate_key(key);
        Ok(Self {
            target,
            host,
            accept: accept_key(key.as_bytes()),
            key,
            protocols: Vec::new(),
            protocol_offer: None,
            extensions: None,
            deflate: None,
            headers: HeaderMap::new(),
        })
    }

    /// Offers these subprotocols, most preferred first (§4.1, item 10), replacing any
    /// offered before. An empty list offers none.
    pub fn with_protocols(mut self, protocols: &[&str]) -> Result<Self, ClientRequestError> {
        for (i, protocol) in protocols.iter().enumerate() {
            if !fields::is_token(protocol) {
                return Err(ClientRequestError::InvalidProtocol((*protocol).to_owned()));
            }
            if protocols.iter().take(i).any(|seen| seen == protocol) {
                return Err(ClientRequestError::DuplicateProtocol(
                    (*protocol).to_owned(),
                ));
            }
        }
        let offer = protocols.join(", ");
        self.protocol_offer = if offer.is_empty() {
            None
        } else {
            // Tokens joined by ", " are a valid header value; were they not, a name was
            // not a token.
            Some(
                HeaderValue::from_str(&offer)
                    .map_err(|_| ClientRequestError::InvalidProtocol(offer.clone()))?,
            )
        };
        self.protocols = protocols.iter().map(|&p| p.to_owned()).collect();
        Ok(self)
    }

    /// Offers extensions with this raw `Sec-WebSocket-Extensions` value (§9.1), replacing
    /// any offered before (a [`ClientHandshake::with_deflate`] offer included); their
    /// answer is the caller's to check, from [`ClientAccepted::extensions`].
    pub fn with_extensions(mut self, value: HeaderValue) -> Self {
        self.extensions = Some(value);
        self.deflate = None;
        self
    }

    /// Offers permessage-deflate (RFC 7692) as `config` describes, replacing any
    /// extensions offered before. The answer is checked by
    /// [`ClientHandshake::validate_response`], and the agreement read from
    /// [`ClientAccepted::deflate`].
    pub fn with_deflate(mut self, config: DeflateConfig) -> Self {
        // An offer is built from tokens only, so it is always a valid value.
        self.extensions = HeaderValue::try_from(config.offer()).ok();
        self.deflate = self.extensions.is_some().then_some(config);
        self
    }

    /// Adds a header to the request, such as `Origin` or `Authorization`; several with
    /// one name are all sent.
    ///
    /// A `Host` given here replaces the one made from the URI (say, to reach a virtual
    /// host through an address). Headers that make the handshake (`Upgrade`, `Connection`
    /// and the `Sec-WebSocket-*` ones) cannot be replaced and are not sent twice.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The request to send.
    pub fn request(&self) -> Request<()> {
        let mut request = Request::new(());
        // "The method of the request MUST be GET, and the HTTP version MUST be at least
        // 1.1" (§4.1, item 2).
        *request.method_mut() = Method::GET;
        *request.version_mut() = Version::HTTP_11;
        // "The "Request-URI" part of the request MUST match the /resource name/" (§4.1,
        // item 3).
        *request.uri_mut() = self.target.clone();
        let headers = request.headers_mut();
        // "The request MUST contain a |Host| header field" (§4.1, item 4).
        let host = self.headers.get(HOST).unwrap_or(&self.host);
        headers.insert(HOST, host.clone());
        // "The request MUST contain an |Upgrade| header field whose value MUST include the
        // "websocket" keyword" (§4.1, item 5).
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        // "The request MUST contain a |Connection| header field whose value MUST include
        // the "Upgrade" token" (§4.1, item 6).
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        // "The request MUST include a header field with the name |Sec-WebSocket-Key|"
        // (§4.1, item 7).
        headers.insert(SEC_WEBSOCKET_KEY, self.key.clone());
        // "The value of this header field MUST be 13" (§4.1, item 9).
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        if let Some(offer) = &self.protocol_offer {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, offer.clone());
        }
        if let Some(offer) = &self.extensions {
            headers.insert(SEC_WEBSOCKET_EXTENSIONS, offer.clone());
        }
        for (name, value) in &self.headers {
            if *name != HOST && !HANDSHAKE_FIELDS.contains(name) {
                headers.append(name, value.clone());
            }
        }
        request
    }

    /// Checks the server's response (of any body type) against §4.1's six requirements,
    /// in order.
    pub fn validate_response<B>(
        &self,
        response: &Response<B>,
    ) -> Result<ClientAccepted, ClientHandshakeError> {
        let headers = response.headers();
        check_status(response.status())?;
        check_upgrade(headers)?;
        check_connection(headers)?;
        self.check_accept(headers)?;
        let extensions = self.check_extensions(headers)?;
        let deflate = self.check_deflate(&extensions)?;
        let protocol = self.check_protocol(headers)?;
        Ok(ClientAccepted {
            protocol,
            extensions,
            deflate,
        })
    }

    /// Item 4: the accept value answers our key.
    fn check_accept(&self, headers: &HeaderMap) -> Result<(), ClientHandshakeError> {
        match fields::at_most_once(headers, SEC_WEBSOCKET_ACCEPT) {
            // "... but ignoring any leading and trailing whitespace".
            Ok(Some(accept)) if accept.as_bytes().trim_ascii() == self.accept.as_bytes() => Ok(()),
            Ok(Some(_)) => Err(ClientHandshakeError::AcceptMismatch),
            Ok(None) => Err(ClientHandshakeError::MissingAccept),
            Err(Repeated) => Err(ClientHandshakeError::DuplicateAccept),
        }
    }

    /// Item 5: no extension unless some were offered; which of the offered ones is the
    /// extensions' own negotiation to judge.
    fn check_extensions(
        &self,
        headers: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, ClientHandshakeError> {
        let answer = headers.get_all(SEC_WEBSOCKET_EXTENSIONS);
        if self.extensions.is_none() {
            if let Some(first) = fields::elements(&answer).next() {
                return Err(ClientHandshakeError::UnexpectedExtension(
                    String::from_utf8_lossy(first).into_owned(),
                ));
            }
        }
        Ok(answer.into_iter().cloned().collect())
    }

    /// Item 5 for our permessage-deflate offer: what the answer agreed, if anything.
    fn check_deflate(
        &self,
        answer: &[HeaderValue],
    ) -> Result<Option<DeflateParams>, ClientHandshakeError> {
        let Some(config) = &self.deflate else {
            return Ok(None);
        };
        // The grammar (§9.1) has no room for bytes beyond ASCII.
        let lines = answer
            .iter()
            .map(|line| line.to_str().map_err(|_| DeflateResponseError::Malformed))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(accept_response(lines, config)?)
    }

    /// Item 6: at most one subprotocol, and one we offered.
    fn check_protocol(&self, headers: &HeaderMap) -> Result<Option<String>, ClientHandshakeError> {
        let chosen = match fields::at_most_once(headers, SEC_WEBSOCKET_PROTOCOL) {
            Ok(Some(chosen)) => chosen.as_bytes().trim_ascii(),
            Ok(None) => return Ok(None),
            Err(Repeated) => return Err(ClientHandshakeError::DuplicateProtocol),
        };
        match self.protocols.iter().find(|p| p.as_bytes() == chosen) {
            Some(protocol) => Ok(Some(protocol.clone())),
            None => Err(ClientHandshakeError::UnexpectedProtocol(
                String::from_utf8_lossy(chosen).into_owned(),
            )),
        }
    }
}

/// What a server's accepting response settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccepted {
    protocol: Option<String>,
    extensions: Vec<HeaderValue>,
    deflate: Option<DeflateParams>,
}

impl ClientAccepted {
    /// The subprotocol the server chose among those offered, if any. A server may choose
    /// none even when some were offered (§4.2.2 has its /subprotocol/ "or null").
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The server's `Sec-WebSocket-Extensions` lines, unparsed and in order, for the
    /// offered extensions' negotiation to read. Empty when none were offered. Lines that
    /// are not ASCII are skipped: the extension grammar (§9.1) has no room for other
    /// bytes.
    pub fn extensions(&self) -> impl Iterator<Item = &str> {
        self.extensions.iter().filter_map(|e| e.to_str().ok())
    }

    /// The permessage-deflate agreement, when [`ClientHandshake::with_deflate`] offered it
    /// and the server accepted; `None` when the server declined (the connection goes
    /// uncompressed).
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.deflate
    }
}

/// The default port of the URI's scheme (§3).
fn default_port(uri: &Uri) -> Result<u16, ClientRequestError> {
    let scheme = uri.scheme_str().ok_or(ClientRequestError::MissingScheme)?;
    // Schemes are case-insensitive (RFC 3986 §3.1).
    let is = |name: &str| scheme.eq_ignore_ascii_case(name);
    if is("ws") || is("http") {
        Ok(80)
    } else if is("wss") || is("https") {
        Ok(443)
    } else {
        Err(ClientRequestError::UnsupportedScheme(scheme.to_owned()))
    }
}

/// "/host/ plus optionally ":" followed by /port/ (when not using the default port)"
/// (§4.1, item 4). User information in the URI is not part of it.
fn host_header(uri: &Uri, default_port: u16) -> Result<HeaderValue, ClientRequestError> {
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or(ClientRequestError::MissingHost)?;
    let value = match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::try_from(value).map_err(|_| ClientRequestError::InvalidUri)
}

/// The /resource name/: "/" if the path is empty, the path, then "?" and the query if
/// there is one (§3).
fn resource_name(uri: &Uri) -> Result<Uri, ClientRequestError> {
    // `Uri::path` is "/" for an absolute URI with an empty path.
    let name = match uri.query() {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    Uri::try_from(name).map_err(|_| ClientRequestError::InvalidUri)
}

/// Item 1: 101 Switching Protocols.
fn check_status(status: StatusCode) -> Result<(), ClientHandshakeError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        Ok(())
    } else {
        Err(ClientHandshakeError::UnexpectedStatus(status))
    }
}

/// Item 2: `Upgrade` is `websocket`, and nothing else: unlike a request, which may list
/// several protocols to choose from, a 101 names the one switched to.
fn check_upgrade(headers: &HeaderMap) -> Result<(), ClientHandshakeError> {
    let upgrade = headers.get_all(UPGRADE);
    if upgrade.iter().next().is_none() {
        return Err(ClientHandshakeError::MissingUpgrade);
    }
    let mut protocols = fields::list(&upgrade);
    match (protocols.next(), protocols.next()) {
        (Some(protocol), None) if protocol.eq_ignore_ascii_case("websocket") => Ok(()),
        _ => Err(ClientHandshakeError::UpgradeNotWebSocket),
    }
}

/// Item 3: `Connection` includes `Upgrade`.
fn check_connection(headers: &HeaderMap) -> Result<(), ClientHandshakeError> {
    if fields::contains(headers.get_all(CONNECTION), "upgrade") {
        Ok(())
    } else {
        Err(ClientHandshakeError::MissingConnectionUpgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{AUTHORIZATION, COOKIE, ORIGIN};

    const KEY: [u8; 16] = *b"the sample nonce";

    fn handshake(uri: &str) -> ClientHandshake {
        ClientHandshake::new(&uri.parse().unwrap(), KEY).unwrap()
    }

    /// The server's answer of RFC 6455 §1.3 to the key above.
    fn accepting() -> Response<()> {
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(())
            .unwrap()
    }

    fn with(name: &'static str, values: &[&'static str]) -> Response<()> {
        let mut response = accepting();
        response.headers_mut().remove(name);
        for value in values {
            response
                .headers_mut()
                .append(name, HeaderValue::from_static(value));
        }
        response
    }

    #[test]
    fn builds_the_rfc_request() {
        let request = handshake("ws://server.example.com/chat").request();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.uri(), "/chat");
        let headers = request.headers();
        assert_eq!(headers[HOST], "server.example.com");
        assert_eq!(headers[UPGRADE], "websocket");
        assert_eq!(headers[CONNECTION], "Upgrade");
        assert_eq!(headers[SEC_WEBSOCKET_KEY], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(headers[SEC_WEBSOCKET_VERSION], "13");
        assert_eq!(headers.len(), 5);
    }

    #[test]
    fn host_carries_the_port_only_when_not_the_default() {
        for (uri, host, target) in [
            ("ws://h", "h", "/"),
            ("ws://h:80/", "h", "/"),
            ("ws://h:443/", "h:443", "/"),
            ("wss://h:443/a", "h", "/a"),
            ("wss://h:80/a", "h:80", "/a"),
            ("WSS://h:8443?x=1", "h:8443", "/?x=1"),
            ("http://h:80/p?q", "h", "/p?q"),
            ("https://user:pw@h:443/p", "h", "/p"),
            ("ws://[::1]:9001/", "[::1]:9001", "/"),
            ("ws://h/p#fragment", "h", "/p"),
        ] {
            let request = handshake(uri).request();
            assert_eq!(request.headers()[HOST], host, "{uri}");
            assert_eq!(request.uri(), target, "{uri}");
        }
    }

    #[test]
    fn rejects_uris_that_are_not_websocket_uris() {
        for (uri, error) in [
            ("/chat", ClientRequestError::MissingScheme),
            (
                "ftp://h/",
                ClientRequestError::UnsupportedScheme("ftp".to_owned()),
            ),
            ("ws://:80/", ClientRequestError::MissingHost),
        ] {
            let got = ClientHandshake::new(&uri.parse().unwrap(), KEY).unwrap_err();
            assert_eq!(got, error, "{uri}");
        }
    }

    #[test]
    fn offers_protocols_in_order_and_checks_their_names() {
        let request = handshake("ws://h/")
            .with_protocols(&["v2.chat", "v1.chat"])
            .unwrap()
            .request();
        assert_eq!(
            request.headers()[SEC_WEBSOCKET_PROTOCOL],
            "v2.chat, v1.chat"
        );
        let none = handshake("ws://h/").with_protocols(&[]).unwrap().request();
        assert!(!none.headers().contains_key(SEC_WEBSOCKET_PROTOCOL));
        for (protocols, error) in [
            (
                &["a b"][..],
                ClientRequestError::InvalidProtocol("a b".to_owned()),
            ),
            (&[""], ClientRequestError::InvalidProtocol(String::new())),
            (
                &["a,b"],
                ClientRequestError::InvalidProtocol("a,b".to_owned()),
            ),
            (
                &["a", "b", "a"],
                ClientRequestError::DuplicateProtocol("a".to_owned()),
            ),
        ] {
            assert_eq!(
                handshake("ws://h/").with_protocols(protocols).unwrap_err(),
                error
            );
        }
    }

    #[test]
    fn extra_headers_are_sent_but_cannot_replace_the_handshake() {
        let request = handshake("ws://h/")
            .with_header(ORIGIN, HeaderValue::from_static("http://h"))
            .with_header(COOKIE, HeaderValue::from_static("a=1"))
            .with_header(COOKIE, HeaderValue::from_static("b=2"))
            .with_header(AUTHORIZATION, HeaderValue::from_static("Bearer t"))
            .with_header(HOST, HeaderValue::from_static("virtual.example"))
            .with_header(SEC_WEBSOCKET_KEY, HeaderValue::from_static("forged"))
            .with_header(UPGRADE, HeaderValue::from_static("h2c"))
            .with_extensions(HeaderValue::from_static("permessage-deflate"))
            .request();
        let headers = request.headers();
        assert_eq!(headers[ORIGIN], "http://h");
        assert_eq!(headers.get_all(COOKIE).iter().count(), 2);
        assert_eq!(headers[AUTHORIZATION], "Bearer t");
        assert_eq!(headers[HOST], "virtual.example");
        assert_eq!(headers.get_all(HOST).iter().count(), 1);
        assert_eq!(headers.get_all(SEC_WEBSOCKET_KEY).iter().count(), 1);
        assert_eq!(headers[SEC_WEBSOCKET_KEY], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(headers.get_all(UPGRADE).iter().count(), 1);
        assert_eq!(headers[UPGRADE], "websocket");
        assert_eq!(headers[SEC_WEBSOCKET_EXTENSIONS], "permessage-deflate");
    }

    #[test]
    fn accepts_the_rfc_answer() {
        let accepted = handshake("ws://h/")
            .validate_response(&accepting())
            .unwrap();
        assert_eq!(accepted.protocol(), None);
        assert_eq!(accepted.extensions().count(), 0);
        // Token lists and the accept value tolerate case and whitespace.
        let mut loose = with("connection", &["keep-alive", " UPGRADE "]);
        loose
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static(" WebSocket "));
        loose.headers_mut().insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static(" s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\t"),
        );
        assert!(handshake("ws://h/").validate_response(&loose).is_ok());
    }

    #[test]
    fn each_failure_has_its_error() {
        let mut redirect = accepting();
        *redirect.status_mut() = StatusCode::FOUND;
        let cases = [
            (
                redirect,
                ClientHandshakeError::UnexpectedStatus(StatusCode::FOUND),
            ),
            (with("upgrade", &[]), ClientHandshakeError::MissingUpgrade),
            (
                with("upgrade", &["h2c"]),
                ClientHandshakeError::UpgradeNotWebSocket,
            ),
            (
                with("upgrade", &["websocket, h2c"]),
                ClientHandshakeError::UpgradeNotWebSocket,
            ),
            (
                with("upgrade", &["websocket", "websocket"]),
                ClientHandshakeError::UpgradeNotWebSocket,
            ),
            (
                with("connection", &[]),
                ClientHandshakeError::MissingConnectionUpgrade,
            ),
            (
                with("connection", &["close"]),
                ClientHandshakeError::MissingConnectionUpgrade,
            ),
            (
                with("sec-websocket-accept", &[]),
                ClientHandshakeError::MissingAccept,
            ),
            (
                with(
                    "sec-websocket-accept",
                    &[
                        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                    ],
                ),
                ClientHandshakeError::DuplicateAccept,
            ),
            (
                with("sec-websocket-accept", &["S3pPLMBiTxaQ9kYGzzhZRbK+xOo="]),
                ClientHandshakeError::AcceptMismatch,
            ),
            (
                with("sec-websocket-accept", &["dGhlIHNhbXBsZSBub25jZQ=="]),
                ClientHandshakeError::AcceptMismatch,
            ),
            (
                with(
                    "sec-websocket-extensions",
                    &["permessage-deflate; server_no_context_takeover"],
                ),
                ClientHandshakeError::UnexpectedExtension(
                    "permessage-deflate; server_no_context_takeover".to_owned(),
                ),
            ),
            (
                with("sec-websocket-protocol", &["chat"]),
                ClientHandshakeError::UnexpectedProtocol("chat".to_owned()),
            ),
        ];
        for (response, error) in cases {
            assert_eq!(
                handshake("ws://h/").validate_response(&response),
                Err(error)
            );
        }
    }

    #[test]
    fn an_empty_extensions_answer_is_no_extension() {
        let response = with("sec-websocket-extensions", &["", " , "]);
        assert!(handshake("ws://h/").validate_response(&response).is_ok());
    }

    #[test]
    fn the_chosen_protocol_must_be_one_offered_once() {
        let offering = handshake("ws://h/")
            .with_protocols(&["chat", "superchat"])
            .unwrap();
        let accepted = offering
            .validate_response(&with("sec-websocket-protocol", &["superchat"]))
            .unwrap();
        assert_eq!(accepted.protocol(), Some("superchat"));
        // Choosing none is allowed.
        let accepted = offering.validate_response(&accepting()).unwrap();
        assert_eq!(accepted.protocol(), None);
        for (values, error) in [
            (
                &["SuperChat"][..],
                ClientHandshakeError::UnexpectedProtocol("SuperChat".to_owned()),
            ),
            (
                &["chat, superchat"],
                ClientHandshakeError::UnexpectedProtocol("chat, superchat".to_owned()),
            ),
            (&["chat", "chat"], ClientHandshakeError::DuplicateProtocol),
        ] {
            assert_eq!(
                offering.validate_response(&with("sec-websocket-protocol", values)),
                Err(error)
            );
        }
    }

    #[test]
    fn a_deflate_offer_checks_its_answer() {
        let offering = handshake("ws://h/").with_deflate(DeflateConfig::default());
        assert_eq!(
            offering.request().headers()[SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate; client_max_window_bits"
        );
        let accepted = offering
            .validate_response(&with(
                "sec-websocket-extensions",
                &["permessage-deflate; client_max_window_bits=10"],
            ))
            .unwrap();
        let params = accepted.deflate().unwrap();
        assert_eq!(params.client_max_window_bits, 10);
        assert_eq!(
            offering.validate_response(&accepting()).unwrap().deflate(),
            None
        );
        assert_eq!(
            offering.validate_response(&with(
                "sec-websocket-extensions",
                &["permessage-deflate; server_max_window_bits"],
            )),
            Err(ClientHandshakeError::Deflate(
                DeflateResponseError::InvalidValue("server_max_window_bits".to_owned())
            ))
        );
        assert_eq!(
            offering.validate_response(&with("sec-websocket-extensions", &["foo"])),
            Err(ClientHandshakeError::Deflate(
                DeflateResponseError::UnexpectedExtension("foo".to_owned())
            ))
        );
        // A raw offer replaces the deflate one, and its answer is not interpreted.
        let raw = offering.with_extensions(HeaderValue::from_static("foo"));
        let accepted = raw
            .validate_response(&with("sec-websocket-extensions", &["foo"]))
            .unwrap();
        assert_eq!(accepted.deflate(), None);
    }

    #[test]
    fn offered_extensions_are_handed_back_raw() {
        let offering =
            handshake("ws://h/").with_extensions(HeaderValue::from_static("permessage-deflate"));
        let accepted = offering
            .validate_response(&with(
                "sec-websocket-extensions",
                &["permessage-deflate; server_max_window_bits=10"],
            ))
            .unwrap();
        assert_eq!(
            accepted.extensions().collect::<Vec<_>>(),
            ["permessage-deflate; server_max_window_bits=10"]
        );
    }
}
