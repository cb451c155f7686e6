//! `rlp bench forward|decode|step`: throughput of the model's passes and of one RLP step, each
//! printed as a table and one JSON line.
//!
//! Timings are wall-clock medians over `--repeats`; FLOPs follow `crate::flops` (matmuls only).
//! `step` times every phase of one RLP step with the library's own pieces and compares the
//! achieved GFLOP/s with an f32 matmul peak measured at start (MFU). Speed lives here, never in
//! timed tests.

pub mod ntp;
use crate::flops::{self, ModelShape};
use crate::model::{self, Model};
use crate::data::sampler::Context;
use crate::objective::rlp::{batch_rewards, group_advantages, group_reward_std, LossSettings};
use crate::rollout::{no_think_scores, sample_thoughts, Prompt, RolloutParams};
use crate::sampling::SamplingParams;
use crate::train::ema::EmaTeacher;
use crate::train::grads::{policy_gradient, PolicySettings};
use crate::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::train::rollouts::RolloutBatch;
use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use clap::{Args, ValueEnum};
use rand::SeedableRng;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, ValueEnum)]
pub enum BenchWhat {
    Forward,
    Decode,
    Step,
    /// Forward logits and greedy decode on `--device` against the CPU (for GPU checks).
    Parity,
}

#[derive(Args)]
pub struct BenchArgs {
    pub what: BenchWhat,
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Sequence length (forward) or prompt length (decode).
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    /// Decode steps to time.
    #[arg(long, default_value_t = 32)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// step: contexts per RLP step (B).
    #[arg(long, default_value_t = 4)]
    pub contexts: usize,
    /// step: thoughts per context (G).
    #[arg(long, default_value_t = 4)]
    pub g: usize,
    /// step: prefix tokens per context.
    #[arg(long, default_value_t = 64)]
    pub prefix: usize,
    /// step: thought tokens (all thoughts run to the budget: `</think>` is banned until then).
    #[arg(long, default_value_t = 32)]
    pub budget: usize,
    /// cpu, or cuda / cuda:N (needs a binary built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (sets RAYON_NUM_THREADS; 0 = candle's default, all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// step: gradient checkpointing per block in the policy backward (`train.grad_checkpoint`).
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// step, with --grad-checkpoint: trained tokens per chunk of the policy head (`train.logprob_chunk`).
    #[arg(long, default_value_t = 1024)]
    pub logprob_chunk: usize,
    /// step: repeat each context's prefix per thought in the policy forward instead of running it
    /// once (`train.share_prefix = false`), to compare.
    #[arg(long)]
    pub no_share_prefix: bool,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if a.threads > 0 {
        std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    }
    let cpu_model = model::weights::load(&a.model)?.model;
    let dev = crate::device::open(&a.device)?;
    if let BenchWhat::Parity = a.what {
        return bench_parity(a, &cpu_model.detached()?, &dev);
    }
    let m = cpu_model.to_device(&dev)?;
    drop(cpu_model);
    match a.what {
        BenchWhat::Forward | BenchWhat::Decode => bench_pass(a, &m.detached()?),
        _ => bench_step(a, m),
    }
}

/// Max |Δ| of the logits of a fake batch (relative to the largest |logit|) and whether a
/// 16-token greedy decode agrees, `--device` against the CPU. Fails above 1e-3 relative.
fn bench_parity(a: &BenchArgs, cpu: &Model, dev: &Device) -> Result<()> {
    let other = cpu.to_device(dev)?;
    let prompts: Vec<Vec<u32>> = (0..a.batch.max(2)).map(|r| fake_row(r, a.seq - r % 3, cpu.cfg.vocab_size as u32)).collect();
    let on_cpu = cpu.forward_logits(&prompts)?;
    let on_dev = other.forward_logits(&prompts)?.to_device(&Device::Cpu)?;
    let scale = on_cpu.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let diff = (&on_cpu - &on_dev).map_err(anyhow::Error::from)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? / scale.max(1e-12);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let greedy_cpu = cpu.generate(&prompts, 16, None, &mut rng)?;
    let greedy_dev = other.generate(&prompts, 16, None, &mut rng)?;
    let same = greedy_cpu == greedy_dev;
    println!("{:<22} {:>14}", "check", "result");
    println!("{:<22} {:>14.2e}", "logits max rel diff", diff);
    println!("{:<22} {:>14}", "greedy decode equal", same);
    println!("{}", json!({ "bench": "parity", "device": a.device, "logits_max_rel_diff": diff, "greedy_equal": same }));
    anyhow::ensure!(diff < 1e-3, "{}: logits differ from the CPU by {diff:.2e} (relative)", a.device);
    Ok(())
}

