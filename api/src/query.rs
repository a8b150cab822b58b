//! DataFusion SQL over the stored tables.

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[query]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {}

impl QueryConfig {
    /// Validates the settings.
    pub fn validate(&self, _path: &str, _p: &mut Problems) {}
}
