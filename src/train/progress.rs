//! The one progress line `rlp train` prints per step, per objective:
//!
//! ```text
//! ntp:      step 12/100 | loss 3.2101 | lr 1.00e-3 | 10450 tok/s | 0.41s | eta 36s
//! rlp, rpt: step 12/100 | reward +0.0123 | s_pred -3.456 | thought 7.5 tok | loss +0.0012 | lr 1.00e-6 | sample 812 tok/s | train 2310 tok/s | 1.52s | eta 2m14s
//! ```
//!
//! Built from the step's metrics line (`metrics.jsonl` field names), so what is printed is what
//! is logged.

use crate::config::ObjectiveName;
use serde_json::Value;

/// The progress line of `step` of `total`, from its metrics `m`; `eta_s` is the projected time
/// left in seconds.
pub fn progress_line(objective: ObjectiveName, step: u64, total: u64, m: &Value, eta_s: f64) -> String {
    let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    let lr = format!("lr {:.2e}", f("lr"));
    let timing = format!("{:.2}s | eta {}", f("step_s"), duration(eta_s));
    let body = match objective {
        ObjectiveName::Ntp => format!("loss {:.4} | {lr} | {:.0} tok/s", f("loss"), f("tokens_per_s_train")),
        ObjectiveName::Sft => format!("loss {:.4} | {:.0} response tok | {lr} | {:.0} tok/s", f("loss"), f("response_tokens_step"), f("tokens_per_s_train")),
        ObjectiveName::Rlvr => format!(
            "reward {:.3} | acc {:.3} | solved {:.2} unsolved {:.2} | len {:.1} tok | loss {:+.4} | {lr}",
            f("reward_mean"),
            f("accuracy"),
            f("frac_solved_groups"),
            f("frac_unsolved_groups"),
            f("response_len_mean"),
            f("loss"),
        ),
        ObjectiveName::Rlp | ObjectiveName::Rpt => format!(
            "reward {:+.4} | s_pred {:.3} | thought {:.1} tok | loss {:+.4} | {lr} | sample {:.0} tok/s | train {:.0} tok/s",
            f("reward_mean"),
            f("s_pred_mean"),
            f("thought_len_mean"),
            f("loss"),
            f("tokens_per_s_sample"),
            f("tokens_per_s_train"),
        ),
    };
    format!("step {step}/{total} | {body} | {timing}")
}

/// `36s`, `2m14s`, `3h05m`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metrics() -> Value {
        json!({"loss": 3.21012, "lr": 1e-3, "tokens_per_s_train": 10450.4, "tokens_per_s_sample": 0.0, "step_s": 0.413,
               "reward_mean": 0.01234, "s_pred_mean": -3.4561, "thought_len_mean": 7.46})
    }

    #[test]
    fn ntp_line_has_tokens_per_second_loss_lr_and_eta_and_nothing_of_rollouts() {
        let line = progress_line(ObjectiveName::Ntp, 12, 100, &metrics(), 36.2);
        assert_eq!(line, "step 12/100 | loss 3.2101 | lr 1.00e-3 | 10450 tok/s | 0.41s | eta 36s");
        for word in ["sample", "reward", "thought", "s_pred"] {
            assert!(!line.contains(word), "{line}");
        }
    }

    #[test]
    fn rollout_lines_add_reward_and_thought_length() {
        let mut m = metrics();
        m["tokens_per_s_sample"] = json!(812.0);
        for objective in [ObjectiveName::Rlp, ObjectiveName::Rpt] {
            let line = progress_line(objective, 12, 100, &m, 134.0);
            assert_eq!(
                line,
                "step 12/100 | reward +0.0123 | s_pred -3.456 | thought 7.5 tok | loss +3.2101 | lr 1.00e-3 | sample 812 tok/s | train 10450 tok/s | 0.41s | eta 2m14s"
            );
        }
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(59.4), "59s");
        assert_eq!(duration(60.0), "1m00s");
        assert_eq!(duration(3599.0), "59m59s");
        assert_eq!(duration(11100.0), "3h05m");
        assert_eq!(duration(f64::NAN), "?");
    }
}
