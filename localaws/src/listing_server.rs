//! A stand-in for S3's listing alone, for buckets the emulator cannot hold: ListObjectsV2
//! pages of a generated bucket of any size, served on 127.0.0.1 with a fixed latency per
//! page (S3 takes about 100 ms a page).
//!
//! The bucket holds `objects` keys `<prefix><16 hex digits>.jpg`, spread evenly over the
//! 64-bit hex space like hash-named keys, in S3's order; key `i` is computed, not stored, so
//! ten million objects cost nothing. Requests honour `prefix`, `delimiter`, `start-after`,
//! `continuation-token` and `max-keys` (at most 1000, as S3). Every other request goes to the
//! upstream given to [`ListingServer::in_front_of`] (the emulator: so that `embatch submit`
//! runs whole against a bucket of millions), or is answered 501.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http_server::{LocalServer, Query};

/// The generated bucket.
#[derive(Clone, Debug)]
pub struct SyntheticBucket {
    /// The bucket's name (requests for another are answered NoSuchBucket).
    pub bucket: String,
    /// What every key starts with, e.g. `images/`.
    pub prefix: String,
    /// How many objects it holds.
    pub objects: u64,
    /// Waited before each page is answered.
    pub latency: Duration,
}

impl SyntheticBucket {
    /// Key `i` (0-based) in listing order.
    pub fn key(&self, i: u64) -> String {
        let spread = ((i as u128) << 64) / self.objects.max(1) as u128;
        format!("{}{:016x}.jpg", self.prefix, spread as u64)
    }

    /// Size of object `i` in bytes (varied, never 0).
    pub fn size(&self, i: u64) -> u64 {
        50_000 + (i * 7_919) % 400_000
    }

    /// The index of the first key that is greater than `key` (or, `inclusive`, not less).
    fn first_from(&self, key: &str, inclusive: bool) -> u64 {
        let (mut low, mut high) = (0, self.objects);
        while low < high {
            let mid = low + (high - low) / 2;
            let k = self.key(mid);
            if k.as_str() > key || (inclusive && k == key) {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        low
    }
}

/// The server; stopped when dropped.
pub struct ListingServer {
    server: LocalServer,
    pages: Arc<AtomicU64>,
}

impl ListingServer {
    /// Serves `bucket` on a free 127.0.0.1 port.
    pub fn start(bucket: SyntheticBucket) -> anyhow::Result<ListingServer> {
        Self::serving(bucket, None)
    }

    /// Serves `bucket`'s listing, and forwards every other request to `upstream`
    /// (`http://127.0.0.1:<port>`).
    pub fn in_front_of(bucket: SyntheticBucket, upstream: &str) -> anyhow::Result<ListingServer> {
        Self::serving(bucket, Some(upstream.trim_end_matches('/').to_string()))
    }

    fn serving(bucket: SyntheticBucket, upstream: Option<String>) -> anyhow::Result<ListingServer> {
        let pages = Arc::new(AtomicU64::new(0));
        let client = Client::builder(TokioExecutor::new()).build_http();
        let state = Arc::new(State {
            bucket,
            pages: pages.clone(),
            upstream: upstream.map(|u| (u, client)),
        });
        let server = LocalServer::start("listing-server", move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(answer(&state, request).await) }
        })?;
        Ok(ListingServer { server, pages })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// ListObjectsV2 pages answered so far.
    pub fn pages(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }
}

/// What the server answers from.
struct State {
    bucket: SyntheticBucket,
    pages: Arc<AtomicU64>,
    upstream: Option<(String, Client<HttpConnector, Full<Bytes>>)>,
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let bucket = &state.bucket;
    let path = request.uri().path().trim_matches('/').to_string();
    let query = Query::parse(request.uri().query());
    let get = |name: &str| query.get(name);
    let listing = get("list-type") == Some("2") && path == bucket.bucket;
    let (status, body) = match &state.upstream {
        _ if listing => {
            tokio::time::sleep(bucket.latency).await;
            state.pages.fetch_add(1, Ordering::Relaxed);
            (200, Bytes::from(list_page(bucket, &get)))
        }
        Some((upstream, client)) => match forward(upstream, client, request).await {
            Ok(response) => return response,
            Err(e) => (
                502,
                Bytes::from(format!("<Error><Message>{e:#}</Message></Error>")),
            ),
        },
        None => (
            501,
            Bytes::from("<Error><Code>NotImplemented</Code></Error>"),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Full::new(body))
        .expect("a static response is valid")
}

/// `request`, sent to `upstream`, and its whole answer.
async fn forward(
    upstream: &str,
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Incoming>,
) -> anyhow::Result<Response<Full<Bytes>>> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{upstream}{path}").parse()?;
    let body = body.collect().await?.to_bytes();
    let response = client
        .request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (head, body) = response.into_parts();
    Ok(Response::from_parts(
        head,
        Full::new(body.collect().await?.to_bytes()),
    ))
}

/// The ListObjectsV2 page a request asks for.
fn list_page<'q>(bucket: &SyntheticBucket, get: &impl Fn(&str) -> Option<&'q str>) -> String {
    let prefix = get("prefix").unwrap_or("");
    let delimiter = get("delimiter").filter(|d| !d.is_empty());
    let max_keys: u64 = get("max-keys").and_then(|m| m.parse().ok()).unwrap_or(1000);
    let max_keys = max_keys.min(1000);
    let mut next = match (get("continuation-token"), get("start-after")) {
        (Some(token), _) => token.parse().unwrap_or(bucket.objects),
        (None, Some(after)) => bucket.first_from(after, false),
        (None, None) => 0,
    };
    next = next.max(bucket.first_from(prefix, true));
    let (mut contents, mut common) = (String::new(), Vec::<String>::new());
    let mut count = 0;
    while next < bucket.objects && count < max_keys {
        let key = bucket.key(next);
        let Some(rest) = key.strip_prefix(prefix) else {
            break;
        };
        if let Some(cut) = delimiter.and_then(|d| rest.find(d).map(|at| at + d.len())) {
            let rolled = format!("{prefix}{}", &rest[..cut]);
            // Past every key under the rolled-up prefix.
            next = bucket.first_from(&format!("{rolled}\u{10ffff}"), false);
            common.push(rolled);
        } else {
            let _ = write!(
                contents,
                "<Contents><Key>{key}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>\
                 <ETag>\"{next:032x}\"</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                bucket.size(next)
            );
            next += 1;
        }
        count += 1;
    }
    let more = next < bucket.objects && bucket.key(next).starts_with(prefix);
    let token = if more {
        format!("<NextContinuationToken>{next}</NextContinuationToken>")
    } else {
        String::new()
    };
    let common: String = common
        .iter()
        .map(|p| format!("<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>"))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Name>{}</Name><Prefix>{prefix}</Prefix><KeyCount>{count}</KeyCount>\
         <MaxKeys>{max_keys}</MaxKeys><IsTruncated>{more}</IsTruncated>{token}{contents}{common}\
         </ListBucketResult>",
        bucket.bucket
    )
}
