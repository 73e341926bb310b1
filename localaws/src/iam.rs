//! IAM enforced in the test harness, as AWS enforces it and the emulator does not.
//!
//! The fault proxy ([`crate::faults::FaultProxy::with_iam`]) hands every request it receives to
//! [`Iam::authorize`]: the request is identified by its SigV4 credential scope (the service) and
//! its access key id (the principal), mapped to the IAM action(s), resource ARN(s) and condition
//! keys AWS would authorise it with ([`checks`], one row per operation, each citing the Service
//! Authorization Reference), and every check is evaluated by a real implementation of AWS's
//! policy evaluation: the npm package `@cloud-copilot/iam-simulate`, run as a separate process
//! (`localaws/iam/evaluate.mjs`; AGPL-3.0-or-later, a test tool never shipped or linked). A
//! denied request is answered with the service's own AccessDenied error and never reaches the
//! emulator. The mapping is closed: a request it does not know is denied and recorded as
//! unmapped, so a new call in the code under test fails the enforced-IAM tests until a row
//! for it is written.
//!
//! One rule of S3 is applied after the emulator answers: a GET or HEAD of a missing key is
//! answered 404 only if the caller may `s3:ListBucket` the key's prefix, else 403
//! (<https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html>, "Permissions").
//!
//! What stays untested here: the emulator's own authorisation (none), SCPs and permission
//! boundaries (none in the templates), KMS key policies (the bucket uses the AWS managed key),
//! VPC endpoint policies, and condition keys no policy of ours uses (S3's encryption headers,
//! DynamoDB's `dynamodb:LeadingKeys` and `dynamodb:ReturnValues`): they are not populated, so a
//! policy that conditions on them is evaluated with the key absent. DynamoDB's
//! `dynamodb:Attributes` and `dynamodb:Select` are populated from the request as given
//! ([`projection_context`]); whether AWS infers `Select` when a request omits it is not
//! modelled, which is why the submitter's policy requires it and the submitter sends it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context};
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http_server::Query;

/// The emulator's account.
pub const ACCOUNT: &str = "123456789012";

/// A principal the harness knows, by the access key id its requests are signed with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    /// A short name for reports (`submitter`, `worker`, `reader`).
    pub name: String,
    /// Its ARN (a user, or an assumed-role session).
    pub arn: String,
    /// The access key id its requests carry.
    pub access_key_id: String,
    /// Its identity policies, as deployed.
    pub policies: Vec<NamedPolicy>,
}

/// An identity policy with its name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedPolicy {
    /// Its name (for reports).
    pub name: String,
    /// The policy document.
    pub document: Value,
}

/// One authorisation AWS makes for a request: an action on a resource, with context keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Check {
    /// `service:Action`.
    pub action: String,
    /// The resource ARN (`*` for actions without resource-level permissions).
    pub resource: String,
    /// Condition keys and their values (a JSON string or a list of strings).
    pub context: BTreeMap<String, String>,
}

/// What IAM answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// Some statement allows it and none denies it.
    Allowed,
    /// No statement allows it.
    ImplicitlyDenied,
    /// A statement denies it.
    ExplicitlyDenied,
}

/// A request through the proxy and how it was authorised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Authorized {
    /// The principal's name, or `unknown key <id>`.
    pub principal: String,
    /// The operation, e.g. `s3 ListObjectsV2`, `batch SubmitJob`.
    pub operation: String,
    /// Each check with its decision; empty when the request is unmapped.
    pub checks: Vec<(Check, Decision)>,
    /// Why the request could not be mapped, if it could not.
    pub unmapped: Option<String>,
}

impl Authorized {
    /// Whether the request was let through.
    pub fn allowed(&self) -> bool {
        self.unmapped.is_none() && self.checks.iter().all(|(_, d)| *d == Decision::Allowed)
    }
}

