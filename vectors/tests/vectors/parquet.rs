//! `embatch-vectors export --format parquet`, read back as users read it: pyarrow (from a
//! directory and from S3), DuckDB (a count and a cosine query), compared with the table; and
//! the export's memory, bounded whatever the table's size.

use std::collections::HashMap;

use embatch_formats::s3uri::S3Uri;
use embatch_localaws::fixture::{record, records, Cloud};
use embatch_records::vector::{encode_f32_le, VectorMetadata, VectorRecord};
use embatch_testkit::cosine;
use embatch_testkit::peak_memory::run_measured;
use serde_json::Value;

use crate::common::{cli, finite, python, stdout, store};

/// What a table of every kind of item holds: the fixture's records (every attribute, NaN
/// payloads and infinities), finite ones for the cosine query, an odd id, and an item as the
/// original sample wrote it (no provenance but `Created`).
fn table_contents() -> Vec<VectorRecord> {
    let mut all = records(180, 512, "pq");
    all.extend((0..40).map(|i| {
        let mut r = record(&format!("fin/{i:03}.jpg"), 512, 1000 + i);
        r.vector = finite(512, i);
        r
    }));
    all.push(record("odd\nname \u{1F600}.jpg", 512, 7));
    let mut sample = record("sample-item.jpg", 512, 8);
    sample.meta = VectorMetadata {
        created: Some("2020-01-01T00:00:00Z".into()),
        ..VectorMetadata::default()
    };
    all.push(sample);
    all
}

/// pyarrow's reading of an export (a directory or `s3://bucket/prefix/`): its schema and,
/// per ImageId, the vector's bytes in hex and the other columns.
const PYARROW: &str = r#"
import json, os, sys
from urllib.parse import urlparse
import pyarrow.fs as fs
import pyarrow.parquet as pq
where = sys.argv[1]
if where.startswith("s3://"):
    endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
    s3 = fs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme,
                         access_key=os.environ["AWS_ACCESS_KEY_ID"],
                         secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                         region=os.environ["AWS_REGION"])
    table = pq.read_table(where[len("s3://"):], filesystem=s3)
else:
    table = pq.read_table(where)
vectors = table["Vector"].combine_chunks().flatten().to_numpy().reshape(len(table), -1)
rows = {}
for n, row in enumerate(table.drop_columns(["Vector"]).to_pylist()):
    row["Vector"] = vectors[n].tobytes().hex()
    rows[row.pop("ImageId")] = row
print(json.dumps({"schema": [[f.name, str(f.type)] for f in table.schema],
                  "dtype": str(vectors.dtype), "rows": rows}))
"#;

fn pyarrow_reads(s: &Cloud, at: &str) -> Value {
    let out = stdout(python().args(["-c", PYARROW, at]).envs(s.emulator.env()));
    serde_json::from_str(&out).unwrap()
}

/// Every row equals its record: the vector bit for bit, every attribute in its column.
fn assert_rows_are(read: &Value, written: &[VectorRecord]) {
    let schema: Vec<(String, String)> = serde_json::from_value(read["schema"].clone()).unwrap();
    let names: Vec<&str> = schema.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ImageId",
            "Vector",
            "SourceUri",
            "SourceEtag",
            "SourceSize",
            "Width",
            "Height",
            "Model",
            "ModelSha256",
            "RunId",
            "JobId",
            "Manifest",
            "Created"
        ]
    );
    assert_eq!(schema[1].1, "fixed_size_list<item: float not null>[512]");
    assert_eq!(read["dtype"], "float32");
    let rows = read["rows"].as_object().unwrap();
    assert_eq!(rows.len(), written.len(), "one row per item");
    for r in written {
        let row = &rows[&r.image_id];
        let m = &r.meta;
        assert_eq!(
            row["Vector"],
            hex::encode(encode_f32_le(&r.vector)),
            "{:?}",
            r.image_id
        );
        let want = serde_json::json!({
            "Vector": row["Vector"], "SourceUri": m.source_uri, "SourceEtag": m.source_etag,
            "SourceSize": m.source_size, "Width": m.width, "Height": m.height, "Model": m.model,
            "ModelSha256": m.model_sha256, "RunId": m.run_id, "JobId": m.job_id,
            "Manifest": m.manifest, "Created": m.created,
        });
        assert_eq!(row, &want, "{:?}", r.image_id);
    }
}

