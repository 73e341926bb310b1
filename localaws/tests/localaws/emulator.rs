use embatch_localaws::emulator::{unique_name, Emulator};

#[tokio::test]
async fn emulator_serves_s3_and_forgets_on_reset() {
    let emulator = Emulator::start().unwrap();
    let config = emulator.sdk_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let bucket = unique_name("harness");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let listed = s3.list_buckets().send().await.unwrap();
    assert_eq!(listed.buckets().len(), 1);

    emulator.reset().unwrap();
    let listed = s3.list_buckets().send().await.unwrap();
    assert!(listed.buckets().is_empty());
}

#[tokio::test]
async fn two_emulators_do_not_share_state() {
    let (a, b) = (Emulator::start().unwrap(), Emulator::start().unwrap());
    assert_ne!(a.port(), b.port());
    let s3 = |c: &aws_config::SdkConfig| {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(c)
                .force_path_style(true)
                .build(),
        )
    };
    let (ca, cb) = (a.sdk_config().await, b.sdk_config().await);
    s3(&ca)
        .create_bucket()
        .bucket("only-in-a")
        .send()
        .await
        .unwrap();
    assert!(s3(&cb)
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .is_empty());
}