/// The wire request, as the proxy received it.
pub struct WireRequest<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// The path, still percent-encoded.
    pub path: &'a str,
    /// The query string (without `?`).
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a hyper::HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// Principals, the evaluator, and the record of every authorised request.
pub struct Iam {
    principals: HashMap<String, Principal>,
    /// S3 bucket policies by bucket name (resource-based policies on the request's bucket).
    bucket_policies: HashMap<String, Value>,
    /// The latest active revision of each job definition name (AWS resolves a name to it).
    job_definitions: HashMap<String, u32>,
    region: String,
    evaluator: Mutex<Evaluator>,
    ledger: Mutex<Vec<Authorized>>,
}

impl std::fmt::Debug for Iam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iam")
            .field("principals", &self.principals.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Iam {
    /// Enforcement for these principals in `region`; starts the evaluator process.
    pub fn new(principals: Vec<Principal>, region: &str) -> anyhow::Result<Self> {
        Ok(Self {
            principals: principals
                .into_iter()
                .map(|p| (p.access_key_id.clone(), p))
                .collect(),
            bucket_policies: HashMap::new(),
            job_definitions: HashMap::new(),
            region: region.to_string(),
            evaluator: Mutex::new(Evaluator::start()?),
            ledger: Mutex::new(Vec::new()),
        })
    }

    /// Applies `policy` as the resource-based policy of `bucket`.
    pub fn bucket_policy(mut self, bucket: &str, policy: Value) -> Self {
        self.bucket_policies.insert(bucket.to_string(), policy);
        self
    }

    /// Resolves job definition `name` (without a revision) to `name:revision`, as AWS Batch
    /// resolves it to the latest active revision.
    pub fn job_definition(mut self, name: &str, revision: u32) -> Self {
        self.job_definitions.insert(name.to_string(), revision);
        self
    }

    /// Every request authorised so far, in arrival order.
    pub fn ledger(&self) -> Vec<Authorized> {
        self.ledger.lock().expect("ledger lock").clone()
    }

    /// The principal of an access key id.
    pub fn principal(&self, access_key_id: &str) -> Option<&Principal> {
        self.principals.get(access_key_id)
    }

    /// Authorises a request (recorded in the ledger).
    pub fn authorize(&self, request: &WireRequest<'_>) -> Authorized {
        let signer = signer(request.headers);
        let principal = signer
            .as_ref()
            .and_then(|(key, _)| self.principals.get(key));
        let mut authorized = Authorized {
            principal: match (&signer, principal) {
                (_, Some(p)) => p.name.clone(),
                (Some((key, _)), None) => format!("unknown key {key}"),
                (None, None) => "unsigned".to_string(),
            },
            operation: String::new(),
            checks: Vec::new(),
            unmapped: None,
        };
        let (Some((_, service)), Some(principal)) = (&signer, principal) else {
            authorized.unmapped = Some("no known principal signed the request".to_string());
            self.record(&authorized);
            return authorized;
        };
        match checks(service, request, self) {
            Ok((operation, checks)) => {
                authorized.operation = operation;
                for check in checks {
                    let decision = self.decide(principal, &check);
                    authorized.checks.push((check, decision));
                }
            }
            Err(unmapped) => {
                authorized.operation = format!("{service} {} {}", request.method, request.path);
                authorized.unmapped = Some(unmapped);
            }
        }
        self.record(&authorized);
        authorized
    }

    /// The S3 rule for a missing key (see the module docs): may the signer of `headers`
    /// learn that `bucket`/`key` does not exist? Recorded in the ledger as a check of its own.
    pub fn missing_key(&self, headers: &hyper::HeaderMap, bucket: &str, key: &str) -> Authorized {
        let check = list_bucket(bucket, Some(key), None);
        let principal = signer(headers).and_then(|(k, _)| self.principals.get(&k));
        let decision = principal.map_or(Decision::ImplicitlyDenied, |p| self.decide(p, &check));
        let authorized = Authorized {
            principal: principal.map_or_else(|| "unknown".to_string(), |p| p.name.clone()),
            operation: "s3 404 on a missing key (needs s3:ListBucket)".to_string(),
            checks: vec![(check, decision)],
            unmapped: None,
        };
        self.record(&authorized);
        authorized
    }

    /// Evaluates `check` for `principal` holding `policies` instead of its own: for asking
    /// whether a recorded flow would still pass with a statement removed.
    pub fn evaluate_with(
        &self,
        principal: &Principal,
        policies: &[NamedPolicy],
        check: &Check,
    ) -> Decision {
        let mut p = principal.clone();
        p.policies = policies.to_vec();
        self.decide(&p, check)
    }

    fn decide(&self, principal: &Principal, check: &Check) -> Decision {
        let bucket = check
            .resource
            .strip_prefix("arn:aws:s3:::")
            .map(|r| r.split('/').next().unwrap_or(r));
        let resource_policy = bucket.and_then(|b| self.bucket_policies.get(b));
        let mut context: serde_json::Map<String, Value> = check
            .context
            .iter()
            .map(|(k, v)| {
                let value = serde_json::from_str::<Vec<String>>(v)
                    .map(|l| json!(l))
                    .unwrap_or_else(|_| json!(v));
                (k.clone(), value)
            })
            .collect();
        // Global keys every request carries; the SDK talks to AWS over TLS only.
        context.insert("aws:SecureTransport".into(), json!("true"));
        context.insert("aws:PrincipalArn".into(), json!(principal.arn));
        context.insert("aws:PrincipalAccount".into(), json!(ACCOUNT));
        let request = json!({
            "principal": principal.arn,
            "identityPolicies": principal.policies.iter()
                .map(|p| json!({"name": p.name, "policy": p.document}))
                .collect::<Vec<_>>(),
            "resourcePolicy": resource_policy,
            "action": check.action,
            "resource": check.resource,
            "accountId": ACCOUNT,
            "context": context,
        });
        let answer = self
            .evaluator
            .lock()
            .expect("evaluator lock")
            .evaluate(&request);
        match answer {
            Ok(decision) => decision,
            Err(e) => {
                // The simulator refused the input (unknown action, wrong resource type): deny,
                // and say why, so that the test names the broken mapping row.
                tracing::error!(action = %check.action, resource = %check.resource, error = %e, "IAM evaluation failed");
                Decision::ImplicitlyDenied
            }
        }
    }

    fn record(&self, authorized: &Authorized) {
        self.ledger
            .lock()
            .expect("ledger lock")
            .push(authorized.clone());
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!("arn:aws:{service}:{}:{ACCOUNT}:{resource}", self.region)
    }
}

/// The access key id and service of a SigV4-signed request (from its credential scope,
/// `Credential=<key>/<date>/<region>/<service>/aws4_request`).
pub(crate) fn signer(headers: &hyper::HeaderMap) -> Option<(String, String)> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    let scope = credential.split([',', ' ']).next()?;
    let mut parts = scope.split('/');
    let key = parts.next()?.to_string();
    let service = parts.nth(2)?.to_string();
    Some((key, service))
}

