//! HTTP limits on a real listener (S5): oversize request heads get 431, a request head that
//! never completes (slowloris) has its connection closed, a chunked body over the limit gets 413.
#![allow(clippy::unwrap_used, missing_docs)]

use crate::api_support;

use std::time::Duration;

use api_support::*;
use gpusiem::server::{ConnectionLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn listen(
    h: &Harness,
    limits: ConnectionLimits,
) -> (std::net::SocketAddr, CancellationToken) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let app = h.app.clone();
    let s = stop.clone();
    tokio::spawn(async move { serve(listener, app, None, &limits, s).await });
    (addr, stop)
}

/// Everything the server sends until it closes the connection (bounded wait: a hang fails).
async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_heads_slow_heads_and_oversize_chunked_bodies() {
    let h = harness_with(Options {
        limits: gpusiem::server::ApiLimits {
            max_ingest_body_bytes: 4096,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let max_header = limits.max_header_bytes;
    let (addr, stop) = listen(&h, limits).await;

    // A head above the limit.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(max_header + 1024);
    s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A head that never completes: closed without an answer to a request.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut s).await;
    assert!(!answer.contains("200 OK"), "{answer}");

    // A chunked body (no Content-Length) above the ingest limit.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /ingest/falco HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {INGEST}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = " ".repeat(1024);
    for _ in 0..8 {
        if s.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // The server still answers.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut s).await.starts_with("HTTP/1.1 200"));
    let rows = h.audit_rows().await;
    assert_eq!(
        rows.len(),
        1,
        "the 413 is audited; heads that never parsed are not requests: {rows:?}"
    );
    assert_eq!(rows[0]["status"], 413);
    assert_eq!(rows[0]["principal"], "falco");
    stop.cancel();
    h.stop().await;
}
