#!/usr/bin/env bash
# Regenerate tests/data/tiny-think: a 0.43M-parameter Llama pretrained by rlp itself (NTP, 250
# steps of 8 × 128 tokens, ~1 min on one core) on the demo's synthetic arithmetic corpus, half of
# whose problems carry their worked solution inside <think>…</think>. It has learned to use a
# thought, so RLP's information-gain reward has a real signal on it (tests/train.rs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
R="$ROOT/target/release/rlp"
W="$(mktemp -d)"
cd "$W"
"$R" demo-data --out data --pretrain-docs 2000 --train-docs 400 --heldout-docs 50 --vocab-size 256
"$R" init-model --layers 2 --hidden 128 --heads 4 --kv-heads 2 --ffn 384 --tokenizer data/tokenizer.json --seed 0 --out init
cat > pretrain.toml <<'TOML'
[model]
path = "init"
[data]
path = "data/pretrain.jsonl"
contexts_per_step = 8
max_context = 128
[objective]
name = "ntp"
[optim]
lr = 3e-3
warmup_steps = 20
schedule = "cosine"
min_lr = 3e-4
[train]
steps = 250
threads = 1
[logging]
progress = false
[checkpoint]
keep_last = 1
TOML
"$R" train --config pretrain.toml --out base
OUT="$ROOT/tests/data/tiny-think"
mkdir -p "$OUT"
for f in config.json model.safetensors tokenizer.json generation_config.json; do cp "base/checkpoints/step-000250/$f" "$OUT/"; done
head -100 data/train.jsonl > "$OUT/train.jsonl"
echo "wrote $OUT"
