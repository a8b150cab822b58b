//! Authentication and authorization: bearer tokens with scopes and namespace scopes, and
//! client certificates (mTLS) for the machine clients that cannot send a token.
//!
//! * **Tokens** (`[[auth.tokens]]`) are read once at start from a file or an environment
//!   variable ([`Secret::load`]). A presented token is hashed (SHA-256) and compared in constant
//!   time with *every* configured token's hash: no early exit tells which token, or how much of
//!   one, matched, and the comparison does not depend on the token's length.
//! * **Client certificates.** When `server.client_ca_file` is set, rustls has already verified
//!   the certificate chain against that CA before a request exists. A request with a verified
//!   certificate and no `Authorization` header is the principal `cert:<SHA-256 of the leaf, 16
//!   hex>` with the `ingest` scope only: Falco (`http_output.mtls`) and the API server's audit
//!   webhook authenticate this way. A bearer token, when sent, always decides.
//! * **No tokens configured**: the server binds loopback only (config validation refuses
//!   anything else) and every request is the `anonymous` principal with every scope and every
//!   namespace.
//!
//! Scopes are independent (`admin` does not imply `read`). Namespace scopes are not enforced
//! here but in the query engine's table providers ([`crate::query::NamespaceScope`]), so SQL
//! text cannot widen them.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::config::{ConfigError, Problems, Secret};
use crate::query::NamespaceScope;

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
    /// Read findings, `/metrics` and the OpenAPI document.
    Read,
    /// Run SQL.
    Query,
    /// Post to the ingest receivers.
    Ingest,
    /// Manage silences, read audit and quarantine.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Query, Scope::Ingest, Scope::Admin];

    /// Lower-case name, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Query => "query",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Query => 2,
            Scope::Ingest => 4,
            Scope::Admin => 8,
        }
    }
}

/// The smallest token length accepted at start: shorter tokens are guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

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
            } else if t.name == ANONYMOUS || t.name.starts_with(CERT_PREFIX) {
                p.push(
                    format!("{at}.name"),
                    "`anonymous` and names starting with `cert:` are reserved",
                );
            }
            if t.token_file.is_some() == t.token_env.is_some() {
                p.push(at.clone(), "set exactly one of token_file and token_env");
            }
            if t.scopes.is_empty() {
                p.push(
                    format!("{at}.scopes"),
                    "at least one of read, query, ingest, admin",
                );
            }
            if t.namespaces.as_ref().is_some_and(Vec::is_empty) {
                p.push(
                    format!("{at}.namespaces"),
                    "an empty list would hide everything; omit it for every namespace",
                );
            }
        }
    }
}

/// Name of the principal of every request when no token is configured.
pub const ANONYMOUS: &str = "anonymous";
/// Prefix of the principals authenticated by a client certificate.
pub const CERT_PREFIX: &str = "cert:";

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No tokens configured (loopback-only mode).
    Anonymous,
    /// A bearer token.
    Token,
    /// A client certificate verified by the TLS layer.
    Certificate,
}

impl AuthMethod {
    /// Lower-case name, as recorded in `api_audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Token => "token",
            AuthMethod::Certificate => "certificate",
        }
    }
}

/// Who is calling, and what it may do. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Principal {
    name: Arc<str>,
    scopes: u8,
    namespaces: Option<Arc<[String]>>,
    method: AuthMethod,
}

impl Principal {
    /// The principal of loopback-only mode: every scope, every namespace.
    pub fn anonymous() -> Principal {
        Principal {
            name: Arc::from(ANONYMOUS),
            scopes: 0x0f,
            namespaces: None,
            method: AuthMethod::Anonymous,
        }
    }

    /// A principal with the given scopes and namespaces (`None` = every namespace).
    pub fn new(
        name: &str,
        scopes: &[Scope],
        namespaces: Option<Vec<String>>,
        method: AuthMethod,
    ) -> Principal {
        Principal {
            name: Arc::from(name),
            scopes: scopes.iter().fold(0, |acc, s| acc | s.bit()),
            namespaces: namespaces.map(Arc::from),
            method,
        }
    }

    /// The name recorded in `api_audit`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it authenticated.
    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// Whether it holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// Its scopes.
    pub fn scopes(&self) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| self.has(*s)).collect()
    }

    /// The namespaces it may see; `None` = every namespace.
    pub fn namespaces(&self) -> Option<&[String]> {
        self.namespaces.as_deref()
    }

    /// The scope handed to the query engine's table providers.
    pub fn namespace_scope(&self) -> NamespaceScope {
        NamespaceScope(self.namespaces.as_deref().map(<[String]>::to_vec))
    }

    /// Whether a row of `namespace` (`None`: a row without namespace, e.g. a GPU no pod holds)
    /// is visible. Rows without a namespace are visible to unscoped principals only.
    pub fn may_see(&self, namespace: Option<&str>) -> bool {
        match (&self.namespaces, namespace) {
            (None, _) => true,
            (Some(allowed), Some(ns)) => allowed.iter().any(|a| a == ns),
            (Some(_), None) => false,
        }
    }
}

