//! Creating the vector table (tests, the local run; production tables come from the
//! deployment templates with the same key schema).

use std::time::Duration;

use anyhow::Context;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

use crate::vector::attr;
use embatch_aws::sdk_error::{causes, describe};

/// How long [`create_table`] waits for the table to become ACTIVE.
const ACTIVE_WITHIN: Duration = Duration::from_secs(120);

/// Creates `name` with the vector table's key schema (`ImageId` S, partition key only) and
/// on-demand billing, and waits until it is ACTIVE.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) -> anyhow::Result<()> {
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attr::IMAGE_ID)
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(attr::IMAGE_ID)
                .key_type(KeyType::Hash)
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe(&e)))
        .with_context(|| format!("creating DynamoDB table {name}"))?;
    client
        .wait_until_table_exists()
        .table_name(name)
        .wait(ACTIVE_WITHIN)
        .await
        .map_err(|e| anyhow::anyhow!("{}", causes(&e)))
        .with_context(|| format!("waiting for DynamoDB table {name} to become ACTIVE"))?;
    Ok(())
}
