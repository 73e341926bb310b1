//! A fault-injecting HTTP proxy in front of the emulator, for the failures the emulator never
//! produces: throttling, `UnprocessedItems`/`UnprocessedKeys`, 5xx answers, dropped
//! connections (also in the middle of an S3 object body) and answers slower than a timeout.
//!
//! The proxy sits on the wire, so the code under test runs unchanged with real aws-sdk
//! clients: point the SDK (or a child process, through `AWS_ENDPOINT_URL` — see
//! [`FaultProxy::env`]) at [`FaultProxy::endpoint`] instead of the emulator's endpoint.
//!
//! ```no_run
//! use embatch_localaws::faults::{Fault, FaultPlan, FaultProxy, FaultRule, Match};
//! use embatch_localaws::Emulator;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let emulator = Emulator::start()?;
//! let proxy = FaultProxy::start(
//!     &emulator.endpoint(),
//!     FaultPlan {
//!         seed: 7,
//!         rules: vec![
//!             FaultRule::new(Match::dynamodb("BatchWriteItem"), Fault::Unprocessed).probability(0.5),
//!             FaultRule::new(Match::s3_get(), Fault::ResetMidBody).limit(3),
//!         ],
//!     },
//! )?;
//! let config = embatch_localaws::emulator::sdk_config_for(&proxy.endpoint()).await;
//! // ... run the code under test with `config` ...
//! assert!(proxy.counts().injected() > 0, "the faults really happened");
//! # Ok(()) }
//! ```
//!
//! # Determinism
//!
//! Whether a rule fires for a request, and which items a partial batch keeps, is a function of
//! the seed, the rule, the request's content (DynamoDB: its JSON with keys sorted; otherwise
//! method, path, query and `Range`) and how many times that same request was seen before. It
//! does not depend on how concurrent requests interleave, with one exception: a rule's
//! [`FaultRule::limit`] is spent in arrival order.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::http_server::LocalServer;
use crate::iam::{self, access_denied, Iam, WireRequest};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// The header naming a DynamoDB operation (`DynamoDB_20120810.BatchWriteItem`).
const TARGET_HEADER: &str = "x-amz-target";
const DYNAMODB_TARGET_PREFIX: &str = "DynamoDB_20120810.";

/// Which requests a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// Every request.
    Any,
    /// DynamoDB requests, of one operation (`"BatchWriteItem"`) or all (`None`).
    DynamoDb {
        /// The operation, without the `DynamoDB_20120810.` prefix.
        operation: Option<String>,
    },
    /// AWS Batch requests, of one operation (its path, lower case: `"submitjob"`, `"listjobs"`)
    /// or all (`None`).
    Batch {
        /// The operation as it appears in the path `/v1/<operation>`.
        operation: Option<String>,
    },
    /// Amazon S3 Vectors requests, of one operation (its path: `"PutVectors"`) or all.
    S3Vectors {
        /// The operation as it appears in the path `/<operation>`.
        operation: Option<String>,
    },
    /// S3 requests (path-style addressing: `/bucket/key`).
    S3 {
        /// The HTTP method, or any.
        method: Option<Method>,
        /// The path must start with this (e.g. `/images-bucket/`), or any path.
        path_prefix: Option<String>,
    },
}

impl Match {
    /// One DynamoDB operation, e.g. `Match::dynamodb("BatchGetItem")`.
    pub fn dynamodb(operation: &str) -> Self {
        Match::DynamoDb {
            operation: Some(operation.to_string()),
        }
    }

    /// S3 GETs of any path: object downloads, and also listings (a GET on the bucket). For
    /// downloads only, use [`Match::s3_get_under`].
    pub fn s3_get() -> Self {
        Match::S3 {
            method: Some(Method::GET),
            path_prefix: None,
        }
    }

    /// S3 GETs of objects under `/bucket/prefix`.
    pub fn s3_get_under(bucket: &str, prefix: &str) -> Self {
        Match::S3 {
            method: Some(Method::GET),
            path_prefix: Some(format!("/{bucket}/{prefix}")),
        }
    }

    /// S3 PUTs of objects under `/bucket/prefix` (e.g. a run's reports).
    pub fn s3_put_under(bucket: &str, prefix: &str) -> Self {
        Match::S3 {
            method: Some(Method::PUT),
            path_prefix: Some(format!("/{bucket}/{prefix}")),
        }
    }

