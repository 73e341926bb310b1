//! The writer and reader under faults the emulator never produces, injected on the wire by
//! the fault proxy: throttling, unprocessed items/keys, 5xx answers, dropped connections.

use crate::table_common;

use std::collections::HashSet;

use embatch_aws::client::SDK_MAX_ATTEMPTS;
use embatch_localaws::faults::{Fault, FaultProxy, FaultRule, Match};
use table_common::*;

/// The writer's pacer at test speed: the proxy's faults do not ease when it slows down.
const FAST_PACE: std::time::Duration = std::time::Duration::from_millis(5);
use embatch_records::reader::{ReadError, ReaderConfig, TableReader};
use embatch_records::vector::VectorRecord;
use embatch_records::writer::{TableWriter, WriteFailure, WriterConfig};
use futures::StreamExt;

/// Every fault kind once, in arrival order and spaced out, then throttling and partial
/// batches at random. 5xx and resets only once each: the SDK's five attempts outlast a few,
/// not a third of all requests failing.
fn chaos(operation: &str) -> Vec<FaultRule> {
    let on = || Match::dynamodb(operation);
    let once = [
        Fault::Throttle,
        Fault::ThrottlingException,
        Fault::Status(500),
        Fault::Status(503),
        Fault::Reset,
        Fault::Unprocessed,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, fault)| FaultRule::new(on(), fault).skip(5 * i as u64).limit(1));
    let random = [
        (Fault::Throttle, 0.15),
        (Fault::ThrottlingException, 0.05),
        (Fault::Unprocessed, 0.5),
    ]
    .into_iter()
    .map(|(fault, p)| FaultRule::new(on(), fault).probability(p));
    once.chain(random).collect()
}

/// `n` records of `dimension` written through [`chaos`] with `max_in_flight` requests: the
/// setup, the proxy and what was written.
async fn write_through_chaos(
    seed: u64,
    n: usize,
    dimension: usize,
    max_in_flight: usize,
) -> (Setup, FaultProxy, Vec<VectorRecord>) {
    let s = setup().await;
    let proxy = s.emulator.fault_proxy(seed, chaos("BatchWriteItem"));
    let writer = writer(client(&proxy.endpoint()).await, &s, max_in_flight, 40);
    let written = records(n, dimension, "chaos");
    writer.write(written.clone()).await.unwrap();
    (s, proxy, written)
}

/// A writer on `c` with `attempts` of our retries and the test pace.
fn writer(
    c: aws_sdk_dynamodb::Client,
    s: &Setup,
    max_in_flight: usize,
    attempts: u32,
) -> TableWriter {
    let retry = fast_retry(attempts);
    let config = WriterConfig {
        max_in_flight,
        retry,
        max_pace: FAST_PACE,
    };
    TableWriter::new(c, &s.table, config)
}

/// A proxy injecting `fault` into every BatchWriteItem, and a [`writer`] through it.
async fn every_write_faulted(
    s: &Setup,
    fault: Fault,
    max_in_flight: usize,
    attempts: u32,
) -> (FaultProxy, TableWriter) {
    let rule = FaultRule::new(Match::dynamodb("BatchWriteItem"), fault);
    let proxy = s.emulator.fault_proxy(1, [rule]);
    let writer = writer(client(&proxy.endpoint()).await, s, max_in_flight, attempts);
    (proxy, writer)
}

/// A reader on `c` with `attempts` of our retries.
fn reader(c: aws_sdk_dynamodb::Client, s: &Setup, attempts: u32) -> TableReader {
    let config = ReaderConfig {
        retry: fast_retry(attempts),
        ..Default::default()
    };
    TableReader::with_config(c, &s.table, config)
}

async fn stored(s: &Setup) -> Vec<VectorRecord> {
    let mut all: Vec<VectorRecord> = TableReader::new(s.direct.clone(), &s.table)
        .scan(2)
        .map(|r| r.unwrap())
        .collect()
        .await;
    all.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    all
}