/// The operation and the checks of a request to `service`, or why it cannot be mapped.
///
/// Sources, one per service (the Service Authorization Reference lists each action's resource
/// types and condition keys):
/// - S3: <https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html>
///   and "Required permissions for Amazon S3 API operations"
///   (<https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations.html>, each operation's
///   "Permissions" section);
/// - DynamoDB: <https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazondynamodb.html>;
/// - Batch: <https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsbatch.html>
///   and "Tag your resources on creation"
///   (<https://docs.aws.amazon.com/batch/latest/userguide/supported-iam-actions-tagging.html>);
/// - S3 Vectors: <https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3vectors.html>.
fn checks(
    service: &str,
    request: &WireRequest<'_>,
    iam: &Iam,
) -> Result<(String, Vec<Check>), String> {
    match service {
        "s3" => s3_checks(request),
        "dynamodb" => dynamodb_checks(request, iam),
        "batch" => batch_checks(request, iam),
        "s3vectors" => s3vectors_checks(request, iam),
        other => Err(format!("no mapping for service {other:?}")),
    }
}

/// Query parameters that select no S3 sub-resource (listing parameters and the SDK's `x-id`).
const S3_PLAIN_QUERY: &[&str] = &[
    "x-id",
    "list-type",
    "prefix",
    "delimiter",
    "max-keys",
    "continuation-token",
    "start-after",
    "encoding-type",
    "fetch-owner",
];

