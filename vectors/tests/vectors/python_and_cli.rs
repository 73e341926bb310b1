//! What users outside Rust see: the original sample's Python reading code against items our
//! writer stored, and the `embatch-vectors` CLI (`get --json`, `export` loaded by numpy).

use std::collections::HashMap;
use std::process::Command;

use embatch_localaws::fixture::{record, records, Cloud};
use embatch_records::vector::{encode_f32_le, VectorRecord};
use serde_json::Value;

use crate::common::{cli, finite, python, stdout, store};
use embatch_localaws::run_ok;

/// The sample's reader, verbatim in its essentials, via the boto3 resource API (whose
/// TypeDeserializer makes `Vector` a `boto3.dynamodb.types.Binary`) and via the low-level
/// client plus an explicit TypeDeserializer. Prints `{ImageId: hex of the vector's bytes}`.
const SAMPLE_READER: &str = r#"
import json, sys
import boto3
import numpy as np
from boto3.dynamodb.types import TypeDeserializer

table_name = sys.argv[1]
table = boto3.resource("dynamodb").Table(table_name)
items, kwargs = [], {}
while True:
    page = table.scan(**kwargs)
    items += page["Items"]
    if "LastEvaluatedKey" not in page:
        break
    kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

out = {}
for item in items:
    vector = np.frombuffer(item['Vector'].value, dtype=item['DataType'])
    assert len(vector) == item['Dimension']
    out[item["ImageId"]] = vector.tobytes().hex()

client, deserialize = boto3.client("dynamodb"), TypeDeserializer().deserialize
for image_id in out:
    raw = client.get_item(TableName=table_name, Key={"ImageId": {"S": image_id}})["Item"]
    item = {k: deserialize(v) for k, v in raw.items()}
    vector = np.frombuffer(item['Vector'].value, dtype=item['DataType'])
    assert len(vector) == item['Dimension']
    assert vector.tobytes().hex() == out[image_id], image_id

print(json.dumps(out))
"#;

#[tokio::test]
async fn the_original_samples_python_reader_gets_bit_identical_vectors() {
    let s = Cloud::start().await;
    let mut written = records(40, 512, "py");
    written.extend(records(10, 1280, "py-large"));
    store(&s, written.clone()).await;

    let stdout = self::stdout(
        python()
            .args(["-c", SAMPLE_READER, &s.table])
            .envs(s.emulator.env()),
    );
    assert_hex_vectors(&serde_json::from_str(&stdout).unwrap(), &written);
}

/// Asserts `hex` holds each record's vector bytes, in hex, under its id, and nothing else.
fn assert_hex_vectors(hex: &HashMap<String, String>, written: &[VectorRecord]) {
    assert_eq!(hex.len(), written.len(), "every id once");
    for record in written {
        let want = hex::encode(encode_f32_le(&record.vector));
        assert_eq!(hex[&record.image_id], want, "{:?}", record.image_id);
    }
}