/// DuckDB over the export's files: the row count, the vector's type, and the 5 rows most
/// similar to `fin/007.jpg` among the `fin/` rows, by DuckDB's own cosine.
const DUCKDB: &str = r#"
import json, sys
import duckdb
con = duckdb.connect()
con.execute(f"CREATE VIEW v AS SELECT * FROM read_parquet('{sys.argv[1]}/*.parquet')")
count = con.execute("SELECT count(*) FROM v").fetchone()[0]
kind = con.execute("SELECT typeof(Vector) FROM v LIMIT 1").fetchone()[0]
nearest = con.execute("""
    SELECT ImageId, list_cosine_similarity(Vector, (SELECT Vector FROM v WHERE ImageId = $1)) AS s
    FROM v WHERE ImageId LIKE 'fin/%' AND ImageId <> $1 ORDER BY s DESC LIMIT 5""",
    ["fin/007.jpg"]).fetchall()
print(json.dumps({"count": count, "type": kind, "nearest": nearest}))
"#;

#[tokio::test]
async fn a_parquet_export_reads_back_in_pyarrow_and_duckdb_as_the_table() {
    let s = Cloud::start().await;
    let written = table_contents();
    store(&s, written.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let folder = out.to_str().unwrap();
    let args = [
        "export",
        "--format",
        "parquet",
        "--out",
        folder,
        "--rows-per-file",
        "100",
    ];
    let done = cli(&s).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(
        stderr.contains("exported 222 vectors of dimension 512"),
        "{stderr}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "_embatch-export.json",
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
    assert_rows_are(&pyarrow_reads(&s, folder), &written);

    let duck: Value = serde_json::from_str(&stdout(python().args(["-c", DUCKDB, folder]))).unwrap();
    assert_eq!(duck["count"], 222);
    assert_eq!(duck["type"], "FLOAT[]");
    let by_id: HashMap<&str, &VectorRecord> =
        written.iter().map(|r| (r.image_id.as_str(), r)).collect();
    let target = &by_id["fin/007.jpg"].vector;
    let mut ours: Vec<(f64, &str)> = written
        .iter()
        .filter(|r| r.image_id.starts_with("fin/") && r.image_id != "fin/007.jpg")
        .map(|r| (cosine(target, &r.vector), r.image_id.as_str()))
        .collect();
    ours.sort_by(|a, b| b.0.total_cmp(&a.0));
    let theirs: Vec<(String, f64)> = serde_json::from_value(duck["nearest"].clone()).unwrap();
    for ((sim, id), (duck_id, duck_sim)) in ours.iter().zip(&theirs) {
        assert_eq!(id, duck_id, "{theirs:?}");
        assert!(
            (sim - duck_sim).abs() < 1e-5,
            "{id}: {sim} vs DuckDB {duck_sim}"
        );
    }
    assert_eq!(theirs.len(), 5);

    let again = cli(&s).args(args).output().unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "a second export into the same directory"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds an export"));
}

/// The code block of README.md that follows `<!-- tested: NAME -->`.
fn readme_block(name: &str) -> String {
    let readme = include_str!("../../../README.md");
    let marker = format!("<!-- tested: {name} -->\n```python\n");
    let start = readme.find(&marker).expect("the marker is in README.md") + marker.len();
    let end = start + readme[start..].find("```").expect("the block ends");
    readme[start..end].to_string()
}

#[tokio::test]
async fn the_readmes_pyarrow_and_duckdb_code_reads_an_export_as_nearest_does() {
    let s = Cloud::start().await;
    let written: Vec<VectorRecord> = (0..40)
        .map(|i| {
            let mut r = record(&format!("fin/{i:03}.jpg"), 512, 1000 + i);
            r.vector = finite(512, i);
            r
        })
        .collect();
    store(&s, written.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let folder = out.to_str().unwrap();
    stdout(cli(&s).args(["export", "--format", "parquet", "--out", folder]));

    let pyarrow = readme_block("pyarrow").replace("\"out/\"", &format!("{folder:?}"))
        + "import json\nprint(json.dumps({'shape': vectors.shape, 'dtype': str(vectors.dtype), \
           'rows': dict(zip(ids, (v.tobytes().hex() for v in vectors)))}))\n";
    let read: Value = serde_json::from_str(&stdout(python().args(["-c", &pyarrow]))).unwrap();
    assert_eq!(read["shape"], serde_json::json!([40, 512]));
    assert_eq!(read["dtype"], "float32");
    for r in &written {
        assert_eq!(
            read["rows"][&r.image_id],
            hex::encode(encode_f32_le(&r.vector))
        );
    }

    let duckdb = readme_block("duckdb")
        .replace("out/*.parquet", &format!("{folder}/*.parquet"))
        .replace("images/cats/1.jpg", "fin/007.jpg")
        .replace("duckdb.sql(", "rows = duckdb.sql(")
        .replace(".show()", ".fetchall()")
        + "import json\nprint(json.dumps(rows))\n";
    let ranked: Vec<(String, f64)> =
        serde_json::from_str(&stdout(python().args(["-c", &duckdb]))).unwrap();
    let args = [
        "nearest",
        "fin/007.jpg",
        "-k",
        "10",
        "--export",
        folder,
        "--json",
    ];
    let ours: Vec<Value> = stdout(cli(&s).args(args))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ranked.len(), 10);
    assert_eq!(ours.len(), 10);
    for ((duck_id, duck_sim), n) in ranked.iter().zip(&ours) {
        assert_eq!(n["image_id"], *duck_id, "{ranked:?}");
        let sim = n["similarity"].as_f64().unwrap();
        assert!(
            (sim - duck_sim).abs() < 1e-5,
            "{duck_id}: {sim} vs DuckDB {duck_sim}"
        );
    }
}

#[tokio::test]
async fn a_parquet_export_to_s3_is_its_files_then_the_summary() {
    let s = Cloud::start().await;
    let written = table_contents();
    store(&s, written.clone()).await;
    let prefix = format!("s3://{}/exports/first", s.bucket);
    stdout(cli(&s).args([
        "export",
        "--format",
        "parquet",
        "--out",
        &prefix,
        "--rows-per-file",
        "150",
    ]));

    let summary = s
        .get(&S3Uri::new(&s.bucket, "exports/first/_embatch-export.json"))
        .await
        .expect("the summary is written");
    let summary: Value = serde_json::from_slice(&summary).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({"rows": 222, "dimension": 512,
                           "files": ["part-00000.parquet", "part-00001.parquet"]})
    );
    assert_rows_are(&pyarrow_reads(&s, &format!("{prefix}/")), &written);

    let npy = cli(&s).args(["export", "--out", &prefix]).output().unwrap();
    assert_eq!(npy.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&npy.stderr).contains("use --format parquet for S3"));
}

