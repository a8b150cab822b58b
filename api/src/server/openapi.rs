//! The OpenAPI 3.1 document of the listener, served at `/api/v1/openapi.json`.
//!
//! Written by hand in `openapi.json` beside this file. Tests check it against the router: every
//! registered route and method is documented with the scope the access layer enforces
//! (`x-gpusiem-scope`), nothing undocumented is reachable, and nothing documented is missing
//! (OWASP API9, improper inventory).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::auth::Scope;

/// The document's text.
pub const DOCUMENT: &str = include_str!("openapi.json");

static PARSED: LazyLock<serde_json::Value> = LazyLock::new(|| {
    serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON (checked by a test)")
});

/// The parsed document.
pub fn document() -> &'static serde_json::Value {
    &PARSED
}

/// One documented operation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Operation {
    /// Upper-case method.
    pub method: String,
    /// Path template (`/api/v1/findings/{id}`).
    pub path: String,
    /// `x-gpusiem-scope`, when set.
    pub scope: Option<String>,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every operation of the document.
pub fn operations() -> Vec<Operation> {
    let mut out = Vec::new();
    if let Some(paths) = document().get("paths").and_then(|p| p.as_object()) {
        for (path, item) in paths {
            for m in METHODS {
                if let Some(op) = item.get(m) {
                    out.push(Operation {
                        method: m.to_ascii_uppercase(),
                        path: path.clone(),
                        scope: op
                            .get("x-gpusiem-scope")
                            .and_then(|s| s.as_str())
                            .map(str::to_string),
                    });
                }
            }
        }
    }
    out.sort();
    out
}

/// `GET /api/v1/openapi.json`.
pub async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

/// The scope name the document should carry for a route.
pub fn scope_name(scope: Option<Scope>) -> Option<String> {
    scope.map(|s| s.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{registered_routes, required_scope};

    #[test]
    fn the_document_parses_and_is_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(!operations().is_empty());
    }

    #[test]
    fn every_registered_route_is_documented_with_its_scope_and_vice_versa() {
        let mut registered: Vec<Operation> = registered_routes()
            .into_iter()
            .map(|(m, p)| Operation {
                method: m.as_str().to_string(),
                path: p.to_string(),
                scope: scope_name(required_scope(p)),
            })
            .collect();
        registered.sort();
        let documented: Vec<Operation> = operations()
            .into_iter()
            .filter(|o| !o.path.starts_with(crate::server::SILENCES_PREFIX))
            .collect();
        let missing: Vec<_> = registered
            .iter()
            .filter(|r| !documented.contains(r))
            .collect();
        let extra: Vec<_> = documented
            .iter()
            .filter(|d| !registered.contains(d))
            .collect();
        assert!(
            missing.is_empty(),
            "registered but not documented (or with another scope): {missing:?}"
        );
        assert!(extra.is_empty(), "documented but not registered: {extra:?}");
    }

    #[test]
    fn documented_silences_routes_need_admin() {
        for op in operations()
            .into_iter()
            .filter(|o| o.path.starts_with(crate::server::SILENCES_PREFIX))
        {
            assert_eq!(op.scope.as_deref(), Some("admin"), "{op:?}");
            assert_eq!(
                scope_name(required_scope(&op.path)).as_deref(),
                Some("admin"),
                "{op:?}"
            );
        }
    }
}