#[tokio::test]
async fn writes_under_throttling_and_partial_batches_lose_and_duplicate_nothing() {
    let (s, proxy, written) = write_through_chaos(11, 2000, 512, 4).await;

    let counts = proxy.counts();
    for kind in [
        "throttle",
        "throttling-exception",
        "status",
        "reset",
        "unprocessed",
    ] {
        assert!(counts.kind(kind) > 0, "no {kind} injected: {counts:?}");
    }
    assert!(counts.withheld > 100, "{counts:?}");
    assert_eq!(counts.largest_batch["BatchWriteItem"], 25);
    // A request without a fault stores its whole batch, so exactly one per batch of 25.
    assert_eq!(
        counts.operation("BatchWriteItem") - counts.injected(),
        2000 / 25,
        "{counts:?}"
    );

    assert_all_same(&stored(&s).await, &written);
}

/// One retry layer per failure class (embatch_aws::retry): a 5xx that never ends costs
/// exactly the SDK's attempts per request, and ours add none.
#[tokio::test]
async fn a_persistent_5xx_costs_exactly_the_sdks_attempts_per_request() {
    let s = setup().await;
    let proxy = s
        .emulator
        .fault_proxy(2, [FaultRule::new(Match::Any, Fault::Status(500))]);
    let c = client(&proxy.endpoint()).await;
    let e = writer(c.clone(), &s, 1, 10)
        .write(records(30, 4, "down"))
        .await
        .unwrap_err();
    assert!(e.transient, "{e}");
    assert!(matches!(e.cause, WriteFailure::Transient { .. }), "{e}");
    assert_eq!(e.unwritten.len(), 30);
    let sdk = SDK_MAX_ATTEMPTS as u64;
    assert_eq!(
        proxy.counts().operation("BatchWriteItem"),
        2 * sdk,
        "2 batches"
    );

    let reader = reader(c, &s, 10);
    assert!(reader.get(&["a"]).await.unwrap_err().is_transient());
    assert_eq!(proxy.counts().operation("BatchGetItem"), sdk);
    let scanned: Vec<_> = reader.scan(1).collect().await;
    assert!(scanned.len() == 1 && scanned[0].as_ref().is_err_and(ReadError::is_transient));
    assert_eq!(proxy.counts().operation("Scan"), sdk);
}

/// Throttling that outlasts the SDK is retried by our layer: at most SDK_MAX_ATTEMPTS x our
/// attempts per batch (exactly that while the SDK's retry quota lasts), and the writer's
/// pacer slows down.
#[tokio::test]
async fn persistent_throttling_costs_the_sdks_attempts_times_ours() {
    let s = setup().await;
    let (proxy, writer) = every_write_faulted(&s, Fault::Throttle, 1, 4).await;
    let e = writer.write(records(10, 4, "slow")).await.unwrap_err();
    assert!(e.transient, "{e}");
    assert!(
        matches!(e.cause, WriteFailure::RetriesExhausted { attempts: 4, .. }),
        "{e}"
    );
    assert_eq!(
        proxy.counts().operation("BatchWriteItem"),
        4 * SDK_MAX_ATTEMPTS as u64
    );
    assert!(writer.pacer().interval() > std::time::Duration::ZERO);
}

#[tokio::test]
async fn sdk_retries_and_ours_together_store_everything() {
    let (s, proxy, written) = write_through_chaos(5, 500, 1280, 8).await;
    assert!(proxy.counts().injected() > 10, "{:?}", proxy.counts());
    assert_all_same(&stored(&s).await, &written);
}

