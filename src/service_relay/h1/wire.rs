//! Reading and rewriting HTTP/1.1 heads for the exit relay's own path: which
//! requests it takes (the rest go to hyper, untouched), how each request
//! head is rewritten for the target Service, and how a response head is
//! rewritten for the client. Header names and values are copied as they
//! came (httparse has checked them); only framing, hop-by-hop and the
//! relay's own headers are acted on.

use std::net::IpAddr;

use crate::service_relay::{
    exit::Routing,
    headers::{PREFIX, ipv4_text},
};

/// Most headers read in a head; a request with more goes to hyper.
pub const MAX_HEADERS: usize = 96;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// What the relay makes of one request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Passed on as it is.
    Keep,
    /// Dropped: hop-by-hop, or replaced by the relay.
    Drop,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Something the relay leaves to hyper (Upgrade, Expect).
    HandOver,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    ClusterProxyAuthorization,
    RelayAuthorization,
    Proto,
    Namespace,
    Service,
    Port,
}

fn is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// The kind of a request header, by name (matched on length first).
fn kind(name: &str) -> Kind {
    // `>=`: the bare prefix is the relay's as much as any longer name.
    // Compared as bytes: a name listed in Connection is any UTF-8, and
    // byte 14 of it need not start a character.
    let bytes = name.as_bytes();
    if bytes.len() >= PREFIX.len() && bytes[..PREFIX.len()].eq_ignore_ascii_case(PREFIX.as_bytes())
    {
        // After 14 ASCII bytes: a character boundary.
        let rest = &name[PREFIX.len()..];
        return match rest.len() {
            4 if is(rest, "port") => Kind::Port,
            5 if is(rest, "proto") => Kind::Proto,
            7 if is(rest, "service") => Kind::Service,
            9 if is(rest, "namespace") => Kind::Namespace,
            13 if is(rest, "authorization") => Kind::ClusterProxyAuthorization,
            19 if is(rest, "relay-authorization") => Kind::RelayAuthorization,
            _ => Kind::Drop,
        };
    }
    match name.len() {
        2 if is(name, "te") => Kind::Drop,
        4 if is(name, "host") => Kind::Host,
        6 if is(name, "expect") => Kind::HandOver,
        7 if is(name, "upgrade") => Kind::HandOver,
        7 if is(name, "trailer") => Kind::Drop,
        10 if is(name, "connection") => Kind::Connection,
        10 if is(name, "keep-alive") => Kind::Drop,
        13 if is(name, "authorization") => Kind::Drop,
        14 if is(name, "content-length") => Kind::ContentLength,
        15 if is(name, "x-forwarded-for") => Kind::XForwardedFor,
        16 if is(name, "proxy-connection") => Kind::Drop,
        16 if is(name, "x-forwarded-host") => Kind::XForwardedHost,
        17 if is(name, "transfer-encoding") => Kind::TransferEncoding,
        17 if is(name, "x-forwarded-proto") => Kind::XForwardedProto,
        18 if is(name, "proxy-authenticate") => Kind::Drop,
        19 if is(name, "proxy-authorization") => Kind::Drop,
        _ => Kind::Keep,
    }
}

/// The comma-separated tokens of header values.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A Content-Length value: digits only, not absurdly long.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A request the relay serves itself, read from its head.
pub struct Request<'h, 'b> {
    pub method: &'b str,
    pub path: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    pub framing: Framing,
    /// The client asked to close after this request.
    pub close: bool,
    pub routing: Routing<'b>,
    kinds: [Kind; MAX_HEADERS],
    /// Names listed in Connection, to drop as hop-by-hop.
    listed: Vec<&'b [u8]>,
    authorization: Option<&'b [u8]>,
    host: Option<&'b [u8]>,
    forwarded_proto: bool,
    forwarded_host: bool,
}

