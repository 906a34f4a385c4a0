//! A request body for the `http` source, received within bounds and parsed into JSON values.
//!
//! Bounds: its size (`max_body_bytes`: a larger `Content-Length` gets 413 before a byte is
//! read), its time (`read_timeout` from the first read), and the memory of every request held
//! at once (`max_buffered_bytes`, a [`Budget`] of bytes: a body holds its share from the first
//! read until its records leave the source's queue).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

/// Why a body was not received.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than `max_body_bytes` (413).
    TooLarge,
    /// Not received within `read_timeout` (408).
    TimedOut,
    /// No room in the budget within `read_timeout` (503, retry).
    Busy,
    /// The connection failed mid-body (400; the client is usually gone).
    Broken(String),
}

/// The bytes all requests may hold at once.
pub struct Budget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// The part of the [`Budget`] one request holds; given back when dropped.
#[derive(Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Gives back what is held beyond `n` bytes.
    pub fn keep(&mut self, n: usize) {
        if let Some(p) = &mut self.0 {
            let extra = p.num_permits().saturating_sub(n);
            drop(p.split(extra));
        }
    }
}

impl Budget {
    pub fn new(total: usize) -> Self {
        Budget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes nobody holds.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Whether nobody holds any: no body in flight, no record queued.
    pub fn idle(&self) -> bool {
        self.bytes.available_permits() == self.total
    }

    /// `n` bytes, waiting for them until `deadline`. Only a request that holds nothing waits:
    /// requests waiting while holding part of the budget could wait for each other until
    /// their deadlines.
    pub async fn reserve(&self, n: usize, deadline: Instant) -> Result<Held, BodyError> {
        if n == 0 {
            return Ok(Held::default());
        }
        let n = self.checked(n)?;
        let permit = timeout_at(deadline, self.bytes.clone().acquire_many_owned(n))
            .await
            .map_err(|_| BodyError::Busy)?
            .map_err(|_| BodyError::Busy)?;
        Ok(Held(Some(permit)))
    }

    /// Grows `held` to `n` bytes if there is room now; `Busy` if not (see [`Budget::reserve`]).
    pub fn try_grow(&self, held: &mut Held, n: usize) -> Result<(), BodyError> {
        let Some(more) = n.checked_sub(held.bytes()).filter(|&m| m > 0) else {
            return Ok(());
        };
        self.checked(n)?;
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.checked(more)?)
            .map_err(|_| BodyError::Busy)?;
        match &mut held.0 {
            Some(p) => p.merge(permit),
            None => held.0 = Some(permit),
        }
        Ok(())
    }

    fn checked(&self, n: usize) -> Result<u32, BodyError> {
        if n > self.total {
            return Err(BodyError::TooLarge);
        }
        u32::try_from(n).map_err(|_| BodyError::TooLarge)
    }
}

/// Receives `body` (`declared`: its `Content-Length`, if any) into one buffer, holding its
/// capacity in `budget`: the declared size and an eighth more for its records (see
/// [`RECORDS_HEADROOM`]) is reserved before the first read, waiting up to `read_timeout` for
/// room; a body of unknown size grows its share as it comes, if there is room at once (`Busy`
/// if not). The body itself must then arrive within `read_timeout`.
pub async fn receive(
    body: Body,
    declared: Option<u64>,
    max_body: usize,
    read_timeout: Duration,
    budget: &Budget,
) -> Result<(Vec<u8>, Held), BodyError> {
    let declared = match declared {
        Some(n) if n > max_body as u64 => return Err(BodyError::TooLarge),
        Some(n) => n as usize,
        None => 0,
    };
    let share = (declared + declared / RECORDS_HEADROOM).min(budget.total());
    let mut held = budget.reserve(share, Instant::now() + read_timeout).await?;
    let deadline = Instant::now() + read_timeout;
    let mut buf = Vec::with_capacity(declared);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = timeout_at(deadline, chunks.next())
        .await
        .map_err(|_| BodyError::TimedOut)?
    {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        let len = buf.len() + chunk.len();
        if len > max_body {
            return Err(BodyError::TooLarge);
        }
        if len > buf.capacity() {
            // Doubling (up to `max_body`), and the budget pays for the capacity.
            let capacity = (buf.capacity() * 2).max(len).max(8192).min(max_body);
            budget.try_grow(&mut held, capacity)?;
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, held))
}

/// A declared body reserves `1 / RECORDS_HEADROOM` more than its size, so that its records
/// (each counted with some overhead) usually fit in the share it already holds.
pub const RECORDS_HEADROOM: usize = 8;

