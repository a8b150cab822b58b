//! End-to-end tests of delivery and deployment, linked into one test binary.

mod delivery_crash;
mod delivery_elasticsearch;
mod delivery_loki;
mod delivery_pagerduty;
mod delivery_slack;
mod deploy;
