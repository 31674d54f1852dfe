//! A scripted HTTP/1.1 upstream for wire-level tests, on 127.0.0.1: it reads
//! each request as bytes (head; body framed by Content-Length or chunked,
//! decoded, trailers kept), records it, and answers with the raw bytes the
//! test's script returns, so a test can send what no server library would
//! (a close without `Connection: close`, an interim 103, a close-delimited
//! body). [`Wire`], its message reader, is also the tests' raw client.
//!
//! Std threads only. Reads time out, heads and bodies are capped, and so is
//! the number of connections; dropping the upstream closes the listener and
//! every connection it accepted.

use std::{
    collections::HashMap,
    fmt,
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::wait::wait_until_sync;

/// Largest head (start line and header lines) read.
pub const MAX_HEAD: usize = 1 << 20;
/// Largest body read.
pub const MAX_BODY: usize = 64 << 20;
/// Longest line of chunked framing (a size line or a trailer).
const MAX_LINE: usize = 64 << 10;
/// A read waiting longer than this fails, and ends the connection.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections accepted while this many are open are closed at once.
const MAX_CONNECTIONS: usize = 256;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A message head as it came on the wire.
#[derive(Clone)]
pub struct Head {
    /// The bytes up to and including the blank line.
    pub raw: Vec<u8>,
    /// The request line or the status line.
    pub start_line: String,
    /// Every header line in order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: Vec<u8>) -> io::Result<Head> {
        let text = String::from_utf8_lossy(&raw).into_owned();
        let mut lines = text.trim_end_matches("\r\n").split("\r\n");
        let start_line = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| invalid(format!("not a header line: {line:?}")))?;
                Ok((name.to_owned(), value.trim().to_owned()))
            })
            .collect::<io::Result<_>>()?;
        Ok(Head {
            raw,
            start_line,
            headers,
        })
    }

    /// Every value of `name` (any case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The first value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// A word of the start line, counted from 0.
    fn word(&self, index: usize) -> &str {
        self.start_line.split(' ').nth(index).unwrap_or_default()
    }

    /// A request's method.
    pub fn method(&self) -> &str {
        self.word(0)
    }

    /// A request's target (path and query).
    pub fn target(&self) -> &str {
        self.word(1)
    }

    /// A response's status code; 0 when the status line has none.
    pub fn status(&self) -> u16 {
        self.word(1).parse().unwrap_or(0)
    }

    fn chunked(&self) -> bool {
        self.all("transfer-encoding")
            .iter()
            .flat_map(|value| value.split(','))
            .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
    }

    fn length(&self) -> io::Result<Option<usize>> {
        self.get("content-length")
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| invalid(format!("bad Content-Length {value:?}")))
            })
            .transpose()
    }

    /// How the body of this head, a request, is delimited (RFC 9112
    /// section 6.3).
    pub fn request_framing(&self) -> io::Result<Framing> {
        if self.chunked() {
            return Ok(Framing::Chunked);
        }
        Ok(self.length()?.map_or(Framing::None, Framing::Length))
    }

    /// How the body of this head, a response to a request with `method`, is
    /// delimited (RFC 9112 section 6.3).
    pub fn response_framing(&self, method: &str) -> io::Result<Framing> {
        let status = self.status();
        if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(Framing::None);
        }
        if self.chunked() {
            return Ok(Framing::Chunked);
        }
        Ok(self.length()?.map_or(Framing::UntilClose, Framing::Length))
    }
}

// As text, for assertion messages: the head as it was sent, a body's
// beginning.
impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(&self.raw), f)
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 256;
        let shown = &self.bytes[..self.bytes.len().min(SHOWN)];
        write!(
            f,
            "{} bytes {:?}{}",
            self.bytes.len(),
            String::from_utf8_lossy(shown),
            if self.bytes.len() > SHOWN { "…" } else { "" }
        )?;
        if !self.trailers.is_empty() {
            write!(f, ", trailers {:?}", self.trailers)?;
        }
        Ok(())
    }
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(usize),
    Chunked,
    /// The body ends when the sender closes the connection.
    UntilClose,
}

/// A body, decoded.
#[derive(Clone, Default)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// Trailer fields of a chunked body, in order.
    pub trailers: Vec<(String, String)>,
}

