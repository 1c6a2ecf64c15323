//! Signing proven against a real SigV4-checking store: the embedded s3s-fs on 127.0.0.1:0,
//! driven by a plain hyper client (no AWS SDK), so a wrong canonical request shows up as 403.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::*;

const BUCKET: &str = "portier-test";
const REGION: &str = "us-east-1";

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "portier-s3-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fixture {
    store: EmbeddedStore,
    target: S3Target,
    creds: Credentials,
    client: Client<HttpConnector, BoxBody<Bytes, Infallible>>,
    _dir: TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = TempDir::new();
        let (ak, sk) = generate_keys();
        let store = start(dir.0.clone(), BUCKET, &ak, &sk).await.unwrap();
        let target = S3Target::new(&store.endpoint(), REGION, BUCKET, Addressing::Path).unwrap();
        let creds = Credentials::new(ak, sk, None).unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            store,
            target,
            creds,
            client,
            _dir: dir,
        }
    }

    fn object_path(&self, key: &str) -> PathBuf {
        self.store.root.join(BUCKET).join(key)
    }

    /// Signs with `creds` and sends; `headers` are sent and (where allowed) signed.
    async fn signed(
        &self,
        creds: &Credentials,
        method: Method,
        uri: &Uri,
        headers: HeaderMap,
        payload: Payload,
        body: BoxBody<Bytes, Infallible>,
    ) -> (StatusCode, Bytes) {
        let signed = sign_headers(
            creds,
            REGION,
            method.as_str(),
            uri,
            &headers,
            payload,
            SystemTime::now(),
        )
        .unwrap();
        let mut req = Request::builder().method(method).uri(uri.clone());
        for (name, value) in &headers {
            req = req.header(name, value);
        }
        for (name, value) in signed {
            req = req.header(name, value);
        }
        self.send(req.body(body).unwrap()).await
    }

    async fn send(&self, req: Request<BoxBody<Bytes, Infallible>>) -> (StatusCode, Bytes) {
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    async fn put_unsigned(
        &self,
        creds: &Credentials,
        key: &str,
        data: &Bytes,
    ) -> (StatusCode, Bytes) {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/octet-stream".parse().unwrap());
        headers.insert("content-length", data.len().into());
        let uri = self.target.object_uri(key).unwrap();
        self.signed(
            creds,
            Method::PUT,
            &uri,
            headers,
            Payload::Unsigned,
            full(data.clone()),
        )
        .await
    }

    async fn get(&self, key: &str, range: Option<&str>) -> (StatusCode, Bytes) {
        let mut headers = HeaderMap::new();
        if let Some(range) = range {
            headers.insert("range", range.parse().unwrap());
        }
        let uri = self.target.object_uri(key).unwrap();
        self.signed(
            &self.creds,
            Method::GET,
            &uri,
            headers,
            Payload::Empty,
            empty(),
        )
        .await
    }

    async fn plain(
        &self,
        method: Method,
        url: &str,
        body: BoxBody<Bytes, Infallible>,
    ) -> (StatusCode, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .body(body)
            .unwrap();
        self.send(req).await
    }
}

fn full(data: Bytes) -> BoxBody<Bytes, Infallible> {
    Full::new(data).boxed()
}

fn empty() -> BoxBody<Bytes, Infallible> {
    full(Bytes::new())
}

