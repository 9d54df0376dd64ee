//! Plumb's own HTTP/1.1 client against fake upstreams over in-memory pipes and sockets.

use super::codec::MAX_HEADERS;
use super::*;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fake upstream sends: its pieces, written one by one, then (optionally) a close.
struct Upstream {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

fn upstream(pieces: &[&[u8]], close: bool) -> Upstream {
    Upstream {
        pieces: pieces.iter().map(|p| p.to_vec()).collect(),
        close,
    }
}

/// Sends a request through the client to the fake upstream: the response (status,
/// headers, body data, trailers) or the first error.
async fn exchange(
    method: Method,
    up: Upstream,
) -> Result<(StatusCode, HeaderMap, Vec<u8>, Option<HeaderMap>), String> {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = server.read(&mut b).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        for p in up.pieces {
            server.write_all(&p).await.unwrap();
            tokio::task::yield_now().await;
        }
        if up.close {
            server.shutdown().await.unwrap();
            drop(server);
            None
        } else {
            Some(server)
        }
    });
    let mut req = Request::new(Body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = "/p?q=1".parse().unwrap();
    req.headers_mut()
        .insert(http::header::HOST, HeaderValue::from_static("a.example"));
    let result = async {
        let r = send(
            Conn::new(client.into(), None),
            &req.into_parts().0,
            &mut None,
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
        let (parts, body) = r.into_parts();
        let collected = body.collect().await.map_err(|e| e.to_string())?;
        let trailers = collected.trailers().cloned();
        Ok((
            parts.status,
            parts.headers,
            collected.to_bytes().to_vec(),
            trailers,
        ))
    }
    .await;
    drop(served.await.unwrap());
    result
}

#[tokio::test]
async fn a_request_without_a_body_is_written_as_one_head() {
    let (client, mut server) = tokio::io::duplex(4096);
    let mut req = Request::new(Body::empty());
    *req.uri_mut() = "/p?q=1".parse().unwrap();
    req.headers_mut()
        .insert(http::header::HOST, HeaderValue::from_static("a.example"));
    req.headers_mut()
        .append("x-a", HeaderValue::from_static("1"));
    req.headers_mut()
        .append("x-a", HeaderValue::from_static("2"));
    let parts = req.into_parts().0;
    let sent =
        tokio::spawn(
            async move { send(Conn::new(client.into(), None), &parts, &mut None, None).await },
        );
    let mut got = vec![0u8; 4096];
    let mut n = 0;
    while !got[..n].ends_with(b"\r\n\r\n") {
        n += server.read(&mut got[n..]).await.unwrap();
    }
    assert_eq!(
        &got[..n],
        b"GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
    );
    server
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let r = sent.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(http_body::Body::is_end_stream(r.body()));
}

#[tokio::test]
async fn bodies_are_framed_by_length_chunks_or_close() {
    // content-length, the head and body split anywhere.
    let r = exchange(
        Method::GET,
        upstream(
            &[
                b"HTTP/1.1 200 OK\r\ncontent-le",
                b"ngth: 11\r\n\r\nhello",
                b" world",
            ],
            false,
        ),
    )
    .await;
    let (status, headers, body, trailers) = r.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "11");
    assert_eq!(body, b"hello world");
    assert!(trailers.is_none());
    // chunked, with an extension and trailers.
    let r = exchange(
        Method::GET,
        upstream(
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n"],
            false,
        ),
    )
    .await;
    let (_, _, body, trailers) = r.unwrap();
    assert_eq!(body, b"hello world");
    let t = trailers.unwrap();
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-t"], "1");
    // Leading zeros, blanks before an extension, and a last chunk with an extension.
    let r = exchange(
        Method::GET,
        upstream(
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n00000000000000000003 ;a=b\r\nabc\r\n0;z\r\n\r\n"],
            false,
        ),
    )
    .await;
    assert_eq!(r.unwrap().2, b"abc");
    // A last chunk whose (empty) trailer block ends with a bare LF.
    let r = exchange(
        Method::GET,
        upstream(
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\n"],
            false,
        ),
    )
    .await;
    assert_eq!(r.unwrap().2, b"x");
    // chunked, one byte per write.
    let whole: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n";
    let bytes: Vec<&[u8]> = whole.chunks(1).collect();
    let r = exchange(Method::GET, upstream(&bytes, false)).await;
    assert_eq!(r.unwrap().2, b"0123456789");
    // Until the close.
    let r = exchange(
        Method::GET,
        upstream(&[b"HTTP/1.1 200 OK\r\n\r\nuntil", b" the close"], true),
    )
    .await;
    assert_eq!(r.unwrap().2, b"until the close");
    // No body after HEAD, 204 and 304, whatever the head says.
    let r = exchange(
        Method::HEAD,
        upstream(&[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"], false),
    )
    .await;
    assert_eq!(r.unwrap().2, b"");
    let r = exchange(
        Method::GET,
        upstream(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false),
    )
    .await;
    assert_eq!(r.unwrap().0, StatusCode::NO_CONTENT);
    // Interim responses are skipped.
    let r = exchange(
        Method::GET,
        upstream(
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"],
            false,
        ),
    )
    .await;
    let (status, headers, body, _) = r.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert!(!headers.contains_key("link"));
    assert_eq!(body, b"ok");
}

#[tokio::test]
async fn bad_responses_are_errors_not_panics() {
    let cases: &[(&[u8], bool, &str)] = &[
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            false,
            "conflicting content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            false,
            "invalid content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            false,
            "invalid content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            false,
            "invalid chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n",
            false,
            "invalid chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY",
            false,
            "chunk not followed by CRLF",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nab\r\n",
            false,
            "invalid chunk size line",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            false,
            "101 without an upgrade request",
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n", false, "invalid response head"),
        (b"NOT HTTP\r\n\r\n", false, "invalid response head"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            true,
            "connection closed before the end of the response",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            true,
            "connection closed before the end of the response",
        ),
        (
            b"HTTP/1.1 200 O",
            true,
            "connection closed before the end of the response",
        ),
        (
            b"",
            true,
            "connection closed before the end of the response",
        ),
    ];
    for (bytes, close, why) in cases {
        let r = exchange(Method::GET, upstream(&[bytes], *close)).await;
        let e = r.expect_err(&String::from_utf8_lossy(bytes));
        assert!(
            e.contains(why),
            "{e} for {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // A head over the limit, and too many headers.
    let big = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD + 1)
    );
    let r = exchange(Method::GET, upstream(&[big.as_bytes()], false)).await;
    assert!(r.unwrap_err().contains("too large"));
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    let r = exchange(Method::GET, upstream(&[many.as_bytes()], false)).await;
    assert!(r.unwrap_err().contains("too many response headers"));
}

#[test]
fn the_head_says_whether_the_connection_can_be_reused() {
    let head = |s: &str| {
        let mut buf = BytesMut::from(s);
        let head = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert!(buf.is_empty(), "the head is split off");
        head
    };
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n");
    assert_eq!((h.framing, h.reusable), (Framing::Length(1), true));
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: Close\r\n\r\n");
    assert!(!h.reusable);
    let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
    assert!(!h.reusable);
    let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n");
    assert!(h.reusable);
    let h = head("HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!((h.framing, h.reusable), (Framing::Close, false));
    // Both framings: chunked wins, and the connection is not trusted again.
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
    // A transfer coding that does not end with chunked: until the close.
    let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
    assert_eq!(h.framing, Framing::Close);
    let h = head("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n");
    assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(2));
    let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
    assert!(parse_head(&mut partial, &Method::GET).unwrap().is_none());
    assert_eq!(
        &partial[..],
        b"HTTP/1.1 200 OK\r\ncontent-le",
        "a partial head stays"
    );
    // What follows the head stays in the buffer; the values are the head's bytes.
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nx-a:  one \r\nX-B: two\r\ncontent-length: 3\r\n\r\nabcHTTP"[..],
    );
    let h = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
    assert_eq!(&buf[..], b"abcHTTP");
    assert_eq!(h.headers["x-a"], "one");
    assert_eq!(h.headers["x-b"], "two");
    assert_eq!(h.headers.len(), 3);
    assert_eq!(h.framing, Framing::Length(3));
}

#[tokio::test]
async fn an_idle_connection_is_usable_until_its_peer_closes_or_talks() {
    let (client, server) = tokio::io::duplex(1024);
    let mut c = Conn::new(client.into(), None);
    assert!(c.idle_usable());
    drop(server);
    assert!(!c.idle_usable());
    let (client, mut server) = tokio::io::duplex(1024);
    let mut c = Conn::new(client.into(), None);
    server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    assert!(!c.idle_usable());
    // A real socket: readiness comes from the reactor.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = l.accept().await.unwrap();
    let mut c = Conn::new(client.into(), None);
    assert!(c.idle_usable());
    drop(server);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.idle_usable() {
        assert!(
            std::time::Instant::now() < deadline,
            "the close was never seen"
        );
        tokio::task::yield_now().await;
    }
}

/// Drains what an upload has queued.
fn queued(up: &mut Upload) -> Vec<u8> {
    up.queue.drain(..).flat_map(|b| b.to_vec()).collect()
}

#[test]
fn request_bodies_are_framed_by_length_or_chunks_with_trailers() {
    let mut up = Upload::new(Body::empty());
    up.chunked = true;
    up.encode(Frame::data(Bytes::from_static(b"hello")));
    // An empty data frame is not a chunk (it would end the body).
    up.encode(Frame::data(Bytes::new()));
    up.encode(Frame::data(Bytes::from(vec![b'x'; 26])));
    let mut t = HeaderMap::new();
    t.insert("x-t", HeaderValue::from_static("1"));
    up.encode(Frame::trailers(t));
    assert!(up.ended);
    up.end().unwrap();
    let mut want = b"5\r\nhello\r\n1a\r\n".to_vec();
    want.extend_from_slice(&[b'x'; 26]);
    want.extend_from_slice(b"\r\n0\r\nx-t: 1\r\n\r\n");
    assert_eq!(queued(&mut up), want);

    let mut up = Upload::new(Body::empty());
    up.encode(Frame::data(Bytes::from_static(b"abc")));
    up.end().unwrap();
    assert_eq!(queued(&mut up), b"abc", "no chunk framing");

    // A length: never more bytes than it says, and complete once they are out.
    let mut up = Upload::new(Body::empty());
    up.remaining = Some(4);
    up.encode(Frame::data(Bytes::from_static(b"abc")));
    assert!(!up.ended);
    up.encode(Frame::data(Bytes::from_static(b"defg")));
    assert!(up.ended);
    assert_eq!(queued(&mut up), b"abcd");
}

#[tokio::test]
async fn a_request_body_is_sent_with_its_length() {
    for given_length in [true, false] {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/u".parse().unwrap();
        if given_length {
            req.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        }
        let parts = req.into_parts().0;
        let sent = tokio::spawn(async move {
            let mut up = Some(Upload::new(Body::full("hello")));
            send(Conn::new(client.into(), None), &parts, &mut up, None).await
        });
        let want = b"POST /u HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello";
        let mut got = vec![0u8; 4096];
        let mut n = 0;
        while n < want.len() {
            n += server.read(&mut got[n..]).await.unwrap();
        }
        assert_eq!(&got[..n], want, "content-length given: {given_length}");
        server
            .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let r = sent.await.unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
}

/// A pooled connection found closed when the head is written gives the body back whole,
/// with the frame read from it already, for another connection.
#[tokio::test]
async fn a_body_not_sent_is_given_back_whole() {
    let (client, server) = tokio::io::duplex(64);
    drop(server);
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::POST;
    let parts = req.into_parts().0;
    let mut up = Some(Upload::new(Body::full("hello")));
    let e = send(Conn::new(client.into(), None), &parts, &mut up, None)
        .await
        .expect_err("closed");
    assert!(matches!(e, Error::NotSent(_)), "{e}");
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let sent =
        tokio::spawn(
            async move { send(Conn::new(client.into(), None), &parts, &mut up, None).await },
        );
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    while !got.ends_with(b"hello") {
        let n = server.read(&mut b).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello");
    server
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(sent.await.unwrap().unwrap().status(), StatusCode::OK);
}

/// A small body is queued with the head's bytes, so both go out in one write.
#[test]
fn a_small_request_body_is_in_the_heads_buffer() {
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::PUT;
    let parts = req.into_parts().0;
    let mut up = Upload::new(Body::full("hello"));
    let mut wbuf = Vec::new();
    write_head(&mut wbuf, &parts, Some(&mut up)).unwrap();
    up.read_first = true;
    up.encode(Frame::data(Bytes::from_static(b"hello")));
    assert!(body_with_head(&mut wbuf, Some(&up)));
    assert_eq!(wbuf, b"PUT / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello");
    // A large one goes after it.
    let mut up = Upload::new(Body::empty());
    up.encode(Frame::data(Bytes::from(vec![b'x'; WITH_HEAD + 1])));
    let mut wbuf = Vec::new();
    assert!(!body_with_head(&mut wbuf, Some(&up)));
    assert!(wbuf.is_empty());
}

/// A body that ends short of its content-length, or a length without a body, would leave
/// the upstream waiting and the connection out of step: the request fails before anything
/// is written.
#[tokio::test]
async fn a_body_short_of_its_length_is_refused() {
    for (length, body) in [("5", Some("abc")), ("3", None)] {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::POST;
        req.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from_static(length),
        );
        let parts = req.into_parts().0;
        let mut up = body.map(|b| Upload::new(Body::full(b)));
        let e = send(Conn::new(client.into(), None), &parts, &mut up, None)
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::Body(BodyFailure::Failed(_))), "{e}");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(
            got.is_empty(),
            "nothing written: {}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// Over TLS, what the session still holds is flushed before an upload counts as sent:
/// `poll_write` takes the last bytes into the session even when the socket is full, and an
/// upload finished there would leave the upstream waiting for the body's end while the
/// client waits for its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_tls_is_flushed_before_it_counts_as_sent() {
    use crate::config::tls::tests::{FIXED_CERT, FIXED_KEY};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    const SIZE: usize = 4 << 20;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The certificate is not what this test is about (the fixed one is a CA's).
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let cert = CertificateDer::from_pem_slice(FIXED_CERT.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(FIXED_KEY.as_bytes()).unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    // The upstream reads slowly, in small pieces, so the client's socket stays full.
    let upstream = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut got = Vec::new();
        let mut b = vec![0u8; 4096];
        let head_end = loop {
            let n = tls.read(&mut b).await.unwrap();
            assert!(n > 0, "the request ended in its head");
            got.extend_from_slice(&b[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let mut body = got.len() - head_end;
        while body < SIZE {
            let n = tls.read(&mut b).await.unwrap();
            if n == 0 {
                break;
            }
            body += n;
            tokio::task::yield_now().await;
        }
        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        body
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket2::SockRef::from(&tcp)
        .set_send_buffer_size(4096)
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(ServerName::try_from("fixed.test").unwrap(), tcp)
        .await
        .unwrap();
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::POST;
    req.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(SIZE));
    let parts = req.into_parts().0;
    let mut up = Some(Upload::new(Body::full(vec![7u8; SIZE])));
    let conn = Conn::new(Stream::TlsClient(Box::new(tls)), None);
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        send(conn, &parts, &mut up, None),
    )
    .await
    .expect("the upstream had the whole body and answered")
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.await.unwrap(), SIZE);
}
