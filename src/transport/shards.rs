//! One QUIC port served by several threads ("shards"): each shard owns a UDP socket bound
//! to the same address (`SO_REUSEPORT`) and the connections that live on it. The kernel
//! steers each datagram to its shard by the connection ID it carries: every connection ID a
//! shard issues names it (its first byte, modulo the shard count), and a classic BPF
//! program attached to the port's socket group reads that byte. A client that moves (NAT
//! rebinding, a new network) keeps its connection ID, so its packets keep reaching the
//! thread that holds its connection, where a hash of the addresses would send them to a
//! stranger (which answers with a stateless reset: the connection dies).
//!
//! A client's first packets carry a connection ID it made up: the program sends them to
//! the shard its first byte names, the same shard for all of them, which then issues its own.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};

/// Length of the connection IDs a node issues (quinn's default).
const CID_LEN: usize = 8;

/// Issues connection IDs that name shard `shard` of `shards`: random, except that the first
/// byte modulo `shards` is `shard`.
#[derive(Debug, Clone, Copy)]
pub struct ShardCids {
    pub shard: u8,
    pub shards: u8,
}

impl ConnectionIdGenerator for ShardCids {
    fn generate_cid(&mut self) -> ConnectionId {
        use rand::RngCore;
        let mut b = [0u8; CID_LEN];
        rand::thread_rng().fill_bytes(&mut b);
        let n = self.shards.max(1) as u16;
        // A random multiple of `shards`, plus the shard, below 256.
        let slots = (256 - self.shard as u16).div_ceil(n);
        b[0] = (self.shard as u16 + n * (b[0] as u16 % slots)) as u8;
        ConnectionId::new(&b)
    }
    fn cid_len(&self) -> usize {
        CID_LEN
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The classic BPF program that steers a datagram (seen from its UDP payload) to the shard
/// its destination connection ID names: byte 6 of a long-header packet (after the flags,
/// version and length), byte 1 of a short-header one, modulo `shards`. A datagram too short
/// to read returns 0 (shard 0, which drops it as garbage).
#[cfg(target_os = "linux")]
fn steering_program(shards: u8) -> Vec<libc::sock_filter> {
    const LDB_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const MOD: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
    const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LDB_ABS, 0, 0, 0),         // A = flags
        op(JSET, 0, 2, 0x80),         // long header? else skip to the short one
        op(LDB_ABS, 0, 0, 6),         // A = first byte of the destination CID (long)
        op(JA, 0, 0, 1),              // to the modulo
        op(LDB_ABS, 0, 0, 1),         // A = first byte of the destination CID (short)
        op(MOD, 0, 0, shards as u32), // A %= shards
        op(RET_A, 0, 0, 0),           // the socket at that index in the group
    ]
}

#[cfg(target_os = "linux")]
fn attach_steering(s: &UdpSocket, shards: u8) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut prog = steering_program(shards);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, alive across the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Turns receive offload (GRO) off on a shard's socket: with several threads on the port,
/// merged datagrams would all be steered by the first one's connection ID (a client's
/// datagrams for connections on different threads could all reach the first one's).
pub fn unmerged(fd: std::os::fd::RawFd) {
    let off: libc::c_int = 0;
    // SAFETY: `fd` is an open UDP socket the caller owns; the option is an int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            &off as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `shards` UDP sockets on `addr` (port 0: one port picked for all), in one `SO_REUSEPORT`
/// group of their own, steered by connection ID. Refuses a port whose group another
/// socket (another process) has joined: it would take a share of this node's packets.
pub fn bind(addr: SocketAddr, shards: u8) -> std::io::Result<Vec<UdpSocket>> {
    if shards <= 1 {
        return Ok(vec![super::endpoint::udp_socket(addr, false)?]);
    }
    #[cfg(not(target_os = "linux"))]
    {
        return Ok(vec![super::endpoint::udp_socket(addr, false)?]);
    }
    #[cfg(target_os = "linux")]
    {
        let picked = addr.port() == 0;
        let mut last = None;
        // Port 0: the kernel may hand out a port that another group shares (it counts
        // shared ports as free); such a pick is seen below and tried again.
        // A port given: whoever holds it with SO_REUSEPORT is found before we join their
        // group (joining, even for a moment, would take a share of their packets).
        if !picked && sharers(addr)? > 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another program's sockets share {addr} (SO_REUSEPORT)"),
            ));
        }
        for _ in 0..if picked { 20 } else { 1 } {
            let first = super::endpoint::udp_socket(addr, true)?;
            let port = first.local_addr()?;
            let mut socks = vec![first];
            for _ in 1..shards {
                socks.push(super::endpoint::udp_socket(port, true)?);
            }
            // The program goes on only once the group is known to be ours alone: on a
            // stranger's group it would replace their steering.
            match strangers(&socks, port) {
                Ok(0) => {
                    attach_steering(&socks[0], shards)?;
                    return Ok(socks);
                }
                Ok(n) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("{n} other socket(s) share {port} (SO_REUSEPORT)"),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
    }
}

