//! Finding the end of a chunked body (RFC 9112 section 7.1) while its bytes
//! pass through unchanged: the relay forwards the chunked framing as it
//! came, and only needs to know where the body ends, how many data bytes it
//! carried, and that the framing is sound.

/// Longest chunk-size line (size and extensions) accepted.
const MAX_LINE: usize = 4096;
/// The limits of hyper's decoder, the fallback path's, which a body passed
/// on as it came must not exceed: bytes of a trailer section (final CRLF
/// included), trailer fields, and extension bytes in all of a body.
const MAX_TRAILERS: usize = 16 * 1024 - 1;
const MAX_TRAILER_FIELDS: usize = 100;
const MAX_EXTENSIONS: u64 = 16 * 1024 - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the hex digits of a chunk size; `true` once there is one.
    Size(bool),
    /// Whitespace after the size: only more of it, `;` or CR may follow.
    SizeWs,
    /// In extensions, up to CR.
    Extension,
    /// Expecting the LF ending a size line.
    SizeLf,
    /// In chunk data, this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer field's name, then its value: passed on as they came,
    /// so held to what a field line may hold (RFC 9112 section 5).
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Bad chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked framing")]
pub struct ChunkError;

/// Follows a chunked body through any number of buffers.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    /// Bytes of the current size line, or of the trailers so far.
    line: usize,
    /// Trailer fields so far.
    fields: usize,
    /// Extension bytes so far, in all chunks.
    extensions: u64,
    /// Data bytes seen so far.
    pub data: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size(false),
            size: 0,
            line: 0,
            fields: 0,
            extensions: 0,
            data: 0,
        }
    }
}

impl Chunked {
    /// Whether the last chunk and the trailers have been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads framing from `bytes`, which follow what earlier calls saw, and
    /// returns how many of them belong to the body: all of them, or fewer
    /// when the body ends inside them.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < bytes.len() {
            if let State::Data(left) = self.state {
                // Data is skipped over in one step.
                let n = left.min((bytes.len() - at) as u64);
                at += n as usize;
                self.data += n;
                self.state = if n == left {
                    State::DataCr
                } else {
                    State::Data(left - n)
                };
                continue;
            }
            let byte = bytes[at];
            at += 1;
            self.state = self.step(byte)?;
            if self.state == State::Done {
                return Ok(at);
            }
        }
        Ok(at)
    }

    fn step(&mut self, byte: u8) -> Result<State, ChunkError> {
        use State::*;
        Ok(match self.state {
            Size(seen) => {
                self.line += 1;
                match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                        // 16 hex digits fill a u64; more is an attack.
                        if self.size >> 60 != 0 {
                            return Err(ChunkError);
                        }
                        self.size = self.size * 16 + digit;
                        Size(true)
                    }
                    b';' if seen => Extension,
                    b' ' | b'\t' if seen => SizeWs,
                    b'\r' if seen => SizeLf,
                    _ => return Err(ChunkError),
                }
            }
            SizeWs => {
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err(ChunkError);
                }
                match byte {
                    b' ' | b'\t' => SizeWs,
                    b';' => Extension,
                    b'\r' => SizeLf,
                    _ => return Err(ChunkError),
                }
            }
            Extension => {
                self.line += 1;
                if byte != b'\r' {
                    self.extensions += 1;
                }
                if self.line > MAX_LINE || self.extensions > MAX_EXTENSIONS {
                    return Err(ChunkError);
                }
                match byte {
                    b'\r' => SizeLf,
                    b'\n' => return Err(ChunkError),
                    // Visible characters, space and tab.
                    b'\t' | b' '..=b'~' | 0x80..=0xff => Extension,
                    _ => return Err(ChunkError),
                }
            }
            SizeLf => {
                if byte != b'\n' {
                    return Err(ChunkError);
                }
                let size = std::mem::take(&mut self.size);
                self.line = 0;
                if size == 0 { TrailerStart } else { Data(size) }
            }
            Data(_) => unreachable!("data is skipped in scan"),
            DataCr if byte == b'\r' => DataLf,
            DataLf if byte == b'\n' => Size(false),
            DataCr | DataLf => return Err(ChunkError),
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf => {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(ChunkError);
                }
                match (self.state, byte) {
                    (TrailerStart, b'\r') => EndLf,
                    // No obs-fold, no empty name, no control bytes.
                    (TrailerStart | TrailerName, _) if is_token(byte) => TrailerName,
                    (TrailerName, b':') => TrailerValue,
                    (TrailerValue, b'\r') => TrailerLf,
                    (TrailerValue, b'\t' | b' '..=b'~' | 0x80..=0xff) => TrailerValue,
                    (TrailerLf, b'\n') => {
                        self.fields += 1;
                        if self.fields > MAX_TRAILER_FIELDS {
                            return Err(ChunkError);
                        }
                        TrailerStart
                    }
                    (EndLf, b'\n') => Done,
                    _ => return Err(ChunkError),
                }
            }
            Done => Done,
        })
    }
}

