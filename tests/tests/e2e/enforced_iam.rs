//! The deployment's own IAM policies, enforced: the real `embatch submit`, `embatch status`,
//! `embatch-worker` and `embatch-vectors get/export/index` run with credentials that hold exactly the
//! policies the CloudFormation stack (and, in a second pass, the Terraform module) creates in
//! the emulator, and every request they make is authorised by a real IAM policy engine on the
//! wire (`embatch_localaws::iam`: the fault proxy, the Service Authorization Reference mapping,
//! `@cloud-copilot/iam-simulate`).
//!
//! Each pass asserts that every flow succeeds with no request denied or unmapped, and that the
//! policies hold nothing a flow does not need: with any single statement removed, at least one
//! request the flows made would be denied.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use embatch_formats::manifest::{to_jsonl, ManifestLine};
use embatch_formats::run::{exit, RunLayout, SubmittedJob};
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::batch::{assert_all_succeeded, Player};
use embatch_localaws::faults::{FaultPlan, FaultProxy};
use embatch_localaws::fixture::put_bytes;
use embatch_localaws::iam::{self, Decision, Iam, NamedPolicy, Principal};
use embatch_localaws::inventory_report::{self, Format};
use embatch_localaws::{bins, python, run_ok, sample, test_model, Emulator};
use serde::Deserialize;

/// What deploy/deployed_policies.py prints.
#[derive(Debug, Deserialize)]
struct Deployment {
    outputs: Outputs,
    principals: BTreeMap<String, Vec<NamedPolicy>>,
    bucket_policy: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Outputs {
    bucket: String,
    image_prefixes: Vec<String>,
    run_root: String,
    export_root: String,
    vector_bucket: String,
    inventory_root: String,
    table: String,
    job_queue: String,
    job_definition: String,
    job_definition_arn: String,
    job_role_arn: String,
}

impl Outputs {
    /// `embatch submit` as the outputs tell a user to call it, with the model spec `spec`.
    fn submit_args<'a>(&'a self, spec: &'a str) -> Vec<&'a str> {
        vec![
            "submit",
            "--bucket",
            &self.bucket,
            "--runs-uri",
            &self.run_root,
            "--job-queue",
            &self.job_queue,
            "--job-definition",
            &self.job_definition,
            "--table",
            &self.table,
            "--model-spec",
            spec,
        ]
    }
}

/// The same submission from an S3 Inventory report of the bucket under the stack's inventory
/// location (a dry run: the flow is reading the report), as the submitter.
async fn submit_from_an_inventory(
    emulator: &Emulator,
    o: &Outputs,
    submitter: &[(String, String)],
    listed_args: &[&str],
    images: usize,
) {
    let admin = embatch_aws::client::s3(&emulator.sdk_config().await);
    let folder = S3Uri::parse(&format!("{}{}/daily/", o.inventory_root, o.bucket)).unwrap();
    admin
        .create_bucket()
        .bucket(&folder.bucket)
        .send()
        .await
        .unwrap();
    let rows = inventory_report::current_objects(&admin, &o.bucket).await;
    let manifest =
        inventory_report::write(&admin, &o.bucket, &rows, Format::Csv, &folder, false).await;
    let manifest = manifest.to_string();
    let mut args = listed_args.to_vec();
    args.extend(["--dry-run", "--inventory", &manifest]);
    let out = run("embatch", &args, submitter).await;
    assert_eq!(out.code, 0, "embatch submit --inventory: {}", out.stderr);
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["images"], images, "{}", out.stdout);
    assert_eq!(summary["listing"]["inventory_files"], 2);
}