fn s3_checks(request: &WireRequest<'_>) -> Result<(String, Vec<Check>), String> {
    let query = Query::parse(request.query);
    let param = |name: &str| query.get(name);
    let subresources: Vec<&str> = query
        .names()
        .filter(|k| !S3_PLAIN_QUERY.contains(k))
        .collect();
    let (bucket, key) = s3_target(request.path)?;
    if !subresources.is_empty() {
        return Err(format!(
            "S3 sub-resource(s) {subresources:?} have no mapping"
        ));
    }
    let object = |action: &str| Check {
        action: action.to_string(),
        resource: format!(
            "arn:aws:s3:::{bucket}/{}",
            key.as_deref().unwrap_or_default()
        ),
        context: BTreeMap::new(),
    };
    let method = request.method;
    let (operation, checks) = match (method, &key) {
        // ListObjectsV2 / ListObjects: s3:ListBucket on the bucket, with s3:prefix,
        // s3:delimiter and s3:max-keys as condition keys.
        (&Method::GET, None) => (
            if param("list-type") == Some("2") {
                "ListObjectsV2"
            } else {
                "ListObjects"
            },
            vec![list_bucket(
                bucket,
                param("prefix"),
                Some((param("delimiter"), param("max-keys"))),
            )],
        ),
        // HeadBucket: "you must have permission to perform the s3:ListBucket action".
        (&Method::HEAD, None) => ("HeadBucket", vec![list_bucket(bucket, None, None)]),
        // GetObject and HeadObject: s3:GetObject (HEAD "requires READ access", the same action).
        (&Method::GET, Some(_)) => ("GetObject", vec![object("s3:GetObject")]),
        (&Method::HEAD, Some(_)) => ("HeadObject", vec![object("s3:GetObject")]),
        // PutObject: s3:PutObject; with x-amz-tagging also s3:PutObjectTagging.
        (&Method::PUT, Some(_)) => {
            if request.headers.contains_key("x-amz-copy-source") {
                return Err("CopyObject has no mapping".into());
            }
            let mut checks = vec![object("s3:PutObject")];
            if request.headers.contains_key("x-amz-tagging") {
                checks.push(object("s3:PutObjectTagging"));
            }
            ("PutObject", checks)
        }
        // DeleteObject: s3:DeleteObject.
        (&Method::DELETE, Some(_)) => ("DeleteObject", vec![object("s3:DeleteObject")]),
        _ => return Err(format!("S3 {method} {} has no mapping", request.path)),
    };
    Ok((format!("s3 {operation}"), checks))
}

/// The bucket and the decoded key (if any) of a path-style S3 request path.
fn s3_target(path: &str) -> Result<(&str, Option<String>), String> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (bucket, key) = match path.split_once('/') {
        Some((bucket, key)) if !key.is_empty() => (bucket, Some(key)),
        Some((bucket, _)) => (bucket, None),
        None => (path, None),
    };
    if bucket.is_empty() {
        return Err("S3 request without a bucket (path-style addressing expected)".into());
    }
    let key = key
        .map(|k| {
            percent_encoding::percent_decode_str(k)
                .decode_utf8()
                .map(|k| k.into_owned())
                .map_err(|_| format!("S3 key {k:?} is not UTF-8"))
        })
        .transpose()?;
    Ok((bucket, key))
}

/// `s3:ListBucket` on `bucket`, with `s3:prefix` (absent when there is none) and, for
/// listings, `s3:delimiter` and `s3:max-keys`.
fn list_bucket(
    bucket: &str,
    prefix: Option<&str>,
    listing: Option<(Option<&str>, Option<&str>)>,
) -> Check {
    let mut context = BTreeMap::new();
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        context.insert("s3:prefix".to_string(), prefix.to_string());
    }
    if let Some((delimiter, max_keys)) = listing {
        if let Some(d) = delimiter {
            context.insert("s3:delimiter".to_string(), d.to_string());
        }
        if let Some(m) = max_keys {
            context.insert("s3:max-keys".to_string(), m.to_string());
        }
    }
    Check {
        action: "s3:ListBucket".to_string(),
        resource: format!("arn:aws:s3:::{bucket}"),
        context,
    }
}

