//! `embatch status` over FAILED children.
//!
//! The emulator marks every job SUCCEEDED, except when its server process runs with
//! `MOTO_SIMPLE_BATCH_FAIL_AFTER=0`: then every job and child is FAILED. The variable is set
//! before the emulator starts; this file holds a single test so nothing else in this process
//! sees it.

mod common;

use common::{strings, Fixture};

#[tokio::test]
async fn status_names_the_failed_children_and_exits_4() {
    std::env::set_var("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0");
    let f = Fixture::new().await;
    f.put_all(&f.bucket, &["f/1.jpg", "f/2.jpg", "g/3.jpg"], b"x")
        .await;

    // An array job of two children, and a plain job.
    for (prefix, per_job, expected) in [("f", "1", vec![0u64, 1]), ("g", "1", vec![0])] {
        let mut args = f.submit_args();
        args.extend(strings(&["--images-per-job", per_job, prefix]));
        let out = f.embatch(&args, None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let summary = out.json();
        let job_id = summary["jobs"][0]["job_id"].as_str().unwrap().to_string();
        let array = !summary["jobs"][0]["array_size"].is_null();

        let run_id = summary["run_id"].as_str().unwrap();
        let out = f
            .embatch(&strings(&["status", run_id, "--bucket", &f.bucket]), None)
            .await;
        assert_eq!(out.code, 4, "{}\n{}", out.stderr, out.stdout);
        let s = out.json();
        assert_eq!(s["succeeded"], false);
        assert_eq!(s["finished"], true);
        assert_eq!(s["children"]["FAILED"], expected.len());
        let failed = s["failed_children"].as_array().unwrap();
        let manifests: Vec<u64> = failed
            .iter()
            .map(|c| c["manifest"].as_u64().unwrap())
            .collect();
        assert_eq!(manifests, expected);
        for (child, n) in failed.iter().zip(&expected) {
            let want = if array {
                format!("{job_id}:{n}")
            } else {
                job_id.clone()
            };
            assert_eq!(child["job_id"], want.as_str());
        }
    }
}
