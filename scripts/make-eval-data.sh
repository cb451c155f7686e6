#!/usr/bin/env bash
# Regenerate data/eval/*.jsonl from the raw benchmark files (see data/eval/README.md for where
# each came from). Run once by a maintainer; rlp reads only the converted files.
#
#   scripts/make-eval-data.sh RAW_DIR      (RAW_DIR: the layout of ../shared/data/eval)
#
# Output format, one item per line: {"id": "...", "question": "...", "answer": "...",
# "choices": ["...", ...] (multiple choice only; then "answer" is the letter)}.
# Needs: jq.
set -euo pipefail
RAW="${1:?usage: scripts/make-eval-data.sh RAW_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/data/eval"
mkdir -p "$OUT"

# GSM8K: the 100 real test items; the gold answer is the number after "#### ".
jq -c '{id: "gsm8k-test-\(.gsm8k_test_idx)", question, answer: .final}' \
    "$RAW/gsm8k_test_subset100.jsonl" > "$OUT/gsm8k.jsonl"

# MMLU dev (flan CoT prompts): split "stem\n(A) a (B) b (C) c (D) d" into stem and choices;
# items without a label or without that layout are dropped.
jq -c 'select(.label != null and (.question_with_choices | test("\n\\(A\\) ")))
    | (.question_with_choices | capture("^(?<stem>[\\s\\S]*)\n\\(A\\) (?<opts>[\\s\\S]*)$")) as $q
    | {id: "mmlu-dev-\(.subject)-\(input_line_number)", question: $q.stem,
       answer: .label, choices: ($q.opts | [splits(" \\([B-J]\\) ")])} | select(.choices | length >= 2)' \
    "$RAW/mmlu_dev_cot282.jsonl" > "$OUT/mmlu.jsonl"

# QuaRTz (OpenAI evals registry): the first 400 items; "stem\n\n A: a\n B: b" in the user turn.
head -n 400 "$RAW/openai_evals__quartz__samples.jsonl" | jq -c '
    (.input[-1].content | capture("^(?<stem>[\\s\\S]*?)\n\n A: (?<a>[\\s\\S]*)\n B: (?<b>[\\s\\S]*)$")) as $q
    | {id: "quartz-\(input_line_number)", question: $q.stem, answer: .ideal, choices: [$q.a, $q.b]}' \
    > "$OUT/quartz.jsonl"

# BIG-bench arithmetic: the first 50 items of four subtasks.
for t in 3_digit_addition 3_digit_subtraction 2_digit_multiplication 4_digit_addition; do
    jq -c --arg t "$t" '.examples[:50] | to_entries[]
        | {id: "bigbench-arithmetic-\($t)-\(.key)", question: .value.input, answer: .value.target}' \
        "$RAW/bigbench/arithmetic/$t/task.json"
done > "$OUT/bigbench_arithmetic.jsonl"

# BIG-bench physics: pick the formula that solves the problem. The source lists the correct
# formula first; the choices are rotated by the item index so the gold letter varies.
jq -c '.examples | to_entries[]
    | (.value.target_scores | to_entries) as $opts | ($opts | length) as $n | (.key % $n) as $r
    | ($opts[$n - $r:] + $opts[:$n - $r]) as $rot
    | {id: "bigbench-physics-\(.key)", question: .value.input,
       answer: ("ABCDEFGHIJ"[($rot | map(.value) | index(1)):][:1]), choices: ($rot | map(.key))}' \
    "$RAW/bigbench/physics/task.json" > "$OUT/bigbench_physics.jsonl"

# reasoning-gym fixed-seed sets (seed 1234): GSM8K-style word problems and arithmetic.
for t in gsm_symbolic basic_arithmetic chain_sum; do
    jq -c --arg t "$t" '{id: "reasoning-gym-\($t)-\(.idx)", question, answer: (.answer | tostring)}' \
        "$RAW/reasoning_gym/$t.jsonl" > "$OUT/rg_$t.jsonl"
done
wc -l "$OUT"/*.jsonl