/// DynamoDB operations our binaries make, each `dynamodb:<Operation>` on the table(s) named
/// in the request (`TableName`, or every table of `RequestItems`).
const DYNAMODB_OPERATIONS: &[&str] = &[
    "DescribeTable",
    "GetItem",
    "PutItem",
    "DeleteItem",
    "UpdateItem",
    "BatchGetItem",
    "BatchWriteItem",
    "Query",
    "Scan",
];

fn dynamodb_checks(request: &WireRequest<'_>, iam: &Iam) -> Result<(String, Vec<Check>), String> {
    let operation = request
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("DynamoDB_20120810."))
        .ok_or("a DynamoDB request without X-Amz-Target")?;
    if !DYNAMODB_OPERATIONS.contains(&operation) {
        return Err(format!("DynamoDB {operation} has no mapping"));
    }
    let body: Value = serde_json::from_slice(request.body)
        .map_err(|e| format!("DynamoDB {operation}: body is not JSON: {e}"))?;
    let tables: Vec<String> = match body.get("RequestItems").and_then(Value::as_object) {
        Some(items) => items.keys().cloned().collect(),
        None => body
            .get("TableName")
            .and_then(Value::as_str)
            .map(|t| vec![t.to_string()])
            .ok_or_else(|| format!("DynamoDB {operation} names no table"))?,
    };
    let index = body.get("IndexName").and_then(Value::as_str);
    let checks = tables
        .iter()
        .map(|table| Check {
            action: format!("dynamodb:{operation}"),
            resource: match index {
                Some(i) => iam.arn("dynamodb", &format!("table/{table}/index/{i}")),
                None => iam.arn("dynamodb", &format!("table/{table}")),
            },
            context: projection_context(
                body.pointer(&format!("/RequestItems/{table}"))
                    .unwrap_or(&body),
            ),
        })
        .collect();
    Ok((format!("dynamodb {operation}"), checks))
}

/// `dynamodb:Attributes` (the attribute names a read projects: `ProjectionExpression` with its
/// `ExpressionAttributeNames` resolved, or `AttributesToGet`) and `dynamodb:Select`, as given
/// in the request (the Service Authorization Reference: "Filters access by attribute names",
/// "by the Select parameter of a Query or Scan request"). Absent when the request has none.
fn projection_context(request: &Value) -> BTreeMap<String, String> {
    let mut context = BTreeMap::new();
    let names = request.get("ExpressionAttributeNames");
    let attributes: Option<Vec<String>> = match request.get("ProjectionExpression") {
        Some(Value::String(expression)) => Some(
            expression
                .split(',')
                .map(|path| {
                    // The attribute a document path starts at: `a.b[2]` reads from `a`.
                    let head = path.trim().split(['.', '[']).next().unwrap_or_default();
                    names
                        .and_then(|n| n.get(head))
                        .and_then(Value::as_str)
                        .unwrap_or(head)
                        .to_string()
                })
                .collect(),
        ),
        _ => request.get("AttributesToGet").and_then(|a| {
            a.as_array()?
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect()
        }),
    };
    if let Some(attributes) = attributes {
        context.insert(
            "dynamodb:Attributes".to_string(),
            json!(attributes).to_string(),
        );
    }
    if let Some(select) = request.get("Select").and_then(Value::as_str) {
        context.insert("dynamodb:Select".to_string(), select.to_string());
    }
    context
}

/// S3 Vectors operations on an index, each `s3vectors:<Operation>` on the index's ARN
/// (`bucket/<bucket>/index/<index>`; resource type Index for every one of them).
const S3VECTORS_INDEX_OPERATIONS: &[&str] = &[
    "CreateIndex",
    "GetIndex",
    "DeleteIndex",
    "PutVectors",
    "GetVectors",
    "ListVectors",
    "DeleteVectors",
];

