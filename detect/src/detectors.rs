//! Detector implementations and their configuration.

use serde::{Deserialize, Serialize};

use crate::detector::Detector;

/// Thresholds of the built-in detectors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorsConfig {}

/// Builds the enabled detectors.
pub fn build(_config: &DetectorsConfig) -> crate::Result<Vec<Box<dyn Detector>>> {
    Ok(Vec::new())
}
