//! The real `embatch` binary against the emulator with the real aws-sdk clients.

use crate::common;

use std::collections::BTreeSet;

use common::{strings, Fixture};
use embatch_formats::manifest::{parse_jsonl, ManifestLine};
use embatch_formats::run::{env, RunLayout, RunPlan, SubmittedJob};
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::emulator::unique_name;
use embatch_localaws::faults::{Fault, FaultRule, Match};

const RUNS: &str = "embatch-runs/";

/// Reads every manifest of a run, in order.
async fn manifests(f: &Fixture, summary: &serde_json::Value) -> Vec<Vec<ManifestLine>> {
    let root = S3Uri::parse(summary["run_uri"].as_str().unwrap()).unwrap();
    let layout = RunLayout::from_root(root);
    let n = summary["manifests"].as_u64().unwrap() as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let uri = layout.manifest(i);
        let bytes = f.get(&uri.bucket, &uri.key).await;
        out.push(parse_jsonl(&bytes, &uri.to_string()).unwrap());
    }
    out
}

/// The environment a job was submitted with, read back from DescribeJobs.
async fn job_env(f: &Fixture, job_id: &str) -> Vec<(String, String)> {
    let out = f.batch.describe_jobs().jobs(job_id).send().await.unwrap();
    let job = &out.jobs()[0];
    job.container()
        .unwrap()
        .environment()
        .iter()
        .map(|kv| {
            (
                kv.name().unwrap().to_string(),
                kv.value().unwrap().to_string(),
            )
        })
        .filter(|(k, _)| k.starts_with("EMBATCH_"))
        .collect()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    &env.iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("{name} not set in {env:?}"))
        .1
}

#[tokio::test]
async fn one_manifest_is_a_plain_job_with_the_run_in_its_environment() {
    let f = Fixture::new().await;
    let photos = ["photos/a.jpg", "photos/b.PNG", "photos/sub/c.webp"];
    f.put_all(&f.bucket, &photos, b"not really an image").await;

    let mut args = f.submit_args();
    args.push("photos".into());
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.is_empty(), "progress is logged");
    assert!(
        !out.stderr.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {:?}",
        out.stderr
    );
    let summary = out.json();
    assert_eq!(summary["images"], 3);
    assert_eq!(summary["manifests"], 1);
    let jobs = summary["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0]["array_size"].is_null(), "{summary}");
    let run_id = summary["run_id"].as_str().unwrap();
    assert!(jobs[0]["job_name"].as_str().unwrap().contains(run_id));

    // Batch sees a plain job with the contract's environment.
    let job_id = jobs[0]["job_id"].as_str().unwrap();
    let described = f.batch.describe_jobs().jobs(job_id).send().await.unwrap();
    assert!(described.jobs()[0]
        .array_properties()
        .and_then(|a| a.size())
        .is_none());
    let env = job_env(&f, job_id).await;
    assert_eq!(env_value(&env, env::RUN_ID), run_id);
    assert_eq!(
        env_value(&env, env::RUN_URI),
        format!("s3://{}/{RUNS}{run_id}/", f.bucket)
    );
    assert_eq!(env_value(&env, env::MANIFEST_OFFSET), "0");
    assert_eq!(env_value(&env, env::TABLE), f.table);
    assert_eq!(
        env_value(&env, env::MODEL_SPEC),
        "/opt/embatch/models/resnet18-v2.toml"
    );

    // The manifest holds every image with its size, ETag and ImageId.
    let m = manifests(&f, &summary).await;
    assert_eq!(m.len(), 1);
    let listed: Vec<&str> = m[0].iter().map(|l| l.key.as_str()).collect();
    assert_eq!(
        listed,
        ["photos/a.jpg", "photos/b.PNG", "photos/sub/c.webp"]
    );
    for line in &m[0] {
        assert_eq!(line.bucket, f.bucket);
        assert_eq!(line.size, b"not really an image".len() as u64);
        assert_eq!(line.image_id, line.key);
        let head =
            f.s3.head_object()
                .bucket(&f.bucket)
                .key(&line.key)
                .send()
                .await
                .unwrap();
        assert_eq!(head.e_tag().unwrap().trim_matches('"'), line.etag);
    }

    // run.json is the plan, with the same jobs.
    let plan_uri = S3Uri::parse(summary["plan_uri"].as_str().unwrap()).unwrap();
    let plan: RunPlan =
        serde_json::from_slice(&f.get(&plan_uri.bucket, &plan_uri.key).await).unwrap();
    assert_eq!(plan.run_id, run_id);
    assert_eq!(plan.images, 3);
    assert_eq!(plan.table, f.table);
    assert_eq!(serde_json::to_value(&plan.jobs).unwrap(), summary["jobs"]);
}

