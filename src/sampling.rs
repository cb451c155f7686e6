//! Logits processing and sampling: temperature, banned tokens, top-k, top-p.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 keeps every token.
    pub top_k: usize,
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// log-softmax of logits/temperature with `banned` ids removed, in f64 for accuracy.
pub fn tempered_logprobs(logits: &[f32], temperature: f32, banned: &[u32]) -> Vec<f64> {
    let mut z: Vec<f64> = logits.iter().map(|&x| x as f64 / temperature as f64).collect();
    for &b in banned {
        if let Some(x) = z.get_mut(b as usize) {
            *x = f64::NEG_INFINITY;
        }
    }
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
    z.iter().map(|&x| x - lse).collect()
}

/// Draw one token. Returns (token, log-prob of that token under the tempered, ban-masked
/// distribution before top-k/top-p truncation — the distribution the trainer's policy forward
/// computes; with top_p = 1 and top_k = 0 it is exactly the distribution sampled from).
pub fn sample(logits: &[f32], p: &SamplingParams, banned: &[u32], rng: &mut ChaCha8Rng) -> (u32, f32) {
    let lp = tempered_logprobs(logits, p.temperature, banned);
    let mut order: Vec<usize> = (0..lp.len()).filter(|&i| lp[i].is_finite()).collect();
    let truncate = p.top_k > 0 || p.top_p < 1.0;
    if truncate {
        order.sort_by(|&a, &b| lp[b].partial_cmp(&lp[a]).unwrap().then(a.cmp(&b)));
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = 0;
            for &i in &order {
                mass += lp[i].exp();
                keep += 1;
                if mass >= p.top_p as f64 {
                    break;
                }
            }
            order.truncate(keep.max(1));
        }
    }
    let total: f64 = order.iter().map(|&i| lp[i].exp()).sum();
    let mut u = rng.gen::<f64>() * total;
    let mut pick = *order.last().expect("every token is banned");
    for &i in &order {
        u -= lp[i].exp();
        if u <= 0.0 {
            pick = i;
            break;
        }
    }
    (pick as u32, lp[pick] as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn tempered_logprobs_by_hand() {
        // logits [0, ln 3] at T=1: p = [1/4, 3/4]
        let lp = tempered_logprobs(&[0.0, 3f32.ln()], 1.0, &[]);
        assert!((lp[0] - 0.25f64.ln()).abs() < 1e-6 && (lp[1] - 0.75f64.ln()).abs() < 1e-6);
        // T=0.5 doubles the logits: [0, ln 9] -> p = [0.1, 0.9]
        let lp = tempered_logprobs(&[0.0, 3f32.ln()], 0.5, &[]);
        assert!((lp[1] - 0.9f64.ln()).abs() < 1e-6);
        // banning id 1 puts all mass on id 0
        let lp = tempered_logprobs(&[0.0, 3f32.ln()], 1.0, &[1]);
        assert!(lp[0].abs() < 1e-12 && lp[1] == f64::NEG_INFINITY);
    }

    #[test]
    fn banned_and_truncated_tokens_are_never_drawn() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let logits = [5.0, 4.0, 3.0, 2.0, 1.0];
        let p = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 2 };
        for _ in 0..200 {
            let (t, _) = sample(&logits, &p, &[0], &mut rng);
            assert!(t == 1 || t == 2, "drew {t}");
        }
        // top_p 0.5 on p ≈ [0.64, 0.24, ...] keeps only the first token
        let p = SamplingParams { temperature: 1.0, top_p: 0.5, top_k: 0 };
        for _ in 0..50 {
            assert_eq!(sample(&logits, &p, &[], &mut rng).0, 0);
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0 };
        let n = 20000;
        let ones = (0..n).filter(|_| sample(&[0.0, 3f32.ln()], &p, &[], &mut rng).0 == 1).count();
        let freq = ones as f64 / n as f64;
        assert!((freq - 0.75).abs() < 0.015, "freq {freq}");
    }
}
