//! The engine's UDP socket: datagrams in by the batch (`recvmmsg`, GRO, through quinn-udp),
//! and out by the batch across connections (`sendmmsg`: one system call for up to
//! `SEND_BATCH` datagrams to as many peers).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};

use bytes::BytesMut;
use quinn::udp::{EcnCodepoint, RecvMeta, UdpSocketState, BATCH_SIZE};

/// Datagrams handed to the kernel in one `sendmmsg`.
pub const SEND_BATCH: usize = 64;
/// Datagrams an outbox holds unsent at most.
const MAX_QUEUED: usize = 16_384;
/// Room per receive buffer: a GRO batch of full-size datagrams.
const RECV_BUF: usize = 64 * 1024;

/// Datagrams waiting to be sent: their bytes back to back, and where each goes.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    /// (destination, start, end) in `bytes`.
    queue: Vec<(SocketAddr, usize, usize)>,
    /// How many of `queue` were sent already (the rest wait for room in the socket).
    sent: usize,
}

impl Outbox {
    /// Queues a datagram; beyond `MAX_QUEUED` waiting (the socket full for long), it is
    /// dropped instead: a loss QUIC recovers from, not memory without bound.
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        if self.queue.len() - self.sent >= MAX_QUEUED {
            return;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.queue.push((to, start, self.bytes.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.sent == self.queue.len()
    }

    /// Datagrams waiting.
    pub fn unsent(&self) -> usize {
        self.queue.len() - self.sent
    }

    fn clear_if_done(&mut self) {
        if self.is_empty() {
            self.bytes.clear();
            self.queue.clear();
            self.sent = 0;
        }
    }
}

pub struct Socket {
    io: UdpSocket,
    state: UdpSocketState,
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl Socket {
    pub fn new(io: UdpSocket) -> io::Result<Socket> {
        io.set_nonblocking(true)?;
        let state = UdpSocketState::new((&io).into())?;
        let n = BATCH_SIZE.max(1);
        Ok(Socket {
            bufs: (0..n).map(|_| vec![0u8; RECV_BUF]).collect(),
            meta: vec![RecvMeta::default(); n],
            io,
            state,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.io.as_raw_fd()
    }

    /// Receives what has arrived (one batch), handing each datagram to `each`. Returns
    /// how many datagrams; 0 when nothing waits.
    pub fn recv(
        &mut self,
        mut each: impl FnMut(SocketAddr, Option<IpAddr>, Option<EcnCodepoint>, BytesMut),
    ) -> io::Result<usize> {
        let mut slices: Vec<IoSliceMut<'_>> =
            self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let got = match self
            .state
            .recv((&self.io).into(), &mut slices, &mut self.meta)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut count = 0;
        for (m, buf) in self.meta.iter().zip(self.bufs.iter()).take(got) {
            let stride = m.stride.max(1);
            let data = &buf[..m.len.min(buf.len())];
            for d in data.chunks(stride) {
                each(m.addr, m.dst_ip, m.ecn, BytesMut::from(d));
                count += 1;
            }
        }
        Ok(count)
    }

    /// Sends what `out` holds, in batches, until it is empty or the socket is full (the
    /// rest waits: call again when it is writable). Returns whether everything went.
    pub fn send(&self, out: &mut Outbox) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        while !out.is_empty() {
            let batch = &out.queue[out.sent..(out.sent + SEND_BATCH).min(out.queue.len())];
            let addrs: Vec<socket2::SockAddr> =
                batch.iter().map(|(to, _, _)| (*to).into()).collect();
            let mut iovs: Vec<libc::iovec> = batch
                .iter()
                .map(|(_, s, e)| libc::iovec {
                    iov_base: out.bytes[*s..].as_ptr() as *mut libc::c_void,
                    iov_len: e - s,
                })
                .collect();
            // SAFETY: zeroed mmsghdr is a valid empty header; every pointer set below points
            // into `addrs` or `iovs`, both alive across the call and not moved.
            let mut hdrs: Vec<libc::mmsghdr> = (0..batch.len())
                .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
                .collect();
            for (i, h) in hdrs.iter_mut().enumerate() {
                h.msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = addrs[i].len();
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `hdrs` holds `hdrs.len()` initialised headers (see above).
            let n = unsafe {
                libc::sendmmsg(
                    self.io.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    hdrs.len() as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(false),
                    io::ErrorKind::Interrupted => continue,
                    // Any other refusal is the first datagram's (too large, an address the
                    // kernel will not send to, such as a peer claiming port 0, a firewall):
                    // it is skipped, a loss QUIC recovers from, and the rest go on.
                    _ => {
                        tracing::debug!(to = %batch[0].0, "datagram not sent: {e}");
                        out.sent += 1;
                        continue;
                    }
                }
            }
            out.sent += n as usize;
        }
        out.clear_if_done();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many datagrams to several peers, queued then sent in batches: each peer gets its own,
    /// whole and in order.
    #[test]
    fn an_outbox_reaches_every_peer_whole_and_in_order() {
        let me = Socket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let peers: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut out = Outbox::default();
        for n in 0..(SEND_BATCH * 2 + 5) {
            let p = &peers[n % peers.len()];
            let d = vec![n as u8; 100 + n];
            out.push(p.local_addr().unwrap(), &d);
        }
        assert!(me.send(&mut out).unwrap());
        assert!(out.is_empty());
        for (k, p) in peers.iter().enumerate() {
            p.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            for n in (k..SEND_BATCH * 2 + 5).step_by(peers.len()) {
                let mut buf = [0u8; 2048];
                let (len, from) = p.recv_from(&mut buf).unwrap();
                assert_eq!(from, me.local_addr().unwrap());
                assert_eq!(&buf[..len], &vec![n as u8; 100 + n][..], "datagram {n}");
            }
        }
    }

    /// What arrives is handed over datagram by datagram, with its sender.
    #[test]
    fn received_datagrams_come_with_their_sender() {
        let mut me = Socket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        for n in 0..10u8 {
            peer.send_to(&[n; 50], me.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 10 && std::time::Instant::now() < deadline {
            me.recv(|from, _, _, d| got.push((from, d))).unwrap();
        }
        assert_eq!(got.len(), 10);
        for (n, (from, d)) in got.iter().enumerate() {
            assert_eq!(*from, peer.local_addr().unwrap());
            assert_eq!(&d[..], &[n as u8; 50][..]);
        }
    }
}
