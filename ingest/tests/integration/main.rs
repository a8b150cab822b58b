//! Integration tests of `gpusiem-ingest`, linked into one test binary.

mod fixtures;
mod kafka;
mod kubernetes;
mod nasty;
