//! TLS for the listener (rustls, TLS 1.2 and 1.3 only) and client-certificate verification.
//!
//! With `server.client_ca_file` set, a connection presents a certificate chaining to one of
//! that file's CAs (`WebPkiClientVerifier`). With `server.client_cert = "required"` (the
//! default, falcosidekick's `RequireAndVerifyClientCert`) rustls refuses a handshake without
//! one, before any request exists; with `"optional"` such a connection is accepted and must
//! then authenticate with a token (kubelet's HTTPS probes present no certificate). A presented
//! certificate that does not verify fails the handshake either way. A verified certificate
//! authenticates the ingest receivers (see [`crate::auth`]).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::{ClientCertMode, ConfigError};

fn problem(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

fn certificates(file: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            problem(
                key,
                format!("cannot read PEM certificates from {}: {e}", file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(problem(
            key,
            format!("{} holds no certificate", file.display()),
        ));
    }
    Ok(certs)
}

/// The rustls configuration of the listener: `cert` and `key` (PEM) serve, and with
/// `client_ca` clients present a certificate that CA signed (always, or when they have one:
/// `mode`). Errors name the config key; they never contain key material.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    mode: ClientCertMode,
) -> Result<rustls::ServerConfig, ConfigError> {
    gpusiem_ingest::source::install_crypto_provider();
    let chain = certificates(cert, "server.tls_cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        problem(
            "server.tls_key_file",
            format!("cannot read a PEM private key from {}: {e}", key.display()),
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca, "server.client_ca_file")? {
                roots.add(c).map_err(|e| {
                    problem(
                        "server.client_ca_file",
                        format!("not a usable CA certificate: {e}"),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = match mode {
                ClientCertMode::Required => verifier,
                ClientCertMode::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| {
                problem(
                    "server.client_ca_file",
                    format!("cannot verify clients with it: {e}"),
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        problem(
            "server.tls_key_file",
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_name_the_config_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e =
            server_config(&missing, &missing, None, ClientCertMode::Required).expect_err("missing");
        assert_eq!(e.path, "server.tls_cert_file");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").expect("write");
        let e = server_config(&empty, &missing, None, ClientCertMode::Required).expect_err("empty");
        assert_eq!(e.path, "server.tls_cert_file");
        assert!(e.message.contains("no certificate"), "{}", e.message);
    }
}