/// The JSON values of a body: one object, an array (its elements), or NDJSON / concatenated
/// JSON values (one record each). Errors name the line and column.
pub fn parse(body: &[u8], ndjson: bool) -> Result<Vec<&RawValue>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    if text.trim().is_empty() {
        return Err("empty body: send a JSON object, a JSON array or NDJSON".into());
    }
    if ndjson {
        // Strict NDJSON: one value per line, the error names the line.
        let mut values = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() {
                values.push(
                    serde_json::from_str::<&RawValue>(line)
                        .map_err(|e| format!("malformed NDJSON at line {}: {e}", i + 1))?,
                );
            }
        }
        return Ok(values);
    }
    let mut values = Vec::new();
    for v in serde_json::Deserializer::from_str(text).into_iter::<&RawValue>() {
        values.push(v.map_err(|e| format!("malformed JSON: {e}"))?);
    }
    if values.len() == 1 && values[0].get().starts_with('[') {
        let v = values[0];
        return serde_json::from_str::<Vec<&RawValue>>(v.get())
            .map_err(|e| format!("malformed JSON array: {e}"));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::stream;

    fn texts(body: &str, ndjson: bool) -> Vec<String> {
        parse(body.as_bytes(), ndjson)
            .unwrap()
            .into_iter()
            .map(|v| v.get().to_string())
            .collect()
    }

    #[test]
    fn object_array_and_ndjson() {
        assert_eq!(texts(r#"{"a":1}"#, false), [r#"{"a":1}"#]);
        assert_eq!(
            texts(r#"[{"a":1}, {"a":2}]"#, false),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
        assert_eq!(
            texts("{\"a\":1}\n{\"a\":2}\n", false),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
        assert_eq!(
            texts("{\"a\":1}\n\n{\"a\":2}", true),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
        // NDJSON keeps one-line arrays as one record each.
        assert_eq!(texts("[1,2]\n", true), ["[1,2]"]);
    }

    #[test]
    fn malformed_bodies_name_the_place() {
        let e = parse(b"{\"a\":1}\n{\"a\":", false).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse(b"  ", false).unwrap_err().contains("empty body"));
        assert!(parse(b"{\"a\":\n1}", true).unwrap_err().contains("line 1"));
    }

    fn chunked(parts: &[&'static str]) -> Body {
        let parts: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        Body::from_stream(stream::iter(parts))
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_body_holds_its_bytes_of_the_budget_until_dropped() {
        let budget = Budget::new(100);
        let (buf, held) = receive(chunked(&["{\"a\":", "1}"]), Some(16), 50, SECOND, &budget)
            .await
            .unwrap();
        assert_eq!(buf, b"{\"a\":1}");
        // 16 declared and an eighth more for the records.
        assert_eq!((held.bytes(), budget.available()), (18, 82));
        drop(held);
        assert_eq!(budget.available(), 100);
        // Unknown size: the share grows with the buffer's capacity, within `max_body`.
        let (buf, mut held) = receive(chunked(&["[1,", "2]"]), None, 50, SECOND, &budget)
            .await
            .unwrap();
        assert_eq!(buf, b"[1,2]");
        assert_eq!(held.bytes(), 50);
        held.keep(5);
        assert_eq!(budget.available(), 95);
    }

    #[tokio::test]
    async fn too_large_is_refused_before_reading_and_while_reading() {
        let budget = Budget::new(100);
        // Declared too large: refused without polling the body (it would panic).
        let never = Body::from_stream(stream::poll_fn(
            |_| -> std::task::Poll<Option<Result<Bytes, std::io::Error>>> {
                panic!("the body was read")
            },
        ));
        let e = receive(never, Some(51), 50, SECOND, &budget).await;
        assert_eq!(e.err(), Some(BodyError::TooLarge));
        let e = receive(chunked(&["0123456789"; 6]), None, 50, SECOND, &budget).await;
        assert_eq!(e.err(), Some(BodyError::TooLarge));
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_a_full_budget_is_busy() {
        const SHORT: Duration = Duration::from_millis(100);
        let budget = Budget::new(100);
        let stalled = Body::from_stream(
            stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{"))])
                .chain(stream::pending()),
        );
        let started = Instant::now();
        let e = receive(stalled, Some(10), 50, SHORT, &budget).await;
        assert_eq!(e.err(), Some(BodyError::TimedOut));
        assert!(started.elapsed() >= SHORT);
        assert_eq!(budget.available(), 100);
        let hog = budget.reserve(80, Instant::now() + SECOND).await.unwrap();
        let e = receive(chunked(&["{}"]), Some(30), 50, SHORT, &budget).await;
        assert_eq!(e.err(), Some(BodyError::Busy));
        drop(hog);
        assert!(receive(chunked(&["{}"]), Some(2), 50, SECOND, &budget)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_request_holding_a_share_never_waits_for_more() {
        let budget = Budget::new(100);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut a = budget.reserve(60, deadline).await.unwrap();
        let mut b = budget.reserve(40, deadline).await.unwrap();
        // Both want 10 more and none is free: waiting, each for the other, they would hold on
        // until their deadlines; they are told at once instead.
        assert_eq!(budget.try_grow(&mut a, 70), Err(BodyError::Busy));
        assert_eq!(budget.try_grow(&mut b, 50), Err(BodyError::Busy));
        assert_eq!(budget.try_grow(&mut b, 101), Err(BodyError::TooLarge));
        drop(b);
        budget.try_grow(&mut a, 70).unwrap();
        assert_eq!((a.bytes(), budget.available()), (70, 30));
        // A chunked body that finds no room is refused, and gives its share back.
        let e = receive(chunked(&["0123456789"; 5]), None, 50, SECOND, &budget).await;
        assert_eq!(e.err(), Some(BodyError::Busy));
        assert_eq!(budget.available(), 30);
    }
}