/// Deterministic pseudo-text: row r of n ids below `v`.
fn fake_row(r: usize, n: usize, v: u32) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + r * 104729) as u32) % v).collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median seconds of `repeats` runs of `f` (after one warm-up run).
fn timed(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn bench_pass(a: &BenchArgs, m: &Model) -> Result<()> {
    let shape = ModelShape::from_config(&m.cfg);
    let prompts: Vec<Vec<u32>> = (0..a.batch).map(|r| fake_row(r, a.seq, m.cfg.vocab_size as u32)).collect();
    let (what, tokens, flops, secs) = match a.what {
        BenchWhat::Forward => {
            let secs = timed(a.repeats, || Ok(m.forward_logits(&prompts).map(|_| ())?))?;
            ("forward", a.batch * a.seq, a.batch as f64 * flops::forward_flops(&shape, 0, a.seq as u64, a.seq as u64), secs)
        }
        _ => {
            // Greedy decode of `steps` tokens after a prefill (the prefill is not timed).
            let mut times = Vec::new();
            for _ in 0..a.repeats {
                let (mut logits, mut cache) = m.prefill(&prompts, a.seq + a.steps)?;
                let t0 = Instant::now();
                for _ in 0..a.steps {
                    let next: Vec<u32> = logits.argmax(candle_core::D::Minus1)?.to_vec1()?;
                    logits = m.decode_step(&next, &mut cache)?;
                }
                times.push(t0.elapsed().as_secs_f64());
            }
            let fl = a.batch as f64 * flops::forward_flops(&shape, a.seq as u64, a.steps as u64, a.steps as u64);
            ("decode", a.batch * a.steps, fl, median(times))
        }
    };
    println!("{:<8} {:>6} {:>6} {:>10} {:>12} {:>10}", "phase", "batch", "seq", "median_s", "tokens/s", "GFLOP/s");
    println!("{:<8} {:>6} {:>6} {:>10.4} {:>12.1} {:>10.2}", what, a.batch, a.seq, secs, tokens as f64 / secs, flops / secs / 1e9);
    println!(
        "{}",
        json!({ "bench": what, "batch": a.batch, "seq": a.seq, "steps": a.steps, "tokens": tokens, "median_s": secs,
                "tokens_per_s": tokens as f64 / secs, "gflops": flops / secs / 1e9,
                "threads": candle_core::utils::get_num_threads(), "peak_rss_mib": peak_rss_mib() })
    );
    Ok(())
}

/// f32 matmul GFLOP/s of a square 1024³ candle matmul on `dev`, the fastest of ten runs: the
/// peak MFU is measured against (the best the machine did, so MFU is not flattered by a slow run).
pub fn matmul_peak_gflops(dev: &Device) -> Result<f64> {
    let n = 1024;
    let x = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let y = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let mut best = f64::INFINITY;
    for i in 0..12 {
        let t0 = Instant::now();
        x.matmul(&y)?.device().synchronize()?;
        if i >= 2 {
            best = best.min(t0.elapsed().as_secs_f64()); // two warm-up runs, then the fastest of ten
        }
    }
    Ok(2.0 * (n * n * n) as f64 / best / 1e9)
}

/// Memory read bandwidth in GB/s (10⁹ bytes): a sum over a 256 MiB f32 buffer, split over the
/// rayon pool that candle's kernels use, the fastest of five after a warm-up. What memory-bound
/// phases (decode reads every weight once per token, AdamW and the EMA stream the parameters)
/// are measured against.
pub fn memory_read_gbs() -> f64 {
    use rayon::prelude::*;
    let buf: Vec<f32> = (0..64usize << 20).map(|i| (i % 7) as f32).collect();
    let mut best = f64::INFINITY;
    let mut check = 0f32;
    for i in 0..6 {
        let t0 = Instant::now();
        let sum: f32 = buf.par_chunks(1 << 16).map(lane_sum).sum();
        let secs = t0.elapsed().as_secs_f64();
        check += sum; // keeps the sum from being optimised away
        if i >= 1 {
            best = best.min(secs);
        }
    }
    std::hint::black_box(check);
    (buf.len() * 4) as f64 / best / 1e9
}

/// Σ xs with 16 independent accumulators, so the loop vectorises and is bound by memory, not
/// by one chain of dependent float adds.
fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Peak resident memory of this process (VmHWM), MiB; 0 where /proc is unavailable.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

struct Phase {
    name: &'static str,
    /// Peak resident memory (VmHWM, MiB) after the phase.
    rss_mib: f64,
    secs: f64,
    tokens: usize,
    flops: f64,
    /// Bytes the phase must move from memory at least (0: compute-bound, FLOPs only).
    bytes: f64,
}

impl Phase {
    /// The phase's time at the machine's limits: its FLOPs at the matmul peak or its bytes at
    /// the read bandwidth, whichever takes longer.
    fn limit_s(&self, peak_gflops: f64, read_gbs: f64) -> f64 {
        (self.flops / (peak_gflops * 1e9)).max(self.bytes / (read_gbs * 1e9))
    }
}

/// One RLP step, phase by phase, on fake prefixes; think tokens are added when missing.
fn bench_step(a: &BenchArgs, mut m: Model) -> Result<()> {
    let dev = m.embed.device().clone();
    let peak = matmul_peak_gflops(&dev)?;
    let read_gbs = memory_read_gbs();
    let v0 = m.cfg.vocab_size as u32;
    m.grow_vocab(v0 as usize + 2)?;
    let (think_id, end_think_id) = (v0, v0 + 1);
    let (b, g, budget) = (a.contexts, a.g, a.budget);
    let (policy, vars) = m.into_vars()?;
    let shape = ModelShape::from_config(&policy.cfg);
    let prefixes: Vec<Vec<u32>> = (0..b).map(|r| fake_row(r, a.prefix, v0)).collect();
    let prompts: Vec<Prompt> = prefixes.iter().enumerate().map(|(r, p)| Prompt { prefix: p, target: (r as u32 * 31) % v0 }).collect();
    // `</think>` banned throughout, so every thought runs to the budget (then it is forced).
    let p = RolloutParams {
        g,
        budget,
        sampling: SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0 },
        think_id,
        end_think_id,
        banned: vec![think_id, end_think_id],
        separator: vec![],
        guess_tokens: 0,
    };
    let sampler = policy.detached()?;
    let with_think: Vec<Vec<u32>> = prefixes.iter().map(|x| [x.as_slice(), &[think_id]].concat()).collect();
    let reps = a.repeats;

    let prefill_s = timed(reps, || Ok(sampler.prefill(&with_think, a.prefix + 1).map(|_| ())?))?;
    let prefill_rss = peak_rss_mib();
    let mut thoughts = Vec::new();
    let sample_s = timed(reps, || {
        let mut rngs: Vec<_> = (0..prompts.len()).map(|i| crate::rollout::context_rng(0, 0, i as u64)).collect();
        thoughts = sample_thoughts(&sampler, &prompts, &p, &mut rngs)?;
        Ok(())
    })?;
    let sample_rss = peak_rss_mib();
    let mut ema = EmaTeacher::new();
    let var_list: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    ema.init_from(&var_list)?;
    let teacher = policy.detached()?; // same weights as φ at init; the cost is what matters
    let mut s_ema = Vec::new();
    let score_s = timed(reps, || {
        s_ema = no_think_scores(&teacher, &prompts)?;
        Ok(())
    })?;
    let score_rss = peak_rss_mib();
    // The trainer's own rewards, advantages and policy gradient (objective::rlp, train::grads).
    let rewards = batch_rewards(&thoughts, &s_ema);
    let advantages = group_advantages(&rewards, g, false)?;
    let group_std = group_reward_std(&rewards, g)?;
    let contexts: Vec<Context> = prompts.iter().enumerate().map(|(r, q)| Context { doc: r, pos: a.prefix, prefix: q.prefix.to_vec(), target: q.target }).collect();
    let batch = RolloutBatch { contexts, global_index: (0..b).collect(), thoughts, s_ema, rewards, advantages, group_std, model_step: 0, sample_s, score_s };
    let settings = PolicySettings {
        loss: LossSettings { eps_low: 0.2, eps_high: 0.2, kl_coef: 0.0 },
        grad_on_forced_end: false,
        share_prefix: !a.no_share_prefix,
        grad_checkpoint: a.grad_checkpoint,
        logprob_chunk: a.logprob_chunk,
    };
    let idx: Vec<usize> = (0..b * g).collect();
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    let mut grads = None;
    let mut fwd_rss = 0f64;
    // The first two iterations of a process are slow for a reason unrelated to the model: every
    // activation is fresh memory, and first-touch page faults plus page clearing took 40–60 % of
    // them on our VM; from the third on the allocator reuses its heap (BENCHMARKS.md). The
    // first is reported as `policy_cold`, the median of the rest as the policy phases.
    const WARMUP: usize = 2;
    for _ in 0..reps.max(1) + WARMUP {
        let pg = policy_gradient(&policy, None, &vars, &batch, &idx, b * g, b * g, &p, &settings)?;
        fwd_rss = fwd_rss.max(peak_rss_mib());
        fwd.push(pg.forward_s);
        bwd.push(pg.backward_s);
        grads = Some(pg.grads);
    }
    let (fwd_s, bwd_s) = (median(fwd[WARMUP..].to_vec()), median(bwd[WARMUP..].to_vec()));
    let cold_s = fwd[0] + bwd[0];
    let policy_rss = peak_rss_mib();
    let mut grads = grads.unwrap();
    let mut opt = AdamW::new(var_list.clone(), AdamWConfig::default())?;
    let optim_s = timed(reps, || {
        clip_grad_norm(&mut grads, &var_list, 1.0)?;
        Ok(opt.step(&grads, 1e-7)?)
    })?;
    let optim_rss = peak_rss_mib();
    let ema_s = timed(reps, || Ok(ema.update(&var_list, 0.999)?))?;

    let (pl, c) = (a.prefix as u64 + 1, budget as u64 + 1); // prompt incl. <think>; thought incl. </think>
    let step_flops = flops::rlp_step_flops(&shape, &flops::RlpStepShape { contexts: b as u64, rollouts: g as u64, prefix_len: pl, thought_len: c });
    let prefill_flops = b as f64 * flops::prefill_flops(&shape, pl);
    // The policy FLOPs as run: with the shared prefix each context's prefix once, its G
    // thoughts attending to it (the bench's thoughts all run to the budget).
    let shared = crate::train::policy::prefix_is_shared(&policy.cfg, !a.no_share_prefix);
    let train_flops = b as f64 * flops::policy_train_flops(&shape, a.prefix as u64, &vec![(c, c); g], shared);
    let train_tokens = if shared { b * (a.prefix + g * (budget + 1)) } else { b * g * (a.prefix + budget + 1) };
    let train_fwd_flops = train_flops / 3.0;
    let n_params = var_list.iter().map(|v| v.elem_count()).sum::<usize>();
    // Memory traffic that cannot be avoided. Decode: every weight once per batched step (the
    // budget's tokens plus `</think>`, and the S_pred forward), and each row's KV cache up to its
    // position (a NemotronH's Mamba states are not counted). AdamW: θ, g, m, v read and θ, m, v
    // written (and g read once more by the clip); the EMA: φ and θ read, φ written. f32 throughout.
    let weight_bytes = 4.0 * n_params as f64;
    let kv_row_bytes = (4 * 2 * shape.attention_layers() * shape.n_kv_heads * shape.head_dim) as f64; // per position
    let decode_steps = budget + 2;
    let kv_bytes: f64 = (0..decode_steps).map(|i| (b * g) as f64 * kv_row_bytes * (a.prefix + 1 + i) as f64).sum();
    let decode_bytes = decode_steps as f64 * weight_bytes + kv_bytes;
    let phases = [
        Phase { rss_mib: prefill_rss, name: "prefill", secs: prefill_s, tokens: b * (a.prefix + 1), flops: prefill_flops, bytes: weight_bytes },
        Phase { rss_mib: sample_rss, name: "decode", secs: (sample_s - prefill_s).max(1e-9), tokens: b * g * (budget + 1), flops: step_flops.sample - prefill_flops + step_flops.score, bytes: decode_bytes },
        Phase { rss_mib: score_rss, name: "score", secs: score_s, tokens: b * a.prefix, flops: step_flops.teacher, bytes: weight_bytes },
        Phase { rss_mib: fwd_rss, name: "policy_fwd", secs: fwd_s, tokens: train_tokens, flops: train_fwd_flops, bytes: 0.0 },
        Phase { rss_mib: policy_rss, name: "policy_bwd", secs: bwd_s, tokens: train_tokens, flops: 2.0 * train_fwd_flops, bytes: 0.0 },
        Phase { rss_mib: policy_rss, name: "policy_fwd_bwd", secs: fwd_s + bwd_s, tokens: train_tokens, flops: train_flops, bytes: 0.0 },
        Phase { rss_mib: policy_rss, name: "policy_cold", secs: cold_s, tokens: train_tokens, flops: train_flops, bytes: 0.0 },
        Phase { rss_mib: optim_rss, name: "optimizer", secs: optim_s, tokens: 0, flops: 0.0, bytes: 8.0 * weight_bytes },
        Phase { rss_mib: peak_rss_mib(), name: "ema", secs: ema_s, tokens: 0, flops: 0.0, bytes: 3.0 * weight_bytes },
    ];
    let step_total_flops = step_flops.total() - step_flops.train + train_flops; // the policy FLOPs as run
    let in_step = |ph: &&Phase| !matches!(ph.name, "policy_fwd_bwd" | "policy_cold");
    let total_s: f64 = phases.iter().filter(in_step).map(|ph| ph.secs).sum();
    let total_limit_s: f64 = phases.iter().filter(in_step).map(|ph| ph.limit_s(peak, read_gbs)).sum();
    // With checkpointing the forward and backward interleave: only their sum is reported, and
    // its MFU counts the model's FLOPs (3 × forward), not the recomputed forward.
    let phases: Vec<&Phase> = phases.iter().filter(|ph| !(a.grad_checkpoint && matches!(ph.name, "policy_fwd" | "policy_bwd"))).collect();
    println!("RLP step: B={b} G={g} prefix={} thought budget={budget}; {n_params} params; f32 matmul peak {peak:.1} GFLOP/s (1024³, fastest of 10); memory read {read_gbs:.1} GB/s", a.prefix);
    println!("{:<15} {:>9} {:>10} {:>9} {:>6} {:>10} {:>10}", "phase", "seconds", "tokens/s", "GFLOP/s", "MFU", "limit s", "VmHWM MiB");
    let mut json_phases = serde_json::Map::new();
    for ph in &phases {
        let gf = ph.flops / ph.secs / 1e9;
        let tps = ph.tokens as f64 / ph.secs;
        let limit = ph.limit_s(peak, read_gbs);
        println!("{:<15} {:>9.3} {:>10.1} {:>9.1} {:>5.0}% {:>10.3} {:>10.0}", ph.name, ph.secs, tps, gf, 100.0 * gf / peak, limit, ph.rss_mib);
        json_phases.insert(ph.name.into(), json!({ "s": ph.secs, "tokens_per_s": tps, "gflops": gf, "mfu": gf / peak, "limit_s": limit, "peak_rss_mib": ph.rss_mib }));
    }
    println!("{:<15} {:>9.3} {:>10} {:>9.1} {:>5.0}% {:>10.3}", "step (sum)", total_s, "", step_total_flops / total_s / 1e9, 100.0 * step_total_flops / total_s / 1e9 / peak, total_limit_s);
    println!(
        "{}",
        json!({ "bench": "step", "contexts": b, "g": g, "prefix": a.prefix, "budget": budget, "params": n_params,
                "matmul_peak_gflops": peak, "memory_read_gbs": read_gbs, "phases": json_phases, "step_s": total_s, "step_limit_s": total_limit_s, "step_gflops": step_total_flops / total_s / 1e9,
                "threads": candle_core::utils::get_num_threads(), "peak_rss_mib": peak_rss_mib(), "grad_checkpoint": a.grad_checkpoint, "share_prefix": !a.no_share_prefix, "logprob_chunk": a.grad_checkpoint.then_some(a.logprob_chunk) })
    );
    Ok(())
}