/// `addr`'s IP as /proc/net/udp{,6} writes it (each 32-bit word in host order, in hex).
#[cfg(target_os = "linux")]
fn proc_hex(addr: &SocketAddr) -> String {
    let octets: Vec<u8> = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

/// Sockets bound to exactly `addr` now (before we bind it).
#[cfg(target_os = "linux")]
fn sharers(addr: SocketAddr) -> std::io::Result<usize> {
    let table = if addr.is_ipv6() {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    };
    let Ok(text) = std::fs::read_to_string(table) else {
        return Ok(0);
    };
    let want = format!("{}:{:04X}", proc_hex(&addr), addr.port());
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .count())
}

/// How many sockets not in `ours` are bound to exactly `addr` (from /proc/net/udp{,6} of this
/// network namespace).
#[cfg(target_os = "linux")]
fn strangers(ours: &[UdpSocket], addr: SocketAddr) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut inodes = Vec::new();
    for s in ours {
        // SAFETY: fstat on a descriptor we own, into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(s.as_raw_fd(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        inodes.push(st.st_ino.to_string());
    }
    let table = if addr.is_ipv6() {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    };
    // Without the table (a restricted /proc) there is nothing to check against.
    let Ok(text) = std::fs::read_to_string(table) else {
        tracing::debug!("{table} unreadable: not checking who else shares the port");
        return Ok(0);
    };
    let port = format!(":{:04X}", addr.port());
    // Lines: `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`.
    let rows: Vec<(&str, &str)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((*f.get(1)?, *f.get(9)?))
        })
        .filter(|(local, _)| local.ends_with(&port))
        .collect();
    // Our address as the table writes it: read from one of our own rows.
    let Some(local) = rows
        .iter()
        .find(|(_, ino)| inodes.iter().any(|i| i == ino))
        .map(|(l, _)| *l)
    else {
        return Ok(0);
    };
    Ok(rows
        .iter()
        .filter(|(l, ino)| *l == local && !inodes.iter().any(|i| i == ino))
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shard a connection ID's first byte names (what the steering program computes).
    fn shard_of(first: u8, shards: u8) -> u8 {
        first % shards
    }

    #[test]
    fn every_cid_names_its_shard() {
        for shards in [1u8, 2, 3, 4, 7, 64, 255] {
            for shard in 0..shards {
                let mut g = ShardCids { shard, shards };
                for _ in 0..50 {
                    let cid = g.generate_cid();
                    assert_eq!(cid.len(), CID_LEN);
                    assert_eq!(shard_of(cid[0], shards), shard);
                }
            }
        }
    }

    #[test]
    fn cids_are_not_all_alike() {
        let mut g = ShardCids {
            shard: 1,
            shards: 4,
        };
        let firsts: std::collections::HashSet<u8> = (0..200).map(|_| g.generate_cid()[0]).collect();
        // 64 possible first bytes; 200 draws see many of them.
        assert!(firsts.len() > 20, "{firsts:?}");
    }

    /// The program, run by the kernel: datagrams to each shard's connection IDs arrive at
    /// that shard's socket, whatever port they come from (a client that moved).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_steers_datagrams_by_connection_id() {
        let shards = 4u8;
        let socks = bind("127.0.0.1:0".parse().unwrap(), shards).unwrap();
        let to = socks[0].local_addr().unwrap();
        for s in &socks {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        for from_port in 0..6 {
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            for want in 0..shards {
                let cid = ShardCids {
                    shard: want,
                    shards,
                }
                .generate_cid();
                // A short header, then a long one (flags, version, DCID length, DCID).
                let mut short = vec![0x40];
                short.extend_from_slice(&cid);
                short.push(from_port);
                let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
                long.extend_from_slice(&cid);
                long.push(from_port);
                for d in [short, long] {
                    client.send_to(&d, to).unwrap();
                    let mut buf = [0u8; 64];
                    let (n, _) = socks[want as usize].recv_from(&mut buf).unwrap();
                    assert_eq!(&buf[..n], &d[..], "shard {want}");
                }
            }
        }
    }

    /// Another program's group on the port: refused, before joining it, and their
    /// steering is left as it was (ours, with a different count, would break theirs).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_port_another_group_holds_is_refused_and_left_alone() {
        let theirs = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let at = theirs[0].local_addr().unwrap();
        assert_eq!(sharers(at).unwrap(), 2);
        let e = bind(at, 3).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        // Their datagrams still reach their sockets by their own program (modulo 2).
        for s in &theirs {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for want in [0u8, 1, 0, 1, 1, 0] {
            let cid = ShardCids {
                shard: want,
                shards: 2,
            }
            .generate_cid();
            let mut d = vec![0x40];
            d.extend_from_slice(&cid);
            client.send_to(&d, at).unwrap();
            let mut buf = [0u8; 64];
            let (n, _) = theirs[want as usize].recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &d[..]);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_addresses_are_written_as_the_kernel_does() {
        assert_eq!(proc_hex(&"127.0.0.1:1".parse().unwrap()), "0100007F");
        assert_eq!(
            proc_hex(&"[::1]:1".parse().unwrap()),
            "00000000000000000000000001000000"
        );
    }
}