/// A report outside the stack's inventory location is not the submitter's to read.
async fn inventory_outside_the_location(
    emulator: &Emulator,
    o: &Outputs,
    submitter: &[(String, String)],
) {
    let admin = embatch_aws::client::s3(&emulator.sdk_config().await);
    let inventory = S3Uri::parse(&o.inventory_root).unwrap();
    let elsewhere = S3Uri::new(&inventory.bucket, "elsewhere/");
    let rows = inventory_report::current_objects(&admin, &o.bucket).await;
    let manifest =
        inventory_report::write(&admin, &o.bucket, &rows, Format::Csv, &elsewhere, false).await;
    let manifest = manifest.to_string();
    let spec = test_model::resnet18_spec().unwrap();
    let mut args = o.submit_args(spec.to_str().unwrap());
    args.extend(["--dry-run", "--inventory", &manifest, &o.image_prefixes[0]]);
    let out = run("embatch", &args, submitter).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains(&manifest) && out.stderr.contains("AccessDenied"),
        "{}",
        out.stderr
    );
}

/// Deploys `variant` (`cloudformation` or `terraform`) into the emulator.
fn deploy(emulator: &Emulator, variant: &str) -> Deployment {
    let root = python::workspace_root();
    let out = std::process::Command::new(python::interpreter().unwrap())
        .arg(root.join("deploy/deployed_policies.py"))
        .args([variant, "--endpoint", &emulator.endpoint()])
        .stderr(Stdio::inherit())
        .output()
        .expect("running deploy/deployed_policies.py");
    assert!(out.status.success(), "deploying {variant} failed");
    serde_json::from_slice(&out.stdout).expect("deployed_policies.py prints JSON")
}

/// The three principals, keyed by the access key ids the binaries are given.
fn principals(deployment: &Deployment) -> Vec<Principal> {
    let role = deployment
        .outputs
        .job_role_arn
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let principal = |name: &str, arn: String| Principal {
        name: name.to_string(),
        arn,
        access_key_id: format!("embatch-test-{name}"),
        policies: deployment.principals[name].clone(),
    };
    vec![
        principal(
            "submitter",
            format!("arn:aws:iam::{}:user/embatch-submitter", iam::ACCOUNT),
        ),
        principal(
            "worker",
            format!(
                "arn:aws:sts::{}:assumed-role/{role}/embatch-worker",
                iam::ACCOUNT
            ),
        ),
        principal(
            "reader",
            format!("arn:aws:iam::{}:user/embatch-reader", iam::ACCOUNT),
        ),
    ]
}

/// The environment of a binary run as `who` through `proxy`.
fn env_as(proxy: &FaultProxy, who: &str) -> Vec<(String, String)> {
    let mut env = proxy.env();
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            "AWS_ACCESS_KEY_ID" => *v = format!("embatch-test-{who}"),
            "AWS_SECRET_ACCESS_KEY" => *v = "not-checked".to_string(),
            _ => {}
        }
    }
    env
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(binary: &str, args: &[&str], env: &[(String, String)]) -> Run {
    let out = tokio::process::Command::new(bins::binary(binary).unwrap())
        .args(args)
        .env_clear()
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    put_bytes(s3, &S3Uri::new(bucket, key), &body).await;
}