    /// One AWS Batch operation, e.g. `Match::batch("SubmitJob")`.
    pub fn batch(operation: &str) -> Self {
        Match::Batch {
            operation: Some(operation.to_ascii_lowercase()),
        }
    }

    /// One Amazon S3 Vectors operation, e.g. `Match::s3vectors("PutVectors")`.
    pub fn s3vectors(operation: &str) -> Self {
        Match::S3Vectors {
            operation: Some(operation.to_string()),
        }
    }

    fn matches(&self, request: &Seen) -> bool {
        let rest = |seen: &Option<String>, wanted: &Option<String>| {
            seen.as_ref()
                .is_some_and(|op| wanted.as_ref().is_none_or(|o| o == op))
        };
        match self {
            Match::Batch { operation } => return rest(&request.batch, operation),
            Match::S3Vectors { operation } => return rest(&request.s3vectors, operation),
            _ => {}
        }
        if request.batch.is_some() || request.s3vectors.is_some() {
            return matches!(self, Match::Any);
        }
        match (self, &request.operation) {
            (Match::Any, _) => true,
            (Match::DynamoDb { operation }, Some(op)) => operation.as_ref().is_none_or(|o| o == op),
            (
                Match::S3 {
                    method,
                    path_prefix,
                },
                None,
            ) => {
                method.as_ref().is_none_or(|m| *m == request.method)
                    && path_prefix
                        .as_ref()
                        .is_none_or(|p| request.path.starts_with(p.as_str()))
            }
            _ => false,
        }
    }
}

/// What to do to a matched request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this 5xx status without forwarding: DynamoDB gets a JSON
    /// `InternalServerError` (500) or `ServiceUnavailable` (other), S3 an XML `InternalError`
    /// or `ServiceUnavailable`.
    Status(u16),
    /// Answer "slow down" without forwarding: DynamoDB 400
    /// `ProvisionedThroughputExceededException`; S3 503 `SlowDown`.
    Throttle,
    /// DynamoDB 400 `ThrottlingException` (S3: like [`Fault::Throttle`]).
    ThrottlingException,
    /// `BatchWriteItem`/`BatchGetItem` only: forward a random subset of the items (or keys),
    /// at least one fewer than asked, and return the rest as `UnprocessedItems`
    /// (`UnprocessedKeys`), as DynamoDB does under load. Other requests pass unharmed.
    Unprocessed,
    /// Close the connection without answering (the request is not forwarded).
    Reset,
    /// Forward, then send the status, the headers and half of the body, and close the
    /// connection. For S3 object downloads.
    ResetMidBody,
    /// Forward, then send the status, the headers and half of the body, go silent for this
    /// long, and close the connection: a stalled download. For S3 object downloads.
    StallMidBody(Duration),
    /// Forward after this long: longer than the client's timeout, it is a timeout.
    Delay(Duration),
    /// Forward (the request takes effect), then close the connection without the answer: a
    /// response lost on the way back.
    LostResponse,
    /// Answer with this status and JSON body without forwarding (e.g. a listing that does not
    /// show a new job yet: eventual consistency).
    Respond(u16, String),
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Status(_) => "status",
            Fault::Throttle => "throttle",
            Fault::ThrottlingException => "throttling-exception",
            Fault::Unprocessed => "unprocessed",
            Fault::Reset => "reset",
            Fault::ResetMidBody => "reset-mid-body",
            Fault::StallMidBody(_) => "stall-mid-body",
            Fault::Delay(_) => "delay",
            Fault::LostResponse => "lost-response",
            Fault::Respond(..) => "respond",
        }
    }
}

/// One rule: a fault for matching requests, with a probability and an optional limit.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// Which requests.
    pub when: Match,
    /// What to do.
    pub fault: Fault,
    /// Chance that a matching request gets the fault, in `0.0..=1.0`.
    pub probability: f64,
    /// At most this many injections by this rule (`None`: no limit).
    pub limit: Option<u64>,
    /// The first this many matching requests pass unharmed (in arrival order).
    pub skip: u64,
    /// Fire only within this long of the rule's first matching request (`None`: always).
    pub window: Option<Duration>,
}

