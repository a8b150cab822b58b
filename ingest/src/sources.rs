//! Source implementations, one file per transport.

pub mod dcgm_scrape;
pub mod file;
pub mod http;
pub mod kafka;
pub mod kubernetes;