/// Every flow a user of the deployment runs, each as its principal through the enforcing
/// proxy; returns the enforcement (with its ledger) after asserting each flow's outcome.
async fn flows(emulator: &Emulator, deployment: &Deployment) -> Arc<Iam> {
    let o = &deployment.outputs;
    let revision: u32 = o
        .job_definition_arn
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut enforcement = Iam::new(principals(deployment), "us-east-1")
        .unwrap()
        .job_definition(&o.job_definition, revision);
    if let Some(policy) = &deployment.bucket_policy {
        enforcement = enforcement.bucket_policy(&o.bucket, policy.clone());
    }
    let enforcement = Arc::new(enforcement);
    let proxy = FaultProxy::with_iam(
        &emulator.endpoint(),
        FaultPlan::default(),
        enforcement.clone(),
    )
    .unwrap();
    let admin = embatch_aws::client::s3(&emulator.sdk_config().await);

    // Images under both allowed prefixes, one corrupt, and one the worker will find deleted.
    let samples = sample::generate(1, 5);
    let mut keys = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let key = format!("{}{}", o.image_prefixes[i % 2], s.name);
        put(&admin, &o.bucket, &key, s.bytes.clone()).await;
        keys.push(key);
    }
    let broken = format!("{}broken.jpg", o.image_prefixes[0]);
    put(&admin, &o.bucket, &broken, b"\xff\xd8 not a JPEG".to_vec()).await;
    let deleted = format!("{}deleted-after-listing.png", o.image_prefixes[1]);
    put(&admin, &o.bucket, &deleted, samples[0].bytes.clone()).await;

    // The submitter, as the stack's outputs tell a user to call it.
    let spec = test_model::resnet18_spec().unwrap();
    let readable: Vec<String> = o
        .image_prefixes
        .iter()
        .map(|p| format!("s3://{}/{p}", o.bucket))
        .collect();
    let submitter = env_as(&proxy, "submitter");
    let readable = readable.join(",");
    let mut args = o.submit_args(spec.to_str().unwrap());
    args.extend(["--images-per-job", "3", "--readable-prefixes", &readable]);
    args.extend([o.image_prefixes[0].as_str(), &o.image_prefixes[1]]);
    let submitted = run("embatch", &args, &submitter).await;
    assert_eq!(submitted.code, 0, "embatch submit: {}", submitted.stderr);
    let summary: serde_json::Value = serde_json::from_str(&submitted.stdout).unwrap();
    let images = samples.len() + 2;
    assert_eq!(summary["images"], images);
    let run_id = summary["run_id"].as_str().unwrap().to_string();
    submit_from_an_inventory(emulator, o, &submitter, &args, images).await;
    let jobs: Vec<SubmittedJob> = serde_json::from_value(summary["jobs"].clone()).unwrap();
    let job_ids: Vec<String> = jobs.into_iter().map(|j| j.job_id.unwrap()).collect();

    // Deleted between listing and embedding: with s3:ListBucket the worker learns "missing"
    // (404), not "denied" (403).
    admin
        .delete_object()
        .bucket(&o.bucket)
        .key(&deleted)
        .send()
        .await
        .unwrap();

    // AWS Batch, played: every child as the job role.
    let batch = aws_sdk_batch::Client::new(&emulator.sdk_config().await);
    let mut player = Player::new(bins::binary("embatch-worker").unwrap(), emulator)
        .env("EMBATCH_JOB_ROLE_ARN", &o.job_role_arn);
    for (k, v) in env_as(&proxy, "worker") {
        player = player.env(k, v);
    }
    let children = player.play(&batch, &job_ids).await.unwrap();
    assert_eq!(children.len(), images.div_ceil(3));
    assert_all_succeeded(&children);

    // `embatch status`: two images failed (corrupt, deleted), so it exits 5 unless told to
    // accept failed images.
    let status = run(
        "embatch",
        &["status", &run_id, "--runs-uri", &o.run_root],
        &submitter,
    )
    .await;
    assert_eq!(status.code, 5, "embatch status: {}", status.stderr);
    let status = run(
        "embatch",
        &[
            "status",
            &run_id,
            "--runs-uri",
            &o.run_root,
            "--allow-failed-images",
        ],
        &submitter,
    )
    .await;
    assert_eq!(status.code, 0, "embatch status: {}", status.stderr);
    let state: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(state["reports"]["written"], samples.len());
    let kinds: Vec<&str> = state["reports"]["failure_examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"not_found") && !kinds.contains(&"access_denied"),
        "a deleted image is missing, not denied: {kinds:?}"
    );

    // The reader: by id and the whole table.
    let reader = env_as(&proxy, "reader");
    let got = run(
        "embatch-vectors",
        &["--table", &o.table, "get", &keys[0]],
        &reader,
    )
    .await;
    assert_eq!(got.code, 0, "embatch-vectors get: {}", got.stderr);
    let dir = tempfile::tempdir().unwrap();
    let exported = run(
        "embatch-vectors",
        &[
            "--table",
            &o.table,
            "export",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        &reader,
    )
    .await;
    assert_eq!(
        exported.code, 0,
        "embatch-vectors export: {}",
        exported.stderr
    );
    assert!(Path::new(&dir.path().join("vectors.npy")).is_file());
    // As Parquet to the export prefix: one PutObject per file.
    let out = format!("{}iam/", o.export_root);
    let args = [
        "--table", &o.table, "export", "--format", "parquet", "--out", &out,
    ];
    let exported = run("embatch-vectors", &args, &reader).await;
    assert_eq!(
        exported.code, 0,
        "export --format parquet: {}",
        exported.stderr
    );

    // An S3 Vectors index, created by the loader in the bucket the policy names (made here:
    // neither the emulator's CloudFormation nor the Terraform provider can).
    aws_sdk_s3vectors::Client::new(&emulator.sdk_config().await)
        .create_vector_bucket()
        .vector_bucket_name(&o.vector_bucket)
        .send()
        .await
        .unwrap();
    let args = [
        "--table",
        &o.table,
        "index",
        "--vector-bucket",
        &o.vector_bucket,
        "--index",
        "embatch-vectors",
        "--create",
    ];
    let indexed = run("embatch-vectors", &args, &reader).await;
    assert_eq!(indexed.code, 0, "embatch-vectors index: {}", indexed.stderr);
    assert!(
        indexed
            .stderr
            .contains(&format!("{} written", samples.len())),
        "{}",
        indexed.stderr
    );

    // The original sample's documented Python reader, as the reader.
    let mut python = std::process::Command::new(python::interpreter().unwrap());
    python
        .args([
            "-c",
            "import boto3, numpy as np, sys\n\
             item = boto3.resource('dynamodb').Table(sys.argv[1]).get_item(Key={'ImageId': sys.argv[2]})['Item']\n\
             v = np.frombuffer(item['Vector'].value, dtype=item['DataType'])\n\
             assert len(v) == item['Dimension'] == 512, len(v)",
            &o.table,
            &keys[0],
        ])
        .env_clear()
        .envs(reader.iter().cloned());
    run_ok(&mut python, "the sample's reader");
    enforcement
}