#[tokio::test]
async fn a_parquet_exports_memory_does_not_grow_with_the_table() {
    let s = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    // One scan segment and 1,000-row groups: the working set (a 1 MB Scan page, the SDK's
    // parsed items, a row group) is full from the first 1,000 items on.
    let export = |name: &str| {
        let mut command = cli(&s);
        let out = dir.path().join(name);
        command.args(["export", "--format", "parquet", "--segments", "1"]);
        command.args(["--rows-per-group", "1000", "--out", out.to_str().unwrap()]);
        let (status, stderr, peak) = run_measured(command);
        assert!(status.success(), "{stderr}");
        (stderr, peak)
    };
    let all = records(10_000, 512, "many");
    store(&s, all[..1000].to_vec()).await;
    let (_, small_peak) = export("small");
    store(&s, all[1000..].to_vec()).await;
    let (stderr, peak) = export("large");
    assert!(stderr.contains("exported 10000 vectors"), "{stderr}");
    // Holding the 9,000 more items would take 18 MiB more (2 KiB of vector each); peak RSS
    // varies by a few MiB between runs of the same export (allocator arenas).
    let grown = (peak as f64 - small_peak as f64) / (1u64 << 20) as f64;
    eprintln!("peak RSS: {small_peak} bytes at 1,000 items, {peak} at 10,000 ({grown:+.1} MiB)");
    assert!(
        grown < 9.0,
        "exporting 10,000 items took {grown:.1} MiB more than 1,000"
    );
}
