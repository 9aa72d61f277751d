//! Negotiating permessage-deflate: reading offers and answers of
//! `Sec-WebSocket-Extensions` (RFC 6455 §9.1) and applying RFC 7692 §7's rules to them.

use crate::{close::CloseCode, config::Role, handshake::fields::is_token};

/// The extension's registered name (RFC 7692 §7).
const NAME: &str = "permessage-deflate";

/// The LZ77 window when none is named: "the server uses a 32,768-byte LZ77 sliding window"
/// when the parameter is absent (RFC 7692 §7.1.2.1), i.e. 2^15.
const DEFAULT_WINDOW_BITS: u8 = 15;

/// The smallest window this endpoint asks a peer to compress with. RFC 7692 allows 8,
/// but zlib, which most peers use, cannot compress with a 256-byte window ("windowBits
/// 8 is not supported for raw deflate"): asking for it breaks such peers.
const MIN_REQUESTED_WINDOW_BITS: u8 = 9;

/// What this endpoint wants from permessage-deflate: the input to negotiation, for a
/// server and a client alike.
///
/// "Local" is what we compress, "peer" what the peer compresses. As a server, local is
/// the `server_*` parameters; as a client, the `client_*` ones.
///
/// Start from [`DeflateConfig::default`] and change what you need, one method per
/// setting:
///
/// ```
/// use switchboard_proto::{deflate::DeflateConfig, handshake::ClientHandshake};
///
/// // Small contexts on both sides: 4 KiB windows, and none kept by the server.
/// let config = DeflateConfig::default()
///     .max_window_bits(12)
///     .peer_max_window_bits(12)
///     .peer_no_context_takeover(true);
/// let client = ClientHandshake::new(&"ws://example.com/".parse()?, [7; 16])?
///     .with_deflate(config);
/// let request = client.request();
/// assert_eq!(
///     request.headers()["sec-websocket-extensions"],
///     "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// The largest LZ77 window we compress with, as a power of two, 9 to 15 (other
    /// values are brought into that range).
    ///
    /// Default 15 (32 KiB), the best ratio. A smaller window costs less memory per
    /// connection for the compressor's context.
    pub max_window_bits: u8,
    /// Whether we reset our compression context after each message, so that it need not
    /// be kept between messages (and one compressed frame can go to many peers). A
    /// server announces it as `server_no_context_takeover`, a client as
    /// `client_no_context_takeover`.
    ///
    /// Default `false`: a kept context compresses a connection's repetitive messages
    /// best, which is what the extension is for.
    pub no_context_takeover: bool,
    /// The largest window we ask the peer to compress with, 9 to 15 (other values are
    /// brought into that range): it bounds our inflater's memory. A server can ask only
    /// when the client offered `client_max_window_bits`; a client asks with
    /// `server_max_window_bits`, and a server that cannot honour it declines the offer.
    ///
    /// Default 15 (ask nothing): every peer can honour it, so no offer is declined for it.
    pub peer_max_window_bits: u8,
    /// Whether we ask the peer to reset its context after each message, so that our
    /// inflater need not keep it between messages.
    ///
    /// Default `false`, for the peer's best ratio, as [`DeflateConfig::no_context_takeover`].
    pub peer_no_context_takeover: bool,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            max_window_bits: DEFAULT_WINDOW_BITS,
            no_context_takeover: false,
            peer_max_window_bits: DEFAULT_WINDOW_BITS,
            peer_no_context_takeover: false,
        }
    }
}

impl DeflateConfig {
    /// Sets [`DeflateConfig::max_window_bits`]: 9 to 15, values outside are brought into
    /// that range when negotiating.
    pub fn max_window_bits(mut self, bits: u8) -> Self {
        self.max_window_bits = bits;
        self
    }

    /// Sets [`DeflateConfig::no_context_takeover`].
    pub fn no_context_takeover(mut self, reset: bool) -> Self {
        self.no_context_takeover = reset;
        self
    }

