//! The vector table item: one embedding and where it came from.
//!
//! Compatible with the original AWS sample's items and its documented Python reader
//! (`np.frombuffer(item['Vector'].value, dtype=item['DataType'])`): `ImageId` (S, partition
//! key), `Vector` (B, little-endian float32, no header), `Dimension` (N), `DataType`
//! (S, `"float32"`), `Created` (S). The remaining attributes are metadata to trust and trace
//! a vector; they are optional on read so that items written by the sample stay readable.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

/// Attribute names, defined once.
pub mod attr {
    /// S, partition key.
    pub const IMAGE_ID: &str = "ImageId";
    /// B, the vector as little-endian float32 with no header.
    pub const VECTOR: &str = "Vector";
    /// N, number of values in `Vector`.
    pub const DIMENSION: &str = "Dimension";
    /// S, always `float32`.
    pub const DATA_TYPE: &str = "DataType";
    /// S, when the vector was computed (RFC 3339 UTC).
    pub const CREATED: &str = "Created";
    /// S, `s3://bucket/key` of the source image.
    pub const SOURCE_URI: &str = "SourceUri";
    /// S, the source object's ETag (no quotes).
    pub const SOURCE_ETAG: &str = "SourceEtag";
    /// N, the source object's size in bytes.
    pub const SOURCE_SIZE: &str = "SourceSize";
    /// N, the decoded image's width in pixels (after EXIF orientation).
    pub const WIDTH: &str = "Width";
    /// N, the decoded image's height in pixels (after EXIF orientation).
    pub const HEIGHT: &str = "Height";
    /// S, the model's name from its spec.
    pub const MODEL: &str = "Model";
    /// S, sha256 of the model file.
    pub const MODEL_SHA256: &str = "ModelSha256";
    /// S, the run id.
    pub const RUN_ID: &str = "RunId";
    /// S, the AWS Batch job id of the child that computed it.
    pub const JOB_ID: &str = "JobId";
    /// N, the manifest number within the run.
    pub const MANIFEST: &str = "Manifest";
}

/// The only `DataType` embatch writes.
pub const DATA_TYPE_F32: &str = "float32";

/// One stored embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorRecord {
    /// The table key.
    pub image_id: String,
    /// The embedding.
    pub vector: Vec<f32>,
    /// Where it came from.
    pub meta: VectorMetadata,
}

/// Where a vector came from. Every field is set by the embatch worker; items written by the
/// original AWS sample have only `created`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VectorMetadata {
    /// RFC 3339 UTC time the vector was computed.
    pub created: Option<String>,
    /// `s3://bucket/key` of the source image.
    pub source_uri: Option<String>,
    /// The source object's ETag.
    pub source_etag: Option<String>,
    /// The source object's size in bytes.
    pub source_size: Option<u64>,
    /// Decoded width in pixels.
    pub width: Option<u32>,
    /// Decoded height in pixels.
    pub height: Option<u32>,
    /// Model name.
    pub model: Option<String>,
    /// sha256 of the model file.
    pub model_sha256: Option<String>,
    /// Run id.
    pub run_id: Option<String>,
    /// Batch job id.
    pub job_id: Option<String>,
    /// Manifest number within the run.
    pub manifest: Option<u64>,
}

/// One metadata value as the item stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaValue<'a> {
    /// A string (S) attribute.
    Text(&'a str),
    /// A number (N) attribute.
    Number(u64),
}

impl VectorMetadata {
    /// The fields that are set, by item attribute name ([`attr`]).
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, MetaValue<'_>)> {
        let text = [
            (attr::CREATED, &self.created),
            (attr::SOURCE_URI, &self.source_uri),
            (attr::SOURCE_ETAG, &self.source_etag),
            (attr::MODEL, &self.model),
            (attr::MODEL_SHA256, &self.model_sha256),
            (attr::RUN_ID, &self.run_id),
            (attr::JOB_ID, &self.job_id),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some((name, MetaValue::Text(v.as_deref()?))));
        let numbers = [
            (attr::SOURCE_SIZE, self.source_size),
            (attr::WIDTH, self.width.map(u64::from)),
            (attr::HEIGHT, self.height.map(u64::from)),
            (attr::MANIFEST, self.manifest),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some((name, MetaValue::Number(v?))));
        text.chain(numbers)
    }
}

