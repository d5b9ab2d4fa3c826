//! What a PostgreSQL call sends: a TCP relay between the backend and the server that
//! reads the protocol messages the client sends and counts them, so the suite can say
//! how many statements and round trips a call costs.
//!
//! A round trip is a `Sync` or a simple `Query` (the client then waits for the server's
//! `ReadyForQuery`); a statement is an `Execute` or a simple `Query`. Only the counting
//! pass goes through the relay; the timed figures never do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::Result;

/// The client's messages and bytes seen so far, over every relayed connection.
#[derive(Debug, Default)]
pub struct Counters {
    syncs: AtomicU64,
    queries: AtomicU64,
    executes: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    syncs: u64,
    queries: u64,
    executes: u64,
    to_server: u64,
    to_client: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        Counts {
            syncs: get(&self.syncs),
            queries: get(&self.queries),
            executes: get(&self.executes),
            to_server: get(&self.to_server),
            to_client: get(&self.to_client),
        }
    }
}

/// What the client sent and received per call, between two snapshots.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Wire {
    /// Calls counted.
    pub calls: usize,
    /// Statements executed (`Execute` and simple `Query` messages) per call.
    pub statements_per_call: f64,
    /// Round trips (`Sync` and simple `Query` messages) per call.
    pub round_trips_per_call: f64,
    /// Bytes the client sent per call.
    pub bytes_to_server_per_call: f64,
    /// Bytes the server sent per call.
    pub bytes_to_client_per_call: f64,
}

impl Wire {
    pub fn between(before: Counts, after: Counts, calls: usize) -> Wire {
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / calls.max(1) as f64;
        Wire {
            calls,
            statements_per_call: per(
                after.executes + after.queries,
                before.executes + before.queries,
            ),
            round_trips_per_call: per(after.syncs + after.queries, before.syncs + before.queries),
            bytes_to_server_per_call: per(after.to_server, before.to_server),
            bytes_to_client_per_call: per(after.to_client, before.to_client),
        }
    }
}

/// The client's side of the protocol, read as it passes: the untyped start-up messages
/// (an `SSLRequest` or `GSSENCRequest` may come first), then typed messages.
struct Reader {
    counters: Arc<Counters>,
    started: bool,
    /// The message's header read so far (type byte, when typed, and length).
    header: Vec<u8>,
    /// Bytes of the current message's body still to pass.
    skip: usize,
}

/// The codes of the untyped requests after which another start-up message follows.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

impl Reader {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let header_len = if self.started { 5 } else { 8 };
            let n = (header_len - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < header_len {
                continue;
            }
            let header = std::mem::take(&mut self.header);
            if self.started {
                let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                self.skip = (length as usize).saturating_sub(4);
                let counter = match header[0] {
                    b'S' => Some(&self.counters.syncs),
                    b'Q' => Some(&self.counters.queries),
                    b'E' => Some(&self.counters.executes),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            } else {
                let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let code = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                self.skip = (length as usize).saturating_sub(8);
                self.started = code != SSL_REQUEST && code != GSSENC_REQUEST;
            }
        }
    }
}

/// A relay on a local port to the server at `server` (`host:port`), counting into the
/// returned counters; it runs until the process ends.
pub async fn relay(server: String) -> Result<(u16, Arc<Counters>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let counters = Arc::new(Counters::default());
    let shared = counters.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (server, counters) = (server.clone(), shared.clone());
            tokio::spawn(async move {
                if let Ok(upstream) = TcpStream::connect(&server).await {
                    pass(client, upstream, counters).await;
                }
            });
        }
    });
    Ok((port, counters))
}

/// Passes bytes both ways until either side closes.
async fn pass(client: TcpStream, server: TcpStream, counters: Arc<Counters>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up_counters = counters.clone();
    let up = async move {
        let mut reader = Reader {
            counters: up_counters.clone(),
            started: false,
            header: Vec::new(),
            skip: 0,
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            reader.feed(&buf[..n]);
            up_counters.to_server.fetch_add(n as u64, Ordering::SeqCst);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            counters.to_client.fetch_add(n as u64, Ordering::SeqCst);
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// `url` with its host and port replaced by the local relay's port (`None`: a URL
/// the relay cannot stand in for, such as a Unix socket's), and the server's address.
pub fn through_relay(url: &str) -> Option<(String, impl Fn(u16) -> String)> {
    let options: sqlx::postgres::PgConnectOptions = url.parse().ok()?;
    let (host, port) = (options.get_host().to_string(), options.get_port());
    let at = format!("@{host}:{port}/");
    if host.starts_with('/') || url.matches(&at).count() != 1 {
        return None;
    }
    let url = url.to_string();
    Some((format!("{host}:{port}"), move |relay: u16| {
        url.replace(&at, &format!("@127.0.0.1:{relay}/"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn counts_messages_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&8u32.to_be_bytes());
        stream.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        let startup = b"\x00\x03\x00\x00user\x00postgres\x00\x00";
        stream.extend_from_slice(&(startup.len() as u32 + 4).to_be_bytes());
        stream.extend_from_slice(startup);
        stream.extend(typed(b'Q', b"begin\x00"));
        stream.extend(typed(b'B', &[0; 300]));
        stream.extend(typed(b'E', b"\x00\x00\x00\x00\x00"));
        stream.extend(typed(b'S', b""));
        for chunk in [1, 3, 7, 4096] {
            let counters = Arc::new(Counters::default());
            let mut reader = Reader {
                counters: counters.clone(),
                started: false,
                header: Vec::new(),
                skip: 0,
            };
            for piece in stream.chunks(chunk) {
                reader.feed(piece);
            }
            let counts = counters.snapshot();
            assert_eq!(
                (counts.queries, counts.executes, counts.syncs),
                (1, 1, 1),
                "chunks of {chunk}"
            );
        }
    }
}