impl FaultRule {
    /// `fault` for every request matching `when`.
    pub fn new(when: Match, fault: Fault) -> Self {
        Self {
            when,
            fault,
            probability: 1.0,
            limit: None,
            skip: 0,
            window: None,
        }
    }

    /// Fire only during the first `d` after the first matching request: an episode of
    /// throttling that ends, say.
    pub fn during(mut self, d: Duration) -> Self {
        self.window = Some(d);
        self
    }

    /// Let the first `n` matching requests through.
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// Fire for this fraction of matching requests.
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }

    /// Fire at most `n` times.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
}

/// The proxy's rules. For each request the first rule that matches and fires applies; a
/// request no rule fires for is forwarded unchanged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Seeds every random choice.
    pub seed: u64,
    /// In order of precedence.
    pub rules: Vec<FaultRule>,
}

/// What the proxy saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received.
    pub requests: u64,
    /// Requests per operation: the DynamoDB operation name, or `"S3 GET"`, `"S3 PUT"`, ...
    pub operations: BTreeMap<String, u64>,
    /// Faults injected by each rule, in plan order.
    pub per_rule: Vec<u64>,
    /// Requests each rule matched (injected or not, if no earlier rule fired), in plan order.
    pub matched: Vec<u64>,
    /// Of those, the requests within the rule's [`FaultRule::during`] window (all of them for
    /// a rule without one).
    pub in_window: Vec<u64>,
    /// Faults injected by kind (`"throttle"`, `"unprocessed"`, `"reset"`, ...).
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Items and keys returned as unprocessed by [`Fault::Unprocessed`].
    pub withheld: u64,
    /// The most items (`BatchWriteItem`), keys (`BatchGetItem`, `S3Vectors GetVectors`) or
    /// vectors (`S3Vectors PutVectors`) seen in one request, by operation.
    pub largest_batch: BTreeMap<String, usize>,
}

impl FaultCounts {
    /// Counts one request: in all, per operation, and the size of a batch.
    fn count(&mut self, seen: &Seen, json: Option<&Value>) {
        self.requests += 1;
        let op_name = match (&seen.operation, &seen.batch, &seen.s3vectors) {
            (Some(op), _, _) => op.clone(),
            (None, Some(op), _) => format!("Batch {op}"),
            (None, None, Some(op)) => format!("S3Vectors {op}"),
            (None, None, None) => format!("S3 {}", seen.method),
        };
        *self.operations.entry(op_name.clone()).or_default() += 1;
        let op = seen.operation.as_ref().or(seen.s3vectors.as_ref());
        if let (Some(op), Some(v)) = (op, json) {
            if let Some(size) = batch_size(op, v) {
                let largest = self.largest_batch.entry(op_name).or_default();
                *largest = (*largest).max(size);
            }
        }
    }

    /// Faults injected in all.
    pub fn injected(&self) -> u64 {
        self.per_rule.iter().sum()
    }

    /// Requests of one operation (`"BatchWriteItem"`, `"S3 GET"`).
    pub fn operation(&self, name: &str) -> u64 {
        self.operations.get(name).copied().unwrap_or(0)
    }

    /// Faults of one kind injected (`"throttle"`, `"status"`; see [`FaultCounts::by_kind`]).
    pub fn kind(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }

    /// The largest batch seen of one operation (0 if none; see [`FaultCounts::largest_batch`]).
    pub fn largest(&self, operation: &str) -> usize {
        self.largest_batch.get(operation).copied().unwrap_or(0)
    }
}

/// A running proxy. It serves on its own thread and runtime, so it keeps answering while the
/// test thread blocks on a child process; it stops when dropped.
pub struct FaultProxy {
    server: LocalServer,
    state: Arc<State>,
}

struct State {
    upstream: String,
    plan: FaultPlan,
    iam: Option<Arc<Iam>>,
    client: Client<HttpConnector, Full<Bytes>>,
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    counts: FaultCounts,
    /// When each rule first matched.
    first_match: HashMap<usize, std::time::Instant>,
    /// How often each request content was seen before.
    occurrences: HashMap<u64, u64>,
}

