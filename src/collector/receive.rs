//! UDP receive threads: large socket buffers, batched `recvmmsg`, and nothing else on
//! the thread. Datagrams are copied into per-worker batches, routed by exporter
//! address so each exporter's templates live in exactly one worker.

use std::hash::{Hash, Hasher};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Sender, TrySendError};
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};

/// Datagrams read per `recvmmsg` call.
const BATCH: usize = 64;
/// Largest datagram accepted; NetFlow/IPFIX over UDP stays far below this.
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams for one worker, stored back to back.
#[derive(Debug, Default)]
pub struct RecvBatch {
    pub data: Vec<u8>,
    pub items: Vec<(IpAddr, u32, u32)>,
    pub received_ms: i64,
}

impl RecvBatch {
    pub fn datagrams(&self) -> impl Iterator<Item = (IpAddr, &[u8])> {
        self.items.iter().map(|&(addr, off, len)| {
            (
                addr,
                self.data
                    .get(off as usize..(off + len) as usize)
                    .unwrap_or_default(),
            )
        })
    }
}

/// The way into one worker: its channel, and the bytes of datagrams queued in it, so
/// that the queue is bounded by memory and not only by batch count.
#[derive(Debug, Clone)]
pub struct WorkerQueue {
    pub tx: Sender<RecvBatch>,
    pub queued_bytes: Arc<AtomicUsize>,
}

/// Bytes of datagrams that may wait for one worker.
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

/// Counters the receive threads share with the rest of the collector.
#[derive(Debug, Default)]
pub struct ReceiveCounters {
    pub datagrams: AtomicU64,
    pub queue_drops: AtomicU64,
}

/// Bind a UDP socket with a large receive buffer (forced past `rmem_max` when we are
/// root). IPv6 sockets are v6-only so `0.0.0.0:P` and `[::]:P` can both be bound.
pub fn bind(addr: SocketAddr, receive_buffer: usize) -> anyhow::Result<(UdpSocket, usize)> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &receive_buffer,
    )
    .is_err()
    {
        let _ = socket.set_recv_buffer_size(receive_buffer);
    }
    let effective = socket.recv_buffer_size().unwrap_or(0);
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    Ok((socket.into(), effective))
}

/// Whether a bind error means the address family is missing (IPv6 disabled).
pub fn is_unsupported(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|code| code == nix::libc::EAFNOSUPPORT || code == nix::libc::EADDRNOTAVAIL)
    })
}

fn worker_for(addr: &IpAddr, workers: usize) -> usize {
    let mut h = rustc_hash::FxHasher::default();
    addr.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

fn to_ip(s: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    s.as_sockaddr_in6().map(|v6| {
        let ip = v6.ip();
        ip.to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(ip))
    })
}

/// Receive until `stop` is set, then read what is still queued in the socket and return.
pub fn receive_loop(
    socket: UdpSocket,
    workers: Vec<WorkerQueue>,
    stop: Arc<AtomicBool>,
    counters: Arc<ReceiveCounters>,
) -> anyhow::Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let fd = socket.as_raw_fd();
    let mut buffers = vec![vec![0u8; MAX_DATAGRAM]; BATCH];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(Option<IpAddr>, usize)> = Vec::with_capacity(BATCH);
    let mut draining = false;
    loop {
        if !draining && stop.load(Ordering::Relaxed) {
            draining = true;
        }
        got.clear();
        let flags = if draining {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::MSG_WAITFORONE
        };
        {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            match recvmmsg(fd, &mut headers, slices.iter_mut(), flags, None) {
                Ok(results) => {
                    for m in results {
                        got.push((m.address.as_ref().and_then(to_ip), m.bytes));
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => {
                    if draining {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => {
                    // Said at once: this socket receives nothing more until a restart.
                    tracing::error!("receive thread stops: {e}");
                    return Err(e).context("receiving datagrams");
                }
            }
        }
        if got.is_empty() {
            if draining {
                return Ok(());
            }
            continue;
        }
        counters
            .datagrams
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut per_worker: Vec<RecvBatch> =
            (0..workers.len()).map(|_| RecvBatch::default()).collect();
        for (i, (addr, len)) in got.iter().enumerate() {
            let Some(addr) = addr else { continue };
            let w = worker_for(addr, workers.len());
            let b = &mut per_worker[w];
            let off = b.data.len() as u32;
            b.data
                .extend_from_slice(&buffers[i][..(*len).min(MAX_DATAGRAM)]);
            b.items.push((*addr, off, *len as u32));
        }
        for (w, mut b) in per_worker.into_iter().enumerate() {
            if b.items.is_empty() {
                continue;
            }
            b.received_ms = now_ms;
            let n = b.items.len() as u64;
            let queue = &workers[w];
            let size = b.data.len();
            // While draining at shutdown, wait for the worker rather than drop.
            let sent = if draining {
                queue.tx.send(b).is_ok()
            } else if queue.queued_bytes.load(Ordering::Relaxed) + size > MAX_QUEUED_BYTES {
                false
            } else {
                match queue.tx.try_send(b) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
                }
            };
            if sent {
                queue.queued_bytes.fetch_add(size, Ordering::Relaxed);
            }
            if !sent {
                counters.queue_drops.fetch_add(n, Ordering::Relaxed);
            }
        }
        // A short read means datagrams trickle in one by one; waking up for each costs
        // more than handling it. Let a few accumulate in the (large) socket buffer:
        // fewer wake-ups here and in the workers, bigger batches, same data.
        if !draining && got.len() < BATCH / 4 {
            std::thread::sleep(COALESCE);
        }
    }
}

/// How long the receive thread lets datagrams accumulate after a short read. At 100 000
/// datagrams/s that is 50 datagrams, far below what the socket buffer holds.
const COALESCE: Duration = Duration::from_micros(500);

/// Kernel receive-queue drops for UDP sockets bound to `ports`, from /proc/net/udp{,6}.
pub fn kernel_drops(ports: &[u16]) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = cols
                .get(1)
                .and_then(|l| l.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port.is_some_and(|p| ports.contains(&p)) {
                total += cols.last().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}