/// A body with no size hint, so hyper sends it with `Transfer-Encoding: chunked`.
struct Chunks(VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_secret(f: &Fixture, body: &Bytes) {
    let shown = text(body);
    assert!(!shown.contains(&f.store.secret_key), "secret in response");
}

fn no_object(path: &Path) -> bool {
    !path.exists()
}

#[tokio::test]
async fn unsigned_payload_put_lands_byte_identical_and_get_reads_it_back() {
    let f = Fixture::new().await;
    let key = canonical_key("user_a/images/blob.bin").unwrap();
    let data = pattern(300 * 1024 + 7);

    let (status, body) = f.put_unsigned(&f.creds, &key, &data).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(std::fs::read(f.object_path(&key)).unwrap(), data);

    let (status, body) = f.get(&key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data);

    let (status, body) = f.get(&key, Some("bytes=10-19")).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, data.slice(10..20));

    // HEAD and DELETE are signed like GET.
    let uri = f.target.object_uri(&key).unwrap();
    let (status, _) = f
        .signed(
            &f.creds,
            Method::HEAD,
            &uri,
            HeaderMap::new(),
            Payload::Empty,
            empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = f
        .signed(
            &f.creds,
            Method::DELETE,
            &uri,
            HeaderMap::new(),
            Payload::Empty,
            empty(),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(no_object(&f.object_path(&key)));
}

#[tokio::test]
async fn hashed_payload_put_and_signed_list_work() {
    use sha2::{Digest, Sha256};
    let f = Fixture::new().await;
    let key = "user_a/docs/a.txt";
    let data = Bytes::from_static(b"hello, store");
    let mut headers = HeaderMap::new();
    headers.insert("content-length", data.len().into());
    let hash = hex::encode(Sha256::digest(&data));
    let uri = f.target.object_uri(key).unwrap();
    let (status, body) = f
        .signed(
            &f.creds,
            Method::PUT,
            &uri,
            headers.clone(),
            Payload::Sha256(hash),
            full(data.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));

    // A hash that does not match the body is refused by the store.
    let wrong = hex::encode(Sha256::digest(b"something else"));
    let (status, body) = f
        .signed(
            &f.creds,
            Method::PUT,
            &uri,
            headers,
            Payload::Sha256(wrong),
            full(data.clone()),
        )
        .await;
    // s3s-fs notices the mismatch while writing and answers 500 `InternalError` (AWS says 400
    // `XAmzContentSHA256Mismatch`); the earlier object is left as it was.
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{}", text(&body));
    assert!(text(&body).contains("InternalError"), "{}", text(&body));
    assert_eq!(std::fs::read(f.object_path(key)).unwrap(), data);
    let fresh = f.target.object_uri("user_a/docs/new.txt").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-length", data.len().into());
    let wrong = hex::encode(Sha256::digest(b"something else"));
    let (status, _) = f
        .signed(
            &f.creds,
            Method::PUT,
            &fresh,
            headers,
            Payload::Sha256(wrong),
            full(data.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(no_object(&f.object_path("user_a/docs/new.txt")));

    let query = query_string(&[
        ("list-type", "2"),
        ("prefix", "user_a/"),
        ("max-keys", "10"),
    ]);
    let uri = f.target.bucket_uri(&query).unwrap();
    let (status, body) = f
        .signed(
            &f.creds,
            Method::GET,
            &uri,
            HeaderMap::new(),
            Payload::Empty,
            empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert!(
        text(&body).contains("<Key>user_a/docs/a.txt</Key>"),
        "{}",
        text(&body)
    );
}

#[tokio::test]
async fn wrong_secret_unknown_key_tampered_and_unsigned_are_refused() {
    let f = Fixture::new().await;
    let key = "user_a/x.bin";
    let data = pattern(1000);

    let wrong = Credentials::new(f.creds.access_key_id(), "not-the-secret", None).unwrap();
    let (status, body) = f.put_unsigned(&wrong, key, &data).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}", text(&body));
    assert!(
        text(&body).contains("SignatureDoesNotMatch"),
        "{}",
        text(&body)
    );
    assert_no_secret(&f, &body);
    assert!(no_object(&f.object_path(key)));

    let unknown = Credentials::new("AKIAUNKNOWN", f.store.secret_key.clone(), None).unwrap();
    let (status, body) = f.put_unsigned(&unknown, key, &data).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}", text(&body));
    assert!(no_object(&f.object_path(key)));

    // Signed for one key, sent to another: the path is in the signature.
    let signed_uri = f.target.object_uri("user_a/x.bin").unwrap();
    let sent_uri = f.target.object_uri("user_b/x.bin").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-length", data.len().into());
    let signed = sign_headers(
        &f.creds,
        REGION,
        "PUT",
        &signed_uri,
        &headers,
        Payload::Unsigned,
        SystemTime::now(),
    )
    .unwrap();
    let mut req = Request::builder().method(Method::PUT).uri(sent_uri);
    for (name, value) in signed {
        req = req.header(name, value);
    }
    let (status, _) = f.send(req.body(full(data.clone())).unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(no_object(&f.object_path("user_b/x.bin")));

    let url = f.target.object_uri(key).unwrap().to_string();
    let (status, _) = f.plain(Method::PUT, &url, full(data)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(no_object(&f.object_path(key)));
}

#[tokio::test]
async fn key_with_space_unicode_and_reserved_characters_round_trips() {
    let f = Fixture::new().await;
    let key = canonical_key("user_a/images/my%20photo%20%C3%A9%20%E2%9C%93%2B%3D%26.png").unwrap();
    assert_eq!(key, "user_a/images/my photo \u{e9} \u{2713}+=&.png");
    let data = pattern(4096);
    let (status, body) = f.put_unsigned(&f.creds, &key, &data).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(std::fs::read(f.object_path(&key)).unwrap(), data);
    let (status, body) = f.get(&key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data);
}

#[tokio::test]
async fn presigned_put_and_get_work_directly_and_expire() {
    let f = Fixture::new().await;
    let key = "user_a/videos/clip one.mp4";
    let data = pattern(64 * 1024);
    let hour = Duration::from_secs(3600);

    let put_url = presign(&f.creds, &f.target, "PUT", key, hour, SystemTime::now()).unwrap();
    let (status, body) = f.plain(Method::PUT, &put_url, full(data.clone())).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(std::fs::read(f.object_path(key)).unwrap(), data);

    let get_url = presign(&f.creds, &f.target, "GET", key, hour, SystemTime::now()).unwrap();
    let (status, body) = f.plain(Method::GET, &get_url, empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data);

    // The method is part of the signature: a GET URL cannot delete.
    let (status, _) = f.plain(Method::DELETE, &get_url, empty()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // So is the key: swapping the path of a presigned URL is refused.
    let other = get_url.replacen("user_a", "user_b", 1);
    let (status, _) = f.plain(Method::GET, &other, empty()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let past = SystemTime::now() - Duration::from_secs(120);
    let expired = presign(
        &f.creds,
        &f.target,
        "GET",
        key,
        Duration::from_secs(1),
        past,
    )
    .unwrap();
    let (status, body) = f.plain(Method::GET, &expired, empty()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}", text(&body));
    assert!(text(&body).contains("expired"), "{}", text(&body));

    let wrong = Credentials::new(f.creds.access_key_id(), "not-the-secret", None).unwrap();
    let forged = presign(&wrong, &f.target, "GET", key, hour, SystemTime::now()).unwrap();
    let (status, body) = f.plain(Method::GET, &forged, empty()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_no_secret(&f, &body);
}

/// Records how s3s-fs treats a streamed body without `Content-Length`: refused with 411
/// `MissingContentLength`, and nothing stored. The proxy must therefore send a length.
#[tokio::test]
async fn chunked_put_without_content_length_is_refused_by_the_store() {
    let f = Fixture::new().await;
    let key = "user_a/chunked.bin";
    let chunks = Chunks(VecDeque::from([pattern(1000), pattern(2000)]));
    let uri = f.target.object_uri(key).unwrap();
    let (status, body) = f
        .signed(
            &f.creds,
            Method::PUT,
            &uri,
            HeaderMap::new(),
            Payload::Unsigned,
            chunks.boxed(),
        )
        .await;
    assert_eq!(status, StatusCode::LENGTH_REQUIRED, "{}", text(&body));
    assert!(
        text(&body).contains("MissingContentLength"),
        "{}",
        text(&body)
    );
    assert!(no_object(&f.object_path(key)));
}

#[tokio::test]
async fn dropping_the_store_stops_it() {
    let f = Fixture::new().await;
    let addr = f.store.addr;
    drop(f);
    tokio::task::yield_now().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Records what s3s-fs keeps when a body ends before its announced `Content-Length` (a client
/// or proxy that aborts mid-upload): nothing, because it writes to a temporary file and only
/// renames it into place once the whole body has arrived.
#[tokio::test]
async fn upload_cut_short_leaves_no_object() {
    let f = Fixture::new().await;
    let key = "user_a/cut.bin";
    let mut headers = HeaderMap::new();
    headers.insert("content-length", 5000.into());
    let uri = f.target.object_uri(key).unwrap();
    let signed = sign_headers(
        &f.creds,
        REGION,
        "PUT",
        &uri,
        &headers,
        Payload::Unsigned,
        SystemTime::now(),
    )
    .unwrap();
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(uri)
        .header("content-length", 5000);
    for (name, value) in signed {
        req = req.header(name, value);
    }
    let chunks = Chunks(VecDeque::from([pattern(1000)]));
    let result = f.client.request(req.body(chunks.boxed()).unwrap()).await;
    assert!(result.is_err(), "{:?}", result.map(|r| r.status()));
    // Give the store a moment to notice the closed connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(no_object(&f.object_path(key)));
    // Neither the object nor s3s-fs's temporary `.tmp.*.internal.part` file remains.
    let root: Vec<_> = std::fs::read_dir(&f.store.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(root, [BUCKET]);
    let bucket = std::fs::read_dir(f.store.root.join(BUCKET))
        .unwrap()
        .count();
    assert_eq!(bucket, 0);
}
