//! The real submitter, then AWS Batch played by `embatch_localaws::batch::Player` running the
//! real worker for every array index, then every vector read back: the manifests the
//! submitter writes are exactly what the worker reads (one shared definition in
//! `embatch_formats::manifest`), and every image ends as a vector or a recorded failure.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;

use embatch_formats::manifest::{parse_jsonl, ManifestLine};
use embatch_formats::report::{ChildSummary, FailureLine};
use embatch_formats::run::{RunLayout, SubmittedJob};
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::batch::{assert_all_succeeded, create_resources, Player};
use embatch_localaws::emulator::unique_name;
use embatch_localaws::fixture::{get_bytes, put_bytes};
use embatch_localaws::{bins, sample, test_model, Emulator};
use embatch_records::reader::TableReader;
use embatch_records::table::create_table;

async fn get(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Vec<u8> {
    get_bytes(s3, uri)
        .await
        .unwrap_or_else(|| panic!("{uri} exists"))
}

async fn embatch(emulator: &Emulator, args: &[String]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bins::binary("embatch").unwrap())
        .args(args)
        .env_clear()
        .envs(emulator.env())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn submitted_manifests_are_what_the_worker_embeds() {
    let worker = bins::binary("embatch-worker").unwrap();
    let spec = test_model::resnet18_spec().unwrap();
    let emulator = Emulator::start().unwrap();
    let config = emulator.sdk_config().await;
    let s3 = embatch_aws::client::s3(&config);
    let dynamodb = embatch_aws::client::dynamodb(&config);
    let batch = aws_sdk_batch::Client::new(&config);

    let bucket = unique_name("e2e");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let table = unique_name("vectors");
    create_table(&dynamodb, &table).await.unwrap();
    let resources = create_resources(&emulator, &config, "e2e").await.unwrap();

    // Twelve generated images, two more under awkward keys, one corrupt image, one non-image.
    let samples = sample::generate(3, 11);
    let mut objects: Vec<(String, Vec<u8>)> = samples
        .iter()
        .map(|s| (format!("in/{}", s.name), s.bytes.clone()))
        .collect();
    let jpeg = samples.iter().find(|s| s.name.ends_with(".jpg")).unwrap();
    objects.push(("in/odd name ü+%20.jpg".into(), jpeg.bytes.clone()));
    objects.push(("in/a+b/100%.JPG".into(), jpeg.bytes.clone()));
    objects.push(("in/broken.png".into(), b"this is not a PNG".to_vec()));
    objects.push(("in/readme.txt".into(), b"not listed".to_vec()));
    for (key, body) in &objects {
        put_bytes(&s3, &S3Uri::new(&bucket, key.as_str()), body).await;
    }
    let images = objects.len() - 1;

    let args: Vec<String> = [
        "submit",
        "--bucket",
        &bucket,
        "--job-queue",
        &resources.job_queue,
        "--job-definition",
        &resources.job_definition,
        "--table",
        &table,
        "--model-spec",
        spec.to_str().unwrap(),
        "--images-per-job",
        "4",
        "in/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, stdout, stderr) = embatch(&emulator, &args).await;
    assert_eq!(code, 0, "{stderr}");
    let submitted: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(submitted["images"], images);
    let manifests = images.div_ceil(4);
    assert_eq!(submitted["manifests"], manifests);
    let run_id = submitted["run_id"].as_str().unwrap().to_string();
    let jobs: Vec<SubmittedJob> = serde_json::from_value(submitted["jobs"].clone()).unwrap();
    let job_ids: Vec<String> = jobs.into_iter().map(|j| j.job_id.unwrap()).collect();
    assert_eq!(job_ids.len(), 1);
    assert_eq!(submitted["jobs"][0]["array_size"], manifests);

    // Play AWS Batch: one worker per array index, with the environment read back from Batch.
    let runs = Player::new(&worker, &emulator)
        .parallelism(2)
        .play(&batch, &job_ids)
        .await
        .unwrap();
    assert_eq!(runs.len(), manifests);
    assert_all_succeeded(&runs);

    // Every manifest line ends as a vector from that very object, or as a recorded failure.
    let layout =
        RunLayout::from_root(S3Uri::parse(submitted["run_uri"].as_str().unwrap()).unwrap());
    let mut lines: Vec<(usize, ManifestLine)> = Vec::new();
    let mut failures: HashMap<String, FailureLine> = HashMap::new();
    for n in 0..manifests {
        let uri = layout.manifest(n);
        let manifest = parse_jsonl(&get(&s3, &uri).await, &uri.to_string()).unwrap();
        let summary: ChildSummary =
            serde_json::from_slice(&get(&s3, &layout.summary(n)).await).unwrap();
        assert_eq!(summary.manifest, n);
        assert_eq!(summary.images, manifest.len() as u64);
        assert_eq!(
            summary.written + summary.skipped + summary.failed,
            summary.images
        );
        assert_eq!(
            summary.job_id.as_deref(),
            Some(format!("{}:{n}", job_ids[0]).as_str())
        );
        if summary.failed > 0 {
            let report = get(&s3, &layout.failures(n)).await;
            for line in report.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let failure: FailureLine = serde_json::from_slice(line).unwrap();
                failures.insert(failure.image_id.clone(), failure);
            }
        }
        lines.extend(manifest.into_iter().map(|l| (n, l)));
    }
    assert_eq!(lines.len(), images);
    let keys: Vec<&str> = lines.iter().map(|(_, l)| l.key.as_str()).collect();
    for (key, _) in objects.iter().filter(|(k, _)| !k.ends_with(".txt")) {
        assert!(
            keys.contains(&key.as_str()),
            "{key} missing from the manifests"
        );
    }

    let reader = TableReader::new(dynamodb.clone(), &table);
    let ids: Vec<&str> = lines.iter().map(|(_, l)| l.image_id.as_str()).collect();
    let fetched = reader.get(&ids).await.unwrap();
    let mut outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, line) in &lines {
        match (fetched.record(&line.image_id), failures.get(&line.image_id)) {
            (Some(record), None) => {
                assert_eq!(record.meta.source_uri.as_deref(), Some(line.uri().as_str()));
                assert_eq!(record.meta.source_etag.as_deref(), Some(line.etag.as_str()));
                assert_eq!(record.meta.source_size, Some(line.size));
                assert_eq!(record.meta.run_id.as_deref(), Some(run_id.as_str()));
                assert_eq!(record.vector.len(), 512);
                assert!(record.vector.iter().all(|v| v.is_finite()));
                *outcome.entry("written").or_default() += 1;
            }
            (None, Some(failure)) => {
                assert_eq!(failure.key, line.key);
                *outcome.entry("failed").or_default() += 1;
            }
            (r, f) => panic!(
                "{}: stored {} and failed {}",
                line.uri(),
                r.is_some(),
                f.is_some()
            ),
        }
    }
    assert_eq!(outcome.get("written"), Some(&(images - 1)));
    assert_eq!(outcome.get("failed"), Some(&1));
    assert!(failures.contains_key("in/broken.png"), "{failures:?}");
    // The two awkward keys hold the same bytes, so the same vector.
    let a = fetched.vector("in/odd name ü+%20.jpg").unwrap();
    let b = fetched.vector("in/a+b/100%.JPG").unwrap();
    assert_eq!(a, b);

    // `embatch status` agrees (one image failed: accepted).
    let status = [
        "status",
        &run_id,
        "--bucket",
        &bucket,
        "--allow-failed-images",
    ]
    .map(str::to_string);
    let (code, stdout, stderr) = embatch(&emulator, &status).await;
    assert_eq!(code, 0, "{stderr}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["reports"]["summaries"], manifests);
    assert_eq!(s["reports"]["written"], images - 1);
    assert_eq!(s["reports"]["failed"], 1);
    assert_eq!(s["reports"]["failure_lines"], 1);
}
