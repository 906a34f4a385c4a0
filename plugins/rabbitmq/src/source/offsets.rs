//! The `rabbitmq` source's positions and acknowledgements: a position is the connection's
//! generation and the delivery tag; acknowledging one acks (`multiple`) every delivery up to
//! it, only on the connection that handed it out.

use std::sync::atomic::{AtomicU32, Ordering};

use lapin::options::BasicAckOptions;
use orbit_plugin_api::{PluginError, Position};

use super::session::Inner;

/// Connection generations, unique in the process: an instance that replaces another (after a
/// panic or a timeout) never reuses one, so a delivery tag of an earlier connection can never
/// pass for a tag of the current one, and `basic_ack(tag, multiple)` never acknowledges
/// deliveries the host has not written.
static GENERATIONS: AtomicU32 = AtomicU32::new(1);

pub(super) fn next_generation() -> u32 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// Offset bytes: generation (4 bytes) then delivery tag (8 bytes), big-endian.
pub(super) fn encode(generation: u32, tag: u64) -> Vec<u8> {
    let mut v = generation.to_be_bytes().to_vec();
    v.extend_from_slice(&tag.to_be_bytes());
    v
}

fn decode(offset: &[u8]) -> Option<(u32, u64)> {
    if offset.len() != 12 {
        return None;
    }
    Some((
        u32::from_be_bytes(offset[..4].try_into().ok()?),
        u64::from_be_bytes(offset[4..].try_into().ok()?),
    ))
}

impl Inner {
    pub(super) async fn acknowledge(&mut self, positions: &[Position]) -> Result<(), PluginError> {
        let Some(session) = &mut self.session else {
            return Ok(()); // nothing from this connection is pending
        };
        for p in positions
            .iter()
            .filter(|p| p.stream.as_str() == self.config.queue)
        {
            let Some((generation, tag)) = decode(&p.offset) else {
                continue;
            };
            if generation != session.generation {
                continue; // a tag of an earlier connection: the broker redelivers those
            }
            if tag > session.received {
                // Never handed out by this connection: acknowledging it would cover messages
                // the host has not written.
                tracing::warn!(tag, received = session.received, "ignoring an acknowledgement of a delivery tag this connection did not hand out");
                continue;
            }
            session
                .channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| self.endpoint.classify(&e, "acking on"))?;
            session.acked = session.acked.max(tag);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_unique_in_the_process() {
        let a = next_generation();
        let b = next_generation();
        assert_ne!(a, b);
        assert_eq!(decode(&encode(a, 42)), Some((a, 42)));
    }
}