    /// Sets [`DeflateConfig::peer_max_window_bits`]: 9 to 15, values outside are brought
    /// into that range when negotiating.
    pub fn peer_max_window_bits(mut self, bits: u8) -> Self {
        self.peer_max_window_bits = bits;
        self
    }

    /// Sets [`DeflateConfig::peer_no_context_takeover`].
    pub fn peer_no_context_takeover(mut self, reset: bool) -> Self {
        self.peer_no_context_takeover = reset;
        self
    }

    /// Our window, within what we can compress with.
    fn local_bits(&self) -> u8 {
        self.max_window_bits
            .clamp(MIN_REQUESTED_WINDOW_BITS, DEFAULT_WINDOW_BITS)
    }

    /// The window to ask of the peer, within what zlib-based peers can honour.
    fn peer_bits(&self) -> u8 {
        self.peer_max_window_bits
            .clamp(MIN_REQUESTED_WINDOW_BITS, DEFAULT_WINDOW_BITS)
    }

    /// The `Sec-WebSocket-Extensions` value a client offers.
    ///
    /// It always names `client_max_window_bits`: "By including this parameter in an
    /// extension negotiation offer, a client informs the peer server that the client
    /// supports the "client_max_window_bits" extension parameter in an extension
    /// negotiation response" (RFC 7692 §7.1.2.2), which lets a server bound its inflater.
    pub(crate) fn offer(&self) -> String {
        let mut offer = String::from(NAME);
        if self.no_context_takeover {
            offer.push_str("; client_no_context_takeover");
        }
        if self.peer_no_context_takeover {
            offer.push_str("; server_no_context_takeover");
        }
        if self.peer_bits() < DEFAULT_WINDOW_BITS {
            offer.push_str(&format!("; server_max_window_bits={}", self.peer_bits()));
        }
        match self.local_bits() {
            DEFAULT_WINDOW_BITS => offer.push_str("; client_max_window_bits"),
            bits => offer.push_str(&format!("; client_max_window_bits={bits}")),
        }
        offer
    }
}

/// What a handshake agreed for permessage-deflate: the four parameters of RFC 7692 §7.1,
/// with the defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeflateParams {
    /// The server resets its compression context after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after each message.
    pub client_no_context_takeover: bool,
    /// The largest window the server compresses with, 8 to 15.
    pub server_max_window_bits: u8,
    /// The largest window the client compresses with, 8 to 15.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    /// A bare `permessage-deflate`: 32 KiB windows, contexts kept both ways.
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: DEFAULT_WINDOW_BITS,
            client_max_window_bits: DEFAULT_WINDOW_BITS,
        }
    }
}

impl DeflateParams {
    /// The window and context rule of what `role` compresses.
    pub(crate) fn sent_by(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => (self.server_max_window_bits, self.server_no_context_takeover),
            Role::Client => (self.client_max_window_bits, self.client_no_context_takeover),
        }
    }

    /// The window and context rule of what `role` inflates: what its peer compresses.
    pub(crate) fn received_by(&self, role: Role) -> (u8, bool) {
        match role {
            Role::Server => self.sent_by(Role::Client),
            Role::Client => self.sent_by(Role::Server),
        }
    }
}

