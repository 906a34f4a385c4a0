//! Publishing a batch (`begin`) and settling the oldest batch from its publisher confirms
//! (`finish_front`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use futures_lite::future;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{Confirmation, PublisherConfirm};
use orbit_plugin_api::{PluginError, Record, WriteOutcome};

use super::RabbitSink;

/// A batch published and not finished.
pub(super) struct Pending {
    outcome: WriteOutcome,
    /// Each message's index in the batch and its confirm, oldest first.
    confirms: VecDeque<(usize, PublisherConfirm)>,
    /// The channel failed while confirms of this batch were pending: it failed as a whole.
    error: Option<PluginError>,
}

impl RabbitSink {
    pub(super) async fn begin(&mut self, batch: &[Record]) -> Result<(), PluginError> {
        if !self.pending.is_empty() && !self.connected() {
            // Reconnecting now could confirm this batch before an earlier one, still pending on
            // the lost channel, is sent again.
            return Err(PluginError::retriable(format!(
                "the connection to {} was lost with batches in flight",
                self.endpoint.shown()
            )));
        }
        let ch = self.channel().await?;
        let mut outcome = WriteOutcome::ok();
        let options = BasicPublishOptions {
            mandatory: self.config.mandatory,
            ..BasicPublishOptions::default()
        };
        let exchange = ShortString::from(self.config.exchange.as_str());
        let endpoint = &self.endpoint;
        let lost = |e: lapin::Error| endpoint.classify(&e, "publishing to");
        // lapin queues a message's frames (and takes its delivery tag) on the first poll of
        // `basic_publish`, then waits until its I/O thread has written them; polling each
        // publish once, in order, and awaiting the writes later keeps the batch's order while
        // the I/O thread writes many queued messages per system call instead of one.
        let mut writing: VecDeque<(usize, InFlight<_>)> = VecDeque::new();
        for (i, r) in batch.iter().enumerate() {
            let key = match self.template.render(r) {
                Ok(k) => k,
                Err(reason) => {
                    outcome.fail(i, PluginError::rejected(reason));
                    continue;
                }
            };
            let mut sending = Box::pin(ch.basic_publish(
                exchange.clone(),
                ShortString::from(key),
                options,
                r.value(),
                self.properties(r),
            ));
            let state = match future::poll_once(&mut sending).await {
                Some(written) => InFlight::Written(written.map_err(lost)?),
                None => InFlight::Writing(sending),
            };
            writing.push_back((i, state));
            // `confirm_window` bounds what is unconfirmed across batches. Once it is full,
            // settle the oldest messages (in an earlier batch or in this one) down to half of
            // it, so that publishing resumes in bursts the I/O thread writes together, not in
            // lockstep with single confirms (one socket write per message).
            let window = self.config.confirm_window;
            if self.unconfirmed + writing.len() <= window {
                continue;
            }
            while self.unconfirmed + writing.len() > window - window / 2 {
                if let Some(b) = self.pending.iter_mut().find(|b| !b.confirms.is_empty()) {
                    let (j, confirm) = b.confirms.pop_front().expect("non-empty");
                    self.unconfirmed -= 1;
                    match confirm.await {
                        Ok(c) => settle(j, c, &mut b.outcome),
                        Err(e) => {
                            b.error.get_or_insert(lost(e));
                        }
                    }
                } else {
                    let (j, state) = writing.pop_front().expect("over the window");
                    settle(j, state.confirmed().await.map_err(lost)?, &mut outcome);
                }
            }
        }
        // Every frame is queued; wait until they are written (not confirmed).
        let mut confirms = VecDeque::with_capacity(writing.len());
        for (i, state) in writing {
            let confirm = match state {
                InFlight::Writing(sending) => sending.await.map_err(lost)?,
                InFlight::Written(confirm) => confirm,
            };
            confirms.push_back((i, confirm));
        }
        self.unconfirmed += confirms.len();
        self.pending.push_back(Pending {
            outcome,
            confirms,
            error: None,
        });
        Ok(())
    }

    /// Awaits the oldest batch's confirms. Cancel-safe: a confirm leaves the queue only once
    /// it resolved, so a `finish_write` that runs out of time loses nothing.
    pub(super) async fn finish_front(&mut self) -> Result<WriteOutcome, PluginError> {
        let endpoint = &self.endpoint;
        let front = self.pending.front_mut().expect("a batch in flight");
        while let Some((_, confirm)) = front.confirms.front_mut() {
            let result = confirm.await;
            let (i, _) = front.confirms.pop_front().expect("the one awaited");
            self.unconfirmed -= 1;
            match result {
                Ok(c) => settle(i, c, &mut front.outcome),
                Err(e) => {
                    front
                        .error
                        .get_or_insert(endpoint.classify(&e, "publishing to"));
                }
            }
        }
        let done = self.pending.pop_front().expect("the front");
        match done.error {
            Some(e) => Err(e),
            None => Ok(done.outcome),
        }
    }
}

/// One published message: its frames being written, or written and awaiting the confirm.
enum InFlight<F> {
    Writing(Pin<Box<F>>),
    Written(PublisherConfirm),
}

impl<F: Future<Output = lapin::Result<PublisherConfirm>>> InFlight<F> {
    async fn confirmed(self) -> lapin::Result<Confirmation> {
        match self {
            InFlight::Writing(sending) => sending.await?.await,
            InFlight::Written(confirm) => confirm.await,
        }
    }
}

fn settle(i: usize, confirmation: Confirmation, outcome: &mut WriteOutcome) {
    match confirmation {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(returned)) => outcome.fail(
            i,
            PluginError::rejected(format!(
                "unroutable: the broker returned the message ({} {})",
                returned.reply_code, returned.reply_text
            )),
        ),
        Confirmation::Nack(_) => {
            outcome.fail(i, PluginError::retriable("the broker nacked the message"))
        }
        Confirmation::NotRequested => outcome.fail(
            i,
            PluginError::retriable("publisher confirms are not enabled on the channel"),
        ),
    }
}