/// A byte of a field name (`tchar`, RFC 9110 section 5.6.2).
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` split at every possible point, and byte by byte.
    fn scan_all(body: &[u8]) -> Result<(usize, u64), ChunkError> {
        let whole = {
            let mut c = Chunked::default();
            let n = c.scan(body)?;
            assert!(c.done() || n == body.len());
            (c.done().then_some(n), c.data)
        };
        for split in 0..=body.len() {
            let mut c = Chunked::default();
            let first = c.scan(&body[..split])?;
            let n = if c.done() {
                first
            } else {
                first + c.scan(&body[split..])?
            };
            assert_eq!((c.done().then_some(n), c.data), whole, "split at {split}");
        }
        let mut c = Chunked::default();
        let mut n = 0;
        for byte in body {
            if c.done() {
                break;
            }
            n += c.scan(std::slice::from_ref(byte))?;
        }
        assert_eq!((c.done().then_some(n), c.data), whole, "byte by byte");
        Ok((whole.0.unwrap_or(usize::MAX), whole.1))
    }

    #[test]
    fn bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n1 \t;ext=\"x y\"\r\n!\r\n0 \r\n\r\nNEXT";
        assert_eq!(scan_all(body), Ok((body.len() - 4, 6)));
        let with_trailers = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other:\t2 \xe9\r\nX-Empty:\r\n\r\n";
        assert_eq!(scan_all(with_trailers), Ok((with_trailers.len(), 3)));
        let upper = b"A\r\n0123456789\r\n00\r\n\r\n";
        assert_eq!(scan_all(upper), Ok((upper.len(), 10)));
        let empty = b"0\r\n\r\n";
        assert_eq!(scan_all(empty), Ok((empty.len(), 0)));
    }

    #[test]
    fn an_unfinished_body_takes_everything() {
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"10\r\nabc"), Ok(7));
        assert!(!c.done());
        assert_eq!(c.data, 3);
    }

    #[test]
    fn bad_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
            b"11111111111111111\r\n",
            b";ext\r\n",
            b"1;a\x01\r\nx\r\n",
            // Whitespace after a size is not an extension: "0 1" is not
            // the last chunk to hyper (nor to a Service that reads "01").
            b"0 1\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            // Trailers that are not field lines: hyper refuses them, and
            // here they would reach the Service as they came.
            b"0\r\nX-T: a\0b\r\n\r\n",
            b"0\r\nX-T: a\x7f\r\n\r\n",
            b"0\r\nnot a field\r\n\r\n",
            b"0\r\nX-T: a\r\n b\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nX T: v\r\n\r\n",
            b"0\r\nX-T: a\rb\r\n\r\n",
        ] {
            assert_eq!(scan_all(bad).map(|_| ()), Err(ChunkError), "{bad:?}");
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE));
        assert_eq!(Chunked::default().scan(&long), Err(ChunkError));
    }

    /// Bodies within hyper's limits pass; one byte, field or extension
    /// more than hyper takes does not.
    #[test]
    fn hypers_limits_hold() {
        let trailers = |fields: usize, bytes: usize| {
            let mut body = b"0\r\n".to_vec();
            for i in 0..fields {
                body.extend(format!("X-{i}: v\r\n").bytes());
            }
            let fill = bytes.saturating_sub(body.len() - 3 + 2 + 5);
            body.extend(format!("X: {}\r\n\r\n", "v".repeat(fill)).bytes());
            body
        };
        assert!(scan_all(&trailers(99, 0)).is_ok());
        assert_eq!(scan_all(&trailers(100, 0)), Err(ChunkError), "101 fields");
        // The trailer section, final CRLF included, up to 16 KiB - 1.
        assert_eq!(trailers(0, MAX_TRAILERS).len() - 3, MAX_TRAILERS);
        let whole = |body: &[u8]| {
            let mut c = Chunked::default();
            c.scan(body).map(|n| (n, c.done()))
        };
        let body = trailers(0, MAX_TRAILERS);
        assert_eq!(whole(&body), Ok((body.len(), true)));
        assert_eq!(whole(&trailers(0, MAX_TRAILERS + 1)), Err(ChunkError));
        let extensions = |total: usize| {
            let mut body = Vec::new();
            for _ in 0..total / 1000 {
                body.extend(format!("1;{}\r\nx\r\n", "e".repeat(1000)).bytes());
            }
            body.extend(format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(total % 1000)).bytes());
            body
        };
        let body = extensions(MAX_EXTENSIONS as usize);
        assert_eq!(whole(&body), Ok((body.len(), true)));
        assert_eq!(
            whole(&extensions(MAX_EXTENSIONS as usize + 1)),
            Err(ChunkError)
        );
    }

    #[test]
    fn the_largest_size_fits() {
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"fffffffffffffff\r\n"), Ok(17));
        assert_eq!(c.state, State::Data(0xfff_ffff_ffff_ffff));
    }
}
