//! Combining one step's metrics across ranks, one rule per metric key, so that rank 0 logs what
//! a single process with the whole batch would have logged (up to float rounding).
//!
//! Each rank computes the trainer's metrics over its own share of the batch; [`reduce_metrics`]
//! then replaces them, key by key, with the global value. Quantities reduced earlier (loss,
//! clip fractions, entropy and KL come from the already summed policy gradient; token totals
//! are summed when they are counted) and values every rank agrees on (step, lr, grad norm) keep
//! rank 0's value. A metric key without a rule is an error, in a single process too, so a new
//! metric cannot be silently averaged the wrong way.

use super::{Dist, ReduceOp};
use anyhow::{bail, Result};
use serde_json::Value;

/// How one metric combines across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Already global, or the same on every rank: keep rank 0's value.
    Root,
    /// Sum over ranks (throughputs: every rank works in parallel).
    Sum,
    /// Max over ranks (wall-clock times: the step waits for the slowest rank).
    Max,
    /// A mean over this rank's thoughts: weighted by the ranks' thought counts.
    MeanOverThoughts,
    /// A mean over this rank's contexts: weighted by the ranks' context counts.
    MeanOverContexts,
    /// A population standard deviation over thoughts, whose mean is the named metric.
    StdOverThoughts(&'static str),
}

/// The trainer's metrics and their rules. Add a line here with every new metric.
#[rustfmt::skip]
pub const RULES: &[(&str, Rule)] = &[
    ("step", Rule::Root),
    ("lr", Rule::Root),
    ("reward_mean", Rule::MeanOverThoughts),
    ("reward_std", Rule::StdOverThoughts("reward_mean")),
    ("s_pred_mean", Rule::MeanOverThoughts),
    ("s_ema_mean", Rule::MeanOverContexts),
    ("adv_abs_mean", Rule::MeanOverThoughts),
    ("frac_zero_std_groups", Rule::MeanOverContexts),
    ("thought_len_mean", Rule::MeanOverThoughts),
    ("thought_truncated_frac", Rule::MeanOverThoughts),
    ("clip_frac_low", Rule::Root),        // from the reduced policy gradient
    ("clip_frac_high", Rule::Root),
    ("ratio_mean", Rule::Root),
    ("entropy", Rule::Root),
    ("kl", Rule::Root),
    ("loss", Rule::Root),
    ("grad_norm", Rule::Root),            // of the summed gradient
    ("skipped", Rule::Root),
    ("ema_drift", Rule::Root),            // every rank holds the same θ and φ
    ("tokens_per_s_sample", Rule::Sum),
    ("tokens_per_s_train", Rule::Root),   // global trained tokens / rank 0's train time
    ("step_s", Rule::Max),
    ("sample_s", Rule::Max),
    ("score_s", Rule::Max),
    ("train_s", Rule::Max),
    ("optimizer_s", Rule::Max),
    ("generated_tokens_step", Rule::Sum), // this rank's thoughts' tokens
    ("input_tokens_total", Rule::Root),   // totals are summed over ranks as they are counted
    ("generated_tokens_total", Rule::Root),
    ("trained_tokens_total", Rule::Root),
    ("flops_sample_total", Rule::Root),
    ("flops_score_total", Rule::Root),
    ("flops_train_total", Rule::Root),
    ("flops_total", Rule::Root),
];

/// This rank's share of the batch, the weights of its means.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub thoughts: usize,
    pub contexts: usize,
}