/// Why a client fails the connection over the server's permessage-deflate answer.
///
/// "A client MUST _Fail the WebSocket Connection_ if the peer server accepted an
/// extension negotiation offer for this extension with an extension negotiation
/// response meeting any of the following conditions" (RFC 7692 §7); each variant is one
/// of them. The connection is closed with [`DeflateResponseError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeflateResponseError {
    /// The `Sec-WebSocket-Extensions` answer does not follow the grammar of RFC 6455
    /// §9.1.
    #[error("sec-websocket-extensions answer is malformed")]
    Malformed,
    /// "If the response includes a |Sec-WebSocket-Extensions| header field and this
    /// header field indicates the use of an extension that was not present in the
    /// client's handshake ..., the client MUST _Fail the WebSocket Connection_" (RFC 6455
    /// §4.1, item 5).
    #[error("server accepted extension {0:?}, which was not offered")]
    UnexpectedExtension(String),
    /// permessage-deflate accepted twice: we made one offer, and both uses would claim
    /// the RSV1 bit.
    #[error("server accepted permessage-deflate more than once")]
    DuplicateExtension,
    /// "The negotiation response contains an extension parameter not defined for use in
    /// a response."
    #[error("parameter {0:?} is not defined for a permessage-deflate response")]
    UnknownParameter(String),
    /// "The negotiation response contains an extension parameter with an invalid value."
    #[error("parameter {0:?} has an invalid value")]
    InvalidValue(String),
    /// "The negotiation response contains multiple extension parameters with the same
    /// name."
    #[error("parameter {0:?} appears more than once")]
    DuplicateParameter(String),
    /// We asked for a parameter that the answer leaves out, so the server did not accept
    /// our offer: "A server accepts an extension negotiation offer that includes the
    /// "server_no_context_takeover" extension parameter by including the
    /// "server_no_context_takeover" extension parameter in the corresponding extension
    /// negotiation response" (§7.1.1.1), and likewise `server_max_window_bits`
    /// (§7.1.2.1).
    #[error("the answer leaves out {0}, which was asked for")]
    MissingParameter(&'static str),
    /// A server window larger than we asked for: a server answers
    /// `server_max_window_bits` "with the same or smaller value as the offer"
    /// (§7.1.2.1), and our inflater was sized to the offer.
    #[error("{parameter}={answered} exceeds the {offered} offered")]
    WindowTooLarge {
        /// The parameter.
        parameter: &'static str,
        /// What we offered.
        offered: u8,
        /// What the server answered.
        answered: u8,
    },
}

impl DeflateResponseError {
    /// The status code to close with: 1010, "the client ... has expected the server to
    /// negotiate one or more extension, but the server didn't return them in the
    /// response message of the WebSocket handshake" (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> CloseCode {
        CloseCode::EXTENSION_REQUIRED
    }
}

/// Chooses the first permessage-deflate offer, in the client's order of preference,
/// that the server can honour under `config`, and the `Sec-WebSocket-Extensions` value
/// that accepts it. `None` declines them all (the connection goes on uncompressed).
pub(crate) fn negotiate_server<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    lines
        .into_iter()
        .flat_map(|line| split_unquoted(line, b','))
        .filter(|element| !element.trim().is_empty())
        .filter_map(parse_extension)
        .filter(|extension| extension.name.eq_ignore_ascii_case(NAME))
        // "A server MUST decline an extension negotiation offer for this extension if any
        // of the following conditions are met: [an unknown parameter, an invalid value,
        // a repeated parameter]" (RFC 7692 §7): such an offer is skipped, not an error.
        .filter_map(|extension| Parsed::from_params(&extension.params, Side::Offer).ok())
        .map(|offer| accept_offer(&offer, config))
        .next()
}

