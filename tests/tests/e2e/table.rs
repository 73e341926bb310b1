//! The writer and reader against the emulator with real aws-sdk clients.

use crate::table_common;

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use embatch_localaws::faults::{FaultPlan, FaultProxy};
use embatch_records::reader::{Provenance, ReadError, ReaderConfig, TableReader};
use embatch_records::vector::{attr, ItemError, VectorRecord};
use embatch_records::writer::{TableWriter, WriteFailure, WriterConfig};
use futures::StreamExt;
use table_common::*;

fn writer(s: &Setup) -> TableWriter {
    TableWriter::new(s.direct.clone(), &s.table, WriterConfig::default())
}

fn reader(s: &Setup) -> TableReader {
    TableReader::new(s.direct.clone(), &s.table)
}

#[tokio::test]
async fn vectors_of_512_and_1280_dimensions_round_trip_bit_exact() {
    let s = setup().await;
    let mut written = records(30, 512, "small");
    written.extend(records(30, 1280, "large"));
    writer(&s).write(written.clone()).await.unwrap();

    let ids: Vec<String> = written.iter().map(|r| r.image_id.clone()).collect();
    let mut asked = ids.clone();
    asked.insert(7, "not/there.jpg".into());
    asked.push("also-missing".into());
    let fetched = reader(&s).get(&asked).await.unwrap();
    assert_eq!(fetched.missing, vec!["not/there.jpg", "also-missing"]);
    let got: Vec<&str> = fetched.found.iter().map(|r| r.image_id.as_str()).collect();
    assert_eq!(got, ids, "found in the order asked");
    assert_all_same(&fetched.found, &written);
    assert_eq!(fetched.vector("large/00003.jpg").unwrap().len(), 1280);

    // The stored bytes are the sample's format: raw little-endian float32, Dimension, DataType.
    let item = s
        .direct
        .get_item()
        .table_name(&s.table)
        .key(attr::IMAGE_ID, AttributeValue::S("small/00001.jpg".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let blob = item[attr::VECTOR].as_b().unwrap().as_ref().to_vec();
    assert_eq!(blob.len(), 512 * 4);
    assert_eq!(&blob[4..8], &(-0.0f32).to_le_bytes());
    assert_eq!(item[attr::DIMENSION].as_n().unwrap(), "512");
    assert_eq!(item[attr::DATA_TYPE].as_s().unwrap(), "float32");
}

#[tokio::test]
async fn ten_thousand_items_are_written_and_read_back_bit_exact() {
    let s = setup().await;
    let written = records(10_000, 512, "bulk");
    writer(&s).write(written.clone()).await.unwrap();

    // Read back through a proxy without faults, to see the requests.
    let proxy = FaultProxy::start(&s.emulator.endpoint(), FaultPlan::default()).unwrap();
    let through = TableReader::new(client(&proxy.endpoint()).await, &s.table);

    // All of it by Scan: moto answers BatchGetItem and Scan at about the same rate, so the
    // full get is left to smaller tests and this one samples every 20th id.
    let mut scanned: Vec<VectorRecord> = through.scan(4).map(|r| r.unwrap()).collect().await;
    scanned.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    // Each item exactly once across segments.
    assert_all_same(&scanned, &written);
    assert!(
        proxy.counts().operation("Scan") > 8,
        "23 MB in 1 MB pages: every segment paginates: {:?}",
        proxy.counts()
    );

    let sample: Vec<VectorRecord> = written.iter().step_by(20).cloned().collect();
    let ids: Vec<&str> = sample.iter().map(|r| r.image_id.as_str()).collect();
    let fetched = through.get(&ids).await.unwrap();
    assert!(fetched.missing.is_empty(), "missing: {:?}", fetched.missing);
    assert_all_same(&fetched.found, &sample);
    assert_eq!(proxy.counts().operation("BatchGetItem"), 5);
}

#[tokio::test]
async fn rewriting_an_image_replaces_it_with_an_identical_item() {
    let s = setup().await;
    let batch = records(40, 512, "again");
    writer(&s).write(batch.clone()).await.unwrap();
    let before = raw_items(&s.direct, &s.table).await;
    writer(&s).write(batch.clone()).await.unwrap();
    let after = raw_items(&s.direct, &s.table).await;
    assert_eq!(after.len(), 40);
    let by_id = |items: Vec<HashMap<String, AttributeValue>>| {
        items
            .into_iter()
            .map(|i| (i[attr::IMAGE_ID].as_s().unwrap().clone(), i))
            .collect::<HashMap<_, _>>()
    };
    assert_eq!(by_id(before), by_id(after));
}

#[tokio::test]
async fn duplicate_ids_in_one_call_keep_the_last_record() {
    let s = setup().await;
    let first = record("dup.jpg", 512, 1);
    let last = record("dup.jpg", 512, 2);
    let mut batch = records(30, 512, "dups");
    batch.insert(3, first);
    batch.push(last.clone());
    // 32 records, 31 ids: one BatchWriteItem would be rejected for the duplicate key.
    writer(&s).write(batch).await.unwrap();
    let fetched = reader(&s).get(&["dup.jpg"]).await.unwrap();
    assert_same(&fetched.found[0], &last);
    assert_eq!(raw_items(&s.direct, &s.table).await.len(), 31);
}

#[tokio::test]
async fn provenance_reads_etag_and_model_without_vectors() {
    let s = setup().await;
    let batch = records(150, 512, "prov");
    writer(&s).write(batch.clone()).await.unwrap();
    // An item as the original sample wrote it: no provenance attributes.
    s.direct
        .put_item()
        .table_name(&s.table)
        .item(attr::IMAGE_ID, AttributeValue::S("sample".into()))
        .item(attr::VECTOR, AttributeValue::B(Blob::new(vec![0u8; 8])))
        .item(attr::DIMENSION, AttributeValue::N("2".into()))
        .item(attr::DATA_TYPE, AttributeValue::S("float32".into()))
        .send()
        .await
        .unwrap();
    let mut ids: Vec<String> = batch.iter().map(|r| r.image_id.clone()).collect();
    ids.push("sample".into());
    ids.push("never-written".into());
    let provenance = reader(&s).provenance(&ids).await.unwrap();
    assert_eq!(provenance.len(), 151);
    assert_eq!(
        provenance["prov/00042.jpg"],
        Provenance {
            source_etag: Some("etag-42".into()),
            model_sha256: Some("ab".repeat(32)),
        }
    );
    assert_eq!(provenance["sample"], Provenance::default());
    assert!(!provenance.contains_key("never-written"));
}

#[tokio::test]
async fn corrupt_stored_items_are_typed_errors_in_get_and_scan() {
    let s = setup().await;
    writer(&s).write(records(5, 512, "ok")).await.unwrap();
    let put = |id: &str, vector: Vec<u8>, dimension: &str, data_type: &str| {
        s.direct
            .put_item()
            .table_name(&s.table)
            .item(attr::IMAGE_ID, AttributeValue::S(id.into()))
            .item(attr::VECTOR, AttributeValue::B(Blob::new(vector)))
            .item(attr::DIMENSION, AttributeValue::N(dimension.into()))
            .item(attr::DATA_TYPE, AttributeValue::S(data_type.into()))
            .send()
    };
    put("short", vec![0; 2047], "512", "float32").await.unwrap();
    put("float16", vec![0; 1024], "512", "float16")
        .await
        .unwrap();

    let r = reader(&s);
    match r.get(&["ok/00001.jpg", "short"]).await {
        Err(ReadError::Item(ItemError::LengthMismatch {
            image_id,
            bytes: 2047,
            dimension: 512,
        })) => {
            assert_eq!(image_id, "short")
        }
        other => panic!("expected a length mismatch for \"short\", got {other:?}"),
    }
    assert!(matches!(
        r.get(&["float16"]).await,
        Err(ReadError::Item(ItemError::UnknownDataType { .. }))
    ));

    let results: Vec<_> = r.scan(2).collect().await;
    assert_eq!(results.len(), 7, "the stream goes on after a corrupt item");
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("\"short\"")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("\"float16\"")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_missing_table_is_a_permanent_error_naming_every_item() {
    let s = setup().await;
    let w = TableWriter::new(s.direct.clone(), "no-such-table", WriterConfig::default());
    let e = w.write(records(30, 8, "lost")).await.unwrap_err();
    assert_eq!(e.unwritten.len(), 30);
    assert!(!e.transient);
    assert!(matches!(e.cause, WriteFailure::Rejected { .. }), "{e}");
    assert!(
        e.to_string().contains("no-such-table") && e.to_string().contains("lost/00000.jpg"),
        "{e}"
    );

    let r = TableReader::with_config(s.direct.clone(), "no-such-table", ReaderConfig::default());
    let e = r.get(&["x"]).await.unwrap_err();
    assert!(
        matches!(
            e,
            ReadError::Request {
                transient: false,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn an_oversized_item_is_rejected_alone_and_its_batch_neighbours_are_stored() {
    let s = setup().await;
    let mut batch = records(40, 512, "fine");
    // 110,000 floats = 440 KB: over DynamoDB's 400 KB item limit, so its batch is rejected.
    batch.insert(5, record("too-big.jpg", 110_000, 1));
    let e = writer(&s).write(batch).await.unwrap_err();
    assert_eq!(e.unwritten, vec!["too-big.jpg"]);
    assert!(!e.transient);
    assert!(
        matches!(&e.cause, WriteFailure::Rejected { message } if message.contains("size")),
        "{e}"
    );
    let stored = raw_items(&s.direct, &s.table).await;
    assert_eq!(
        stored.len(),
        40,
        "all 24 neighbours in its batch and the other 16 are stored"
    );
}