#[tokio::test]
async fn two_manifests_make_one_array_job_of_size_two() {
    let f = Fixture::new().await;
    f.put_all(&f.bucket, &["p/1.jpg", "p/2.jpg", "p/3.jpg"], b"x")
        .await;

    let mut args = f.submit_args();
    args.extend(strings(&["--images-per-job", "2", "p/"]));
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["manifests"], 2);
    let jobs = summary["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["array_size"], 2);
    let job_id = jobs[0]["job_id"].as_str().unwrap();
    let described = f.batch.describe_jobs().jobs(job_id).send().await.unwrap();
    assert_eq!(
        described.jobs()[0]
            .array_properties()
            .and_then(|a| a.size()),
        Some(2)
    );
    let env = job_env(&f, job_id).await;
    assert!(env.iter().all(|(k, _)| k != env::REPLACE_MODEL), "{env:?}");

    let m = manifests(&f, &summary).await;
    assert_eq!(m.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);

    // --replace-model reaches every child through the job's environment.
    args.push("--replace-model".into());
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job_id = out.json()["jobs"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env_value(&job_env(&f, &job_id).await, env::REPLACE_MODEL),
        "true"
    );
}

/// One manifest more than an array holds makes two balanced arrays. At `--max-array-size 1000`
/// (AWS's 10,000 is the default; `plan::split_jobs` is unit-tested at 10,001): 1,001 objects
/// and manifests instead of 10,001 cost CI about two minutes less of emulator PUTs.
#[tokio::test]
async fn one_manifest_more_than_an_array_holds_makes_two_arrays() {
    let f = Fixture::new().await;
    let args = one_image_per_manifest(&f, "many", 1_001, 1000).await;
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["images"], 1_001);
    assert_eq!(summary["manifests"], 1_001);
    assert_eq!(summary["listing"]["pages"], 2, "1000 keys a page");

    let jobs = summary["jobs"].as_array().unwrap();
    let shape: Vec<(u64, u64)> = jobs
        .iter()
        .map(|j| {
            (
                j["manifest_offset"].as_u64().unwrap(),
                j["array_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shape, [(0, 501), (501, 500)]);
    for (job, (offset, size)) in jobs.iter().zip(&shape) {
        let id = job["job_id"].as_str().unwrap();
        let described = f.batch.describe_jobs().jobs(id).send().await.unwrap();
        assert_eq!(
            described.jobs()[0]
                .array_properties()
                .and_then(|a| a.size()),
            Some(*size as i32)
        );
        let env = job_env(&f, id).await;
        assert_eq!(env_value(&env, env::MANIFEST_OFFSET), offset.to_string());
    }

    // Every manifest was written, each with one image, and together they hold every key once.
    let run_key = S3Uri::parse(summary["manifest_prefix"].as_str().unwrap())
        .unwrap()
        .key;
    let written = f.keys(&f.bucket, &run_key).await;
    assert_eq!(written.len(), 1_001);
    let root = S3Uri::parse(summary["run_uri"].as_str().unwrap()).unwrap();
    let layout = RunLayout::from_root(root);
    let last = layout.manifest(1_000);
    let lines = parse_jsonl(&f.get(&last.bucket, &last.key).await, "last").unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].key, "many/01000.jpg", "manifests follow key order");
}

#[tokio::test]
async fn dry_run_pages_through_more_than_1000_keys_and_writes_nothing() {
    let f = Fixture::new().await;
    let mut keys: Vec<String> = (0..1500).map(|i| format!("big/{i:04}.jpeg")).collect();
    keys.push("big/notes.txt".into());
    f.put_all(&f.bucket, &keys, b"x").await;
    f.put_all(&f.bucket, &["big/", "big/empty.jpg"], b"").await;

    let mut args = f.submit_args();
    args.extend(strings(&["--dry-run", "--seconds-per-image", "0.5", "big"]));
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["dry_run"], true);
    assert_eq!(summary["images"], 1500);
    assert_eq!(summary["manifests"], 2);
    assert_eq!(
        summary["listing"]["pages"], 2,
        "more than one page was requested"
    );
    assert_eq!(summary["listing"]["objects"], 1503);
    assert_eq!(summary["listing"]["directory_markers"], 1);
    assert_eq!(summary["listing"]["empty"], 1);
    assert_eq!(summary["listing"]["not_images"], 1);
    assert_eq!(summary["jobs"][0]["array_size"], 2);
    let hours = summary["estimated_vcpu_hours"].as_f64().unwrap();
    assert!((hours - 1500.0 * 0.5 / 3600.0).abs() < 1e-9, "{hours}");
    // The cost of the plan: 512-float items of 3 write units each; 1,500 image GETs and 2
    // manifest GETs, 2 manifests and 4 reports put, 2 pages listed.
    let cost = &summary["cost"];
    assert_eq!(cost["vcpu_hours"], summary["estimated_vcpu_hours"]);
    assert_eq!(cost["dynamodb_write_units"], 4500);
    assert_eq!(cost["s3_requests"], 1500 + 2 + 6 + 2);
    assert!(cost["run_usd"].as_f64().unwrap() > cost["dynamodb_write_usd"].as_f64().unwrap());

    f.assert_nothing_written_or_submitted().await;
}