/// The agreement and the answer for one well-formed offer. Every valid offer can be
/// honoured: whatever window a client asks for, we can compress within it.
fn accept_offer(offer: &Parsed, config: &DeflateConfig) -> (DeflateParams, String) {
    let mut answer = String::from(NAME);
    // "A server MAY include the "server_no_context_takeover" extension parameter in an
    // extension negotiation response even if the extension negotiation offer being
    // accepted by the extension negotiation response didn't include the
    // "server_no_context_takeover" extension parameter" (§7.1.1.1); when offered, it
    // must be in the answer.
    let server_no_context_takeover = offer.server_no_context_takeover || config.no_context_takeover;
    if server_no_context_takeover {
        answer.push_str("; server_no_context_takeover");
    }
    // "A server MAY include the "client_no_context_takeover" extension parameter in an
    // extension negotiation response" (§7.1.1.2). Echoing the client's own hint lets us
    // drop its context between messages too.
    let client_no_context_takeover =
        offer.client_no_context_takeover || config.peer_no_context_takeover;
    if client_no_context_takeover {
        answer.push_str("; client_no_context_takeover");
    }
    // "A server accepts an extension negotiation offer with this parameter by including
    // the "server_max_window_bits" extension parameter in the extension negotiation
    // response to send back to the client with the same or smaller value as the offer"
    // (§7.1.2.1). Without it, a smaller window than 15 is ours alone to know.
    let server_max_window_bits = match offer.server_max_window_bits {
        Some(offered) => {
            let bits = offered.min(config.local_bits());
            answer.push_str(&format!("; server_max_window_bits={bits}"));
            bits
        }
        None => DEFAULT_WINDOW_BITS,
    };
    // "If a received extension negotiation offer doesn't have the
    // "client_max_window_bits" extension parameter, the corresponding extension
    // negotiation response to the offer MUST NOT include the "client_max_window_bits"
    // extension parameter"; with it, the answer carries "a value equal to or smaller than
    // the received value" (§7.1.2.2).
    let client_max_window_bits = match offer.client_max_window_bits {
        Some(hint) => {
            let bits = hint.unwrap_or(DEFAULT_WINDOW_BITS).min(config.peer_bits());
            if bits < DEFAULT_WINDOW_BITS {
                answer.push_str(&format!("; client_max_window_bits={bits}"));
            }
            bits
        }
        None => DEFAULT_WINDOW_BITS,
    };
    let params = DeflateParams {
        server_no_context_takeover,
        client_no_context_takeover,
        // Compressing with a smaller window than announced is always safe for the peer:
        // the parameters say what we use, which may be less than the answer names.
        server_max_window_bits: server_max_window_bits.min(config.local_bits()),
        client_max_window_bits,
    };
    (params, answer)
}

/// Checks the server's answer to the offer made from `config` ([`DeflateConfig::offer`]);
/// `Ok(None)` when it declined (named no extension).
pub(crate) fn accept_response<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Result<Option<DeflateParams>, DeflateResponseError> {
    let mut accepted = None;
    for element in lines
        .into_iter()
        .flat_map(|line| split_unquoted(line, b','))
    {
        if element.trim().is_empty() {
            continue;
        }
        let extension = parse_extension(element).ok_or(DeflateResponseError::Malformed)?;
        if !extension.name.eq_ignore_ascii_case(NAME) {
            return Err(DeflateResponseError::UnexpectedExtension(extension.name));
        }
        if accepted.is_some() {
            return Err(DeflateResponseError::DuplicateExtension);
        }
        accepted = Some(Parsed::from_params(&extension.params, Side::Response)?);
    }
    accepted
        .map(|answer| agreement(&answer, config))
        .transpose()
}

/// The agreement an accepted answer represents, if we support it.
fn agreement(
    answer: &Parsed,
    config: &DeflateConfig,
) -> Result<DeflateParams, DeflateResponseError> {
    if config.peer_no_context_takeover && !answer.server_no_context_takeover {
        return Err(DeflateResponseError::MissingParameter(
            "server_no_context_takeover",
        ));
    }
    let asked = config.peer_bits();
    let server_max_window_bits = match answer.server_max_window_bits {
        Some(answered) if asked < DEFAULT_WINDOW_BITS && answered > asked => {
            return Err(DeflateResponseError::WindowTooLarge {
                parameter: "server_max_window_bits",
                offered: asked,
                answered,
            });
        }
        // "A server MAY include the "server_max_window_bits" extension parameter in an
        // extension negotiation response even if the extension negotiation offer being
        // accepted by the response didn't include" it (§7.1.2.1): it only informs us.
        Some(answered) => answered,
        None if asked < DEFAULT_WINDOW_BITS => {
            return Err(DeflateResponseError::MissingParameter(
                "server_max_window_bits",
            ));
        }
        None => DEFAULT_WINDOW_BITS,
    };
    // A server answers "with a value equal to or smaller than the received value"
    // (§7.1.2.2); a larger one still bounds a window we keep below our own, so we
    // support that configuration and compress within both.
    let local = config.local_bits();
    let client_max_window_bits = match answer.client_max_window_bits {
        Some(Some(answered)) => answered.min(local),
        // A response's value is required; `Parsed` has already refused a bare one.
        Some(None) | None => local,
    };
    Ok(DeflateParams {
        server_no_context_takeover: answer.server_no_context_takeover,
        // The server may impose it (§7.1.1.2); we may also have promised it.
        client_no_context_takeover: answer.client_no_context_takeover || config.no_context_takeover,
        server_max_window_bits,
        client_max_window_bits,
    })
}

