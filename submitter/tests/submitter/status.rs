//! `embatch status` over succeeded children, with the workers' reports, against the emulator.

use crate::common;

use common::{strings, Fixture};
use embatch_formats::report::{ChildSummary, FailureLine};
use embatch_formats::run::RunLayout;
use embatch_formats::s3uri::S3Uri;
use embatch_localaws::faults::{FaultPlan, FaultProxy};
use embatch_submitter::status::{run_status, ReportCache};
use embatch_submitter::Clients;

#[tokio::test]
async fn status_sums_the_reports_of_succeeded_children() {
    let f = Fixture::new().await;
    f.put_all(
        &f.bucket,
        &["s/1.jpg", "s/2.jpg", "s/3.jpg", "s/4.jpg", "s/5.jpg"],
        b"x",
    )
    .await;
    let mut args = f.submit_args();
    args.extend(strings(&["--images-per-job", "2", "s"]));
    let out = f.embatch(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    let run_id = summary["run_id"].as_str().unwrap().to_string();
    let layout = RunLayout::from_root(S3Uri::parse(summary["run_uri"].as_str().unwrap()).unwrap());

    // No worker ran yet: the emulator says SUCCEEDED, but there are no reports.
    let status = strings(&["status", &run_id, "--bucket", &f.bucket]);
    let out = f.embatch(&status, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["children"]["SUCCEEDED"], 3);
    assert_eq!(s["reports"]["summaries"], 0);

    // Reports as the workers write them: manifest 1 had one failed image.
    let counts = [(0usize, 2u64, 0u64), (1, 1, 1), (2, 1, 0)];
    for (n, written, failed) in counts {
        let report = ChildSummary {
            manifest: n,
            images: written + failed,
            written,
            skipped: 0,
            failed,
            seconds: 1.0,
            job_id: None,
        };
        let uri = layout.summary(n);
        f.put(&uri.bucket, &uri.key, serde_json::to_vec(&report).unwrap())
            .await;
    }
    let failure = FailureLine {
        bucket: f.bucket.clone(),
        key: "s/3.jpg".into(),
        image_id: "s/3.jpg".into(),
        kind: "corrupt".into(),
        message: "not a JPEG".into(),
    };
    let uri = layout.failures(1);
    let mut line = serde_json::to_vec(&failure).unwrap();
    line.push(b'\n');
    f.put(&uri.bucket, &uri.key, line).await;

    // Found by run id and also by the run's folder. An image failed: exit 5, unless failed
    // images are accepted.
    for status in [
        status.clone(),
        strings(&["status", summary["run_uri"].as_str().unwrap()]),
    ] {
        let out = f.embatch(&status, None).await;
        assert_eq!(out.code, 5, "{}", out.stderr);
        let mut accepting = status.clone();
        accepting.push("--allow-failed-images".into());
        let out = f.embatch(&accepting, None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let s = out.json();
        assert_eq!(s["succeeded"], true);
        assert_eq!(s["finished"], true);
        assert_eq!(s["manifests"], 3);
        assert_eq!(s["children"]["SUCCEEDED"], 3);
        assert_eq!(s["reports"]["summaries"], 3);
        assert_eq!(s["reports"]["images"], 5);
        assert_eq!(s["reports"]["written"], 4);
        assert_eq!(s["reports"]["failed"], 1);
        assert_eq!(s["reports"]["failure_lines"], 1);
        assert_eq!(s["reports"]["failure_examples"][0]["kind"], "corrupt");
        assert!(
            out.stderr.contains("4 written, 0 skipped, 1 failed"),
            "{}",
            out.stderr
        );
    }

    // --watch returns at once on a finished run.
    let mut watch = status.clone();
    watch.extend(strings(&["--watch", "--interval", "1"]));
    assert_eq!(f.embatch(&watch, None).await.code, 5);

    polls_read_only_new_or_changed_reports(&f, &layout, failure).await;
}

/// Through a proxy that counts requests on the wire: a second poll with the same cache GETs
/// none of the four reports again (only run.json and the listing), and a rewritten report
/// (a retried child) is read again, once.
async fn polls_read_only_new_or_changed_reports(
    f: &Fixture,
    layout: &RunLayout,
    failure: FailureLine,
) {
    let proxy = FaultProxy::start(&f.emulator.endpoint(), FaultPlan::default()).unwrap();
    let config = f.config.to_builder().endpoint_url(proxy.endpoint()).build();
    let clients = Clients::new(&config);
    let gets = || proxy.counts().operation("S3 GET");
    let mut cache = ReportCache::default();
    let first = run_status(&clients, layout, &mut cache).await.unwrap();
    let first_gets = gets();
    let second = run_status(&clients, layout, &mut cache).await.unwrap();
    assert_eq!(second.reports, first.reports);
    assert_eq!(
        gets() - first_gets,
        first_gets - 4,
        "the second poll reads no report"
    );

    let uri = layout.failures(1);
    let mut lines = Vec::new();
    for _ in 0..2 {
        lines.extend(serde_json::to_vec(&failure).unwrap());
        lines.push(b'\n');
    }
    f.put(&uri.bucket, &uri.key, lines).await;
    let before = gets();
    let third = run_status(&clients, layout, &mut cache).await.unwrap();
    assert_eq!(
        third.reports.failure_lines, 2,
        "the rewritten report is read"
    );
    assert_eq!(gets() - before, first_gets - 4 + 1, "and only it");
}

#[tokio::test]
async fn status_of_an_unknown_run_is_a_clear_error() {
    let f = Fixture::new().await;
    let out = f
        .embatch(
            &strings(&["status", "20260101T000000Z-000000", "--bucket", &f.bucket]),
            None,
        )
        .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("run.json does not exist"),
        "{}",
        out.stderr
    );
    let out = f.embatch(&strings(&["status", "some-run"]), None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("give --bucket or --runs-uri"),
        "{}",
        out.stderr
    );
}
