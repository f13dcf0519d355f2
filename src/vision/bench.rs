//! Throughput benchmark (`oe-vision bench`): images per second of WRN training steps (128
//! in-distribution + 256 outlier images in one forward pass, SGD Nesterov) and of evaluation
//! forward passes (batches of 200). The step alone runs on inputs already on the device; the
//! pipeline run adds CPU augmentation (flip + crop) and prefetching on a background thread, on
//! synthetic images or on real ones (`data` / `oe_data`: the training split decoded once, the
//! outliers decoded on demand as `oe-vision train` does), and reports the share of the time the
//! model waited for data. `experiments/gpu_bench.sh` and `experiments/bench_vision.sh` run it next
//! to the same steps in PyTorch.

use super::augment::{with_prefetch, Preset, StepPlan};
use super::data::ImageSet;
use super::models::{WideResNet, WrnConfig};
use super::train::{train_step, Sgd};
use crate::error::{OeError, Result};
use crate::loss::OeLoss;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub depth: i64,
    pub widen: i64,
    pub classes: i64,
    pub batch: usize,
    pub oe_batch: usize,
    pub eval_batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub eval_steps: usize,
    /// Also time the full pipeline (CPU augmentation + prefetch + step).
    pub pipeline: bool,
    /// The pipeline's in-distribution images: a dataset spec (its training split), or synthetic.
    pub data: Option<String>,
    /// The pipeline's outliers: an outlier source spec, or synthetic.
    pub oe_data: Option<String>,
    /// Data root for named datasets.
    pub data_root: std::path::PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub device: String,
    pub model: String,
    pub batch: usize,
    pub oe_batch: usize,
    pub eval_batch: usize,
    /// Training images (in + outliers) per second, inputs already on the device.
    pub train_ips: f64,
    /// The same with CPU-side augmentation and prefetching (None when not run).
    pub train_pipeline_ips: Option<f64>,
    /// Share of the pipeline run's time spent waiting for the next batch (0 = data kept up).
    pub data_wait_share: Option<f64>,
    /// What the pipeline run read: `synthetic`, or the specs.
    pub pipeline_data: Option<String>,
    /// Seconds to load (decode) the pipeline's in-distribution images.
    pub load_seconds: Option<f64>,
    /// Evaluation images per second (forward in eval mode, logits to the CPU).
    pub eval_ips: f64,
    pub train_step_ms: f64,
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn run(cfg: &BenchConfig, device: Device) -> Result<BenchResult> {
    if cfg.steps == 0 || cfg.eval_steps == 0 {
        return Err(OeError::Config(
            "bench needs --steps and --eval-steps > 0".into(),
        ));
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(0);
    let wrn = WrnConfig {
        depth: cfg.depth,
        widen_factor: cfg.widen,
        dropout: 0.3,
        num_classes: cfg.classes,
    };
    let vs = nn::VarStore::new(device);
    let model = WideResNet::new(&vs.root(), &wrn)?;
    let mut sgd = Sgd::new(&vs, 0.9, true, 5e-4);
    let loss = OeLoss::vision_default();
    let opts = (Kind::Float, device);
    let x_in = Tensor::randn([cfg.batch as i64, 3, 32, 32], opts);
    let y_in = Tensor::randint(cfg.classes, [cfg.batch as i64], (Kind::Int64, device));
    let x_out = Tensor::randn([cfg.oe_batch as i64, 3, 32, 32], opts);
    let x_out = (cfg.oe_batch > 0).then_some(x_out);
    for _ in 0..cfg.warmup {
        let _ = train_step(&model, &mut sgd, &x_in, &y_in, x_out.as_ref(), &loss, 0.01);
    }
    sync(device);
    let t = Instant::now();
    for _ in 0..cfg.steps {
        let _ = train_step(&model, &mut sgd, &x_in, &y_in, x_out.as_ref(), &loss, 0.01);
    }
    sync(device);
    let train_s = t.elapsed().as_secs_f64();
    let per_step = (cfg.batch + cfg.oe_batch) as f64;
    let train_ips = per_step * cfg.steps as f64 / train_s;

    let mut load_seconds = None;
    let pipeline = if cfg.pipeline {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mk = |n: usize, rng: &mut rand_chacha::ChaCha8Rng, labelled: bool| ImageSet {
            name: "synthetic".into(),
            height: 32,
            width: 32,
            pixels: (0..n * 3072).map(|_| rng.gen()).collect(),
            labels: if labelled {
                (0..n).map(|i| (i % cfg.classes as usize) as i64).collect()
            } else {
                vec![]
            },
            classes: (0..cfg.classes).map(|c| c.to_string()).collect(),
        };
        let t_load = Instant::now();
        let in_set = match &cfg.data {
            Some(spec) => {
                let d =
                    super::data::load_in_distribution(spec, &cfg.data_root, &Default::default())?;
                if d.train.classes.len() as i64 > cfg.classes {
                    return Err(OeError::Config(format!(
                        "{spec} has {} classes; pass --classes {}",
                        d.train.classes.len(),
                        d.train.classes.len()
                    )));
                }
                d.train
            }
            None => mk(cfg.batch * 8, &mut rng, true),
        };
        if cfg.data.is_some() {
            load_seconds = Some(t_load.elapsed().as_secs_f64());
        }
        let oe_src: Box<dyn super::data::ImageSource> = match &cfg.oe_data {
            Some(spec) => super::data::load_oe_source(spec, &cfg.data_root, 32)?,
            None => Box::new(mk(cfg.oe_batch.max(1) * 8, &mut rng, false)),
        };
        // Seeded random batches, as an epoch's shuffle would draw them.
        let plan = |s: usize, rng: &mut rand_chacha::ChaCha8Rng| StepPlan {
            step: s,
            in_idx: (0..cfg.batch)
                .map(|_| rng.gen_range(0..in_set.len()))
                .collect(),
            out_idx: (cfg.oe_batch > 0).then(|| {
                (0..cfg.oe_batch)
                    .map(|_| rng.gen_range(0..oe_src.len()))
                    .collect()
            }),
            seed: s as u64,
        };
        let warm = cfg.warmup.min(3);
        let plans: Vec<StepPlan> = (0..warm + cfg.steps).map(|s| plan(s, &mut rng)).collect();
        let aug = Preset::Cifar.train_aug();
        let oe_aug = Preset::Cifar.oe_aug();
        let (secs, waited) = with_prefetch(
            plans,
            3,
            &in_set,
            &aug,
            Some((oe_src.as_ref(), &oe_aug)),
            |it| -> Result<(f64, f64)> {
                let mut t0 = Instant::now();
                let mut waited = 0.0;
                let mut k = 0;
                loop {
                    let tw = Instant::now();
                    let Some(p) = it.next() else { break };
                    if k > warm {
                        waited += tw.elapsed().as_secs_f64();
                    }
                    let p = p?;
                    if k == warm {
                        sync(device);
                        t0 = Instant::now();
                    }
                    k += 1;
                    let xo = p.x_out.map(|x| x.to_device(device));
                    let _ = train_step(
                        &model,
                        &mut sgd,
                        &p.x_in.to_device(device),
                        &p.y_in.to_device(device),
                        xo.as_ref(),
                        &loss,
                        0.01,
                    );
                }
                sync(device);
                Ok((t0.elapsed().as_secs_f64(), waited))
            },
        )?;
        let what = match (&cfg.data, &cfg.oe_data) {
            (None, None) => "synthetic".to_string(),
            (d, o) => format!(
                "in {} / outliers {}",
                d.as_deref().unwrap_or("synthetic"),
                o.as_deref().unwrap_or("synthetic")
            ),
        };
        Some((per_step * cfg.steps as f64 / secs, waited / secs, what))
    } else {
        None
    };

    let x_eval = Tensor::randn([cfg.eval_batch as i64, 3, 32, 32], opts);
    let eval_once = || {
        let l = tch::no_grad(|| model.logits(&x_eval, false));
        let _ = l.to_device(Device::Cpu);
    };
    for _ in 0..cfg.warmup.max(1) {
        eval_once();
    }
    sync(device);
    let t = Instant::now();
    for _ in 0..cfg.eval_steps {
        eval_once();
    }
    sync(device);
    let eval_ips = (cfg.eval_batch * cfg.eval_steps) as f64 / t.elapsed().as_secs_f64();
    Ok(BenchResult {
        device: format!("{device:?}"),
        model: wrn.name(),
        batch: cfg.batch,
        oe_batch: cfg.oe_batch,
        eval_batch: cfg.eval_batch,
        train_ips,
        train_pipeline_ips: pipeline.as_ref().map(|p| p.0),
        data_wait_share: pipeline.as_ref().map(|p| p.1),
        pipeline_data: pipeline.map(|p| p.2),
        load_seconds,
        eval_ips,
        train_step_ms: train_s * 1000.0 / cfg.steps as f64,
    })
}
