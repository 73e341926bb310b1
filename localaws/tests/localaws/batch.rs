//! The Batch player against the emulator, with `/bin/sh` standing in for the worker.

use std::collections::BTreeMap;

use aws_sdk_batch::types::{
    ArrayProperties, ContainerOverrides, ContainerProperties, JobDefinitionType, KeyValuePair,
    ResourceRequirement, ResourceType,
};
use embatch_localaws::batch::{children, create_resources, BatchResources, Player};
use embatch_localaws::Emulator;

fn kv(name: &str, value: &str) -> KeyValuePair {
    KeyValuePair::builder().name(name).value(value).build()
}

/// An emulator with a queue and a job definition (`create_resources`), and a Batch client.
async fn batch_in_emulator(prefix: &str) -> (Emulator, BatchResources, aws_sdk_batch::Client) {
    let emulator = Emulator::start().unwrap();
    let config = emulator.sdk_config().await;
    let resources = create_resources(&emulator, &config, prefix).await.unwrap();
    (emulator, resources, aws_sdk_batch::Client::new(&config))
}

#[tokio::test]
async fn every_child_runs_with_the_environment_batch_would_give_it() {
    let (emulator, resources, batch) = batch_in_emulator("player").await;

    let submit = |name: &str, offset: &str, size: Option<i32>| {
        let mut request = batch
            .submit_job()
            .job_name(name)
            .job_queue(&resources.job_queue)
            .job_definition(&resources.job_definition)
            .container_overrides(
                ContainerOverrides::builder()
                    .environment(kv("EMBATCH_MANIFEST_OFFSET", offset))
                    .environment(kv("FOO", &format!("foo-{name}")))
                    .build(),
            );
        if let Some(size) = size {
            request = request.array_properties(ArrayProperties::builder().size(size).build());
        }
        request.send()
    };
    let array = submit("array", "5", Some(3)).await.unwrap();
    let plain = submit("plain", "9", None).await.unwrap();
    let (array, plain) = (array.job_id().unwrap(), plain.job_id().unwrap());

    let script = r#"printf '%s|%s|%s|%s|%s|%s' "${AWS_BATCH_JOB_ARRAY_INDEX-unset}" "$AWS_BATCH_JOB_ID" \
        "$FOO" "$EXTRA" "$AWS_ENDPOINT_URL" "${HOME-unset}"
        [ "${AWS_BATCH_JOB_ARRAY_INDEX-}" = 1 ] && { echo 'transient' >&2; exit 75; }
        exit 0"#;
    let runs = Player::new("/bin/sh", &emulator)
        .arg("-c")
        .arg(script)
        .env("EXTRA", "extra")
        .parallelism(2)
        .play(&batch, &[array.to_string(), plain.to_string()])
        .await
        .unwrap();

    let endpoint = emulator.endpoint();
    let expected = [
        (format!("0|{array}:0|foo-array"), Some(0), Some(5), Some(0)),
        (format!("1|{array}:1|foo-array"), Some(1), Some(6), Some(75)),
        (format!("2|{array}:2|foo-array"), Some(2), Some(7), Some(0)),
        (format!("unset|{plain}|foo-plain"), None, Some(9), Some(0)),
    ];
    assert_eq!(runs.len(), expected.len());
    for (run, (head, index, manifest, code)) in runs.iter().zip(expected) {
        // The caller's environment (HOME) does not leak into the child.
        assert_eq!(
            run.stdout,
            format!("{head}|extra|{endpoint}|unset"),
            "{run:?}"
        );
        assert_eq!(run.array_index, index);
        assert_eq!(run.manifest, manifest);
        assert_eq!(run.exit_code, code);
        assert_eq!(run.success(), code == Some(0));
    }
    assert_eq!(runs[1].stderr.trim(), "transient");
    assert_eq!(runs[1].job_id, format!("{array}:1"));
}

/// What the Python stack test reads from `batch-children`: the job definition's environment,
/// overridden by the job's, with Batch's own variables; the emulator's AWS_BATCH_* dropped.
#[tokio::test]
async fn a_childs_environment_is_the_definitions_overlaid_with_the_jobs_overrides() {
    let (_emulator, resources, batch) = batch_in_emulator("env").await;
    let resource = |kind, value: &str| {
        ResourceRequirement::builder()
            .r#type(kind)
            .value(value)
            .build()
    };
    let defined = vec![kv("FROM_DEFINITION", "kept"), kv("FOO", "overridden")];
    let overridden = vec![kv("FOO", "from-job"), kv("EMBATCH_MANIFEST_OFFSET", "4")];
    batch
        .register_job_definition()
        .job_definition_name("with-env")
        .r#type(JobDefinitionType::Container)
        .container_properties(
            ContainerProperties::builder()
                .image("embatch-worker:local")
                .resource_requirements(resource(ResourceType::Vcpu, "1"))
                .resource_requirements(resource(ResourceType::Memory, "512"))
                .set_environment(Some(defined))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let job = batch
        .submit_job()
        .job_name("env")
        .job_queue(&resources.job_queue)
        .job_definition("with-env")
        .array_properties(ArrayProperties::builder().size(2).build())
        .container_overrides(
            ContainerOverrides::builder()
                .set_environment(Some(overridden))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let id = job.job_id().unwrap().to_string();

    let got = children(&batch, std::slice::from_ref(&id)).await.unwrap();
    assert_eq!(got.len(), 2);
    for (i, child) in got.iter().enumerate() {
        let expected: BTreeMap<String, String> = [
            ("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string()),
            ("AWS_BATCH_JOB_ID", format!("{id}:{i}")),
            ("EMBATCH_MANIFEST_OFFSET", "4".to_string()),
            ("FOO", "from-job".to_string()),
            ("FROM_DEFINITION", "kept".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(child.env, expected, "child {i}");
        assert_eq!((child.array_index, child.manifest), (Some(i), Some(4 + i)));
    }
}

#[tokio::test]
async fn an_unknown_job_or_missing_worker_is_an_error() {
    let emulator = Emulator::start().unwrap();
    let config = emulator.sdk_config().await;
    let batch = aws_sdk_batch::Client::new(&config);
    let err = Player::new("/bin/true", &emulator)
        .play(&batch, &["no-such-job".to_string()])
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no-such-job is unknown"),
        "{err:#}"
    );

    let resources = create_resources(&emulator, &config, "player")
        .await
        .unwrap();
    let job = batch
        .submit_job()
        .job_name("j")
        .job_queue(&resources.job_queue)
        .job_definition(&resources.job_definition)
        .send()
        .await
        .unwrap();
    let err = Player::new("/no/such/worker", &emulator)
        .play(&batch, &[job.job_id().unwrap().to_string()])
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("starting /no/such/worker"),
        "{err:#}"
    );
}
