//! Integration tests of the `gpusiem` crate, linked into one test binary: each module is one
//! area (router, security, TLS, store, query, crash, end to end), and the support modules are
//! shared by them.

mod api_support;
mod fixtures;
mod service_support;

mod api_abuse;
mod api_http_limits;
mod api_router;
mod api_security;
mod api_tls;
mod crash;
mod e2e_kubernetes;
mod e2e_run;
mod query;
mod store;