/// A request as the rules see it.
struct Seen {
    method: Method,
    path: String,
    /// The DynamoDB operation, `None` for S3 and Batch.
    operation: Option<String>,
    /// The Batch operation (the path's `/v1/<operation>`), `None` for the other services.
    batch: Option<String>,
    /// The S3 Vectors operation (the path's `/<operation>`), `None` for the other services.
    s3vectors: Option<String>,
}

impl Seen {
    fn of(parts: &hyper::http::request::Parts) -> Seen {
        let operation = parts
            .headers
            .get(TARGET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.strip_prefix(DYNAMODB_TARGET_PREFIX))
            .map(str::to_string);
        let service = iam::signer(&parts.headers).map(|(_, service)| service);
        let path = parts.uri.path();
        let batch = (service.as_deref() == Some("batch"))
            .then(|| path.strip_prefix("/v1/").map(str::to_string))
            .flatten();
        let s3vectors = (service.as_deref() == Some("s3vectors"))
            .then(|| path.trim_start_matches('/').to_string());
        Seen {
            method: parts.method.clone(),
            path: path.to_string(),
            operation,
            batch,
            s3vectors,
        }
    }
}

/// What identifies a request's content across retries: its JSON body (DynamoDB), else its
/// method, URI and range.
fn content_hash(parts: &hyper::http::request::Parts, json: Option<&Value>) -> u64 {
    let mut h = DefaultHasher::new();
    match json {
        // serde_json's maps are sorted, so this ignores the SDK's map ordering.
        Some(v) => v.to_string().hash(&mut h),
        None => {
            parts.method.as_str().hash(&mut h);
            parts.uri.to_string().hash(&mut h);
            parts
                .headers
                .get("range")
                .map(|r| r.as_bytes())
                .hash(&mut h);
        }
    }
    h.finish()
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `upstream`
    /// (`http://127.0.0.1:<port>`, e.g. [`crate::Emulator::endpoint`]).
    pub fn start(upstream: &str, plan: FaultPlan) -> anyhow::Result<Self> {
        Self::start_with(upstream, plan, None)
    }

    /// Like [`FaultProxy::start`], and every request is first authorised by `iam` (see
    /// [`crate::iam`]): a denied one is answered AccessDenied and never forwarded.
    pub fn with_iam(upstream: &str, plan: FaultPlan, iam: Arc<Iam>) -> anyhow::Result<Self> {
        Self::start_with(upstream, plan, Some(iam))
    }

    fn start_with(upstream: &str, plan: FaultPlan, iam: Option<Arc<Iam>>) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            book: Mutex::new(Book {
                counts: FaultCounts {
                    per_rule: vec![0; plan.rules.len()],
                    matched: vec![0; plan.rules.len()],
                    in_window: vec![0; plan.rules.len()],
                    ..FaultCounts::default()
                },
                ..Book::default()
            }),
            plan,
            iam,
        });
        let serving = state.clone();
        let server = LocalServer::start("fault-proxy", move |request| {
            let state = serving.clone();
            async move { state.handle(request).await }
        })?;
        Ok(Self { server, state })
    }

    /// `http://127.0.0.1:<port>`: use it where the emulator's endpoint would go.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// The environment pointing a child process at the proxy (see [`crate::emulator::env_for`]).
    pub fn env(&self) -> Vec<(String, String)> {
        crate::emulator::env_for(&self.endpoint())
    }

    /// What the proxy has seen and injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.state
            .book
            .lock()
            .expect("fault book lock")
            .counts
            .clone()
    }
}

