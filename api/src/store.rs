//! Parquet storage of every stream and the findings.

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[store]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {}

impl StoreConfig {
    /// Validates the settings.
    pub fn validate(&self, _path: &str, _p: &mut Problems) {}
}

use std::path::Path;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use gpusiem_detect::Finding;
use gpusiem_ingest::Stream;

/// The store.
#[derive(Debug)]
pub struct Store {}

impl Store {
    /// Opens (creating, recovering) the store under `data_dir`.
    pub async fn open(_data_dir: &Path, _config: &StoreConfig) -> crate::Result<Arc<Store>> {
        Ok(Arc::new(Store {}))
    }

    /// Appends rows of `stream`; durable when it returns `Ok`.
    pub async fn append(&self, _stream: Stream, _batch: &RecordBatch) -> crate::Result<()> {
        Ok(())
    }

    /// Appends finding emissions; durable when it returns `Ok`.
    pub async fn append_findings(&self, _findings: &[Finding]) -> crate::Result<()> {
        Ok(())
    }

    /// Flushes everything buffered (shutdown).
    pub async fn close(&self) -> crate::Result<()> {
        Ok(())
    }
}