/// Reads a parsed request head; `None` when hyper should serve it: other
/// than HTTP/1.1, CONNECT, a target not in origin form (or with a fragment), an upgrade, an
/// `Expect`, or framing that is anything but one plain Content-Length or
/// `Transfer-Encoding: chunked` alone (hyper answers the odd and the bad
/// as it always has).
pub fn request<'h, 'b>(parsed: &'h httparse::Request<'h, 'b>) -> Option<Request<'h, 'b>> {
    if parsed.version != Some(1) {
        return None;
    }
    let method = parsed.method?;
    let path = parsed.path?;
    // A fragment is no part of a request target (RFC 9112 section 3.2);
    // hyper drops it, and so the Service must never see it.
    // Nor a byte `http`'s URI parser refuses (httparse takes `{`, `` ` ``
    // and more): hyper answers 400 to those, the own path must not pass
    // them on.
    if method == "CONNECT"
        || !path.starts_with('/')
        || path.contains('#')
        || http::uri::PathAndQuery::try_from(path).is_err()
    {
        return None;
    }
    let headers: &'h [httparse::Header<'b>] = parsed.headers;
    let mut request = Request {
        method,
        path,
        headers,
        framing: Framing::Empty,
        close: false,
        routing: Routing::default(),
        kinds: [Kind::Keep; MAX_HEADERS],
        listed: Vec::new(),
        authorization: None,
        host: None,
        forwarded_proto: false,
        forwarded_host: false,
    };
    let mut length = None;
    let mut chunked = false;
    for (i, header) in headers.iter().enumerate() {
        let kind = kind(header.name);
        request.kinds[i] = kind;
        let value = header.value;
        let text = || std::str::from_utf8(value).ok();
        match kind {
            Kind::Keep | Kind::Drop | Kind::XForwardedFor => {}
            Kind::HandOver => return None,
            Kind::Host => {
                request.host.get_or_insert(value);
            }
            Kind::ContentLength => {
                if length.is_some() {
                    return None;
                }
                length = Some(content_length(value)?);
            }
            Kind::TransferEncoding => {
                if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return None;
                }
                chunked = true;
            }
            Kind::Connection => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        request.close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        // Framing and routing must never be dropped by a
                        // client's say-so; hyper sorts that out.
                        if matches!(
                            kind_of_bytes(token),
                            Kind::ContentLength | Kind::TransferEncoding | Kind::Host
                        ) {
                            return None;
                        }
                        request.listed.push(token);
                    }
                }
            }
            Kind::XForwardedProto => request.forwarded_proto = true,
            Kind::XForwardedHost => request.forwarded_host = true,
            Kind::ClusterProxyAuthorization => {
                request.authorization.get_or_insert(value);
            }
            Kind::RelayAuthorization => {
                request.routing.relay_authorization.get_or_insert(value);
            }
            Kind::Proto => request.routing.proto = request.routing.proto.or_else(text),
            Kind::Namespace => request.routing.namespace = request.routing.namespace.or_else(text),
            Kind::Service => request.routing.service = request.routing.service.or_else(text),
            Kind::Port => request.routing.port = request.routing.port.or_else(text),
        }
    }
    request.framing = match (length, chunked) {
        (Some(_), true) => return None,
        (Some(0), false) | (None, false) => Framing::Empty,
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
    };
    Some(request)
}

fn kind_of_bytes(name: &[u8]) -> Kind {
    std::str::from_utf8(name).map_or(Kind::Keep, kind)
}

/// Writes an IP address as `Display` does, without the formatter for v4.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(ipv4_text(v4, &mut [0; 15]).as_bytes()),
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