impl State {
    async fn handle(&self, request: Request<Incoming>) -> anyhow::Result<Response<ProxyBody>> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let seen = Seen::of(&parts);
        let json: Option<Value> = (seen.operation.is_some() || seen.s3vectors.is_some())
            .then(|| serde_json::from_slice(&body).ok())
            .flatten();
        let chosen = self.choose(&seen, json.as_ref(), content_hash(&parts, json.as_ref()));
        if let Some(denied) = self.denied(&parts, &body) {
            return Ok(denied);
        }
        let dynamodb = seen.operation.is_some();
        match chosen {
            None if self.iam.is_some() => self.forward_enforced(parts, body).await,
            None => self.forward(parts, body).await.map(full_response),
            Some((Fault::Status(status), _)) => Ok(error_answer(dynamodb, status, false)),
            Some((Fault::Throttle, _)) => Ok(error_answer(dynamodb, 0, true)),
            Some((Fault::ThrottlingException, _)) => Ok(throttling_exception(dynamodb)),
            Some((Fault::Reset, _)) => anyhow::bail!("injected connection reset"),
            Some((Fault::Delay(delay), _)) => {
                // The fault itself is the wait: the client's timeout should fire meanwhile.
                tokio::time::sleep(delay).await;
                self.forward(parts, body).await.map(full_response)
            }
            Some((Fault::LostResponse, _)) => {
                self.forward(parts, body).await?;
                anyhow::bail!("injected lost response")
            }
            Some((Fault::Respond(status, body), _)) => Ok(json_answer(
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                body,
            )),
            Some((Fault::ResetMidBody, _)) => {
                let response = self.forward(parts, body).await?;
                Ok(half_then_close(response, Duration::ZERO))
            }
            Some((Fault::StallMidBody(stall), _)) => {
                let response = self.forward(parts, body).await?;
                Ok(half_then_close(response, stall))
            }
            Some((Fault::Unprocessed, choice)) => {
                let write = seen.operation.as_deref() == Some("BatchWriteItem");
                let json = json.expect("batch requests are JSON");
                self.partial_batch(write, parts, json, choice).await
            }
        }
    }

    /// Counts the request and picks the fault to inject, if any: the first rule that matches,
    /// is past its `skip`, inside its window and limit, and whose seeded draw falls under its
    /// probability. The draw depends on the seed, the rule, the request's content and how
    /// many times that content was seen, so a retry of the same request draws again.
    fn choose(&self, seen: &Seen, json: Option<&Value>, content: u64) -> Option<(Fault, u64)> {
        let mut book = self.book.lock().expect("fault book lock");
        let book = &mut *book;
        book.counts.count(seen, json);
        let occurrence = book.occurrences.entry(content).or_default();
        let nth = *occurrence;
        *occurrence += 1;
        for (i, rule) in self.plan.rules.iter().enumerate() {
            if !rule.when.matches(seen) {
                continue;
            }
            book.counts.matched[i] += 1;
            let first = *book
                .first_match
                .entry(i)
                .or_insert_with(std::time::Instant::now);
            let outside = rule.window.is_some_and(|w| first.elapsed() > w);
            if !outside {
                book.counts.in_window[i] += 1;
            }
            if book.counts.matched[i] <= rule.skip
                || outside
                || rule.limit.is_some_and(|l| book.counts.per_rule[i] >= l)
                || matches!(rule.fault, Fault::Unprocessed) && !is_batch(seen)
            {
                continue;
            }
            if unit(hash_of((self.plan.seed, i, content, nth))) < rule.probability {
                book.counts.per_rule[i] += 1;
                *book.counts.by_kind.entry(rule.fault.kind()).or_default() += 1;
                let choice = hash_of((self.plan.seed, content, nth, "choice"));
                return Some((rule.fault.clone(), choice));
            }
        }
        None
    }

    /// With IAM enforced, the access-denied answer AWS would give, if the request is denied.
    fn denied(
        &self,
        parts: &hyper::http::request::Parts,
        body: &Bytes,
    ) -> Option<Response<ProxyBody>> {
        let iam = self.iam.as_ref()?;
        let wire = WireRequest {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        };
        let authorized = iam.authorize(&wire);
        if authorized.allowed() {
            return None;
        }
        let service = iam::signer(&parts.headers).map(|(_, service)| service);
        Some(full_response(access_denied(
            service.as_deref(),
            &parts.method,
            &authorized,
        )))
    }

    /// Forwards an authorised request; a 404 on an S3 object becomes 403 when the caller may
    /// not list the key (S3's rule: without `s3:ListBucket`, a missing key is access denied).
    async fn forward_enforced(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> anyhow::Result<Response<ProxyBody>> {
        let iam = self.iam.as_ref().expect("called with IAM enforcement");
        let method = parts.method.clone();
        let headers = parts.headers.clone();
        let path = parts.uri.path().to_string();
        let response = self.forward(parts, body).await?;
        let object = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(_, key)| !key.is_empty());
        let s3 = iam::signer(&headers).is_some_and(|(_, service)| service == "s3");
        if let (true, StatusCode::NOT_FOUND, Some((bucket, key)), true) = (
            s3,
            response.status(),
            object,
            method == Method::GET || method == Method::HEAD,
        ) {
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            let visible = iam.missing_key(&headers, bucket, &key);
            if !visible.allowed() {
                return Ok(full_response(access_denied(Some("s3"), &method, &visible)));
            }
        }
        Ok(full_response(response))
    }

    /// Forwards a request upstream and returns the whole answer.
    async fn forward(
        &self,
        mut parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> anyhow::Result<Response<Bytes>> {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = format!("{}{}", self.upstream, path).parse()?;
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let response = self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (head, body) = response.into_parts();
        Ok(Response::from_parts(head, body.collect().await?.to_bytes()))
    }

    /// Forwards part of a `BatchWriteItem`/`BatchGetItem` and answers with the rest as
    /// unprocessed, merged into the upstream's answer.
    async fn partial_batch(
        &self,
        write: bool,
        parts: hyper::http::request::Parts,
        mut request: Value,
        choice: u64,
    ) -> anyhow::Result<Response<ProxyBody>> {
        let (withheld, count) = withhold(write, &mut request, &mut StdRng::seed_from_u64(choice));
        self.book.lock().expect("fault book lock").counts.withheld += count;
        let forward_any = request["RequestItems"]
            .as_object()
            .is_some_and(|t| !t.is_empty());
        let mut answer = if forward_any {
            let upstream = self
                .forward(parts, Bytes::from(request.to_string()))
                .await?;
            if upstream.status() != StatusCode::OK {
                return Ok(full_response(upstream));
            }
            serde_json::from_slice(upstream.body())?
        } else if write {
            json!({"UnprocessedItems": {}})
        } else {
            json!({"Responses": {}, "UnprocessedKeys": {}})
        };
        add_unprocessed(write, &mut answer, withheld);
        Ok(json_answer(StatusCode::OK, answer.to_string()))
    }
}

