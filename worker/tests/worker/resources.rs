//! The worker on a shared Batch instance: its pools follow the job's vCPUs and memory (the job
//! definition's `EMBATCH_JOB_*`, else the ECS container metadata endpoint, else the cgroup),
//! not the host, and its peak memory stays under the job's limit on the largest images the
//! limits admit. The metadata endpoint is a stub on 127.0.0.1 (a service the emulator lacks).

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use embatch_formats::run::{env, exit};
use embatch_testkit::peak_memory::run_measured;
use image::{ImageBuffer, ImageFormat, Rgba};

/// A stub of the ECS container metadata endpoint v4 on 127.0.0.1, answering every GET with
/// `body`; counts the requests for `path`.
struct MetadataStub {
    uri: String,
    hits: Arc<AtomicUsize>,
}

impl MetadataStub {
    fn start(body: &'static str) -> MetadataStub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let path = "/v4/0123456789abcdef-3291572416";
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request_line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Drain the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                if request_line.starts_with(&format!("GET {path} ")) {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        MetadataStub {
            uri: format!("http://127.0.0.1:{port}{path}"),
            hits,
        }
    }
}

/// What the container metadata of a Batch EC2 job with 3 vCPUs and 8192 MiB holds (abridged).
const METADATA: &str = r#"{"DockerId":"0123456789abcdef","Name":"default","Limits":{"CPU":3072,"Memory":8192},"Type":"NORMAL"}"#;

/// The worker's "job resources" log line, as JSON.
fn job_resources(stderr: &str) -> serde_json::Value {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "job resources")
        .unwrap_or_else(|| panic!("no job resources line in:\n{stderr}"))
}

async fn small_manifest(fx: &Fixture) {
    let (lines, _) = upload_many(fx, "small", 2).await;
    fx.put_manifest(0, &lines).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_follow_the_ecs_metadata_unless_the_job_definition_says_otherwise() {
    let fx = Fixture::new().await;
    small_manifest(&fx).await;
    let stub = MetadataStub::start(METADATA);

    let mut command = fx.worker(0);
    command.env("ECS_CONTAINER_METADATA_URI_V4", &stub.uri);
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let r = job_resources(&stderr);
    assert_eq!(
        stub.hits.load(Ordering::SeqCst),
        1,
        "asked the endpoint once"
    );
    assert_eq!(
        (
            &r["vcpus"],
            &r["vcpus_from"],
            &r["memory_mib"],
            &r["memory_from"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!("ECS metadata"),
            &serde_json::json!(8192),
            &serde_json::json!("ECS metadata")
        ),
        "{r}"
    );
    assert_eq!(
        (&r["infer_threads"], &r["decode_threads"]),
        (&3.into(), &3.into()),
        "{r}"
    );

    // The job definition's figures win; explicit thread counts win over both.
    let mut command = fx.worker(0);
    command
        .env("ECS_CONTAINER_METADATA_URI_V4", &stub.uri)
        .env(env::JOB_VCPUS, "2")
        .env(env::JOB_MEMORY_MIB, "4096")
        .args(["--infer-threads", "1", "--force"]);
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let r = job_resources(&stderr);
    assert_eq!(
        (&r["vcpus"], &r["vcpus_from"]),
        (&2.into(), &"job definition".into()),
        "{r}"
    );
    assert_eq!(
        (&r["memory_mib"], &r["memory_from"]),
        (&4096.into(), &"job definition".into()),
        "{r}"
    );
    assert_eq!(
        (&r["infer_threads"], &r["decode_threads"]),
        (&1.into(), &2.into()),
        "{r}"
    );
    assert_eq!(
        stub.hits.load(Ordering::SeqCst),
        1,
        "not asked when both are set"
    );

    // An endpoint that answers nonsense is ignored (logged), not fatal.
    let broken = MetadataStub::start("not json");
    let mut command = fx.worker(0);
    command
        .env("ECS_CONTAINER_METADATA_URI_V4", &broken.uri)
        .arg("--force");
    let (status, stderr) = run(command);
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    assert_eq!(job_resources(&stderr)["vcpus_from"], "cgroup");
    assert!(stderr.contains("gave no container limits"), "{stderr}");
}

/// A `w` x `h` 16-bit RGBA PNG: the costliest decode per pixel (12 bytes a pixel).
fn rgba16_png(w: u32, h: u32) -> Vec<u8> {
    let image: ImageBuffer<Rgba<u16>, Vec<u16>> = ImageBuffer::from_fn(w, h, |x, y| {
        Rgba([
            (x * 16) as u16,
            (y * 16) as u16,
            ((x + y) * 8) as u16,
            60000,
        ])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba16(image)
        .write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_stays_under_the_jobs_limit_on_the_largest_images_the_limits_admit() {
    const LIMIT_MIB: u64 = 896;
    const PIXELS: u64 = 4000 * 4000;
    let fx = Fixture::new().await;
    let png = tokio::task::spawn_blocking(|| rgba16_png(4000, 4000))
        .await
        .unwrap();
    let mut lines = Vec::new();
    for i in 0..8 {
        lines.push(fx.put(&format!("large/{i}.png"), &png).await);
    }
    fx.put_manifest(0, &lines).await;

    // An 8-vCPU job with 896 MiB: 8 decode threads of 16-Mpixel images would need 1.5 GB.
    let worker = |decode_threads: Option<&str>| {
        let mut command = fx.worker(0);
        command
            .env(env::JOB_VCPUS, "8")
            .env(env::JOB_MEMORY_MIB, LIMIT_MIB.to_string())
            .args(["--max-pixels", &PIXELS.to_string(), "--force"]);
        if let Some(n) = decode_threads {
            command.args(["--decode-threads", n]);
        }
        command
    };
    let (status, stderr, peak) = tokio::task::spawn_blocking({
        let command = worker(None);
        move || run_measured(command)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    let r = job_resources(&stderr);
    assert_eq!(
        (&r["decode_threads"], &r["decode_threads_memory_bound"]),
        (&1.into(), &true.into()),
        "{r}"
    );
    assert_eq!(fx.summary(0).await.written, 8);

    // The control: the same manifest with the host's habit of one decode thread per vCPU.
    let (status, stderr, unbounded) = tokio::task::spawn_blocking({
        let command = worker(Some("8"));
        move || run_measured(command)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(exit::DONE), "{stderr}");
    eprintln!(
        "RELIABILITY job-memory: limit={LIMIT_MIB} MiB peak={} MiB (1 decode thread, planned) control={} MiB (8 decode threads)",
        peak >> 20,
        unbounded >> 20
    );
    assert!(
        peak < LIMIT_MIB << 20,
        "peak {} MiB over the job's {LIMIT_MIB} MiB",
        peak >> 20
    );
    assert!(
        unbounded > LIMIT_MIB << 20,
        "the control must exceed the limit for the test to mean anything: {} MiB",
        unbounded >> 20
    );
}