/// One end of an HTTP/1.1 connection, read a message at a time; bytes read
/// past the current message (a pipelined one) wait for the next call.
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    pub fn new(stream: TcpStream) -> io::Result<Wire> {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Wire {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<Wire> {
        Wire::new(TcpStream::connect_timeout(&addr, READ_TIMEOUT)?)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more into the buffer; false at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0; 64 << 10];
        let read = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..read]);
        Ok(read > 0)
    }

    /// Fills the buffer to at least `len` bytes.
    fn fill_to(&mut self, len: usize) -> io::Result<()> {
        while self.buf.len() < len {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    fn take(&mut self, len: usize) -> Vec<u8> {
        let rest = self.buf.split_off(len);
        std::mem::replace(&mut self.buf, rest)
    }

    /// The next head; `None` when the peer closed before sending any of it.
    pub fn head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Head::parse(self.take(end + 4)).map(Some);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("head too large"));
            }
            if !self.fill()? {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// One CRLF-terminated line of chunked framing, without the CRLF.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2);
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(invalid("chunk line too long"));
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The body after a head, as `framing` delimits it, decoded.
    pub fn body(&mut self, framing: Framing) -> io::Result<Body> {
        match framing {
            Framing::None => Ok(Body::default()),
            Framing::Length(len) if len > MAX_BODY => Err(invalid("body too large")),
            Framing::Length(len) => {
                self.fill_to(len)?;
                Ok(Body {
                    bytes: self.take(len),
                    trailers: Vec::new(),
                })
            }
            Framing::UntilClose => {
                while self.fill()? {
                    if self.buf.len() > MAX_BODY {
                        return Err(invalid("body too large"));
                    }
                }
                Ok(Body {
                    bytes: std::mem::take(&mut self.buf),
                    trailers: Vec::new(),
                })
            }
            Framing::Chunked => self.chunked(),
        }
    }

    fn chunked(&mut self) -> io::Result<Body> {
        let mut body = Body::default();
        loop {
            let line = self.line()?;
            // Chunk extensions (`;name=value`) carry nothing we keep.
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                break;
            }
            if body.bytes.len() + size > MAX_BODY {
                return Err(invalid("body too large"));
            }
            self.fill_to(size + 2)?;
            let chunk = self.take(size + 2);
            if !chunk.ends_with(b"\r\n") {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            body.bytes.extend_from_slice(&chunk[..size]);
        }
        loop {
            let line = self.line()?;
            if line.is_empty() {
                return Ok(body);
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("not a trailer line: {line:?}")))?;
            body.trailers
                .push((name.to_owned(), value.trim().to_owned()));
        }
    }

    /// Reads until the peer closes; returns what it sent until then.
    pub fn until_close(&mut self) -> io::Result<Vec<u8>> {
        self.body(Framing::UntilClose).map(|body| body.bytes)
    }
}

/// What the upstream does with one request.
pub enum Answer {
    /// Send these bytes, then wait for the next request on the connection.
    Reply(Vec<u8>),
    /// Send these bytes, then close the connection (whatever they say).
    ReplyAndClose(Vec<u8>),
    /// Close the connection without answering.
    Close,
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The connection it came on: 0 for the first accepted, and so on.
    pub connection: usize,
    /// Its place on that connection: 0 for the first request, and so on.
    pub on_connection: usize,
    pub head: Head,
    pub body: Body,
}

type Script = dyn Fn(&Recorded) -> Answer + Send + Sync;

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    accepted: usize,
    ended: usize,
}

struct Shared {
    log: Mutex<Log>,
    /// Clones of the open connections' streams, to shut them down on drop.
    streams: Mutex<HashMap<usize, TcpStream>>,
    stopping: AtomicBool,
    script: Box<Script>,
}

impl Shared {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panicking script must not hide what was recorded before it.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The upstream; stops when dropped.
pub struct ScriptedUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl ScriptedUpstream {
    /// Listens on 127.0.0.1 (a free port) and answers each request with
    /// what `script` returns for it.
    pub fn start(script: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the upstream binds");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared {
            log: Mutex::default(),
            streams: Mutex::default(),
            stopping: AtomicBool::new(false),
            script: Box::new(script),
        });
        let accepting = shared.clone();
        let acceptor = std::thread::spawn(move || accept(listener, accepting));
        ScriptedUpstream {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every complete request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log().requests.clone()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.log().accepted
    }

    /// Waits until every connection accepted so far has ended.
    pub fn wait_all_closed(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until_sync("the upstream's connections to end", timeout, || {
            let log = self.shared.log();
            log.ended == log.accepted
        })
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for stream in self.shared.streams.lock().expect("streams lock").values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wakes the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let connection = {
            let mut log = shared.log();
            if log.accepted - log.ended >= MAX_CONNECTIONS {
                continue;
            }
            log.accepted += 1;
            log.accepted - 1
        };
        if let Ok(clone) = stream.try_clone() {
            let mut streams = shared.streams.lock().expect("streams lock");
            streams.insert(connection, clone);
        }
        let serving = shared.clone();
        std::thread::spawn(move || {
            // A read error or timeout ends the connection, as a server's would.
            let _ = Wire::new(stream).and_then(|wire| serve(wire, connection, &serving));
            serving
                .streams
                .lock()
                .expect("streams lock")
                .remove(&connection);
            serving.log().ended += 1;
        });
    }
}

fn serve(mut wire: Wire, connection: usize, shared: &Shared) -> io::Result<()> {
    let result = exchanges(&mut wire, connection, shared);
    let _ = wire.stream().shutdown(Shutdown::Both);
    result
}

/// Reads, records and answers requests until the script or the peer ends
/// the connection.
fn exchanges(wire: &mut Wire, connection: usize, shared: &Shared) -> io::Result<()> {
    for on_connection in 0.. {
        let Some(head) = wire.head()? else {
            return Ok(());
        };
        let body = wire.body(head.request_framing()?)?;
        let recorded = Recorded {
            connection,
            on_connection,
            head,
            body,
        };
        // Recorded before it is answered: whoever sees the answer finds
        // the request in the log.
        shared.log().requests.push(recorded.clone());
        match (shared.script)(&recorded) {
            Answer::Reply(bytes) => wire.send(&bytes)?,
            Answer::ReplyAndClose(bytes) => return wire.send(&bytes),
            Answer::Close => return Ok(()),
        }
    }
    Ok(())
}