fn s3vectors_checks(request: &WireRequest<'_>, iam: &Iam) -> Result<(String, Vec<Check>), String> {
    let operation = request.path.trim_start_matches('/');
    if !S3VECTORS_INDEX_OPERATIONS.contains(&operation) {
        return Err(format!("S3 Vectors {operation} has no mapping"));
    }
    let body: Value = serde_json::from_slice(request.body)
        .map_err(|e| format!("S3 Vectors {operation}: body is not JSON: {e}"))?;
    let text = |name: &str| body.get(name).and_then(Value::as_str);
    let resource = match (
        text("indexArn"),
        text("vectorBucketName"),
        text("indexName"),
    ) {
        (Some(arn), _, _) => arn.to_string(),
        (None, Some(bucket), Some(index)) => {
            iam.arn("s3vectors", &format!("bucket/{bucket}/index/{index}"))
        }
        _ => return Err(format!("S3 Vectors {operation} names no index")),
    };
    let check = Check {
        action: format!("s3vectors:{operation}"),
        resource,
        context: BTreeMap::new(),
    };
    Ok((format!("s3vectors {operation}"), vec![check]))
}

fn batch_checks(request: &WireRequest<'_>, iam: &Iam) -> Result<(String, Vec<Check>), String> {
    let op = request
        .path
        .strip_prefix("/v1/")
        .ok_or_else(|| format!("Batch path {} has no mapping", request.path))?;
    let body: Value = if request.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(request.body).map_err(|e| format!("Batch {op}: {e}"))?
    };
    let anywhere = |action: &str| Check {
        action: action.to_string(),
        resource: "*".to_string(),
        context: BTreeMap::new(),
    };
    let (operation, checks) = match op {
        // No resource-level permissions: the reference lists no resource type for these.
        "describejobqueues" => (
            "DescribeJobQueues",
            vec![anywhere("batch:DescribeJobQueues")],
        ),
        "describejobdefinitions" => (
            "DescribeJobDefinitions",
            vec![anywhere("batch:DescribeJobDefinitions")],
        ),
        "describejobs" => ("DescribeJobs", vec![anywhere("batch:DescribeJobs")]),
        "listjobs" => ("ListJobs", vec![anywhere("batch:ListJobs")]),
        // SubmitJob: resource types job-definition* and job-queue* (both required), condition
        // keys aws:RequestTag/${TagKey} and aws:TagKeys; tags on create also need
        // batch:TagResource on the job ("Tag your resources on creation").
        "submitjob" => ("SubmitJob", submit_job_checks(&body, iam)?),
        other => return Err(format!("Batch {other} has no mapping")),
    };
    Ok((format!("batch {operation}"), checks))
}

fn submit_job_checks(body: &Value, iam: &Iam) -> Result<Vec<Check>, String> {
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("SubmitJob without {name}"))
    };
    let queue = field("jobQueue")?;
    let queue = if queue.starts_with("arn:") {
        queue.to_string()
    } else {
        iam.arn("batch", &format!("job-queue/{queue}"))
    };
    let definition = field("jobDefinition")?;
    let definition = if definition.starts_with("arn:") {
        definition.to_string()
    } else if definition.contains(':') {
        iam.arn("batch", &format!("job-definition/{definition}"))
    } else {
        let revision = iam.job_definitions.get(definition).ok_or_else(|| {
            format!("job definition {definition:?}: the harness was not told its latest revision")
        })?;
        iam.arn("batch", &format!("job-definition/{definition}:{revision}"))
    };
    let tags: BTreeMap<String, String> = body
        .get("tags")
        .and_then(Value::as_object)
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut context = BTreeMap::new();
    if !tags.is_empty() {
        let keys: Vec<&String> = tags.keys().collect();
        context.insert(
            "aws:TagKeys".to_string(),
            serde_json::to_string(&keys).expect("strings serialise"),
        );
        for (k, v) in &tags {
            context.insert(format!("aws:RequestTag/{k}"), v.clone());
        }
    }
    let check = |action: &str, resource: String| Check {
        action: action.to_string(),
        resource,
        context: context.clone(),
    };
    let mut checks = vec![
        check("batch:SubmitJob", queue),
        check("batch:SubmitJob", definition),
    ];
    if !tags.is_empty() {
        // The job id does not exist before the job: a placeholder any job/* pattern matches.
        checks.push(check(
            "batch:TagResource",
            iam.arn("batch", "job/to-be-created"),
        ));
    }
    Ok(checks)
}

