#!/usr/bin/env bash
# Regenerate data/post/*.jsonl, the real-text post-training sets, from the raw benchmark files
# (the layout of ../shared/data/eval, as for scripts/make-eval-data.sh). Run once by a
# maintainer; rlp reads only the converted files.
#
#   scripts/make-post-data.sh RAW_DIR
#
# data/post/rlvr_quartz.jsonl: AI2 QuaRTz items 401-1400 of the OpenAI evals registry file, in
# the `rlp eval --task jsonl:FILE` format. data/eval/quartz.jsonl holds items 1-400; an item
# whose question and choices equal one of those is left out, so no RLVR item is an evaluation
# item. Needs: jq.
set -euo pipefail
RAW="${1:?usage: scripts/make-post-data.sh RAW_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/data/post"
mkdir -p "$OUT"

quartz() {  # FIRST LAST: items FIRST..LAST (1-based lines) in the eval format
    sed -n "$1,$2p" "$RAW/openai_evals__quartz__samples.jsonl" | jq -c --argjson first "$1" '
        (.input[-1].content | capture("^(?<stem>[\\s\\S]*?)\n\n A: (?<a>[\\s\\S]*)\n B: (?<b>[\\s\\S]*)$")) as $q
        | {id: "quartz-\(input_line_number + $first - 1)", question: $q.stem, answer: .ideal, choices: [$q.a, $q.b]}'
}

eval_keys="$(jq -c '[.question, .choices]' "$ROOT/data/eval/quartz.jsonl" | jq -s -c '.')"
quartz 401 1400 | jq -c --argjson seen "$eval_keys" 'select(([.question, .choices]) as $k | $seen | index([$k]) | not)' \
    > "$OUT/rlvr_quartz.jsonl"
echo "$OUT/rlvr_quartz.jsonl: $(wc -l < "$OUT/rlvr_quartz.jsonl") items"