pub fn rule_for(key: &str) -> Option<Rule> {
    RULES.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// Replace the per-rank values of `metrics` (a JSON object) with their global values.
pub fn reduce_metrics(dist: &Dist, metrics: &mut Value, share: Share) -> Result<()> {
    let Some(obj) = metrics.as_object_mut() else {
        bail!("metrics must be a JSON object, got {metrics}");
    };
    let mut rules = Vec::with_capacity(obj.len());
    for (key, value) in obj.iter() {
        let Some(rule) = rule_for(key) else {
            bail!("metric `{key}` has no rule for combining it across ranks: add one to RULES in src/dist/metrics.rs");
        };
        if rule != Rule::Root && !value.is_number() {
            bail!("metric `{key}` = {value} must be a number to be reduced across ranks ({rule:?})");
        }
        rules.push((key.clone(), rule));
    }
    if dist.world() == 1 {
        return Ok(());
    }
    let num = |key: &str| obj.get(key).and_then(Value::as_f64).unwrap_or(0.0);
    let weight = |rule: Rule| match rule {
        Rule::MeanOverContexts => share.contexts as f64,
        _ => share.thoughts as f64,
    };
    // Sums: [thoughts, contexts, then one entry per Sum/Mean/Std key], maxes: one per Max key.
    let mut sums = vec![share.thoughts as f64, share.contexts as f64];
    let mut maxes = Vec::new();
    for (key, rule) in &rules {
        let x = num(key);
        match *rule {
            Rule::Root => {}
            Rule::Sum => sums.push(x),
            Rule::Max => maxes.push(x),
            Rule::MeanOverThoughts | Rule::MeanOverContexts => sums.push(weight(*rule) * x),
            Rule::StdOverThoughts(mean_key) => {
                let m = num(mean_key);
                sums.push(weight(*rule) * (x * x + m * m)); // Σ x² over this rank's thoughts
            }
        }
    }
    dist.all_reduce_f64("metrics (sums)", &mut sums, ReduceOp::Sum)?;
    dist.all_reduce_f64("metrics (maxima)", &mut maxes, ReduceOp::Max)?;
    let (thoughts, contexts) = (sums[0].max(1.0), sums[1].max(1.0));
    let (mut s, mut m) = (sums[2..].iter(), maxes.iter());
    let mut second_moments = Vec::new();
    for (key, rule) in &rules {
        let v = match *rule {
            Rule::Root => continue,
            Rule::Sum if obj[key].is_u64() => {
                // a count stays an integer
                obj.insert(key.clone(), serde_json::json!(s.next().unwrap().round() as u64));
                continue;
            }
            Rule::Sum => *s.next().unwrap(),
            Rule::Max => *m.next().unwrap(),
            Rule::MeanOverThoughts => s.next().unwrap() / thoughts,
            Rule::MeanOverContexts => s.next().unwrap() / contexts,
            Rule::StdOverThoughts(mean_key) => {
                second_moments.push((key.clone(), mean_key, s.next().unwrap() / thoughts));
                continue;
            }
        };
        obj.insert(key.clone(), serde_json::json!(v));
    }
    // Standard deviations need the global mean: Var = E[x²] − E[x]².
    for (key, mean_key, ex2) in second_moments {
        let mean = obj.get(mean_key).and_then(Value::as_f64).unwrap_or(0.0);
        obj.insert(key, serde_json::json!((ex2 - mean * mean).max(0.0).sqrt()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_metric_has_exactly_one_rule() {
        for (i, (k, _)) in RULES.iter().enumerate() {
            assert!(RULES[i + 1..].iter().all(|(k2, _)| k2 != k), "`{k}` listed twice");
        }
        for (_, r) in RULES {
            if let Rule::StdOverThoughts(mean) = r {
                assert_eq!(rule_for(mean), Some(Rule::MeanOverThoughts), "{mean}");
            }
        }
    }

    #[test]
    fn an_unknown_metric_is_refused_even_in_a_single_process() {
        let mut m = json!({"step": 1, "novel_metric": 2.0});
        let err = reduce_metrics(
            &Dist::Single,
            &mut m,
            Share {
                thoughts: 4,
                contexts: 1,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("novel_metric") && err.contains("src/dist/metrics.rs"),
            "{err}"
        );
    }

    #[test]
    fn a_single_process_keeps_its_values() {
        let mut m = json!({"step": 3, "reward_mean": 0.5, "reward_std": 0.25, "grad_norm": null});
        let before = m.clone();
        reduce_metrics(
            &Dist::Single,
            &mut m,
            Share {
                thoughts: 4,
                contexts: 1,
            },
        )
        .unwrap();
        assert_eq!(m, before);
    }
}