/// The requests (write) or keys (get) of a batch, per table.
fn batch_list(write: bool, entry: &mut Value) -> Option<&mut Vec<Value>> {
    if write {
        entry.as_array_mut()
    } else {
        entry.get_mut("Keys").and_then(Value::as_array_mut)
    }
}

/// Takes a random non-empty share of each table's entries out of `request`; returns them
/// per table (as the answer's unprocessed entries) and how many. Tables left with nothing
/// are dropped from the request (DynamoDB rejects empty lists).
fn withhold(
    write: bool,
    request: &mut Value,
    rng: &mut StdRng,
) -> (serde_json::Map<String, Value>, u64) {
    let mut withheld = serde_json::Map::new();
    let mut count = 0u64;
    let Some(tables) = request
        .get_mut("RequestItems")
        .and_then(Value::as_object_mut)
    else {
        return (withheld, 0);
    };
    for (table, entry) in tables.iter_mut() {
        let Some(list) = batch_list(write, entry).filter(|l| !l.is_empty()) else {
            continue;
        };
        let n = list.len();
        let hold = rng.random_range(1..=n);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let held: std::collections::HashSet<usize> = order[..hold].iter().copied().collect();
        let (mut keep, mut away) = (Vec::new(), Vec::new());
        for (i, v) in list.drain(..).enumerate() {
            if held.contains(&i) {
                away.push(v)
            } else {
                keep.push(v)
            }
        }
        count += away.len() as u64;
        *list = keep;
        let withheld_entry = if write {
            Value::Array(away)
        } else {
            let mut unprocessed = entry.clone();
            unprocessed["Keys"] = Value::Array(away);
            unprocessed
        };
        withheld.insert(table.clone(), withheld_entry);
    }
    tables.retain(|_, entry| batch_list(write, entry).is_some_and(|l| !l.is_empty()));
    (withheld, count)
}

/// Adds the withheld entries to the answer's `UnprocessedItems`/`UnprocessedKeys`, beside
/// whatever the upstream left unprocessed itself.
fn add_unprocessed(write: bool, answer: &mut Value, withheld: serde_json::Map<String, Value>) {
    let field = if write {
        "UnprocessedItems"
    } else {
        "UnprocessedKeys"
    };
    if !answer.get(field).is_some_and(Value::is_object) {
        answer[field] = json!({});
    }
    for (table, mut held) in withheld {
        let slot = &mut answer[field][&table];
        let mut all = batch_list(write, &mut held)
            .map(std::mem::take)
            .unwrap_or_default();
        all.extend(
            batch_list(write, slot)
                .map(std::mem::take)
                .unwrap_or_default(),
        );
        if write {
            *slot = Value::Array(all);
        } else {
            held["Keys"] = Value::Array(all);
            *slot = held;
        }
    }
}