/// A stored item that is not a valid vector record.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ItemError {
    /// A required attribute is absent.
    #[error("item {image_id:?}: missing attribute {name}")]
    Missing {
        /// The item's ImageId, if it has one.
        image_id: String,
        /// The missing attribute.
        name: &'static str,
    },
    /// An attribute has the wrong DynamoDB type or an unparsable number.
    #[error("item {image_id:?}: attribute {name} is not {expected}")]
    WrongType {
        /// The item's ImageId.
        image_id: String,
        /// The attribute.
        name: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// `DataType` is not `float32`.
    #[error("item {image_id:?}: unknown DataType {data_type:?} (only \"float32\" is supported)")]
    UnknownDataType {
        /// The item's ImageId.
        image_id: String,
        /// The stored DataType.
        data_type: String,
    },
    /// `Vector` is not `4 * Dimension` bytes long.
    #[error("item {image_id:?}: Vector has {bytes} bytes but Dimension {dimension} needs {}", dimension * 4)]
    LengthMismatch {
        /// The item's ImageId.
        image_id: String,
        /// Length of the stored blob.
        bytes: usize,
        /// The stored Dimension.
        dimension: usize,
    },
}

/// The vector as little-endian float32 bytes; bit-exact, NaN payloads included.
pub fn encode_f32_le(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect()
}

/// The inverse of [`encode_f32_le`]; `None` if the length is not a multiple of 4.
pub fn decode_f32_le(bytes: &[u8]) -> Option<Vec<f32>> {
    let words = bytes.chunks_exact(4);
    if !words.remainder().is_empty() {
        return None;
    }
    Some(
        words
            .map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    )
}

impl VectorRecord {
    /// The DynamoDB item.
    pub fn to_item(&self) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::with_capacity(15);
        let s = |v: &str| AttributeValue::S(v.to_string());
        let n = |v: u64| AttributeValue::N(v.to_string());
        item.insert(attr::IMAGE_ID.into(), s(&self.image_id));
        item.insert(
            attr::VECTOR.into(),
            AttributeValue::B(Blob::new(encode_f32_le(&self.vector))),
        );
        item.insert(attr::DIMENSION.into(), n(self.vector.len() as u64));
        item.insert(attr::DATA_TYPE.into(), s(DATA_TYPE_F32));
        for (name, value) in self.meta.attributes() {
            let value = match value {
                MetaValue::Text(v) => s(v),
                MetaValue::Number(v) => n(v),
            };
            item.insert(name.into(), value);
        }
        item
    }

    /// Reads a DynamoDB item; a wrong length, unknown `DataType` or `Dimension` mismatch is an
    /// [`ItemError`], never a panic or a silently wrong vector.
    pub fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Self, ItemError> {
        let image_id = match item.get(attr::IMAGE_ID) {
            Some(AttributeValue::S(s)) => s.clone(),
            Some(_) => {
                return Err(ItemError::WrongType {
                    image_id: String::new(),
                    name: attr::IMAGE_ID,
                    expected: "a string (S)",
                })
            }
            None => {
                return Err(ItemError::Missing {
                    image_id: String::new(),
                    name: attr::IMAGE_ID,
                })
            }
        };
        let fields = Fields {
            item,
            image_id: &image_id,
        };
        let data_type = fields.string(attr::DATA_TYPE)?.ok_or(ItemError::Missing {
            image_id: image_id.clone(),
            name: attr::DATA_TYPE,
        })?;
        if data_type != DATA_TYPE_F32 {
            return Err(ItemError::UnknownDataType {
                image_id,
                data_type,
            });
        }
        let dimension = fields.number(attr::DIMENSION)?.ok_or(ItemError::Missing {
            image_id: image_id.clone(),
            name: attr::DIMENSION,
        })? as usize;
        let bytes = match item.get(attr::VECTOR) {
            Some(AttributeValue::B(b)) => b.as_ref(),
            Some(_) => return Err(fields.wrong(attr::VECTOR, "binary (B)")),
            None => {
                return Err(ItemError::Missing {
                    image_id,
                    name: attr::VECTOR,
                })
            }
        };
        let vector = decode_f32_le(bytes)
            .filter(|v| v.len() == dimension)
            .ok_or_else(|| ItemError::LengthMismatch {
                image_id: image_id.clone(),
                bytes: bytes.len(),
                dimension,
            })?;
        let small = |name| -> Result<Option<u32>, ItemError> {
            fields
                .number(name)?
                .map(|v| u32::try_from(v).map_err(|_| fields.wrong(name, "a 32-bit number")))
                .transpose()
        };
        let meta = VectorMetadata {
            created: fields.string(attr::CREATED)?,
            source_uri: fields.string(attr::SOURCE_URI)?,
            source_etag: fields.string(attr::SOURCE_ETAG)?,
            source_size: fields.number(attr::SOURCE_SIZE)?,
            width: small(attr::WIDTH)?,
            height: small(attr::HEIGHT)?,
            model: fields.string(attr::MODEL)?,
            model_sha256: fields.string(attr::MODEL_SHA256)?,
            run_id: fields.string(attr::RUN_ID)?,
            job_id: fields.string(attr::JOB_ID)?,
            manifest: fields.number(attr::MANIFEST)?,
        };
        Ok(VectorRecord {
            image_id,
            vector,
            meta,
        })
    }
}