#[tokio::test]
async fn two_buckets_and_overlapping_prefixes_list_each_image_once() {
    let f = Fixture::new().await;
    let other = unique_name("other");
    f.s3.create_bucket().bucket(&other).send().await.unwrap();
    f.put_all(
        &f.bucket,
        &["imgs/a/1.jpg", "imgs/a/2.jpg", "imgs/b/3.jpg"],
        b"x",
    )
    .await;
    f.put_all(&other, &["more/4.png", "imgs/a/1.jpg"], b"y")
        .await;

    let event =
        serde_json::json!({"Paths": ["imgs", "imgs/a", "imgs/a/1", format!("s3://{other}/")]});
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), event.to_string()).unwrap();
    let mut args = f.submit_args();
    args.extend(strings(&[
        "--image-id",
        "uri",
        "--event",
        file.path().to_str().unwrap(),
    ]));
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["images"], 5);
    assert_eq!(
        summary["listing"]["duplicates"], 3,
        "imgs/a/* twice more, imgs/a/1.jpg once more"
    );
    let m = manifests(&f, &summary).await;
    let uris: Vec<String> = m[0].iter().map(|l| l.uri()).collect();
    let b = &f.bucket;
    let mut expected = vec![
        format!("s3://{b}/imgs/a/1.jpg"),
        format!("s3://{b}/imgs/a/2.jpg"),
        format!("s3://{b}/imgs/b/3.jpg"),
        format!("s3://{other}/imgs/a/1.jpg"),
        format!("s3://{other}/more/4.png"),
    ];
    expected.sort();
    let mut got = uris.clone();
    got.sort();
    assert_eq!(got, expected);
    assert!(m[0].iter().all(|l| l.image_id == l.uri()));

    // The same two buckets under --image-id key: imgs/a/1.jpg exists in both -> refused.
    let mut args = f.submit_args();
    args.extend(strings(&["--event", file.path().to_str().unwrap()]));
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("ImageId \"imgs/a/1.jpg\""),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn an_image_id_collision_stops_the_run_naming_both_objects() {
    let f = Fixture::new().await;
    f.put_all(&f.bucket, &["x/cat.jpg", "y/cat.png", "y/dog.jpg"], b"x")
        .await;
    let mut args = f.submit_args();
    args.extend(strings(&["--image-id", "stem", "x", "y"]));
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let b = &f.bucket;
    assert!(
        out.stderr.contains(&format!(
            "ImageId \"cat\": s3://{b}/x/cat.jpg and s3://{b}/y/cat.png"
        )),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    f.assert_nothing_written_or_submitted().await;
}

#[tokio::test]
async fn no_images_is_a_clear_error_and_nothing_is_submitted() {
    let f = Fixture::new().await;
    f.put_all(&f.bucket, &["empty/notes.txt"], b"x").await;
    f.put_all(&f.bucket, &["empty/", "empty/zero.jpg"], b"")
        .await;
    let mut args = f.submit_args();
    args.push("empty".into());
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no images under"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("1 directory markers, 1 not images, 1 empty"),
        "{}",
        out.stderr
    );
    f.assert_nothing_written_or_submitted().await;
}