/// Every request allowed and mapped; each principal made some. Prints what was authorised.
fn assert_all_allowed(enforcement: &Iam) {
    let ledger = enforcement.ledger();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in &ledger {
        let actions: Vec<&str> = a.checks.iter().map(|(c, _)| c.action.as_str()).collect();
        let key = (
            a.principal.clone(),
            format!("{} -> {}", a.operation, actions.join(" + ")),
        );
        *seen.entry(key).or_default() += 1;
    }
    for ((who, what), n) in &seen {
        eprintln!("  {who:9} {n:4} x {what}");
    }
    let refused: Vec<String> = ledger
        .iter()
        .filter(|a| !a.allowed())
        .map(|a| {
            let denied: Vec<String> = a
                .checks
                .iter()
                .filter(|(_, d)| *d != Decision::Allowed)
                .map(|(c, d)| format!("{} on {} {:?}: {d:?}", c.action, c.resource, c.context))
                .collect();
            format!(
                "{} {}: {}",
                a.principal,
                a.operation,
                a.unmapped.clone().unwrap_or_else(|| denied.join("; "))
            )
        })
        .collect();
    assert!(
        refused.is_empty(),
        "requests refused:\n{}",
        refused.join("\n")
    );
    for who in ["submitter", "worker", "reader"] {
        assert!(
            ledger.iter().any(|a| a.principal == who),
            "{who} made no request"
        );
    }
}