/// The AccessDenied answer of `service` for a denied request.
pub fn access_denied(
    service: Option<&str>,
    method: &Method,
    authorized: &Authorized,
) -> hyper::Response<bytes::Bytes> {
    let (action, resource) = authorized
        .checks
        .iter()
        .find(|(_, d)| *d != Decision::Allowed)
        .map(|(c, _)| (c.action.as_str(), c.resource.as_str()))
        .unwrap_or(("(unmapped request)", "*"));
    let message = format!(
        "User: {} is not authorized to perform: {action} on resource: \"{resource}\" (enforced by the test harness)",
        authorized.principal
    );
    let (status, content_type, body, error_type) = match service {
        Some("dynamodb") => (
            400,
            "application/x-amz-json-1.0",
            json!({"__type": "com.amazon.coral.service#AccessDeniedException", "message": message})
                .to_string(),
            None,
        ),
        Some("batch") => (
            403,
            "application/json",
            json!({"message": message}).to_string(),
            Some("AccessDeniedException"),
        ),
        _ if method == Method::HEAD => (403, "application/xml", String::new(), None),
        _ => (
            403,
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>{}</Message><RequestId>iam-harness</RequestId></Error>",
                xml_escape(&message)
            ),
            None,
        ),
    };
    let mut response = hyper::Response::new(bytes::Bytes::from(body));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status");
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Some(t) = error_type {
        response.headers_mut().insert(
            "x-amzn-errortype",
            hyper::header::HeaderValue::from_static(t),
        );
    }
    response
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Every way to take one grant away from `policies`: each statement removed, and, in a
/// statement granting several actions, each of those actions removed. `(label, policies)`, the
/// label naming the policy, the statement (its `Sid`) and the action.
pub fn reductions(policies: &[NamedPolicy]) -> Vec<(String, Vec<NamedPolicy>)> {
    let mut out = Vec::new();
    for (p, policy) in policies.iter().enumerate() {
        let statements = match policy.document.get("Statement") {
            Some(Value::Array(list)) => list.clone(),
            Some(one) => vec![one.clone()],
            None => Vec::new(),
        };
        for (s, statement) in statements.iter().enumerate() {
            let sid = statement
                .get("Sid")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{s}"), str::to_string);
            let with = |replacement: Option<Value>| {
                let mut reduced = policies.to_vec();
                let mut list = statements.clone();
                match replacement {
                    Some(v) => list[s] = v,
                    None => {
                        list.remove(s);
                    }
                }
                reduced[p].document["Statement"] = Value::Array(list);
                reduced
            };
            out.push((format!("{}/{sid}", policy.name), with(None)));
            if let Some(Value::Array(actions)) = statement.get("Action") {
                if actions.len() > 1 {
                    for (i, action) in actions.iter().enumerate() {
                        let mut fewer = statement.clone();
                        let mut rest = actions.clone();
                        rest.remove(i);
                        fewer["Action"] = Value::Array(rest);
                        let name = action.as_str().unwrap_or_default();
                        out.push((format!("{}/{sid}/{name}", policy.name), with(Some(fewer))));
                    }
                }
            }
        }
    }
    out
}

/// The distinct checks each principal's requests needed, from a ledger.
pub fn needed_checks(ledger: &[Authorized]) -> BTreeMap<String, Vec<Check>> {
    let mut out: BTreeMap<String, HashSet<Check>> = BTreeMap::new();
    for entry in ledger {
        for (check, _) in &entry.checks {
            out.entry(entry.principal.clone())
                .or_default()
                .insert(check.clone());
        }
    }
    out.into_iter()
        .map(|(k, v)| {
            let mut v: Vec<Check> = v.into_iter().collect();
            v.sort();
            (k, v)
        })
        .collect()
}

