//! Per-node time of the optimised plan at batch 1 (or `--batch`), one thread, for each
//! convolution algorithm: what each convolution costs, where the rest of the time goes.
//!
//! ```text
//! cargo run --release -p embatch-engine --example profile -- [--spec SPEC.toml] [--runs 20] [--conv im2col,auto]
//! ```
//! Without `--spec`, the generated ResNet18-architecture test model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use embatch_engine::{ConvAlgorithm, Engine, EngineOptions, ModelSpec};
use embatch_testkit::test_model;

#[derive(Parser)]
struct Args {
    /// Model spec (default: the generated ResNet18 test model).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Runs averaged per figure.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Images per run.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Convolution algorithms to profile.
    #[arg(long, value_delimiter = ',', default_value = "im2col,auto")]
    conv: Vec<ConvAlgorithm>,
    /// Also list every node, not only the totals per op.
    #[arg(long)]
    nodes: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec_path = match &args.spec {
        Some(p) => p.clone(),
        None => test_model::resnet18_spec()?,
    };
    let spec = ModelSpec::from_path(&spec_path)?;
    for &conv in &args.conv {
        let engine = Engine::load_with(
            &spec,
            EngineOptions {
                batch: args.batch,
                conv,
            },
        )?;
        let nodes = engine.profile(args.runs)?;
        let total: f64 = nodes.iter().map(|n| n.seconds).sum();
        println!(
            "### {} , batch {}, convolutions: {conv}: {:.2} ms per run\n",
            spec.name,
            args.batch,
            total * 1e3
        );
        let mut by_op: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for n in &nodes {
            let e = by_op.entry(n.op.as_str()).or_default();
            e.0 += 1;
            e.1 += n.seconds;
        }
        let mut by_op: Vec<_> = by_op.into_iter().collect();
        by_op.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        println!("| op | nodes | ms | share |\n|---|---|---|---|");
        for (op, (count, s)) in by_op {
            println!(
                "| {op} | {count} | {:.2} | {:.1} % |",
                s * 1e3,
                100.0 * s / total
            );
        }
        if args.nodes {
            println!("\n| node | op | ms | info |\n|---|---|---|---|");
            for n in nodes.iter().filter(|n| n.seconds > 0.02e-3) {
                println!(
                    "| {} | {} | {:.3} | {} |",
                    n.name,
                    n.op,
                    n.seconds * 1e3,
                    n.info.replace('|', "/")
                );
            }
        }
        println!();
    }
    Ok(())
}
