//! Observe-only subscriptions: a plugin sees each request and its final response after the
//! response has left, off the response path.
//!
//! Each observing plugin has one [`Observer`]: a bounded queue and a task that hands each queued
//! exchange to the plugin's `after_response` hook (what the hook returns is thrown away), a few at a
//! time. When the queue is full the exchange is dropped and counted; a failing or slow observer
//! never reaches a client, and never holds up a response.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backworks_plugin_sdk::{Request, Response};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::plugin::Plugin;

/// How many exchanges one observer hands to its plugin at the same time.
const IN_FLIGHT: usize = 4;

/// What an observer did, counted since it started.
#[derive(Debug, Default)]
pub struct ObserverCounts {
    /// Exchanges the plugin took.
    pub delivered: AtomicU64,
    /// Exchanges whose call failed (an error, a timeout, a refusal).
    pub failed: AtomicU64,
    /// Exchanges dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// One plugin's observe subscription: a bounded queue and the task that drains it.
#[derive(Debug)]
pub struct Observer {
    name: String,
    queue: mpsc::Sender<(Request, Response)>,
    counts: Arc<ObserverCounts>,
}

impl Observer {
    /// Default length of an observer's queue.
    pub const DEFAULT_QUEUE: usize = 1024;

    /// Starts observing through `plugin` with a queue of `capacity` exchanges (at least 1), on the
    /// current tokio runtime. The task ends when the observer is dropped and its queue is empty.
    pub fn start(plugin: Arc<dyn Plugin>, capacity: usize) -> Arc<Observer> {
        let (queue, exchanges) = mpsc::channel::<(Request, Response)>(capacity.max(1));
        let counts = Arc::new(ObserverCounts::default());
        let name = plugin.info().name.clone();
        let task_counts = counts.clone();
        tokio::spawn(async move {
            tokio_stream_of(exchanges)
                .for_each_concurrent(IN_FLIGHT, |(request, response)| {
                    let plugin = plugin.clone();
                    let counts = task_counts.clone();
                    async move {
                        match plugin.after_response(&request, &response).await {
                            Ok(_) => counts.delivered.fetch_add(1, Ordering::Relaxed),
                            Err(error) => {
                                tracing::debug!(
                                    plugin = plugin.info().name,
                                    kind = error.kind(),
                                    "observer call failed: {error}"
                                );
                                counts.failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
                .await;
        });
        Arc::new(Observer {
            name,
            queue,
            counts,
        })
    }

    /// Queues the exchange `copy` makes; drops and counts it when the queue is full, without
    /// making the copy when the queue is already full.
    pub fn offer(&self, copy: impl FnOnce() -> (Request, Response)) {
        let queued = self.queue.capacity() > 0 && self.queue.try_send(copy()).is_ok();
        if !queued {
            let dropped = self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            // One line per power of two, so a flood is visible without flooding the log.
            if dropped.is_power_of_two() || dropped == 0 {
                tracing::warn!(
                    plugin = self.name,
                    dropped = dropped + 1,
                    "observer queue full: exchanges dropped"
                );
            }
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counts.
    pub fn counts(&self) -> &ObserverCounts {
        &self.counts
    }
}

fn tokio_stream_of<T: Send + 'static>(
    mut receiver: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
