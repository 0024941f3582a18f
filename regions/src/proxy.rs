//! A TCP proxy for one directed pair of endpoints: the `from` endpoint connects to the proxy
//! instead of to `to`, and every byte crosses the simulated link.
//!
//! On one proxied connection, bytes `from → to` follow the link `from → to` and the replies
//! follow `to → from`. What a link state does to a connection:
//! - latency and jitter delay each chunk read, keeping the bytes in order (as TCP does);
//! - a cut loses the bytes sent that way, like dropped packets; the connection stays open, so the
//!   sender sees silence and timeouts, not a quick refusal;
//! - when a cut starts or ends on either direction, the proxy closes every connection through
//!   it: an established stream is reset as a partition eventually resets it, and a stream that
//!   lost bytes never resumes with a hole in it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::link::{EndpointId, Links};

use crate::limits::{CHUNKS_IN_FLIGHT, CHUNK_BYTES, CONNECT_TIMEOUT};

/// A running proxy; dropping it closes the listener and every connection through it.
pub struct LinkProxy {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on `listen` (port 0 for any free port) and forwards to `target`.
    pub async fn start(
        listen: SocketAddr,
        from: EndpointId,
        to: EndpointId,
        target: SocketAddr,
        links: Arc<Links>,
    ) -> io::Result<LinkProxy> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, Route { from, to, target }, links));
        Ok(LinkProxy { local_addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
struct Route {
    from: EndpointId,
    to: EndpointId,
    target: SocketAddr,
}

async fn accept_loop(listener: TcpListener, route: Route, links: Arc<Links>) {
    // Connection tasks live in this set, so aborting the accept loop aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => {
                    connections.spawn(serve(inbound, route, links.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(inbound: TcpStream, route: Route, links: Arc<Links>) {
    let outbound = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(route.target)).await {
        Ok(Ok(stream)) => stream,
        // The target is down: close the inbound side, as a refused connection would.
        _ => return,
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let mut changes = links.subscribe();
    let cuts_now = |links: &Links| {
        (
            links.state(route.from, route.to).cut,
            links.state(route.to, route.from).cut,
        )
    };
    let cuts_at_start = cuts_now(&links);
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    let upstream = pump(inbound_read, outbound_write, route.from, route.to, links.clone());
    let downstream = pump(outbound_read, inbound_write, route.to, route.from, links.clone());
    let cut_changed = async {
        while changes.changed().await.is_ok() {
            if cuts_now(&links) != cuts_at_start {
                return;
            }
        }
        // The link table is gone; keep the connection until its streams end.
        std::future::pending::<()>().await;
    };
    // The first of these to finish ends the connection; dropping the halves closes both sockets.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = cut_changed => {}
    }
}

/// How much later a lost chunk arrives: TCP's minimum retransmission timeout (200 ms on Linux)
/// plus the round trip the loss is noticed over.
pub fn retransmission_timeout(latency: Duration) -> Duration {
    Duration::from_millis(200) + latency * 2
}

/// Moves bytes one way, delayed and possibly lost as the link `from → to` says.
async fn pump(
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    from: EndpointId,
    to: EndpointId,
    links: Arc<Links>,
) {
    let (queue, mut delivery) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut last_delivery = Instant::now();
        let mut link_free_at = Instant::now();
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let state = links.state(from, to);
            if state.cut {
                continue;
            }
            let jitter = state.jitter.mul_f64(rand::random::<f64>());
            let mut departs = Instant::now();
            if state.bandwidth_bytes_per_s > 0 {
                let sending = Duration::from_secs_f64(n as f64 / state.bandwidth_bytes_per_s as f64);
                departs = departs.max(link_free_at) + sending;
                link_free_at = departs;
            }
            let mut at = departs + state.latency + jitter;
            if state.loss_ppm > 0 && rand::random::<u32>() % 1_000_000 < state.loss_ppm {
                at += retransmission_timeout(state.latency);
            }
            // Never deliver before an earlier chunk: jitter must not reorder a byte stream.
            let at = at.max(last_delivery);
            last_delivery = at;
            if queue.send((at, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = delivery.recv().await {
            tokio::time::sleep_until(at).await;
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkState;
    use crate::partition::Cuts;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn proxy(links: &Arc<Links>) -> LinkProxy {
        let target = echo_server().await;
        LinkProxy::start("127.0.0.1:0".parse().expect("addr"), 1, 2, target, links.clone())
            .await
            .expect("proxy")
    }

    /// Sends `message` and waits up to `wait` for its echo.
    async fn round_trip(stream: &mut TcpStream, message: &[u8], wait: Duration) -> Option<Vec<u8>> {
        stream.write_all(message).await.ok()?;
        let mut got = vec![0u8; message.len()];
        match tokio::time::timeout(wait, stream.read_exact(&mut got)).await {
            Ok(Ok(_)) => Some(got),
            _ => None,
        }
    }

    async fn connect(proxy: &LinkProxy) -> TcpStream {
        TcpStream::connect(proxy.local_addr()).await.expect("connect to proxy")
    }

    #[tokio::test]
    async fn healthy_link_forwards_both_ways() {
        let links = Links::new();
        let proxy = proxy(&links).await;
        let mut stream = connect(&proxy).await;
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&mut stream, &big, Duration::from_secs(10)).await, Some(big));
    }

    #[tokio::test]
    async fn a_cut_resets_open_connections_and_blackholes_new_ones_until_healed() {
        let links = Links::new();
        let proxy = proxy(&links).await;
        let mut before = connect(&proxy).await;
        assert!(round_trip(&mut before, b"hello", Duration::from_secs(5))
            .await
            .is_some());

        links.apply_cuts(&Cuts::isolate(1, &[1, 2]));
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), before.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "open connection not closed: {closed:?}"
        );

        let mut during = connect(&proxy).await;
        assert_eq!(
            round_trip(&mut during, b"lost", Duration::from_millis(300)).await,
            None,
            "bytes crossed a cut link"
        );

        links.heal_cuts();
        let closed = tokio::time::timeout(Duration::from_secs(5), during.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a connection that lost bytes must not resume: {closed:?}"
        );
        let mut after = connect(&proxy).await;
        assert_eq!(
            round_trip(&mut after, b"back", Duration::from_secs(5)).await,
            Some(b"back".to_vec())
        );
    }

    #[tokio::test]
    async fn a_one_way_cut_loses_only_the_replies() {
        let links = Links::new();
        let target_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = target_listener.local_addr().expect("addr");
        let proxy = LinkProxy::start("127.0.0.1:0".parse().expect("addr"), 1, 2, target, links.clone())
            .await
            .expect("proxy");
        links.set(
            2,
            1,
            LinkState {
                cut: true,
                ..Default::default()
            },
        );
        let mut client = connect(&proxy).await;
        let (mut server, _) = target_listener.accept().await.expect("proxied connection");
        client.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.expect("request arrives");
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.expect("write");
        let reply = tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut got)).await;
        assert!(reply.is_err(), "a reply crossed the cut direction");
    }

    #[tokio::test]
    async fn latency_delays_every_round_trip_by_at_least_twice_the_link_latency() {
        let links = Links::new();
        let proxy = proxy(&links).await;
        links.set_delay(&[1, 2], Duration::from_millis(40), Duration::from_millis(10));
        let mut stream = connect(&proxy).await;
        for i in 0..5u8 {
            let started = std::time::Instant::now();
            let message = [i; 100];
            assert_eq!(
                round_trip(&mut stream, &message, Duration::from_secs(5)).await,
                Some(message.to_vec())
            );
            // A lower bound only: the proxy must hold bytes at least this long.
            assert!(
                started.elapsed() >= Duration::from_millis(80),
                "{:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn bandwidth_paces_a_transfer_and_loss_delays_it_by_a_retransmission() {
        let links = Links::new();
        let proxy = proxy(&links).await;
        // 100 KB/s one way: 50 KB cannot arrive in under 0.5 s (a lower bound only).
        links.set(
            1,
            2,
            LinkState {
                bandwidth_bytes_per_s: 100_000,
                ..Default::default()
            },
        );
        let mut stream = connect(&proxy).await;
        let payload = vec![7u8; 50_000];
        let started = std::time::Instant::now();
        assert_eq!(
            round_trip(&mut stream, &payload, Duration::from_secs(10)).await,
            Some(payload.clone())
        );
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );

        // Every chunk lost once: each round trip waits at least one retransmission timeout.
        links.set(
            1,
            2,
            LinkState {
                loss_ppm: 1_000_000,
                ..Default::default()
            },
        );
        let started = std::time::Instant::now();
        assert_eq!(
            round_trip(&mut stream, b"late", Duration::from_secs(5)).await,
            Some(b"late".to_vec()),
            "a lost chunk still arrives: TCP resends it"
        );
        assert!(
            started.elapsed() >= retransmission_timeout(Duration::ZERO),
            "{:?}",
            started.elapsed()
        );
    }
}
