//! What a run costs, before it runs: compute at the measured throughput, DynamoDB writes and
//! storage, S3 requests. `embatch submit` prints it with every summary (`--dry-run` included);
//! deploy/README.md tabulates it for 100M images from the same function.
//!
//! Prices are us-east-1 list prices (DynamoDB on-demand since its November 2024 cut; S3
//! Standard), and a Spot price per vCPU-hour that is an assumption (`--spot-price`): check
//! your region and instance types.

use serde::Serialize;

/// Dollars per vCPU-hour of Spot capacity assumed unless `--spot-price` says otherwise
/// (c7i / m7i Spot in us-east-1 is commonly $0.015-0.03).
pub const DEFAULT_SPOT_PRICE_PER_VCPU_HOUR: f64 = 0.02;
/// DynamoDB on-demand: dollars per million write request units (1 WRU writes 1 KB).
const DYNAMODB_PER_MILLION_WRU: f64 = 0.625;
/// DynamoDB Standard storage: dollars per GB-month.
const DYNAMODB_PER_GB_MONTH: f64 = 0.25;
/// S3 Standard GET: dollars per thousand requests.
const S3_GET_PER_THOUSAND: f64 = 0.0004;
/// S3 Standard PUT and LIST: dollars per thousand requests.
const S3_PUT_LIST_PER_THOUSAND: f64 = 0.005;
/// An item's attributes besides the vector, in bytes (names and values: ImageId, SourceUri,
/// SourceEtag, sizes, Model, ModelSha256, RunId, JobId, Created; about 350-450 for S3 keys
/// of 40-80 characters).
const ITEM_METADATA_BYTES: u64 = 400;
/// Reports each array child writes (summary and failures).
const REPORTS_PER_CHILD: u64 = 2;

/// The inputs of an estimate.
#[derive(Clone, Copy, Debug)]
pub struct CostInputs {
    /// Images to embed.
    pub images: u64,
    /// Manifests (= array children).
    pub manifests: u64,
    /// ListObjectsV2 pages the listing took (0 from an inventory).
    pub list_pages: u64,
    /// Values per vector.
    pub dimension: usize,
    /// vCPU-seconds per image.
    pub seconds_per_image: f64,
    /// Dollars per vCPU-hour.
    pub spot_price_per_vcpu_hour: f64,
}

/// The estimate, in the units AWS bills.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostEstimate {
    /// vCPU-hours of embedding.
    pub vcpu_hours: f64,
    /// Their price at the Spot price assumed.
    pub compute_usd: f64,
    /// DynamoDB write request units (each item is `ceil(bytes / 1 KB)`).
    pub dynamodb_write_units: u64,
    /// Their on-demand price.
    pub dynamodb_write_usd: f64,
    /// GB the vectors take in the table.
    pub dynamodb_storage_gb: f64,
    /// Their storage price, per month kept.
    pub dynamodb_storage_usd_per_month: f64,
    /// S3 GETs (images and manifests), PUTs (manifests and reports) and LISTs.
    pub s3_requests: u64,
    /// Their price.
    pub s3_usd: f64,
    /// Compute, writes and requests: what the run itself costs (storage is monthly).
    pub run_usd: f64,
}

/// The estimate for `inputs`.
pub fn estimate(inputs: &CostInputs) -> CostEstimate {
    let images = inputs.images;
    let vcpu_hours = images as f64 * inputs.seconds_per_image / 3600.0;
    let compute_usd = vcpu_hours * inputs.spot_price_per_vcpu_hour;
    let item_bytes = inputs.dimension as u64 * 4 + ITEM_METADATA_BYTES;
    let dynamodb_write_units = images * item_bytes.div_ceil(1024);
    let dynamodb_write_usd = dynamodb_write_units as f64 / 1e6 * DYNAMODB_PER_MILLION_WRU;
    let dynamodb_storage_gb = (images * item_bytes) as f64 / 1e9;
    let gets = images + inputs.manifests;
    let puts = inputs.manifests * (1 + REPORTS_PER_CHILD);
    let s3_usd = gets as f64 / 1e3 * S3_GET_PER_THOUSAND
        + (puts + inputs.list_pages) as f64 / 1e3 * S3_PUT_LIST_PER_THOUSAND;
    CostEstimate {
        vcpu_hours,
        compute_usd,
        dynamodb_write_units,
        dynamodb_write_usd,
        dynamodb_storage_gb,
        dynamodb_storage_usd_per_month: dynamodb_storage_gb * DYNAMODB_PER_GB_MONTH,
        s3_requests: gets + puts + inputs.list_pages,
        s3_usd,
        run_usd: compute_usd + dynamodb_write_usd + s3_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in deploy/README.md ("What 100M images cost").
    #[test]
    fn a_hundred_million_images_cost_what_deploy_readme_says() {
        let cost = estimate(&CostInputs {
            images: 100_000_000,
            manifests: 100_000,
            list_pages: 100_000,
            dimension: 512,
            seconds_per_image: 0.08,
            spot_price_per_vcpu_hour: DEFAULT_SPOT_PRICE_PER_VCPU_HOUR,
        });
        let close = |a: f64, b: f64| (a - b).abs() < 0.01;
        assert!(close(cost.vcpu_hours, 2222.22), "{cost:?}");
        assert!(close(cost.compute_usd, 44.44), "{cost:?}");
        assert_eq!(cost.dynamodb_write_units, 300_000_000);
        assert!(close(cost.dynamodb_write_usd, 187.50), "{cost:?}");
        assert!(close(cost.dynamodb_storage_gb, 244.80), "{cost:?}");
        assert!(
            close(cost.dynamodb_storage_usd_per_month, 61.20),
            "{cost:?}"
        );
        assert_eq!(cost.s3_requests, 100_500_000);
        assert!(close(cost.s3_usd, 42.04), "{cost:?}");
        assert!(close(cost.run_usd, 273.98), "{cost:?}");
    }

    #[test]
    fn a_larger_vector_takes_more_write_units() {
        let inputs = |dimension| CostInputs {
            images: 10,
            manifests: 1,
            list_pages: 1,
            dimension,
            seconds_per_image: 0.08,
            spot_price_per_vcpu_hour: 0.02,
        };
        // 512 floats + metadata: 2,448 bytes, 3 WRU; 1,280 floats: 5,520 bytes, 6 WRU.
        assert_eq!(estimate(&inputs(512)).dynamodb_write_units, 30);
        assert_eq!(estimate(&inputs(1280)).dynamodb_write_units, 60);
    }
}