/// Items in a `BatchWriteItem` or keys in a `BatchGetItem`, summed over tables; vectors in a
/// `PutVectors`, keys in a `GetVectors`.
fn batch_size(operation: &str, request: &Value) -> Option<usize> {
    match operation {
        "PutVectors" => return Some(request.get("vectors")?.as_array()?.len()),
        "GetVectors" => return Some(request.get("keys")?.as_array()?.len()),
        _ => {}
    }
    let tables = request.get("RequestItems")?.as_object()?;
    match operation {
        "BatchWriteItem" => Some(
            tables
                .values()
                .filter_map(Value::as_array)
                .map(Vec::len)
                .sum(),
        ),
        "BatchGetItem" => Some(
            tables
                .values()
                .filter_map(|e| e.get("Keys").and_then(Value::as_array))
                .map(Vec::len)
                .sum(),
        ),
        _ => None,
    }
}

/// The error that makes hyper drop the connection.
fn injected(what: &'static str) -> BoxError {
    Box::new(std::io::Error::other(what))
}

fn is_batch(seen: &Seen) -> bool {
    matches!(
        seen.operation.as_deref(),
        Some("BatchWriteItem" | "BatchGetItem")
    )
}

fn hash_of(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// A hash as a number in `0.0..1.0`.
fn unit(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

fn full_response(response: Response<Bytes>) -> Response<ProxyBody> {
    response.map(|b| {
        Full::new(b)
            .map_err(|never: Infallible| match never {})
            .boxed()
    })
}

fn json_answer(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = full_response(Response::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    response
}

fn xml_answer(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>injected</RequestId></Error>"
    );
    let mut response = full_response(Response::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    response
}

/// A 5xx (`throttle == false`) or a throttling answer in the service's own format.
fn error_answer(dynamodb: bool, status: u16, throttle: bool) -> Response<ProxyBody> {
    match (dynamodb, throttle) {
        (true, true) => json_answer(
            StatusCode::BAD_REQUEST,
            json!({
                "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "message": "The level of configured provisioned throughput for the table was exceeded (injected)"
            })
            .to_string(),
        ),
        (false, true) => xml_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate. (injected)",
        ),
        (true, false) => {
            let code = if status == 500 { "InternalServerError" } else { "ServiceUnavailable" };
            json_answer(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                json!({
                    "__type": format!("com.amazonaws.dynamodb.v20120810#{code}"),
                    "message": "injected server error"
                })
                .to_string(),
            )
        }
        (false, false) => {
            let code = if status == 500 { "InternalError" } else { "ServiceUnavailable" };
            xml_answer(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                code,
                "injected server error",
            )
        }
    }
}

fn throttling_exception(dynamodb: bool) -> Response<ProxyBody> {
    if dynamodb {
        json_answer(
            StatusCode::BAD_REQUEST,
            json!({
                "__type": "com.amazon.coral.availability#ThrottlingException",
                "message": "Rate of requests exceeds the allowed throughput. (injected)"
            })
            .to_string(),
        )
    } else {
        error_answer(false, 0, true)
    }
}

/// The response's head and the first half of its body, then, after `silence`, a closed
/// connection.
fn half_then_close(response: Response<Bytes>, silence: Duration) -> Response<ProxyBody> {
    let (head, full) = response.into_parts();
    let half = full.slice(..full.len() / 2);
    let frames = futures::stream::iter([Ok::<_, BoxError>(Frame::data(half))]).chain(
        futures::stream::once(async move {
            // Let hyper flush the first half before the connection goes quiet or dies.
            tokio::task::yield_now().await;
            tokio::time::sleep(silence).await;
            Err::<Frame<Bytes>, BoxError>(injected("injected reset mid-body"))
        }),
    );
    Response::from_parts(head, BodyExt::boxed(StreamBody::new(frames)))
}
