//! Delivery of findings: sinks, notifiers, routing, durable outbox.

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[[sinks]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {}

/// `[[notifiers]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifierConfig {}

/// `[routing]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {}

/// Validates sinks, notifiers and routing.
pub fn validate(_sinks: &[SinkConfig], _notifiers: &[NotifierConfig], _routing: &RoutingConfig, _p: &mut Problems) {}

use std::sync::Arc;

use gpusiem_detect::Finding;

/// The delivery service: routes findings to sinks and notifiers through durable outboxes.
#[derive(Debug)]
pub struct Delivery {}

impl Delivery {
    /// Starts delivery with the configured sinks and notifiers.
    pub async fn start(_sinks: &[SinkConfig], _notifiers: &[NotifierConfig], _routing: &RoutingConfig) -> crate::Result<Arc<Delivery>> {
        Ok(Arc::new(Delivery {}))
    }

    /// Whether any sink or notifier is configured.
    pub fn is_empty(&self) -> bool {
        true
    }

    /// Queues findings; durable (in every outbox) when it returns `Ok`.
    pub async fn enqueue(&self, _findings: &[Finding]) -> crate::Result<()> {
        Ok(())
    }

    /// Flushes pending groups and waits until every queued item is delivered or dead-lettered.
    pub async fn drain(&self) -> crate::Result<()> {
        Ok(())
    }
}