#[tokio::test]
async fn reads_under_throttling_and_unprocessed_keys_return_everything() {
    let s = setup().await;
    let written = records(1000, 512, "read");
    TableWriter::new(s.direct.clone(), &s.table, WriterConfig::default())
        .write(written.clone())
        .await
        .unwrap();

    let mut rules = chaos("BatchGetItem");
    rules.extend([
        // One 500 (on a call's first attempt) and two throttles: the SDK retries them all.
        FaultRule::new(Match::dynamodb("Scan"), Fault::Status(500)).limit(1),
        FaultRule::new(Match::dynamodb("Scan"), Fault::Throttle).limit(2),
    ]);
    let proxy = s.emulator.fault_proxy(23, rules);
    let reader = TableReader::with_config(
        client(&proxy.endpoint()).await,
        &s.table,
        ReaderConfig {
            max_in_flight: 4,
            retry: fast_retry(40),
            consistent_read: false,
        },
    );
    let mut ids: Vec<String> = written.iter().map(|r| r.image_id.clone()).collect();
    ids.push("missing-one".into());
    let fetched = reader.get(&ids).await.unwrap();
    assert_eq!(fetched.missing, vec!["missing-one"]);
    assert_all_same(&fetched.found, &written);
    let provenance = reader.provenance(&ids).await.unwrap();
    assert_eq!(provenance.len(), 1000);
    assert_eq!(
        provenance["read/00999.jpg"].source_etag.as_deref(),
        Some("etag-999")
    );

    let counts = proxy.counts();
    assert!(counts.withheld > 50, "{counts:?}");
    assert_eq!(counts.largest_batch["BatchGetItem"], 100);
    assert_eq!(counts.per_rule[..6], [1; 6], "{counts:?}");
    assert!(counts.per_rule[6..9].iter().sum::<u64>() > 0, "{counts:?}");

    let mut scanned: Vec<VectorRecord> = reader.scan(4).map(|r| r.unwrap()).collect().await;
    scanned.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    assert_all_same(&scanned, &written);
    let counts = proxy.counts();
    assert_eq!(counts.per_rule[9], 1, "{counts:?}");
    assert_eq!(counts.per_rule[10], 2, "{counts:?}");
}

#[tokio::test]
async fn a_spent_retry_budget_names_exactly_the_items_not_written() {
    let s = setup().await;
    // Every BatchWriteItem stores only part of its items: no batch can ever finish.
    let (proxy, writer) = every_write_faulted(&s, Fault::Unprocessed, 4, 3).await;
    let written = records(100, 512, "budget");
    let e = writer.write(written.clone()).await.unwrap_err();

    assert!(e.transient);
    assert!(
        matches!(e.cause, WriteFailure::RetriesExhausted { attempts: 3, .. }),
        "{e}"
    );
    let unwritten: HashSet<&str> = e.unwritten.iter().map(String::as_str).collect();
    assert_eq!(unwritten.len(), e.unwritten.len(), "no id named twice");
    let stored: HashSet<String> = stored(&s).await.into_iter().map(|r| r.image_id).collect();
    for r in &written {
        assert!(
            stored.contains(&r.image_id) != unwritten.contains(r.image_id.as_str()),
            "{} must be either stored or named as unwritten, not both or neither",
            r.image_id
        );
    }
    assert!(!unwritten.is_empty());
    assert!(e.to_string().contains(&e.unwritten[0]), "{e}");
    assert_eq!(
        proxy.counts().operation("BatchWriteItem"),
        4 * 3,
        "4 batches x 3 attempts"
    );
}

#[tokio::test]
async fn endless_throttling_ends_in_a_transient_error_for_every_item() {
    let s = setup().await;
    let proxy = s
        .emulator
        .fault_proxy(1, [FaultRule::new(Match::Any, Fault::Throttle)]);
    let c = client_without_sdk_retries(&proxy.endpoint()).await;
    let e = writer(c.clone(), &s, 2, 4)
        .write(records(30, 4, "throttled"))
        .await
        .unwrap_err();
    assert_eq!(e.unwritten.len(), 30);
    assert!(e.transient);
    assert!(
        e.to_string().contains("ProvisionedThroughputExceeded"),
        "{e}"
    );
    assert!(stored(&s).await.is_empty());

    let reader = reader(c, &s, 4);
    let e = reader.get(&["a", "b"]).await.unwrap_err();
    assert!(
        matches!(
            e,
            ReadError::Request {
                transient: true,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_transient());
    let scanned: Vec<_> = reader.scan(2).collect().await;
    assert_eq!(
        scanned.len(),
        2,
        "one error per segment, then the segment ends"
    );
    assert!(scanned
        .iter()
        .all(|r| r.as_ref().is_err_and(ReadError::is_transient)));
    // 2 writes x 4 + 1 get x 4 + 2 segments x 4 attempts.
    assert_eq!(proxy.counts().injected(), 8 + 4 + 8);
}