#[tokio::test]
async fn malformed_input_is_refused_before_anything_is_written() {
    let f = Fixture::new().await;
    f.put_all(&f.bucket, &["ok/1.jpg"], b"x").await;
    let dir = tempfile::tempdir().unwrap();
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, b"{\"Paths\": [\"ok\"").unwrap();
    let bad_json = bad_json.to_str().unwrap().to_string();
    let missing = dir
        .path()
        .join("missing.json")
        .to_str()
        .unwrap()
        .to_string();

    let base = f.submit_args();
    let with = |replace: &[(&str, &str)], extra: &[&str]| {
        let mut args = base.clone();
        for (flag, value) in replace {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1] = value.to_string();
        }
        args.extend(strings(extra));
        args
    };
    let no_bucket: Vec<String> = {
        let mut a = base.clone();
        let i = a.iter().position(|a| a == "--bucket").unwrap();
        a.drain(i..i + 2);
        a.extend(strings(&[
            "--runs-uri",
            &format!("s3://{}/runs/", f.bucket),
            "ok",
        ]));
        a
    };
    // (case, arguments, stdin, expected message)
    type Case<'a> = (&'a str, Vec<String>, Option<&'a [u8]>, String);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON file",
            with(&[], &["--event", &bad_json]),
            None,
            format!("malformed event in {bad_json}"),
        ),
        (
            "malformed JSON on stdin",
            with(&[], &["--event", "-"]),
            Some(b"{Paths: 1}"),
            "malformed event in stdin".into(),
        ),
        (
            "wrong field name",
            with(&[], &["--event", "-"]),
            Some(br#"{"paths": ["ok"]}"#),
            "unknown field `paths`".into(),
        ),
        (
            "empty list",
            with(&[], &["--event", "-"]),
            Some(br#"{"Paths": []}"#),
            "Paths list is empty".into(),
        ),
        ("no paths at all", with(&[], &[]), None, "no paths".into()),
        (
            "unreadable event file",
            with(&[], &["--event", &missing]),
            None,
            "reading the event file".into(),
        ),
        (
            "path without a bucket",
            no_bucket,
            None,
            "path \"ok\" names no bucket".into(),
        ),
        (
            "missing bucket",
            with(&[], &["s3://no-such-bucket-here/ok"]),
            None,
            "bucket \"no-such-bucket-here\" does not exist".into(),
        ),
        (
            "missing default bucket",
            with(&[("--bucket", "nope-nope")], &["ok"]),
            None,
            "bucket \"nope-nope\" does not exist".into(),
        ),
        (
            "unknown job queue",
            with(&[("--job-queue", "nope")], &["ok"]),
            None,
            "job queue \"nope\" does not exist".into(),
        ),
        (
            "unknown job definition",
            with(&[("--job-definition", "nope")], &["ok"]),
            None,
            "job definition \"nope\" does not exist".into(),
        ),
        (
            "unknown revision",
            with(&[], &["ok"])
                .into_iter()
                .map(|a| {
                    if a == f.resources.job_definition {
                        format!("{a}:7")
                    } else {
                        a
                    }
                })
                .collect(),
            None,
            ":7\" does not exist".into(),
        ),
        (
            "unknown table",
            with(&[("--table", "nope")], &["ok"]),
            None,
            "table \"nope\" does not exist".into(),
        ),
    ];
    for (name, args, stdin, expected) in cases {
        let out = f.embatch(&args, stdin).await;
        assert_eq!(out.code, 2, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(&expected),
            "{name}: expected {expected:?} in {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{name}");
    }
    assert!(
        f.keys(&f.bucket, "").await == ["ok/1.jpg"],
        "something was written"
    );
    assert_eq!(f.jobs_in_queue().await, 0);

    // The same flags with good values do submit (the cases above failed for their reason).
    let out = f.embatch(&with(&[], &["ok"]), None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let def_rev = format!("{}:1", f.resources.job_definition);
    let out = f
        .embatch(&with(&[("--job-definition", &def_rev)], &["ok"]), None)
        .await;
    assert_eq!(out.code, 0, "name:revision is accepted: {}", out.stderr);
    assert_eq!(f.jobs_in_queue().await, 2);
}

#[tokio::test]
async fn trace_logs_never_print_the_credentials() {
    let f = Fixture::new().await;
    f.put_all(&f.bucket, &["photos/a.jpg"], b"x").await;
    let (key_id, secret) = (
        "AKIAIOSFODNN7EXAMPLE",
        "embatchTestSecretKey0123456789abcdefGHIJ",
    );
    let mut args = f.submit_args();
    args.extend(["--dry-run".into(), "photos".into()]);
    let out = f
        .embatch_with(
            &args,
            None,
            &[
                ("AWS_ACCESS_KEY_ID", key_id),
                ("AWS_SECRET_ACCESS_KEY", secret),
                ("RUST_LOG", "trace"),
            ],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("aws_smithy_runtime"),
        "the SDK's trace logs are on"
    );
    for value in [key_id, secret] {
        assert!(!out.stderr.contains(value), "{value} in the logs");
        assert!(!out.stdout.contains(value), "{value} in the output");
    }
}

#[tokio::test]
async fn a_path_without_a_trailing_slash_is_a_prefix_and_warns_when_it_matches_sibling_folders() {
    let f = Fixture::new().await;
    f.put_all(
        &f.bucket,
        &["images/a.jpg", "images/b.jpg", "images-old/c.jpg"],
        b"x",
    )
    .await;
    let run = |path: &str| {
        let mut args = f.submit_args();
        args.extend(strings(&["--dry-run", path]));
        args
    };

    // As the original sample listed it: a key prefix, so images-old/ too, and a warning.
    let out = f.embatch(&run("images"), None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["images"], 3);
    assert!(
        out.stderr.contains("has no trailing slash")
            && out.stderr.contains("images-old/c.jpg")
            && out.stderr.contains("write s3://"),
        "{}",
        out.stderr
    );

    // The folder alone: no warning. A file-name prefix (no folder of that name): no warning.
    for (path, images) in [("images/", 2), ("images/a", 1)] {
        let out = f.embatch(&run(path), None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.json()["images"], images, "{path}");
        assert!(
            !out.stderr.contains("trailing slash"),
            "{path}: {}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn a_path_outside_the_readable_prefixes_is_refused_before_anything_is_written() {
    let f = Fixture::new().await;
    f.put_all(&f.bucket, &["images/a.jpg", "photos/b.jpg"], b"x")
        .await;
    let readable = format!("s3://{}/images/", f.bucket);
    let mut args = f.submit_args();
    args.extend(strings(&[
        "--readable-prefixes",
        &readable,
        "images/",
        "photos/",
    ]));
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("path s3://{}/photos/ is outside", f.bucket))
            && out.stderr.contains(&readable),
        "{}",
        out.stderr
    );
    f.assert_nothing_written_or_submitted().await;

    // The same, from the environment; a path inside passes.
    let mut args = f.submit_args();
    args.extend(strings(&["--dry-run", "images/"]));
    let out = f
        .embatch_with(&args, None, &[("EMBATCH_READABLE_PREFIXES", &readable)])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// The run's plan as `run.json` holds it.
async fn run_json(f: &Fixture, summary: &serde_json::Value) -> RunPlan {
    let uri =
        RunLayout::from_root(S3Uri::parse(summary["run_uri"].as_str().unwrap()).unwrap()).plan();
    serde_json::from_slice(&f.get(&uri.bucket, &uri.key).await).unwrap()
}

/// The ids of every job in the fixture's queue but array children (`<id>:<index>`).
async fn queue_job_ids(f: &Fixture) -> BTreeSet<String> {
    let ids = f.job_ids().await.into_iter();
    ids.filter(|id| !id.contains(':')).collect()
}

/// Five manifests in arrays of at most two: three jobs (2, 2, 1).
async fn three_job_run(f: &Fixture) -> Vec<String> {
    one_image_per_manifest(f, "three", 5, 2).await
}

/// `images` objects under `prefix/`, and the arguments that submit them one per manifest in
/// arrays of at most `max_array`.
async fn one_image_per_manifest(
    f: &Fixture,
    prefix: &str,
    images: u32,
    max_array: u32,
) -> Vec<String> {
    let keys: Vec<String> = (0..images)
        .map(|i| format!("{prefix}/{i:05}.jpg"))
        .collect();
    f.put_all(&f.bucket, &keys, b"x").await;
    let mut args = f.submit_args();
    let max_array = max_array.to_string();
    let path = format!("{prefix}/");
    args.extend(strings(&[
        "--images-per-job",
        "1",
        "--max-array-size",
        &max_array,
        &path,
    ]));
    args
}

#[tokio::test]
async fn a_submitjob_whose_answer_is_lost_is_found_by_name_and_not_submitted_twice() {
    let f = Fixture::new().await;
    let args = three_job_run(&f).await;
    // The second SubmitJob is accepted but its answer lost; the job is not listed at once.
    let proxy = f.emulator.fault_proxy(
        1,
        [
            FaultRule::new(Match::batch("SubmitJob"), Fault::LostResponse)
                .skip(1)
                .limit(1),
            FaultRule::new(
                Match::batch("ListJobs"),
                Fault::Respond(200, r#"{"jobSummaryList": []}"#.into()),
            )
            .limit(2),
        ],
    );
    let endpoint = proxy.endpoint();
    let out = f
        .embatch_with(&args, None, &[("AWS_ENDPOINT_URL", &endpoint)])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let counts = proxy.counts();
    assert_eq!(counts.per_rule, vec![1, 2], "{counts:?}");
    assert_eq!(
        counts.operation("Batch submitjob"),
        3,
        "sent once each: {counts:?}"
    );
    assert_eq!(
        counts.operation("Batch listjobs"),
        3,
        "two misses, then found"
    );

    let summary = out.json();
    let plan = run_json(&f, &summary).await;
    let planned: BTreeSet<String> = plan
        .jobs
        .iter()
        .map(|j| j.job_id.clone().unwrap())
        .collect();
    assert_eq!(planned.len(), 3);
    assert_eq!(
        queue_job_ids(&f).await,
        planned,
        "exactly the planned jobs exist"
    );
    let printed: Vec<SubmittedJob> = serde_json::from_value(summary["jobs"].clone()).unwrap();
    let printed: BTreeSet<String> = printed.into_iter().map(|j| j.job_id.unwrap()).collect();
    assert_eq!(printed, planned);
}

#[tokio::test]
async fn run_json_names_the_jobs_that_exist_when_the_submitter_stops_part_way() {
    let f = Fixture::new().await;
    let args = three_job_run(&f).await;
    let fault = FaultRule::new(
        Match::batch("SubmitJob"),
        Fault::Respond(
            400,
            r#"{"__type": "ClientException", "message": "injected: queue disabled"}"#.into(),
        ),
    )
    .skip(1);
    let proxy = f.emulator.fault_proxy(2, [fault]);
    let endpoint = proxy.endpoint();
    let out = f
        .embatch_with(&args, None, &[("AWS_ENDPOINT_URL", &endpoint)])
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("already submitted") && out.stderr.contains("run.json"),
        "{}",
        out.stderr
    );
    assert_eq!(
        proxy.counts().operation("Batch submitjob"),
        2,
        "a permanent error is not retried"
    );

    let runs = f.keys(&f.bucket, RUNS).await;
    let plan_key = runs
        .iter()
        .find(|k| k.ends_with("/run.json"))
        .expect("run.json written");
    let plan: RunPlan = serde_json::from_slice(&f.get(&f.bucket, plan_key).await).unwrap();
    let ids: Vec<Option<String>> = plan.jobs.iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids[0].is_some() && ids[1].is_none() && ids[2].is_none(),
        "{ids:?}"
    );
    assert_eq!(
        queue_job_ids(&f).await,
        BTreeSet::from([ids[0].clone().unwrap()])
    );

    // status follows what exists and says what never will.
    let status = strings(&["status", &plan.run_id, "--bucket", &f.bucket]);
    let out = f.embatch(&status, None).await;
    assert_eq!(out.code, 4, "finished, not succeeded: {}", out.stderr);
    let s = out.json();
    assert_eq!(s["children"]["NOT_SUBMITTED"], 3, "{s}");
    assert_eq!(s["children"]["SUCCEEDED"], 2, "{s}");
}

/// Spaces, Unicode, `+` and `%` reach the manifest unchanged; control characters that XML
/// cannot carry are listed URL-encoded and decoded back. Each manifest key is the object's
/// own: a GET of it finds the bytes.
#[tokio::test]
async fn keys_with_odd_characters_reach_the_manifest_unchanged_and_round_trip() {
    let f = Fixture::new().await;
    let keys = [
        "odd/a b.jpg",
        "odd/ünï cödé 日本.png",
        "odd/a+b.jpeg",
        "odd/100%.JPG",
        "odd/x%2By.jpg",
        "odd/sp  ace/+%20.gif",
        "odd/ctrl\u{1}char.jpg",
        "odd/carriage\rreturn.jpg",
        "odd/tab\tand\u{7f}.jpg",
        "odd/plus+sign.jpg",
        "odd/100%.jpg",
        "odd/two words.jpg",
        "odd/%2B already-encoded.jpg",
    ];
    f.put_all(&f.bucket, &keys, b"x").await;
    let mut args = f.submit_args();
    args.extend(strings(&["--images-per-job", "100", "odd/"]));
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<ManifestLine> = manifests(&f, &out.json()).await.concat();
    let listed: BTreeSet<&str> = lines.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(listed, BTreeSet::from(keys));
    for line in &lines {
        assert_eq!(f.get(&line.bucket, &line.key).await, b"x", "{:?}", line.key);
    }
}

/// The plan is spooled locally until the listing is done: a listing that fails part way
/// (every S3 GET after the pre-flight's two and the first page answered 500) leaves nothing in
/// S3 and no job, and a later run starts from scratch.
#[tokio::test]
async fn a_listing_that_fails_part_way_writes_and_submits_nothing() {
    let f = Fixture::new().await;
    let keys: Vec<String> = (0..2100).map(|i| format!("big/{i:04}.jpg")).collect();
    f.put_all(&f.bucket, &keys, b"x").await;
    let fault = FaultRule::new(Match::s3_get(), Fault::Status(500)).skip(3);
    let proxy = f.emulator.fault_proxy(3, [fault]);
    let mut args = f.submit_args();
    args.push("big/".into());
    let endpoint = proxy.endpoint();
    let out = f
        .embatch_with(&args, None, &[("AWS_ENDPOINT_URL", &endpoint)])
        .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("listing s3://"), "{}", out.stderr);
    assert!(proxy.counts().per_rule[0] > 0);
    f.assert_nothing_written_or_submitted().await;
}