impl Request<'_, '_> {
    /// Writes the head to send upstream to `authority`: Host names it; the
    /// caller's Authorization is restored from `Cluster-Proxy-Authorization`
    /// (or there is none); every `Cluster-Proxy-*` and hop-by-hop header is
    /// gone; `X-Forwarded-For` gains `peer`, and `X-Forwarded-Proto` and
    /// `-Host` are set unless an earlier hop set them. Framing headers pass
    /// as they came, as the body does.
    pub fn write_upstream_head(&self, authority: &str, peer: IpAddr, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut forwarded_for: Option<Vec<u8>> = None;
        for (header, kind) in self.headers.iter().zip(self.kinds) {
            match kind {
                Kind::Keep | Kind::XForwardedProto | Kind::XForwardedHost => {
                    if !self.listed.is_empty()
                        && self
                            .listed
                            .iter()
                            .any(|listed| listed.eq_ignore_ascii_case(header.name.as_bytes()))
                    {
                        continue;
                    }
                    header_line(out, header.name.as_bytes(), header.value);
                }
                Kind::ContentLength | Kind::TransferEncoding => {
                    header_line(out, header.name.as_bytes(), header.value);
                }
                Kind::XForwardedFor => {
                    let joined = forwarded_for.get_or_insert_with(Vec::new);
                    if !joined.is_empty() {
                        joined.extend_from_slice(b", ");
                    }
                    joined.extend_from_slice(header.value.trim_ascii());
                }
                _ => {}
            }
        }
        if let Some(authorization) = self.authorization {
            header_line(out, b"Authorization", authorization);
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        if let Some(earlier) = forwarded_for.filter(|v| !v.is_empty()) {
            out.extend_from_slice(&earlier);
            out.extend_from_slice(b", ");
        }
        write_ip(out, peer);
        out.extend_from_slice(b"\r\n");
        if !self.forwarded_proto {
            out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
        }
        if !self.forwarded_host
            && let Some(host) = self.host
        {
            header_line(out, b"X-Forwarded-Host", host);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A response head from upstream, as the relay passes it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub framing: Framing,
    /// The upstream connection can take another request after this one.
    pub reusable: bool,
}

/// Why a response head cannot be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("a Content-Length that is not one number")]
    Length,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    Switch,
}

/// Reads a final or interim response head and writes what the client gets:
/// the status and every end-to-end header (`Transfer-Encoding` included,
/// as the chunked framing passes through as it came), with
/// `Connection: close` when `close` is set or the body ends with the
/// connection. `head` says the request was a HEAD. Interim (1xx) heads
/// come back with `Framing::Empty` and are passed on as they are.
pub fn response(
    parsed: &httparse::Response<'_, '_>,
    head: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Response, ResponseError> {
    let code = parsed.code.unwrap_or(502);
    let reason = parsed.reason.unwrap_or("");
    if code == 101 {
        return Err(ResponseError::Switch);
    }
    let mut reusable = parsed.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut listed: Vec<&[u8]> = Vec::new();
    for header in parsed.headers.iter() {
        match header.name.len() {
            10 if is(header.name, "connection") => {
                for token in tokens(header.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        reusable = false;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        listed.push(token);
                    }
                }
            }
            14 if is(header.name, "content-length") => {
                for token in tokens(header.value) {
                    let n = content_length(token).ok_or(ResponseError::Length)?;
                    if length.is_some_and(|earlier| earlier != n) {
                        return Err(ResponseError::Length);
                    }
                    length = Some(n);
                }
            }
            17 if is(header.name, "transfer-encoding") => {
                chunked = Some(
                    tokens(header.value)
                        .last()
                        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
                );
            }
            _ => {}
        }
    }
    let interim = (100..200).contains(&code);
    let framing = if interim || head || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    if chunked.is_some() && length.is_some() {
        // Both framings: a smuggling attempt or a broken server; trust
        // this connection no further.
        reusable = false;
    }
    if framing == Framing::Close {
        reusable = false;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(code).as_slice());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in parsed.headers.iter() {
        let name = header.name;
        let drop = match name.len() {
            2 => is(name, "te"),
            7 => is(name, "upgrade") || is(name, "trailer"),
            10 => is(name, "connection") || is(name, "keep-alive"),
            14 => chunked.is_some() && is(name, "content-length"),
            16 => is(name, "proxy-connection"),
            18 => is(name, "proxy-authenticate"),
            19 => is(name, "proxy-authorization"),
            _ => false,
        } || (!listed.is_empty()
            && listed
                .iter()
                .any(|l| l.eq_ignore_ascii_case(name.as_bytes()))
            && !is(name, "transfer-encoding")
            && !is(name, "content-length"));
        if !drop {
            header_line(out, name.as_bytes(), header.value);
        }
    }
    if !interim && (close || framing == Framing::Close) {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Response {
        code,
        framing,
        reusable,
    })
}

/// A status code as its three digits.
fn itoa3(code: u16) -> [u8; 3] {
    let code = code.min(999);
    [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

#[cfg(test)]
mod tests;