/// The Node process running `localaws/iam/evaluate.mjs`, with a cache of its answers.
struct Evaluator {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    cache: HashMap<String, Decision>,
}

impl Evaluator {
    fn start() -> anyhow::Result<Self> {
        let dir = evaluator_dir();
        if !dir
            .join("node_modules/@cloud-copilot/iam-simulate")
            .is_dir()
        {
            bail!(
                "the IAM evaluator is not installed in {}: run `scripts/setup` (npm ci)",
                dir.display()
            );
        }
        let mut child = Command::new("node")
            .arg(dir.join("evaluate.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the IAM evaluator (node)")?;
        let stdin = child.stdin.take().context("evaluator stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("evaluator stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
            cache: HashMap::new(),
        })
    }

    fn evaluate(&mut self, request: &Value) -> anyhow::Result<Decision> {
        let line = request.to_string();
        if let Some(d) = self.cache.get(&line) {
            return Ok(*d);
        }
        writeln!(self.stdin, "{line}").context("writing to the IAM evaluator")?;
        self.stdin.flush()?;
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .context("reading from the IAM evaluator")?;
        let answer: Value = serde_json::from_str(&answer)
            .with_context(|| format!("the IAM evaluator answered {answer:?}"))?;
        let decision = match answer.get("decision").and_then(Value::as_str) {
            Some("Allowed") => Decision::Allowed,
            Some("ExplicitlyDenied") => Decision::ExplicitlyDenied,
            Some("ImplicitlyDenied") => Decision::ImplicitlyDenied,
            _ => bail!("the IAM evaluator refused {line}: {answer}"),
        };
        self.cache.insert(line, decision);
        Ok(decision)
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the evaluator and its npm packages live.
fn evaluator_dir() -> PathBuf {
    crate::python::workspace_root().join("localaws/iam")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(service: &str, key: &str) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential={key}/20261201/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0")
                .parse()
                .unwrap(),
        );
        h
    }

    fn s3(method: Method, path: &str, query: Option<&str>) -> Result<(String, Vec<Check>), String> {
        let h = headers("s3", "k");
        s3_checks(&WireRequest {
            method: &method,
            path,
            query,
            headers: &h,
            body: b"",
        })
    }

    #[test]
    fn the_signer_is_read_from_the_credential_scope() {
        assert_eq!(
            signer(&headers("dynamodb", "worker-key")),
            Some(("worker-key".into(), "dynamodb".into()))
        );
        assert_eq!(signer(&hyper::HeaderMap::new()), None);
    }

    #[test]
    fn s3_requests_map_to_their_actions_resources_and_keys() {
        let (op, c) = s3(
            Method::GET,
            "/b",
            Some("list-type=2&prefix=images%2F&max-keys=1"),
        )
        .unwrap();
        assert_eq!(op, "s3 ListObjectsV2");
        assert_eq!(c[0].action, "s3:ListBucket");
        assert_eq!(c[0].resource, "arn:aws:s3:::b");
        assert_eq!(c[0].context["s3:prefix"], "images/");
        assert_eq!(c[0].context["s3:max-keys"], "1");

        let (op, c) = s3(Method::HEAD, "/b", None).unwrap();
        assert_eq!(op, "s3 HeadBucket");
        assert!(c[0].context.is_empty(), "HeadBucket carries no prefix");

        let (_, c) = s3(
            Method::GET,
            "/b/a%20b/%C3%BC%2B.jpg",
            Some("x-id=GetObject"),
        )
        .unwrap();
        assert_eq!(c[0].resource, "arn:aws:s3:::b/a b/ü+.jpg");
        assert!(s3(Method::GET, "/b/k", Some("acl")).is_err(), "closed");
        assert!(s3(Method::POST, "/b/k", None).is_err(), "closed");
    }
}