/// Which element is being read: what may appear differs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Offer,
    Response,
}

/// The permessage-deflate parameters of one offer or answer, as written.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// Absent, present without a value (offers only), or with one.
    client_max_window_bits: Option<Option<u8>>,
}

impl Parsed {
    fn from_params(
        params: &[(String, Option<String>)],
        side: Side,
    ) -> Result<Self, DeflateResponseError> {
        let mut parsed = Self::default();
        let mut seen = [false; 4];
        for (name, value) in params {
            let index = match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" => 0,
                "client_no_context_takeover" => 1,
                "server_max_window_bits" => 2,
                "client_max_window_bits" => 3,
                _ => return Err(DeflateResponseError::UnknownParameter(name.clone())),
            };
            let Some(seen) = seen.get_mut(index) else {
                return Err(DeflateResponseError::UnknownParameter(name.clone()));
            };
            if std::mem::replace(seen, true) {
                return Err(DeflateResponseError::DuplicateParameter(name.clone()));
            }
            let invalid = || DeflateResponseError::InvalidValue(name.clone());
            match (index, value.as_deref()) {
                // "The "server_no_context_takeover" extension parameter MUST NOT have a
                // value" (§7.1.1.1); the same holds for the client's (§7.1.1.2).
                (0, None) => parsed.server_no_context_takeover = true,
                (1, None) => parsed.client_no_context_takeover = true,
                (0 | 1, Some(_)) => return Err(invalid()),
                // "This parameter has a decimal integer value without leading zeroes
                // between 8 to 15, inclusive" (§7.1.2.1).
                (2, value) => {
                    parsed.server_max_window_bits =
                        Some(value.and_then(window_bits).ok_or_else(invalid)?);
                }
                // In an offer, "This parameter has no value or a decimal integer value
                // without leading zeroes between 8 to 15 inclusive" (§7.1.2.2); an answer
                // names the window it imposes, so it needs the value.
                (_, None) if side == Side::Offer => parsed.client_max_window_bits = Some(None),
                (_, value) => {
                    parsed.client_max_window_bits =
                        Some(Some(value.and_then(window_bits).ok_or_else(invalid)?));
                }
            }
        }
        Ok(parsed)
    }
}

/// "a decimal integer value without leading zeroes between 8 to 15, inclusive"
/// (RFC 7692 §7.1.2.1, §7.1.2.2).
fn window_bits(value: &str) -> Option<u8> {
    match value {
        "8" => Some(8),
        "9" => Some(9),
        "10" => Some(10),
        "11" => Some(11),
        "12" => Some(12),
        "13" => Some(13),
        "14" => Some(14),
        "15" => Some(15),
        _ => None,
    }
}

/// One element of an extension list: `extension-token *( ";" extension-param )`.
struct Extension {
    name: String,
    /// `extension-param = token [ "=" (token | quoted-string) ]`, values unquoted.
    params: Vec<(String, Option<String>)>,
}

/// Reads one list element; `None` when it does not follow RFC 6455 §9.1's grammar.
fn parse_extension(element: &str) -> Option<Extension> {
    let mut parts = split_unquoted(element, b';').into_iter();
    let name = parts.next()?.trim();
    if !is_token(name) {
        return None;
    }
    let params = parts
        .map(|param| {
            let param = param.trim();
            let (name, value) = match param.split_once('=') {
                None => (param, None),
                Some((name, value)) => (name.trim_end(), Some(param_value(value.trim_start())?)),
            };
            is_token(name).then(|| (name.to_owned(), value))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Extension {
        name: name.to_owned(),
        params,
    })
}

/// A parameter's value: a token, or a quoted-string whose content, "after quoted-string
/// unescaping MUST conform to the 'token' ABNF" (RFC 6455 §9.1).
fn param_value(raw: &str) -> Option<String> {
    let value = match raw.strip_prefix('"') {
        None => raw.to_owned(),
        Some(quoted) => {
            let inner = quoted.strip_suffix('"')?;
            let mut value = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                value.push(if c == '\\' { chars.next()? } else { c });
            }
            value
        }
    };
    is_token(&value).then_some(value)
}

