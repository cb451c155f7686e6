#!/usr/bin/env python3
"""One-off interoperability check: a NemotronH checkpoint written by `rlp train` loads in
Hugging Face transformers and gives the log-probs `rlp score` gives.

Not a test and not run by the build: rlp itself has no Python at build, test or run time. This
needs a Python with torch and transformers (>= 5, which has `NemotronHForCausalLM` built in),
for example the venv the README names, and a release build of rlp:

    cargo build --release
    /work/torchref/bin/python scripts/check_nemotron_h_transformers.py [--rlp target/release/rlp]

What it does, in a fresh temporary directory (or --work):
1. trains a 300-token byte-level BPE tokenizer on tests/data/text/sample.txt with
   `<|endoftext|>` only, so the model's vocabulary has no `<think>` / `</think>`;
2. writes a tiny random NemotronH (`M*-M-`: Mamba-2, attention, MLP, Mamba-2, MLP; 2 SSM
   groups, chunk 8, untied head) with transformers' own initialisation and `save_pretrained`;
3. trains it with `rlp train` (configs/tiny.toml, RLP objective) for --steps steps: rlp adds the
   think tokens, growing the embedding and the untied lm_head by two rows, and saves a
   Hugging Face directory;
4. loads that checkpoint with `AutoModelForCausalLM.from_pretrained` (no missing, unexpected or
   mis-shaped weights allowed) and its tokenizer with `PreTrainedTokenizerFast`;
5. for a few texts, some with `<think>` ... `</think>` so the grown rows are used, compares
   transformers' next-token log-probs at every position with `rlp score`'s, the last
   position's top logits, the token ids, and a 16-token greedy continuation with
   `rlp generate --greedy`.

Exits 1 if any log-prob differs by more than --tol (default 1e-4) or any other check fails;
prints the max abs differences either way.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TEXTS = [
    "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about.",
    "The bus left the station with 75 passengers. <think> 75 minus 67 is 8, plus 72 </think> so 80 remain.",
    "<think></think> a b c",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, it was the epoch of belief.",
]


def run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def make_tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train([str(REPO / "tests/data/text/sample.txt")], trainer)
    vocab = tok.get_vocab(with_added_tokens=True)
    assert "<think>" not in vocab and "</think>" not in vocab
    tok.save(str(path))
    return tok.get_vocab_size(with_added_tokens=True)


def make_start_model(dir: Path, vocab: int, eos: int):
    import torch
    from transformers import NemotronHConfig, NemotronHForCausalLM

    cfg = NemotronHConfig(
        vocab_size=vocab,
        hidden_size=64,
        layers_block_type=["linear_attention", "full_attention", "mlp", "linear_attention", "mlp"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        mamba_num_heads=8,
        mamba_head_dim=16,
        ssm_state_size=16,
        n_groups=2,
        chunk_size=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(0)
    model = NemotronHForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rlp", default=str(REPO / "target/release/rlp"), help="the rlp binary")
    ap.add_argument("--work", help="working directory (default: a fresh temporary one)")
    ap.add_argument("--steps", type=int, default=4, help="RLP steps to train")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest allowed |log-prob difference|")
    a = ap.parse_args()
    if not Path(a.rlp).exists():
        sys.exit(f"error: {a.rlp} not found: build it with `cargo build --release` or pass --rlp")

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="rlp-nemotron-h-"))
    work.mkdir(parents=True, exist_ok=True)
    start, runs = work / "start", work / "run"
    start.mkdir(exist_ok=True)
    vocab = make_tokenizer(start / "tokenizer.json")
    eos = json.loads((start / "tokenizer.json").read_text())["added_tokens"][0]["id"]
    make_start_model(start, vocab, eos)
    print(f"start model: {start} (transformers {transformers.__version__}, vocabulary {vocab}, no think tokens)")

    sets = [
        f"model.path={json.dumps(str(start))}",
        f"train.steps={a.steps}",
        f"checkpoint.every={a.steps}",
        "train.threads=1",
        "logging.progress=false",
    ]
    cmd = [a.rlp, "train", "--config", REPO / "configs/tiny.toml", "--out", runs]
    for s in sets:
        cmd += ["--set", s]
    run(cmd)
    ck = runs / "checkpoints" / f"step-{a.steps:06d}"
    cfg = json.loads((ck / "config.json").read_text())
    problems = []
    if cfg["vocab_size"] != vocab + 2:
        problems.append(f"checkpoint vocab_size {cfg['vocab_size']}, expected {vocab} + 2 think tokens")
    print(f"rlp checkpoint: {ck} ({cfg['architectures'][0]}, vocab_size {cfg['vocab_size']})")

    # training moved every weight the start model has (so transformers is not just reading back
    # its own initialisation); the grown embedding / lm_head are compared on the old rows
    from safetensors.torch import load_file

    before, after = load_file(start / "model.safetensors"), load_file(ck / "model.safetensors")
    if set(before) != set(after):
        problems.append(f"tensor names changed: {sorted(set(before) ^ set(after))}")
    unmoved = [n for n in before if n in after and torch.equal(before[n], after[n][: before[n].shape[0]])]
    if unmoved:
        problems.append(f"rlp train did not change {unmoved}")
    moved = min((after[n][: before[n].shape[0]] - before[n]).abs().max().item() for n in before if n in after)
    print(f"every tensor moved in training: smallest max |Δ| {moved:.2e}")

    model, info = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32, output_loading_info=True)
    model.eval()
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(k):
            problems.append(f"transformers loading: {k} = {info[k]}")
    emb = model.get_input_embeddings().weight.shape
    head = model.get_output_embeddings().weight.shape
    if emb[0] != vocab + 2 or head[0] != vocab + 2:
        problems.append(f"embedding {tuple(emb)} / lm_head {tuple(head)}: expected {vocab + 2} rows")
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(ck / "tokenizer.json"))

    worst_lp, worst_top, positions = 0.0, 0.0, 0
    for text in TEXTS:
        scored = json.loads(run([a.rlp, "score", "--model", ck, "--text", text, "--top-k", "5"]))
        ids = scored["ids"]
        if hf_tok.encode(text, add_special_tokens=False) != ids:
            problems.append(f"token ids differ for {text!r}")
        if text.count("<think>") and vocab not in ids:
            problems.append(f"{text!r} does not use the added <think> (id {vocab})")
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()  # [T, V]
        lp = torch.log_softmax(logits, -1)
        hf = lp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        d = (hf - torch.tensor(scored["logprobs_next"], dtype=torch.float64)).abs().max().item()
        top = max(abs(logits[-1, i].item() - v) for i, v in scored["last_topk"])
        worst_lp, worst_top, positions = max(worst_lp, d), max(worst_top, top), positions + len(ids) - 1
        print(f"  {len(ids):3d} tokens: max |Δ log-prob| {d:.2e}, max |Δ top-5 logit| {top:.2e}")

        gen = json.loads(run([a.rlp, "generate", "--model", ck, "--ids", ",".join(map(str, ids)), "--greedy", "--max-new-tokens", "16", "--json"]))["ids"]
        with torch.no_grad():
            hf_gen = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=eos)[0, len(ids):].tolist()
        if gen != hf_gen:  # rlp generate prints the new tokens only, always --max-new-tokens of them
            problems.append(f"greedy continuation of {text!r}: rlp {gen}, transformers {hf_gen}")

    print(f"max |Δ log-prob| over {positions} positions: {worst_lp:.3e}; max |Δ last top-5 logit|: {worst_top:.3e}")
    if worst_lp > a.tol:
        problems.append(f"log-probs differ by {worst_lp:.3e} > {a.tol:g}")
    print(json.dumps({
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "steps": a.steps,
        "vocab_before": vocab,
        "vocab_after": cfg["vocab_size"],
        "positions": positions,
        "max_abs_logprob_diff": worst_lp,
        "max_abs_top_logit_diff": worst_top,
        "ok": not problems,
    }))
    if problems:
        sys.exit("FAILED:\n  " + "\n  ".join(problems))
    print("ok: transformers reads rlp's NemotronH checkpoint with rlp's log-probs")


if __name__ == "__main__":
    main()
