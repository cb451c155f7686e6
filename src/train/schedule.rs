//! Learning-rate schedule: linear warmup, then constant (the RLP default: the paper's 1e-6 is
//! constant) or cosine decay to a floor (the CPT baseline decays 1e-6 → 1e-7).
//!
//! Steps are counted from 0: `lr_at(0)` is the learning rate of the first optimizer step.
//!
//! - Warmup (`step < warmup_steps`): `base_lr · (step + 1) / warmup_steps`, so the first step
//!   uses `base_lr / warmup_steps` (never 0, unlike Hugging Face's `step / warmup`) and step
//!   `warmup_steps − 1` uses the full `base_lr`.
//! - Constant: `base_lr` after warmup.
//! - Cosine: with `p = (step − warmup_steps) / (total_steps − warmup_steps)` clamped to [0, 1],
//!   `min_lr + (base_lr − min_lr) · (1 + cos(π·p)) / 2`. It starts at `base_lr` right after
//!   warmup and reaches `min_lr` at `step = total_steps`, one past the last step of a
//!   `total_steps`-step run (the nanoGPT / Hugging Face convention); later steps stay at
//!   `min_lr`.

use anyhow::{ensure, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScheduleKind {
    Constant,
    Cosine { min_lr: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub kind: ScheduleKind,
    /// Length of the run in optimizer steps; only the cosine decay uses it.
    pub total_steps: u64,
}

impl LrSchedule {
    /// Errors on a negative or non-finite rate, `min_lr > base_lr`, or a cosine schedule whose
    /// warmup does not end before `total_steps`.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.base_lr.is_finite() && self.base_lr >= 0.0,
            "learning rate {} must be finite and >= 0",
            self.base_lr
        );
        if let ScheduleKind::Cosine { min_lr } = self.kind {
            ensure!(
                (0.0..=self.base_lr).contains(&min_lr),
                "cosine min_lr {min_lr} must be in [0, base lr {}]",
                self.base_lr
            );
            ensure!(
                self.warmup_steps < self.total_steps,
                "cosine schedule: warmup_steps {} must be less than total_steps {}",
                self.warmup_steps,
                self.total_steps
            );
        }
        Ok(())
    }

    /// Learning rate for optimizer step `step` (0 = the first step); see the module docs.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine { min_lr } => {
                let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let p = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
                min_lr + (self.base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn constant_without_warmup() {
        let s = LrSchedule { base_lr: 1e-6, warmup_steps: 0, kind: ScheduleKind::Constant, total_steps: 200 };
        s.validate().unwrap();
        for step in [0, 1, 199, 10_000] {
            close(s.lr_at(step), 1e-6);
        }
    }

    /// base 1e-3, warmup 4: steps 0..3 get 1/4, 2/4, 3/4, 4/4 of base = 2.5e-4, 5e-4, 7.5e-4,
    /// 1e-3; afterwards 1e-3.
    #[test]
    fn linear_warmup_then_constant() {
        let s = LrSchedule { base_lr: 1e-3, warmup_steps: 4, kind: ScheduleKind::Constant, total_steps: 0 };
        s.validate().unwrap();
        let got: Vec<f64> = (0..6).map(|i| s.lr_at(i)).collect();
        for (g, want) in got.iter().zip([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]) {
            close(*g, want);
        }
    }

    /// base 1.0, min 0.1, warmup 2, total 10 → decay over 8 steps.
    /// step 0: 1·1/2 = 0.5; step 1: 1.0; step 2: p = 0 → 1.0;
    /// step 4: p = 2/8 = 0.25, cos(π/4) = 0.7071068 → 0.1 + 0.9·1.7071068/2 = 0.8681981;
    /// step 6: p = 0.5, cos(π/2) = 0 → 0.1 + 0.45 = 0.55;
    /// step 9 (last step): p = 7/8, cos(7π/8) = −0.9238795 → 0.1 + 0.9·0.0761205/2 = 0.1342542;
    /// step 10 and beyond: p = 1 → 0.1.
    #[test]
    fn cosine_hand_values() {
        let s =
            LrSchedule { base_lr: 1.0, warmup_steps: 2, kind: ScheduleKind::Cosine { min_lr: 0.1 }, total_steps: 10 };
        s.validate().unwrap();
        for (step, want) in
            [(0, 0.5), (1, 1.0), (2, 1.0), (4, 0.868_198_1), (6, 0.55), (9, 0.134_254_2), (10, 0.1), (50, 0.1)]
        {
            assert!((s.lr_at(step) - want).abs() < 1e-7, "step {step}: {} vs {want}", s.lr_at(step));
        }
    }

    #[test]
    fn invalid_schedules_are_rejected() {
        let cos = |min_lr, warmup, total| LrSchedule {
            base_lr: 1.0,
            warmup_steps: warmup,
            kind: ScheduleKind::Cosine { min_lr },
            total_steps: total,
        };
        assert!(cos(2.0, 0, 10).validate().is_err(), "min above base");
        assert!(cos(0.1, 10, 10).validate().is_err(), "warmup fills the run");
        let neg = LrSchedule { base_lr: -1.0, warmup_steps: 0, kind: ScheduleKind::Constant, total_steps: 1 };
        assert!(neg.validate().is_err());
    }
}