/// Grants that no flow here exercises, kept on purpose: (principal, `policy/Sid/action`, why).
const EXERCISED_ELSEWHERE: &[(&str, &str, &str)] = &[(
    "submitter",
    "WatchJobs/batch:ListJobs",
    "`embatch status` lists the FAILED children of an array job (submitter/tests/status_failed.rs), and the submitter looks a job up by name before retrying a SubmitJob whose answer was lost (submitter/tests/submitter/submit.rs); no child fails here",
)];

/// With any single statement, or any one action of a statement, removed, some request a flow
/// made is denied.
fn assert_every_grant_is_needed(enforcement: &Iam, deployment: &Deployment) {
    let needed = iam::needed_checks(&enforcement.ledger());
    let mut unneeded = Vec::new();
    for principal in principals(deployment) {
        let checks = &needed[&principal.name];
        for (label, reduced) in iam::reductions(&principal.policies) {
            let still_passes = checks
                .iter()
                .all(|c| enforcement.evaluate_with(&principal, &reduced, c) == Decision::Allowed);
            let exempt = EXERCISED_ELSEWHERE
                .iter()
                .any(|(who, grant, _)| *who == principal.name && label.ends_with(grant));
            if still_passes && !exempt {
                unneeded.push(format!("{}: {label}", principal.name));
            }
        }
    }
    assert!(
        unneeded.is_empty(),
        "grants no flow needs (remove them, or add the flow that needs them): {unneeded:?}"
    );
}

