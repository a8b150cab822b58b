//! TLS and client certificates (S6): a test CA, a server certificate, client certificates
//! from the right CA, from another CA and expired; the listener served by `service::start`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gpusiem::auth::{Scope, TokenConfig};
use gpusiem::config::{ClientCertMode, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const ANALYST: &str = "tls-analyst-token-0123456789";
const ADMIN: &str = "tls-admin-token-0123456789ab";

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// (certificate PEM, key PEM) signed by `ca`.
fn leaf(ca: &Ca, names: &[&str], client: bool, expired: bool) -> (String, String) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("client"),
    );
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    if expired {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn token(dir: &Path, name: &str, value: &str, scopes: &[Scope]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token_file: Some(write(dir, &format!("{name}.token"), value)),
        token_env: None,
        scopes: scopes.to_vec(),
        namespaces: None,
    }
}

struct Pki {
    ca: Ca,
    server_ca: Ca,
}

async fn start(
    dir: &Path,
    pki: &Pki,
    client_cert: Option<ClientCertMode>,
) -> gpusiem::service::Running {
    let (cert, key) = leaf(&pki.server_ca, &["127.0.0.1", "localhost"], false, false);
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.join("data");
    config.server.tls_cert_file = Some(write(dir, "server.pem", &cert));
    config.server.tls_key_file = Some(write(dir, "server.key", &key));
    if let Some(mode) = client_cert {
        config.server.client_ca_file = Some(write(dir, "clients-ca.pem", &pki.ca.pem));
        config.server.client_cert = mode;
    }
    config.auth.tokens = vec![
        token(dir, "analyst", ANALYST, &[Scope::Read, Scope::Query]),
        token(dir, "root", ADMIN, &Scope::ALL),
    ];
    gpusiem::service::start(config).await.unwrap()
}

fn client(pki: &Pki, identity: Option<&(String, String)>, max_tls12: bool) -> reqwest::Client {
    gpusiem_ingest::source::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.server_ca.pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(30));
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    if max_tls12 {
        b = b.max_tls_version(reqwest::tls::Version::TLS_1_2);
    }
    b.build().unwrap()
}

fn falco_body() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/real/falco/falcosidekick-test-input.json"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_authenticate_the_ingest_routes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki {
        ca: ca("gpusiem clients"),
        server_ca: ca("gpusiem server"),
    };
    let running = start(dir.path(), &pki, Some(ClientCertMode::Required)).await;
    let base = format!("https://{}", running.addr);
    let good = leaf(&pki.ca, &["falco"], true, false);
    let stranger = leaf(&ca("someone else"), &["falco"], true, false);
    let expired = leaf(&pki.ca, &["falco"], true, true);

    // No certificate, another CA's, an expired one: the handshake fails, no request is served.
    for (what, id) in [
        ("no certificate", None),
        ("another CA", Some(&stranger)),
        ("expired", Some(&expired)),
    ] {
        let r = client(&pki, id, false)
            .post(format!("{base}/ingest/falco"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(falco_body())
            .send()
            .await;
        assert!(r.is_err(), "{what}: {:?}", r.map(|r| r.status()));
    }

    // A valid certificate alone authenticates the ingest routes (TLS 1.3 and 1.2)...
    for tls12 in [false, true] {
        let c = client(&pki, Some(&good), tls12);
        let r = c
            .post(format!("{base}/ingest/falco"))
            .header("content-type", "application/json")
            .body(falco_body())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "tls1.2 only: {tls12}: {}",
            r.text().await.unwrap()
        );
    }
    let c = client(&pki, Some(&good), false);
    // ...and nothing else: the API needs a token.
    assert_eq!(
        c.get(format!("{base}/api/v1/findings"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let with_token = c
        .get(format!("{base}/api/v1/findings"))
        .bearer_auth(ANALYST)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let wrong = c
        .get(format!("{base}/api/v1/findings"))
        .bearer_auth("not-a-token-0000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong.status(),
        401,
        "a wrong token is not rescued by the certificate"
    );
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let r = c
        .post(format!("{base}/api/v1/query"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({ "sql": "SELECT principal, auth, route, status, remote_addr FROM api_audit ORDER BY ts" }))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        5,
        "two ingest posts, three findings requests: {v}"
    );
    assert!(rows[0]["principal"].as_str().unwrap().starts_with("cert:"));
    assert_eq!(rows[0]["auth"], "certificate");
    assert!(
        rows[0]["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{v}"
    );
    assert_eq!(rows[3]["principal"], "analyst");
    running.shutdown.cancel();
    running.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_let_probes_in_and_still_refuse_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki {
        ca: ca("gpusiem clients"),
        server_ca: ca("gpusiem server"),
    };
    let running = start(dir.path(), &pki, Some(ClientCertMode::Optional)).await;
    let base = format!("https://{}", running.addr);
    // Without a certificate: the probes answer (kubelet presents none), everything else needs
    // a token.
    let bare = client(&pki, None, false);
    assert_eq!(
        bare.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        bare.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        bare.post(format!("{base}/ingest/falco"))
            .body(falco_body())
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        bare.get(format!("{base}/api/v1/findings"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        bare.get(format!("{base}/api/v1/findings"))
            .bearer_auth(ANALYST)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A certificate that does not verify still fails the handshake.
    let stranger = leaf(&ca("someone else"), &["falco"], true, false);
    assert!(
        client(&pki, Some(&stranger), false)
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );
    // A valid one still authenticates the receivers.
    let good = leaf(&pki.ca, &["falco"], true, false);
    let r = client(&pki, Some(&good), false)
        .post(format!("{base}/ingest/falco"))
        .body(falco_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    running.shutdown.cancel();
    running.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_ca_serves_token_holders_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki {
        ca: ca("unused"),
        server_ca: ca("gpusiem server"),
    };
    let running = start(dir.path(), &pki, None).await;
    let c = client(&pki, None, false);
    let base = format!("https://{}", running.addr);
    assert_eq!(
        c.get(format!("{base}/api/v1/findings"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(format!("{base}/api/v1/findings"))
            .bearer_auth(ANALYST)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The ingest routes need a token when no certificate can be presented.
    let r = c
        .post(format!("{base}/ingest/falco"))
        .body(falco_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://{}/healthz", running.addr))
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
    running.shutdown.cancel();
    running.done.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_tls_material_stops_the_start_with_the_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.data_dir = dir.path().join("data");
    config.server.tls_cert_file = Some(write(dir.path(), "server.pem", "not a certificate"));
    config.server.tls_key_file = Some(write(dir.path(), "server.key", "not a key"));
    let e = gpusiem::service::start(config)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("server.tls_cert_file"), "{e}");
}
