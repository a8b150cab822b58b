//! gpusiem-detect: who is using this GPU, and should they be?
//!
//! ```text
//!  gpu_metrics ─┐                      ┌─► gpu_memory_spike     ─┐
//!  falco_events ┼─► Engine ─► inventory ├─► unallocated_gpu_use  ├─► Finding (deterministic id,
//!  k8s_audit ───┘   (event    (roles)   ├─► miner_fingerprint    │   one per episode)
//!                    time)              └─► rules, correlation ◄─┘ (findings chain)
//! ```
//!
//! * [`inventory`] keeps pod facts (owners, images, GPU requests, node) fed by audit events and
//!   the Kubernetes API; [`role`] names what a pod is for, which decides what is normal.
//! * [`detector`] states the streaming-detector contract (synchronous, no I/O, event time,
//!   bounded state); [`detectors`] holds the implementations.
//! * [`finding`] defines the finding, its deterministic id and its Arrow schema.
//! * [`engine`] runs it all, one batch at a time.
//!
//! Adding a detector: implement [`detector::Detector`] in `detectors/`, add its settings to
//! [`detectors::DetectorsConfig`] and build it in [`detectors::build`].

pub mod detector;
pub mod detectors;
pub mod engine;
pub mod error;
pub mod finding;
pub mod inventory;
pub mod nab;
pub mod role;
pub mod rules;
pub mod score;
pub mod stats;

pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
pub use finding::{Finding, Severity, Status};
pub use role::Role;
