//! Notifier implementations, one file per protocol.

pub mod pagerduty;
pub mod slack;
pub mod webhook;