/// What the job role cannot read is refused before work starts (the submitter) or ends the
/// child as a permanent failure naming the bucket and the role (the worker).
async fn refusals(emulator: &Emulator, deployment: &Deployment) {
    let o = &deployment.outputs;
    let enforcement = Arc::new(Iam::new(principals(deployment), "us-east-1").unwrap());
    let proxy = FaultProxy::with_iam(
        &emulator.endpoint(),
        FaultPlan::default(),
        enforcement.clone(),
    )
    .unwrap();
    inventory_outside_the_location(emulator, o, &env_as(&proxy, "submitter")).await;
    let readable = format!("s3://{}/{}", o.bucket, o.image_prefixes[0]);
    let outside = run(
        "embatch",
        &[
            "submit",
            "--bucket",
            &o.bucket,
            "--job-queue",
            &o.job_queue,
            "--job-definition",
            &o.job_definition,
            "--table",
            &o.table,
            "--readable-prefixes",
            &readable,
            "s3://other-bucket/photos/",
        ],
        &env_as(&proxy, "submitter"),
    )
    .await;
    assert_eq!(outside.code, 2, "{}", outside.stderr);
    assert!(
        outside.stderr.contains("s3://other-bucket/photos/") && outside.stderr.contains(&readable),
        "the error names the path and the readable prefixes: {}",
        outside.stderr
    );
    assert!(
        enforcement
            .ledger()
            .iter()
            .all(|a| a.operation != "s3 PutObject"),
        "nothing was written"
    );

    // A manifest whose images all lie outside the role's prefixes (written by hand).
    let admin = embatch_aws::client::s3(&emulator.sdk_config().await);
    let runs = S3Uri::parse(&o.run_root).unwrap();
    let layout = RunLayout::new(&runs, "denied-run");
    let lines: Vec<ManifestLine> = (0..20)
        .map(|i| ManifestLine {
            bucket: o.bucket.clone(),
            key: format!("private/{i}.jpg"),
            size: 10,
            etag: "e".into(),
            image_id: format!("private/{i}.jpg"),
        })
        .collect();
    put(&admin, &o.bucket, &layout.manifest(0).key, to_jsonl(&lines)).await;
    let spec = test_model::resnet18_spec().unwrap();
    let mut env = env_as(&proxy, "worker");
    env.extend(
        [
            ("EMBATCH_RUN_URI", layout.root.to_string()),
            ("EMBATCH_RUN_ID", "denied-run".to_string()),
            ("EMBATCH_TABLE", o.table.clone()),
            ("EMBATCH_MODEL_SPEC", spec.display().to_string()),
            ("EMBATCH_JOB_ROLE_ARN", o.job_role_arn.clone()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let worker = run("embatch-worker", &[], &env).await;
    assert_eq!(worker.code, exit::PERMANENT, "{}", worker.stderr);
    assert!(
        worker
            .stderr
            .contains(&format!("s3://{}/private/", o.bucket))
            && worker.stderr.contains(&o.job_role_arn),
        "the failure names the bucket and the role: {}",
        worker.stderr
    );

    // A Parquet export anywhere but the export prefix (the table holds the flows' vectors).
    let out = format!("{}exports/", o.run_root);
    let args = [
        "--table", &o.table, "export", "--format", "parquet", "--out", &out,
    ];
    let export = run("embatch-vectors", &args, &env_as(&proxy, "reader")).await;
    assert_eq!(export.code, 2, "{}", export.stderr);
    assert!(
        export.stderr.contains(&format!("{out}part-00000.parquet")),
        "the error names the object: {}",
        export.stderr
    );

    // The submitter may sample the table's models (above, in the flows) but not read vectors.
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--table",
        &o.table,
        "export",
        "--out",
        dir.path().to_str().unwrap(),
    ];
    let scan = run("embatch-vectors", &args, &env_as(&proxy, "submitter")).await;
    assert_eq!(scan.code, 2, "{}", scan.stderr);
    assert!(
        enforcement
            .ledger()
            .iter()
            .any(|a| a.principal == "submitter" && a.operation == "dynamodb Scan" && !a.allowed()),
        "a whole-table Scan as the submitter is denied: {}",
        scan.stderr
    );
    // ... and a run of another model than the table's is refused before anything is written.
    let other = test_model::resnet18_spec()
        .unwrap()
        .with_file_name("resnet18-v1-7.toml");
    let mut args = o.submit_args(other.to_str().unwrap());
    args.extend(["--dry-run", &o.image_prefixes[0]]);
    let submit = run("embatch", &args, &env_as(&proxy, "submitter")).await;
    assert_eq!(submit.code, 2, "{}", submit.stderr);
    assert!(
        submit.stderr.contains("holds vectors of another model"),
        "{}",
        submit.stderr
    );

    // A manifest the role may not read at all.
    let elsewhere = RunLayout::new(&S3Uri::new(&o.bucket, "not-runs/"), "r");
    put(
        &admin,
        &o.bucket,
        &elsewhere.manifest(0).key,
        to_jsonl(&lines),
    )
    .await;
    for (k, v) in env.iter_mut() {
        if k == "EMBATCH_RUN_URI" {
            *v = elsewhere.root.to_string();
        }
    }
    let worker = run("embatch-worker", &[], &env).await;
    assert_eq!(worker.code, exit::PERMANENT, "{}", worker.stderr);
    assert!(
        worker.stderr.contains(&elsewhere.manifest(0).to_string())
            && worker.stderr.contains("access denied"),
        "{}",
        worker.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cloudformation_stacks_policies_allow_every_flow_and_nothing_more() {
    let emulator = Emulator::start().unwrap();
    let deployment = deploy(&emulator, "cloudformation");
    let enforcement = flows(&emulator, &deployment).await;
    assert_all_allowed(&enforcement);
    assert_every_grant_is_needed(&enforcement, &deployment);
    refusals(&emulator, &deployment).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_terraform_modules_policies_allow_every_flow_and_nothing_more() {
    let emulator = Emulator::start().unwrap();
    let deployment = deploy(&emulator, "terraform");
    assert!(
        deployment.bucket_policy.is_some(),
        "the module's bucket policy (TLS only) is deployed and enforced"
    );
    let enforcement = flows(&emulator, &deployment).await;
    assert_all_allowed(&enforcement);
    assert_every_grant_is_needed(&enforcement, &deployment);
}