#[tokio::test]
async fn export_writes_a_matrix_numpy_loads_and_ids_in_row_order() {
    let s = Cloud::start().await;
    let mut written = records(300, 512, "export");
    written.push(record("odd\nname \u{1F600}.jpg", 512, 999));
    store(&s, written.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let export = ["export", "--out", out.to_str().unwrap(), "--segments", "3"];
    let exported = run_ok(cli(&s).args(export), "export");
    let stderr = String::from_utf8_lossy(&exported.stderr);
    assert!(
        stderr.contains("exported 301 vectors of dimension 512"),
        "{stderr}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "only the two outputs remain: {leftovers:?}"
    );

    let script = r#"
import json, sys
import numpy as np
vectors = np.load(sys.argv[1] + "/vectors.npy")
ids = [json.loads(line) for line in open(sys.argv[1] + "/ids.jsonl", encoding="utf-8")]
print(json.dumps({"shape": list(vectors.shape), "dtype": str(vectors.dtype),
                  "c_order": bool(vectors.flags["C_CONTIGUOUS"]),
                  "rows": {i: vectors[n].tobytes().hex() for n, i in enumerate(ids)}}))
"#;
    let loaded: Value = serde_json::from_str(&stdout(python().args([
        "-c",
        script,
        out.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(loaded["shape"], serde_json::json!([301, 512]));
    assert_eq!(loaded["dtype"], "float32");
    assert_eq!(loaded["c_order"], true);
    // Every id once, the odd one intact.
    assert_hex_vectors(
        &serde_json::from_value(loaded["rows"].clone()).unwrap(),
        &written,
    );
}

#[tokio::test]
async fn an_empty_table_exports_an_empty_matrix() {
    let s = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    stdout(cli(&s).args(["export", "--out", dir.path().to_str().unwrap()]));
    let shape = stdout(python().args([
        "-c",
        "import sys, numpy as np; print(np.load(sys.argv[1] + '/vectors.npy').shape)",
        dir.path().to_str().unwrap(),
    ]));
    assert_eq!(shape.trim(), "(0, 0)");
    assert_eq!(std::fs::read(dir.path().join("ids.jsonl")).unwrap(), b"");
}

#[tokio::test]
async fn get_prints_json_lines_and_fails_for_missing_ids() {
    let s = Cloud::start().await;
    let written: Vec<VectorRecord> = records(3, 512, "cli");
    store(&s, written.clone()).await;

    let out = cli(&s)
        .args([
            "get",
            "cli/00002.jpg",
            "nope.jpg",
            "cli/00000.jpg",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a missing id is exit status 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope.jpg\""));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, want) in lines.iter().zip([&written[2], &written[0]]) {
        assert_eq!(line["ImageId"], want.image_id.as_str());
        assert_eq!(line["Dimension"], 512);
        assert_eq!(
            line["SourceEtag"],
            want.meta.source_etag.as_deref().unwrap()
        );
        let values = line["Vector"].as_array().unwrap();
        assert_eq!(values.len(), 512);
        for (got, want) in values.iter().zip(&want.vector) {
            match got.as_f64() {
                Some(v) => assert_eq!((v as f32).to_bits(), want.to_bits()),
                None => assert!(got.is_null() && !want.is_finite()),
            }
        }
    }

    let summary = stdout(cli(&s).args(["get", "cli/00001.jpg"]));
    assert!(
        summary.starts_with("cli/00001.jpg\t512\ts3://images/cli/00001.jpg\t["),
        "{summary}"
    );

    let no_table = Command::new(env!("CARGO_BIN_EXE_embatch-vectors"))
        .envs(s.emulator.env())
        .env_remove("EMBATCH_TABLE")
        .args(["get", "x"])
        .output()
        .unwrap();
    assert_eq!(no_table.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_table.stderr).contains("--table"));
}

/// numpy's answer: the `k` rows most similar to `id`'s by cosine, itself left out, as JSON
/// `[[id, similarity], ...]`.
const NUMPY_NEAREST: &str = r#"
import json, sys
import numpy as np
folder, target, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.load(folder + "/vectors.npy").astype(np.float64)
ids = [json.loads(line) for line in open(folder + "/ids.jsonl", encoding="utf-8")]
unit = x / np.linalg.norm(x, axis=1, keepdims=True)
i = ids.index(target)
sims = unit @ unit[i]
sims[i] = -np.inf
order = np.argsort(-sims, kind="stable")[:k]
print(json.dumps([[ids[j], float(sims[j])] for j in order]))
"#;

#[tokio::test]
async fn nearest_from_the_table_and_from_an_export_agree_with_numpy() {
    let s = Cloud::start().await;
    let written: Vec<VectorRecord> = (0..60)
        .map(|i| {
            let mut r = record(&format!("nn/{i:03}.jpg"), 64, i);
            r.vector = finite(64, i);
            r
        })
        .collect();
    store(&s, written).await;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    stdout(cli(&s).args(["export", "--out", folder]));

    let args = ["nearest", "nn/007.jpg", "-k", "5", "--json"];
    let from_table = stdout(cli(&s).args(args));
    // An export needs no table.
    let from_export = stdout(
        Command::new(env!("CARGO_BIN_EXE_embatch-vectors"))
            .args(args)
            .args(["--export", folder]),
    );
    assert_eq!(from_table, from_export);
    let ours: Vec<Value> = from_table
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let theirs: Vec<(String, f64)> = serde_json::from_str(&stdout(python().args([
        "-c",
        NUMPY_NEAREST,
        folder,
        "nn/007.jpg",
        "5",
    ])))
    .unwrap();
    assert_eq!(ours.len(), 5);
    for (ours, (id, sim)) in ours.iter().zip(&theirs) {
        assert_eq!(ours["image_id"], id.as_str(), "{from_table}");
        let got = ours["similarity"].as_f64().unwrap();
        assert!((got - sim).abs() < 1e-5, "{id}: {got} vs numpy {sim}");
    }

    let unknown = cli(&s).args(["nearest", "nope.jpg"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("\"nope.jpg\""));
}
