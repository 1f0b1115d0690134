//! How agents open their sockets: a few hundred connects in flight at
//! once, each from a local port the harness picks itself, then TLS for
//! `wss://` backends.
//!
//! Left to the kernel, `connect()` searches the port range for a free
//! 4-tuple to the backend's one address and port, step by step past every
//! port the fleet already holds: the n-th agent's connect costs O(n), and
//! 18,000 agents took 5 s to connect where 10,000 took 1 s. Binding to a
//! port handed out in turn costs O(1); a port found taken is skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::wire::Stream;

/// Ports tried before leaving the choice to the kernel.
const TRIES: usize = 16;

pub struct Dialer {
    gate: Semaphore,
    /// The ephemeral range (`net.ipv4.ip_local_port_range`).
    low: u16,
    high: u16,
    next: AtomicU32,
    /// For `wss://` backends.
    tls: Option<TlsConnector>,
}

impl Dialer {
    /// `in_flight` connects at once; shard `i` of `n` starts its ports in
    /// the `i`-th `n`th of the range, so shards on one machine rarely meet;
    /// `tls` is needed for `wss://` backends.
    pub fn new(
        in_flight: usize,
        shard: (usize, usize),
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Dialer {
        let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
                Some((parts.next()??, parts.next()??))
            })
            .filter(|(low, high)| low < high)
            .unwrap_or((32768, 60999));
        let span = u32::from(high - low) + 1;
        // Somewhere in this shard's share of the range: a run that follows
        // another soon does not meet its ports, still in TIME_WAIT.
        let share = span as u64 / shard.1.max(1) as u64;
        let start = (share * shard.0 as u64 + rand::random_range(0..share.max(1))) as u32;
        Dialer {
            gate: Semaphore::new(in_flight),
            low,
            high,
            next: AtomicU32::new(start),
            tls: tls.map(TlsConnector::from),
        }
    }

    /// The stream to speak WebSocket over: TLS to `host` when `secure`.
    pub async fn secure(&self, tcp: TcpStream, host: &str, secure: bool) -> Result<Stream, String> {
        if !secure {
            return Ok(Either::Left(tcp));
        }
        let tls = self
            .tls
            .as_ref()
            .ok_or("wss:// needs a TLS configuration")?;
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| format!("tls: {host}: {e}"))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        Ok(Either::Right(Box::new(stream)))
    }

    /// Waits for a turn to connect; the connect and handshake hold it.
    pub async fn turn(&self) -> SemaphorePermit<'_> {
        self.gate.acquire().await.expect("never closed")
    }

    fn port(&self) -> u16 {
        let span = u32::from(self.high - self.low) + 1;
        self.low + (self.next.fetch_add(1, Ordering::Relaxed) % span) as u16
    }

    /// A TCP connection to `addr` from `source` (any address if None).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        source: Option<IpAddr>,
    ) -> Result<TcpStream, String> {
        let any = if addr.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let ip = source.unwrap_or(any);
        for _ in 0..TRIES {
            let socket = new_socket(addr)?;
            // Over TIME_WAIT leftovers of an earlier run; the connect
            // still refuses a 4-tuple that is in use.
            let _ = socket.set_reuseaddr(true);
            if socket.bind(SocketAddr::new(ip, self.port())).is_err() {
                continue;
            }
            match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => continue,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(format!("connect: {e}")),
            }
        }
        let socket = new_socket(addr)?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))
    }
}

fn new_socket(addr: SocketAddr) -> Result<TcpSocket, String> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_from_ports_it_picks_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dialer = Dialer::new(8, (0, 1), None);
        let mut ports = Vec::new();
        let mut held = Vec::new();
        for _ in 0..50 {
            let stream = dialer.connect(addr, None).await.unwrap();
            ports.push(stream.local_addr().unwrap().port());
            held.push(stream);
        }
        assert!(ports.iter().all(|p| (dialer.low..=dialer.high).contains(p)));
        // In turn: each port after the one before, but for ports found taken.
        let steps = ports
            .windows(2)
            .filter(|w| w[1] > w[0] && w[1] - w[0] <= TRIES as u16);
        assert!(steps.count() >= 45, "{ports:?}");
        // A second dialer meets ports the first still holds, and moves on.
        let again = Dialer::new(8, (0, 1), None);
        let stream = again.connect(addr, None).await.unwrap();
        assert!(!ports.contains(&stream.local_addr().unwrap().port()));
    }

    #[test]
    fn shards_start_apart() {
        for shard in 0..3 {
            let dialer = Dialer::new(1, (shard, 3), None);
            let third = (u32::from(dialer.high - dialer.low) + 1) / 3;
            let at = u32::from(dialer.port() - dialer.low);
            assert!(
                (third * shard as u32..third * (shard as u32 + 1)).contains(&at),
                "{at}"
            );
        }
    }
}