/// Splits `s` on `delimiter` where it is not inside a quoted-string, so that a quoted
/// value holding a comma or a semicolon stays whole.
fn split_unquoted(s: &str, delimiter: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, byte) in s.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            quoted = !quoted;
        } else if byte == delimiter && !quoted {
            parts.push(s.get(start..i).unwrap_or_default());
            start = i + 1;
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(offer: &str, config: &DeflateConfig) -> Option<(DeflateParams, String)> {
        negotiate_server([offer], config)
    }

    fn agreed(snct: bool, cnct: bool, server_bits: u8, client_bits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        }
    }

    #[test]
    fn accepts_the_offers_autobahn_and_browsers_make() {
        let config = DeflateConfig::default();
        for (offer, params, answer) in [
            (
                "permessage-deflate",
                agreed(false, false, 15, 15),
                "permessage-deflate",
            ),
            (
                "permessage-deflate; client_max_window_bits",
                agreed(false, false, 15, 15),
                "permessage-deflate",
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; server_no_context_takeover",
                agreed(true, true, 15, 15),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits; server_max_window_bits=9",
                agreed(false, true, 9, 15),
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=9",
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                agreed(false, false, 8, 15),
                "permessage-deflate; server_max_window_bits=8",
            ),
            (
                "permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits=12",
                agreed(false, false, 10, 12),
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=12",
            ),
            (
                "PerMessage-Deflate ; Server_No_Context_Takeover",
                agreed(true, false, 15, 15),
                "permessage-deflate; server_no_context_takeover",
            ),
        ] {
            assert_eq!(
                server(offer, &config),
                Some((params, answer.to_owned())),
                "{offer}"
            );
        }
    }

    #[test]
    fn declines_malformed_offers_and_takes_the_next() {
        let config = DeflateConfig::default();
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=1 0",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; mystery",
            "permessage-deflate;",
            "permessage-deflate; =5",
            "permessage-deflate; server_max_window_bits=\"10",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(server(bad, &config), None, "{bad}");
            // Declining one offer leaves the next to be accepted.
            let lines = [bad, "permessage-deflate; client_max_window_bits"];
            assert_eq!(
                negotiate_server(lines, &config),
                Some((
                    agreed(false, false, 15, 15),
                    "permessage-deflate".to_owned()
                )),
                "{bad}"
            );
        }
        let several = "permessage-deflate; foo, permessage-deflate; server_max_window_bits=10, permessage-deflate";
        assert_eq!(
            server(several, &config).map(|(p, _)| p),
            Some(agreed(false, false, 10, 15))
        );
    }

    #[test]
    fn quoted_values_may_hold_delimiters() {
        assert_eq!(
            split_unquoted(r#"a; b="x,y;\"z"; c, d"#, b','),
            [r#"a; b="x,y;\"z"; c"#, " d"]
        );
        // A quoted value must still be a token after unquoting.
        assert_eq!(param_value("\"1,0\""), None);
        assert_eq!(param_value("\"1\\0\""), Some("10".to_owned()));
    }

    #[test]
    fn server_config_bounds_windows_and_adds_no_context_takeover() {
        let config = DeflateConfig::default()
            .max_window_bits(11)
            .no_context_takeover(true)
            .peer_max_window_bits(8)
            .peer_no_context_takeover(true);
        // The peer window is asked for only where the client allows it, and never
        // below 9.
        assert_eq!(
            server("permessage-deflate; client_max_window_bits", &config),
            Some((
                agreed(true, true, 11, 9),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=9".to_owned()
            ))
        );
        assert_eq!(
            server("permessage-deflate", &config),
            Some((
                agreed(true, true, 11, 15),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                    .to_owned()
            ))
        );
        // A client's smaller window wins over ours.
        assert_eq!(
            server("permessage-deflate; server_max_window_bits=9", &config).map(|(p, _)| p),
            Some(agreed(true, true, 9, 15))
        );
    }

    #[test]
    fn client_offers_what_it_is_configured_for() {
        assert_eq!(
            DeflateConfig::default().offer(),
            "permessage-deflate; client_max_window_bits"
        );
        let config = DeflateConfig::default()
            .max_window_bits(12)
            .no_context_takeover(true)
            .peer_max_window_bits(10)
            .peer_no_context_takeover(true);
        assert_eq!(
            config.offer(),
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"
        );
        // What a server makes of our offer, we accept.
        let (params, answer) = server(&config.offer(), &DeflateConfig::default()).unwrap();
        assert_eq!(
            accept_response([answer.as_str()], &config),
            Ok(Some(params))
        );
    }

    #[test]
    fn client_reads_valid_answers() {
        let config = DeflateConfig::default();
        for (answer, params) in [
            ("permessage-deflate", agreed(false, false, 15, 15)),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                agreed(true, true, 15, 15),
            ),
            (
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9",
                agreed(false, false, 10, 9),
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                agreed(false, false, 15, 8),
            ),
        ] {
            assert_eq!(
                accept_response([answer], &config),
                Ok(Some(params)),
                "{answer}"
            );
        }
        assert_eq!(accept_response(["", " , "], &config), Ok(None));
        assert_eq!(accept_response([], &config), Ok(None));
    }

    #[test]
    fn client_fails_on_answers_it_cannot_honour() {
        use DeflateResponseError as E;
        let config = DeflateConfig::default()
            .max_window_bits(12)
            .peer_max_window_bits(10)
            .peer_no_context_takeover(true);
        let ok = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10";
        assert!(accept_response([ok], &config).is_ok());
        // A client window above our hint still bounds ours: we keep to the smaller.
        let larger = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=13";
        assert_eq!(
            accept_response([larger], &config).map(|p| p.map(|p| p.client_max_window_bits)),
            Ok(Some(12))
        );
        for (answer, error) in [
            (
                "permessage-deflate; x=1",
                E::UnknownParameter("x".to_owned()),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits",
                E::InvalidValue("client_max_window_bits".to_owned()),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=07",
                E::InvalidValue("server_max_window_bits".to_owned()),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover; server_max_window_bits=10",
                E::DuplicateParameter("server_no_context_takeover".to_owned()),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                E::MissingParameter("server_no_context_takeover"),
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                E::MissingParameter("server_max_window_bits"),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
                E::WindowTooLarge {
                    parameter: "server_max_window_bits",
                    offered: 10,
                    answered: 11,
                },
            ),
            (
                "x-webkit-deflate-frame",
                E::UnexpectedExtension("x-webkit-deflate-frame".to_owned()),
            ),
            ("permessage-deflate;", E::Malformed),
        ] {
            let got = accept_response([answer], &config);
            assert_eq!(got, Err(error), "{answer}");
            assert_eq!(got.unwrap_err().close_code(), CloseCode::EXTENSION_REQUIRED);
        }
        assert_eq!(
            accept_response([ok, ok], &config),
            Err(E::DuplicateExtension)
        );
    }

    #[test]
    fn every_builder_method_sets_its_field() {
        // Values other than the defaults, so that a method that sets nothing fails.
        let config = DeflateConfig::default()
            .max_window_bits(10)
            .no_context_takeover(true)
            .peer_max_window_bits(11)
            .peer_no_context_takeover(true);
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let DeflateConfig {
            max_window_bits,
            no_context_takeover,
            peer_max_window_bits,
            peer_no_context_takeover,
        } = config;
        assert_eq!(max_window_bits, 10);
        assert!(no_context_takeover);
        assert_eq!(peer_max_window_bits, 11);
        assert!(peer_no_context_takeover);
    }
}
