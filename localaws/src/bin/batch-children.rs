//! `batch-children JOB_ID...`: every child of the given AWS Batch jobs, one JSON line each
//! (`job_id`, `array_index`, `manifest`, `env`), with the environment AWS Batch would give it
//! (`embatch_localaws::batch::children`). The Python stack test starts its workers from these,
//! so that it and the Rust player run the same children. Reaches AWS (the emulator) through
//! the SDK's environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials).
#![warn(clippy::too_many_lines)] // at 80 lines (clippy.toml)

use std::process::ExitCode;

use embatch_aws::client::{self, AwsOptions};
use embatch_localaws::batch::children;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let job_ids: Vec<String> = std::env::args().skip(1).collect();
    if job_ids.is_empty() {
        eprintln!("usage: batch-children JOB_ID...");
        return ExitCode::from(2);
    }
    let config = client::load(&AwsOptions::default()).await;
    match children(&aws_sdk_batch::Client::new(&config), &job_ids).await {
        Ok(children) => {
            for child in children {
                println!(
                    "{}",
                    serde_json::to_string(&child).expect("a Child serialises")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("batch-children: {e:#}");
            ExitCode::FAILURE
        }
    }
}
