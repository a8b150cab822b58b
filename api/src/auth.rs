//! Authentication and authorization: bearer tokens with scopes and namespace scopes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// `[auth]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `[[auth.tokens]]`. None configured: the server binds loopback only and needs no token.
    pub tokens: Vec<TokenConfig>,
}

/// One bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Principal name, recorded in `api_audit`.
    pub name: String,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// What the token may do.
    pub scopes: Vec<Scope>,
    /// Namespaces whose rows the token may see; omitted = every namespace.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read findings.
    Read,
    /// Run SQL.
    Query,
    /// Post to the ingest receivers.
    Ingest,
    /// Manage silences, read audit and quarantine.
    Admin,
}

impl AuthConfig {
    /// Validates names, secrets and scopes.
    pub fn validate(&self, path: &str, p: &mut Problems) {
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("{path}.tokens[{i}]");
            if t.name.trim().is_empty() {
                p.push(format!("{at}.name"), "must not be empty");
            } else if !names.insert(t.name.as_str()) {
                p.push(format!("{at}.name"), "duplicate token name");
            }
            if t.token_file.is_some() == t.token_env.is_some() {
                p.push(format!("{at}"), "set exactly one of token_file and token_env");
            }
            if t.scopes.is_empty() {
                p.push(format!("{at}.scopes"), "at least one of read, query, ingest, admin");
            }
            if t.namespaces.as_ref().is_some_and(Vec::is_empty) {
                p.push(format!("{at}.namespaces"), "an empty list would hide everything; omit it for every namespace");
            }
        }
    }
}
