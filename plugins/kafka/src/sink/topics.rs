//! Topics the sink creates when `create_topic` asks it to.

use orbit_plugin_api::PluginError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::KafkaSink;
use crate::client;

impl KafkaSink {
    /// Creates `topic` unless it is known to exist; a no-op without `create_topic`.
    pub(super) fn ensure_topic(&mut self, topic: &str) -> Result<(), PluginError> {
        let Some(create) = &self.settings.config.create_topic else {
            return Ok(());
        };
        if self.known_topics.contains(topic) {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> =
            self.settings.client_config.create().map_err(|e| {
                PluginError::retriable(format!("cannot create an admin client: {e}"))
            })?;
        let new = NewTopic::new(
            topic,
            create.partitions,
            TopicReplication::Fixed(create.replication_factor),
        );
        // Bounded: with the cluster away the request would otherwise wait for it.
        let options = AdminOptions::new()
            .operation_timeout(Some(self.settings.config.connect_timeout))
            .request_timeout(Some(self.settings.config.connect_timeout));
        let results = block_on(admin.create_topics([&new], &options))
            .map_err(|e| PluginError::retriable(format!("cannot create topic `{topic}`: {e}")))?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic, partitions = create.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) if client::is_auth(code) => {
                    return Err(PluginError::config(format!(
                        "cannot create topic `{topic}`: {code}; grant the CREATE permission or \
                         create the topic yourself and remove `create_topic`"
                    )))
                }
                Err((
                    _,
                    code @ (RDKafkaErrorCode::PolicyViolation
                    | RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidReplicationFactor
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::InvalidConfig),
                )) => {
                    return Err(PluginError::config(format!(
                        "cannot create topic `{topic}`: the cluster refused it ({code}); fix \
                         `create_topic` (partitions, replication_factor) or create the topic \
                         yourself"
                    )))
                }
                Err((_, code)) => {
                    return Err(PluginError::retriable(format!(
                        "cannot create topic `{topic}`: {code}"
                    )))
                }
            }
        }
        self.known_topics.insert(topic.to_string());
        Ok(())
    }
}

/// The admin client's futures are driven by librdkafka's threads; a minimal executor waits.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Thread(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}
