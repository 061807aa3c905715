//! A connection's bytes after a request head: what was read past the head first, then the
//! socket, on readiness. A source's body in its three framings (the rest of the connection,
//! a length, chunked), each a `ChunkSource` for the ingest.

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::ingress::icecast::ChunkSource;

/// Bytes read at a time for a body.
const BODY_STEP: usize = 16 * 1024;
/// A chunk-size line, or the trailer section of a chunked body, at most.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// An HTTP connection: its socket and what has been read from it but not used yet.
pub struct Conn {
    pub tcp: TcpStream,
    pub buf: BytesMut,
}

impl Conn {
    /// Reads more into `buf`; false at the connection's end.
    pub async fn fill(&mut self) -> Result<bool> {
        loop {
            self.tcp.readable().await?;
            self.buf.reserve(BODY_STEP);
            match self.tcp.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Up to `max` bytes of what is there (reading if nothing is), None at the end.
    async fn take(&mut self, max: usize) -> Result<Option<Bytes>> {
        if self.buf.is_empty() && !self.fill().await? {
            return Ok(None);
        }
        let n = self.buf.len().min(max);
        Ok(Some(self.buf.split_to(n).freeze()))
    }

    /// Reads and drops a body of `n` bytes (a request that need not have one), at most
    /// `limit`: false if it is longer (the connection is then not kept).
    pub async fn discard(&mut self, mut n: u64, limit: u64) -> Result<bool> {
        if n > limit {
            return Ok(false);
        }
        while n > 0 {
            match self.take(n.min(usize::MAX as u64) as usize).await? {
                Some(b) => n -= b.len() as u64,
                None => return Err(Error::closed("the client left mid-body")),
            }
        }
        Ok(true)
    }
}

/// A body that is the rest of the connection (Icecast's SOURCE, ffmpeg's PUT).
pub struct ToEnd<'a>(pub &'a mut Conn);

impl ChunkSource for ToEnd<'_> {
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        self.0.take(usize::MAX).await
    }
}

/// A body of a given length.
pub struct Sized<'a> {
    pub conn: &'a mut Conn,
    pub left: u64,
}

impl ChunkSource for Sized<'_> {
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        if self.left == 0 {
            return Ok(None);
        }
        let max = self.left.min(usize::MAX as u64) as usize;
        match self.conn.take(max).await? {
            Some(b) => {
                self.left -= b.len() as u64;
                Ok(Some(b))
            }
            None => Err(Error::closed("the source's body ended short of its length")),
        }
    }
}

/// A chunked body (RFC 9112 §7.1): its data as it comes, whatever the chunks' sizes;
/// extensions and trailers are read past.
pub struct Chunked<'a> {
    conn: &'a mut Conn,
    state: State,
}

enum State {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the chunk's data are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section (after the last chunk).
    Trailers,
    Done,
}

impl<'a> Chunked<'a> {
    pub fn new(conn: &'a mut Conn) -> Chunked<'a> {
        Chunked {
            conn,
            state: State::Size,
        }
    }

    /// Waits until `buf` holds a whole line (bounded); its length with the line end.
    async fn line(&mut self) -> Result<usize> {
        loop {
            if let Some(i) = self.conn.buf.iter().position(|&b| b == b'\n') {
                return Ok(i + 1);
            }
            if self.conn.buf.len() > MAX_CHUNK_LINE {
                return Err(Error::protocol("chunked body: a line over 4 KiB"));
            }
            if !self.conn.fill().await? {
                return Err(Error::closed("the source's chunked body ended mid-chunk"));
            }
        }
    }
}

impl ChunkSource for Chunked<'_> {
    async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Size => {
                    let len = self.line().await?;
                    let size = match httparse::parse_chunk_size(&self.conn.buf[..len]) {
                        Ok(httparse::Status::Complete((_, size))) if size < 1 << 62 => size,
                        _ => return Err(Error::protocol("chunked body: bad chunk size")),
                    };
                    self.conn.buf.advance(len);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    let max = left.min(usize::MAX as u64) as usize;
                    let Some(b) = self.conn.take(max).await? else {
                        return Err(Error::closed("the source's chunked body ended mid-chunk"));
                    };
                    let left = left - b.len() as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Some(b));
                }
                State::DataEnd => {
                    let len = self.line().await?;
                    if !matches!(&self.conn.buf[..len], b"\r\n" | b"\n") {
                        return Err(Error::protocol("chunked body: no line end after a chunk"));
                    }
                    self.conn.buf.advance(len);
                    self.state = State::Size;
                }
                State::Trailers => {
                    // Trailer fields, each a line, until a blank one (bounded in all).
                    let mut seen = 0;
                    loop {
                        let len = self.line().await?;
                        let blank = matches!(&self.conn.buf[..len], b"\r\n" | b"\n");
                        self.conn.buf.advance(len);
                        seen += len;
                        if blank {
                            break;
                        }
                        if seen > MAX_CHUNK_LINE {
                            return Err(Error::protocol("chunked body: trailers over 4 KiB"));
                        }
                    }
                    self.state = State::Done;
                }
            }
        }
    }
}
