//! End-to-end tests across the crates (the table library, submitter + worker, the local run,
//! the deployment's IAM and retry rules), in one test binary (one link, not one per file).

mod enforced_iam;
mod local_run;
mod retry_strategy;
mod submit_and_run;
mod table;
mod table_common;
mod table_retries;