/// Typed access to an item's optional attributes, naming the item in errors.
struct Fields<'a> {
    item: &'a HashMap<String, AttributeValue>,
    image_id: &'a str,
}

impl Fields<'_> {
    fn wrong(&self, name: &'static str, expected: &'static str) -> ItemError {
        ItemError::WrongType {
            image_id: self.image_id.to_string(),
            name,
            expected,
        }
    }

    fn string(&self, name: &'static str) -> Result<Option<String>, ItemError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(name, "a string (S)")),
        }
    }

    fn number(&self, name: &'static str) -> Result<Option<u64>, ItemError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse()
                .map(Some)
                .map_err(|_| self.wrong(name, "a non-negative integer (N)")),
            Some(_) => Err(self.wrong(name, "a number (N)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(vector: Vec<f32>) -> VectorRecord {
        VectorRecord {
            image_id: "a/1.jpg".into(),
            vector,
            meta: VectorMetadata {
                created: Some("2026-11-22T10:00:00Z".into()),
                source_uri: Some("s3://b/a/1.jpg".into()),
                source_etag: Some("etag".into()),
                source_size: Some(1234),
                width: Some(640),
                height: Some(480),
                model: Some("resnet18-v2".into()),
                model_sha256: Some("ab".repeat(32)),
                run_id: Some("r".into()),
                job_id: Some("j:3".into()),
                manifest: Some(3),
            },
        }
    }

    #[test]
    fn special_float_bit_patterns_round_trip_exactly() {
        let values = vec![
            f32::NAN,
            f32::from_bits(0x7fc0_1234),
            f32::from_bits(0xffa0_0001),
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::MIN_POSITIVE / 2.0,
            1.5,
        ];
        let back = VectorRecord::from_item(&record(values.clone()).to_item()).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.vector), bits(&values));
        assert_eq!(back.meta, record(vec![]).meta);
    }

    #[test]
    fn vector_bytes_are_little_endian_without_header() {
        assert_eq!(encode_f32_le(&[1.0]), vec![0x00, 0x00, 0x80, 0x3f]);
    }

    #[test]
    fn corrupt_items_are_typed_errors() {
        let good = record(vec![1.0, 2.0]).to_item();
        let with = |name: &str, value: AttributeValue| {
            let mut item = good.clone();
            item.insert(name.into(), value);
            VectorRecord::from_item(&item)
        };
        // A vector whose length its dimension does not match: (attribute, value, bytes, dimension).
        let mismatched = [
            (
                attr::VECTOR,
                AttributeValue::B(Blob::new(vec![0u8; 7])),
                (7, 2),
            ),
            (attr::DIMENSION, AttributeValue::N("3".into()), (8, 3)),
        ];
        for (name, value, want) in mismatched {
            match with(name, value) {
                Err(ItemError::LengthMismatch {
                    bytes, dimension, ..
                }) => {
                    assert_eq!((bytes, dimension), want)
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let dtype = with(attr::DATA_TYPE, AttributeValue::S("float16".into()));
        assert!(matches!(dtype, Err(ItemError::UnknownDataType { .. })));
        let err = with(attr::WIDTH, AttributeValue::S("640".into())).unwrap_err();
        assert!(
            err.to_string().contains("a/1.jpg") && err.to_string().contains("Width"),
            "{err}"
        );

        let mut missing = good.clone();
        missing.remove(attr::VECTOR);
        assert!(matches!(
            VectorRecord::from_item(&missing),
            Err(ItemError::Missing { name: "Vector", .. })
        ));
    }

    #[test]
    fn items_written_by_the_original_sample_are_readable() {
        let mut item = HashMap::new();
        item.insert(attr::IMAGE_ID.into(), AttributeValue::S("1".into()));
        item.insert(
            attr::VECTOR.into(),
            AttributeValue::B(Blob::new(encode_f32_le(&[0.5; 4]))),
        );
        item.insert(attr::DIMENSION.into(), AttributeValue::N("4".into()));
        item.insert(attr::DATA_TYPE.into(), AttributeValue::S("float32".into()));
        item.insert(
            attr::CREATED.into(),
            AttributeValue::S("2020-01-01 00:00:00".into()),
        );
        let r = VectorRecord::from_item(&item).unwrap();
        assert_eq!(r.vector, vec![0.5; 4]);
        assert_eq!(r.meta.source_uri, None);
    }
}