/// Why a request is not authenticated. Both answer `401` with `WWW-Authenticate: Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials at all.
    Missing,
    /// An `Authorization` header that is not a known bearer token (or not a bearer token).
    Invalid,
}

impl AuthFailure {
    /// Short reason, recorded in `api_audit` (never the token).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing credentials",
            AuthFailure::Invalid => "invalid credentials",
        }
    }
}

struct LoadedToken {
    digest: [u8; 32],
    principal: Principal,
}

/// Decides who a request is. Built once at start; tokens never leave it.
pub struct Authenticator {
    tokens: Vec<LoadedToken>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "tokens",
                &self
                    .tokens
                    .iter()
                    .map(|t| t.principal.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Authenticator {
    /// Loads every token (files are read and variables looked up now, once). Errors name the
    /// token's path in the configuration and never contain a secret.
    pub fn load(config: &AuthConfig) -> Result<Authenticator, Vec<ConfigError>> {
        let mut p = Problems::default();
        let mut tokens: Vec<LoadedToken> = Vec::with_capacity(config.tokens.len());
        for (i, t) in config.tokens.iter().enumerate() {
            let at = format!("auth.tokens[{i}]");
            let secret = match Secret::load(t.token_file.as_deref(), t.token_env.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    p.push(at, e);
                    continue;
                }
            };
            if secret.expose().len() < MIN_TOKEN_BYTES {
                p.push(
                    at,
                    format!("the token must be at least {MIN_TOKEN_BYTES} bytes"),
                );
                continue;
            }
            let d = digest(secret.expose().as_bytes());
            if tokens.iter().any(|o| o.digest == d) {
                p.push(at, "the same token is configured twice");
                continue;
            }
            tokens.push(LoadedToken {
                digest: d,
                principal: Principal::new(
                    &t.name,
                    &t.scopes,
                    t.namespaces.clone(),
                    AuthMethod::Token,
                ),
            });
        }
        if p.0.is_empty() {
            Ok(Authenticator { tokens })
        } else {
            Err(p.0)
        }
    }

    /// An authenticator with no tokens (loopback-only mode).
    pub fn open() -> Authenticator {
        Authenticator { tokens: Vec::new() }
    }

    /// Whether tokens are configured (otherwise every request is [`Principal::anonymous`]).
    pub fn requires_credentials(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Who sent a request with this `Authorization` header value and this verified client
    /// certificate (DER of the leaf, when the TLS layer verified one).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        client_cert: Option<&[u8]>,
    ) -> Result<Principal, AuthFailure> {
        if self.tokens.is_empty() {
            return Ok(Principal::anonymous());
        }
        match authorization {
            Some(value) => {
                let token = bearer_token(value).ok_or(AuthFailure::Invalid)?;
                self.match_token(token).ok_or(AuthFailure::Invalid)
            }
            None => match client_cert {
                Some(der) => {
                    let fp = hex::encode(&Sha256::digest(der)[..8]);
                    Ok(Principal::new(
                        &format!("{CERT_PREFIX}{fp}"),
                        &[Scope::Ingest],
                        None,
                        AuthMethod::Certificate,
                    ))
                }
                None => Err(AuthFailure::Missing),
            },
        }
    }

    /// Constant-time lookup: every configured digest is compared, the index of the match is
    /// selected without branching on secret data.
    fn match_token(&self, token: &[u8]) -> Option<Principal> {
        let presented = digest(token);
        let mut found = Choice::from(0);
        let mut index = 0u32;
        for (i, t) in self.tokens.iter().enumerate() {
            let eq = t.digest.ct_eq(&presented);
            index.conditional_assign(&(i as u32), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.tokens.get(index as usize).map(|t| t.principal.clone())
        } else {
            None
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, secret, scopes, namespaces).
    type Spec<'a> = (&'a str, &'a str, &'a [Scope], Option<&'a [&'a str]>);

    fn config(tokens: &[Spec<'_>]) -> AuthConfig {
        AuthConfig {
            tokens: tokens
                .iter()
                .map(|(name, env, scopes, ns)| TokenConfig {
                    name: (*name).into(),
                    token_file: None,
                    token_env: Some((*env).into()),
                    scopes: scopes.to_vec(),
                    namespaces: ns.map(|n| n.iter().map(|s| s.to_string()).collect()),
                })
                .collect(),
        }
    }

    fn token_files(dir: &std::path::Path, tokens: &[Spec<'_>]) -> AuthConfig {
        let mut c = config(tokens);
        for (t, (name, value, _, _)) in c.tokens.iter_mut().zip(tokens) {
            let path = dir.join(name);
            std::fs::write(&path, format!("{value}\n")).expect("write token");
            t.token_env = None;
            t.token_file = Some(path);
        }
        c
    }

    #[test]
    fn tokens_map_to_their_principal_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = token_files(
            dir.path(),
            &[
                (
                    "analyst",
                    "analyst-token-0123456789",
                    &[Scope::Read, Scope::Query],
                    Some(&["shop"]),
                ),
                ("falco", "falco-token-0123456789ab", &[Scope::Ingest], None),
            ],
        );
        let a = Authenticator::load(&c).expect("load");
        assert!(a.requires_credentials());
        let p = a
            .authenticate(Some(b"Bearer analyst-token-0123456789"), None)
            .expect("analyst");
        assert_eq!(p.name(), "analyst");
        assert!(
            p.has(Scope::Read)
                && p.has(Scope::Query)
                && !p.has(Scope::Ingest)
                && !p.has(Scope::Admin)
        );
        assert_eq!(p.namespace_scope().0, Some(vec!["shop".to_string()]));
        assert!(p.may_see(Some("shop")) && !p.may_see(Some("research")) && !p.may_see(None));
        let f = a
            .authenticate(Some(b"bearer   falco-token-0123456789ab "), None)
            .expect("scheme is case-insensitive");
        assert_eq!(f.name(), "falco");
        assert_eq!(f.scopes(), vec![Scope::Ingest]);
        assert_eq!(
            a.authenticate(Some(b"Bearer analyst-token-012345678"), None)
                .err(),
            Some(AuthFailure::Invalid)
        );
        assert_eq!(
            a.authenticate(Some(b"Bearer analyst-token-01234567899"), None)
                .err(),
            Some(AuthFailure::Invalid)
        );
        assert_eq!(
            a.authenticate(Some(b"Basic YW5hbHlzdDp4"), None).err(),
            Some(AuthFailure::Invalid)
        );
        assert_eq!(
            a.authenticate(Some(b"Bearer "), None).err(),
            Some(AuthFailure::Invalid)
        );
        assert_eq!(a.authenticate(None, None).err(), Some(AuthFailure::Missing));
    }

    #[test]
    fn a_verified_certificate_is_an_ingest_principal_unless_a_token_is_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = token_files(
            dir.path(),
            &[("analyst", "analyst-token-0123456789", &[Scope::Read], None)],
        );
        let a = Authenticator::load(&c).expect("load");
        let p = a
            .authenticate(None, Some(b"certificate der"))
            .expect("cert");
        assert!(p.name().starts_with(CERT_PREFIX), "{}", p.name());
        assert_eq!(p.scopes(), vec![Scope::Ingest]);
        assert_eq!(p.method(), AuthMethod::Certificate);
        // A wrong token is not rescued by the certificate.
        assert_eq!(
            a.authenticate(
                Some(b"Bearer nope-nope-nope-nope"),
                Some(b"certificate der")
            )
            .err(),
            Some(AuthFailure::Invalid)
        );
    }

    #[test]
    fn no_tokens_means_anonymous_with_everything() {
        let a = Authenticator::load(&AuthConfig::default()).expect("load");
        assert!(!a.requires_credentials());
        let p = a.authenticate(None, None).expect("anonymous");
        assert_eq!(p.name(), ANONYMOUS);
        assert!(Scope::ALL.iter().all(|s| p.has(*s)));
        assert_eq!(p.namespace_scope().0, None);
        assert!(p.may_see(None));
    }

    #[test]
    fn load_errors_name_the_token_and_never_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = token_files(
            dir.path(),
            &[
                ("short", "tooshort", &[Scope::Read], None),
                ("a", "duplicate-token-0123456789", &[Scope::Read], None),
                ("b", "duplicate-token-0123456789", &[Scope::Read], None),
            ],
        );
        c.tokens.push(TokenConfig {
            name: "missing".into(),
            token_file: Some(dir.path().join("does-not-exist")),
            token_env: None,
            scopes: vec![Scope::Read],
            namespaces: None,
        });
        c.tokens.push(TokenConfig {
            name: "env".into(),
            token_file: None,
            token_env: Some("GPUSIEM_TEST_TOKEN_THAT_IS_NOT_SET_9f1c".into()),
            scopes: vec![Scope::Read],
            namespaces: None,
        });
        let errors = Authenticator::load(&c).expect_err("refused");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "auth.tokens[0]",
                "auth.tokens[2]",
                "auth.tokens[3]",
                "auth.tokens[4]"
            ]
        );
        let text = errors.iter().map(ToString::to_string).collect::<String>();
        assert!(
            !text.contains("tooshort") && !text.contains("duplicate-token"),
            "{text}"
        );
    }

    #[test]
    fn reserved_names_are_refused() {
        let c = config(&[
            ("anonymous", "X", &[Scope::Read], None),
            ("cert:abc", "Y", &[Scope::Read], None),
        ]);
        let mut p = Problems::default();
        c.validate("auth", &mut p);
        assert_eq!(p.0.len(), 2, "{:?}", p.0);
    }
}
