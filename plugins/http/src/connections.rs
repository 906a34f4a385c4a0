//! An axum-server acceptor wrapped around the plain or TLS one, bounding what a connection may
//! hold before hyper's own limits apply:
//! * concurrent connections: each holds a slot from accept to close; a connection that finds
//!   none free gets `503` with `Retry-After` and is closed. The slot is taken before the TLS
//!   handshake, so a flood of handshakes is bounded too.
//! * the time to the first bytes of a request: hyper first reads to tell HTTP/1 from HTTP/2,
//!   with no timeout (its header timeout starts after that), so a connection that sends
//!   nothing would hold its slot for ever. The acceptor reads the first bytes itself, within
//!   the timeout, and hands them back to hyper.
//! * HTTP/1 only: a connection opening with the HTTP/2 preface (`PRI`) is closed; HTTP/2 has
//!   no header timeout in hyper, and TLS offers only `http/1.1`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum_server::accept::Accept;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::throttle::Throttle;

/// How long a refused connection may take to receive its 503 (and, over TLS, to finish the
/// handshake first).
const REFUSAL_TIME: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Limited<A> {
    inner: A,
    slots: Option<Arc<Slots>>,
    first_bytes: Option<Duration>,
}

struct Slots {
    what: &'static str,
    free: Arc<Semaphore>,
    max: usize,
    refusal: Vec<u8>,
    refused: Mutex<Throttle>,
}

impl<A> Limited<A> {
    /// `max: None`: no bound on connections. `first_bytes`: the time a connection gets to send
    /// the first bytes of a request (`None`: no bound, HTTP/2 allowed).
    pub fn new(
        what: &'static str,
        inner: A,
        max: Option<usize>,
        first_bytes: Option<Duration>,
        retry_after: Duration,
    ) -> Self {
        let slots = max.map(|max| {
            let body = serde_json::json!({
                "status": 503,
                "message": format!("too many connections (`max_connections` is {max}); retry later"),
            })
            .to_string();
            let refusal = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                retry_after.as_secs().max(1),
                body.len()
            );
            Arc::new(Slots {
                what,
                free: Arc::new(Semaphore::new(max)),
                max,
                refusal: refusal.into_bytes(),
                refused: Mutex::new(Throttle::default()),
            })
        });
        Limited {
            inner,
            slots,
            first_bytes,
        }
    }
}

impl Slots {
    fn log_refusal(&self) {
        let earlier = self
            .refused
            .lock()
            .expect("refusals lock")
            .note(Instant::now());
        if let Some(n) = earlier {
            let others = if n > 0 {
                format!("; {n} more refused since the last report")
            } else {
                String::new()
            };
            tracing::warn!(
                "{}: {} connections open (`max_connections`): refused a connection with 503{others}",
                self.what,
                self.max
            );
        }
    }
}

impl<A, S> Accept<TcpStream, S> for Limited<A>
where
    A: Accept<TcpStream, S>,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
    A::Future: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let first_bytes = self.first_bytes;
        let slot = match &self.slots {
            None => None,
            Some(slots) => match slots.free.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    slots.log_refusal();
                    return refuse(self.inner.accept(stream, service), slots.clone());
                }
            },
        };
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (mut stream, service) = accepted.await?;
            let prefix = match first_bytes {
                Some(within) => sniff(&mut stream, within).await?,
                None => Vec::new(),
            };
            Ok((
                Counted {
                    stream,
                    prefix,
                    replayed: 0,
                    _slot: slot,
                },
                service,
            ))
        })
    }
}

/// Answers a connection over the limit with 503 (after the TLS handshake, if any) and fails.
fn refuse<F, T, U>(
    accepted: F,
    slots: Arc<Slots>,
) -> BoxFuture<'static, io::Result<(Counted<T>, U)>>
where
    F: std::future::Future<Output = io::Result<(T, U)>> + Send + 'static,
    T: AsyncWrite + Unpin + Send,
{
    Box::pin(async move {
        let _ = tokio::time::timeout(REFUSAL_TIME, async {
            let (mut stream, _) = accepted.await?;
            stream.write_all(&slots.refusal).await?;
            stream.shutdown().await
        })
        .await;
        Err(io::Error::other("connection limit reached"))
    })
}

/// The first bytes of the connection's first request (up to 3: enough to tell `PRI`, the
/// HTTP/2 preface, from an HTTP/1 method), read within `within`. Fails on a timeout or on the
/// HTTP/2 preface; fewer bytes at end of stream are returned as they are.
async fn sniff<T: AsyncRead + Unpin>(stream: &mut T, within: Duration) -> io::Result<Vec<u8>> {
    let mut got = Vec::with_capacity(3);
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 3];
        while got.len() < 3 {
            let n = stream.read(&mut buf[..3 - got.len()]).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok::<_, io::Error>(())
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request within read_timeout"))??;
    if got == b"PRI" {
        return Err(io::Error::other("HTTP/2 is not served"));
    }
    Ok(got)
}

/// A connection's stream, the bytes read from it to sniff (given to hyper first) and its
/// slot, given back when the connection is dropped.
pub struct Counted<T> {
    stream: T,
    prefix: Vec<u8>,
    replayed: usize,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.prefix.len() {
            let rest = &this.prefix[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sniffed_bytes_are_replayed_and_the_http2_preface_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"POST /in HTTP/1.1\r\n").await.unwrap();
        let prefix = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(prefix, b"POS");
        let mut counted = Counted {
            stream: server,
            prefix,
            replayed: 0,
            _slot: None,
        };
        let mut line = [0u8; 19];
        counted.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"POST /in HTTP/1.1\r\n");

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert!(sniff(&mut server, Duration::from_secs(5)).await.is_err());

        let (_silent, mut server) = tokio::io::duplex(64);
        let e = sniff(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
