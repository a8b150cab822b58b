//! Sink implementations, one file per protocol.

pub mod elasticsearch;
pub mod loki;
pub mod webhook;
