//! The decoder-only transformer shared by Llama, Qwen2 and Qwen3, and the residual skeleton
//! (embedding, blocks, final norm, head) NemotronH's hybrid blocks (`nemotron_h.rs`) plug into,
//! built from differentiable candle ops only (no fused kernels that drop gradients).
//!
//! Shapes: B batch rows, T query tokens, K key tokens (past + T), D hidden, H query heads,
//! KV key/value heads, R = H / KV heads per group, hd head dim, V vocabulary, F FFN width.

use super::config::Config;
use super::fused;
use super::grad_store::{empty_grad_store, take_grads};
use super::kv_cache::KvCache;
use super::layers::{attend, linear, rms_norm, BlockInputs};
use super::layout::AttnLayout;
use super::nemotron_h::{self, HybridBlock};
use super::rope::Rope;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;

/// A Llama / Qwen2 / Qwen3 decoder layer (`model.layers.{i}`): attention, then a SwiGLU MLP,
/// each pre-normed and added to the residual stream.
pub struct Layer {
    pub input_norm: Tensor, // [D] (`input_layernorm`)
    pub self_attn: Attention,
    pub post_attn_norm: Tensor, // [D] (`post_attention_layernorm`)
    pub mlp: Mlp,
}

/// Grouped-query self-attention with RoPE (`self_attn.*`): biases on q/k/v (Qwen2) and o where
/// the config says, RMSNorm of q and k per head (Qwen3).
pub struct Attention {
    pub q_proj: Tensor, // [H*hd, D]
    pub k_proj: Tensor, // [KV*hd, D]
    pub v_proj: Tensor, // [KV*hd, D]
    pub o_proj: Tensor, // [D, H*hd]
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    pub o_bias: Option<Tensor>,
    pub q_norm: Option<Tensor>, // [hd] (Qwen3)
    pub k_norm: Option<Tensor>, // [hd] (Qwen3)
}

/// The SwiGLU MLP (`mlp.*`): down(silu(gate x) · up x).
pub struct Mlp {
    pub gate_proj: Tensor, // [F, D]
    pub up_proj: Tensor,   // [F, D]
    pub down_proj: Tensor, // [D, F]
}

/// One residual block: a Llama/Qwen decoder layer (attention + MLP) or a NemotronH block (one
/// mixer).
pub enum Block {
    Decoder(Layer),
    Hybrid(HybridBlock),
}

impl Block {
    fn forward(&self, cfg: &Config, x: &Tensor, inp: &BlockInputs, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        match self {
            Block::Decoder(l) => l.forward(cfg, x, inp.cos_sin.as_ref().context("decoder layers need RoPE tables")?, &inp.mask, cache),
            Block::Hybrid(h) => h.forward(cfg, x, inp, cache),
        }
    }
}

pub struct Model {
    pub cfg: Config,
    pub embed: Tensor, // [V, D]
    pub layers: Vec<Block>,
    pub norm: Tensor,            // [D]
    pub lm_head: Option<Tensor>, // [V, D]; None when tied to `embed`
    pub rope: Rope,
}

/// The Hugging Face names of the tensors outside the blocks.
struct Names {
    embed: &'static str,
    norm: &'static str,
}

impl Names {
    fn of(cfg: &Config) -> Self {
        if cfg.hybrid.is_some() {
            Names { embed: "backbone.embeddings.weight", norm: "backbone.norm_f.weight" }
        } else {
            Names { embed: "model.embed_tokens.weight", norm: "model.norm.weight" }
        }
    }
}

impl Layer {
    /// One pre-norm block: x + attn(norm x), then + mlp(norm ·). x [B, T, D] -> [B, T, D].
    fn forward(&self, cfg: &Config, x: &Tensor, cos_sin: &(Tensor, Tensor), mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        let xn = rms_norm(x, &self.input_norm, cfg.rms_norm_eps)?;
        let x = (x + self.self_attn.forward(cfg, &xn, cos_sin, mask, cache)?)?;
        let xn = rms_norm(&x, &self.post_attn_norm, cfg.rms_norm_eps)?;
        Ok((&x + self.mlp.forward(&xn)?)?)
    }
}

impl Attention {
    /// xn [B, T, D] (normed) -> [B, T, D], before the residual add.
    fn forward(&self, cfg: &Config, xn: &Tensor, cos_sin: &(Tensor, Tensor), mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Result<Tensor> {
        let (b, t, _) = xn.dims3()?;
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let q = linear(xn, &self.q_proj, self.q_bias.as_ref())?.reshape((b, t, h, hd))?;
        let k = linear(xn, &self.k_proj, self.k_bias.as_ref())?.reshape((b, t, kv, hd))?;
        let v = linear(xn, &self.v_proj, self.v_bias.as_ref())?.reshape((b, t, kv, hd))?;
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (rms_norm(&q, qn, eps)?, rms_norm(&k, kn, eps)?),
            _ => (q, k),
        };
        let q = fused::rope(&q.transpose(1, 2)?.contiguous()?, &cos_sin.0, &cos_sin.1)?; // [B, H, T, hd]
        let k = fused::rope(&k.transpose(1, 2)?.contiguous()?, &cos_sin.0, &cos_sin.1)?; // [B, KV, T, hd]
        let v = v.transpose(1, 2)?.contiguous()?; // [B, KV, T, hd]
        let ctx = attend(&q, &k, &v, mask, cache)?; // [B, T, H*hd]
        linear(&ctx, &self.o_proj, self.o_bias.as_ref())
    }
}

impl Mlp {
    /// xn [B, T, D] (normed) -> [B, T, D], before the residual add.
    fn forward(&self, xn: &Tensor) -> Result<Tensor> {
        let gate = linear(xn, &self.gate_proj, None)?;
        let up = linear(xn, &self.up_proj, None)?;
        linear(&fused::swiglu(&gate, &up)?, &self.down_proj, None)
    }
}

impl Model {
    /// Build from tensors keyed by Hugging Face names; every shape is checked against `cfg`.
    /// Weights are converted to f32.
    pub fn from_tensors(cfg: Config, t: HashMap<String, Tensor>, origin: &str) -> Result<Self> {
        Self::build(cfg, t, origin, Some(DType::F32))
    }

    /// [`Model::from_tensors`], converting every weight to `dtype` (None: keep each as it is).
    fn build(cfg: Config, mut t: HashMap<String, Tensor>, origin: &str, dtype: Option<DType>) -> Result<Self> {
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let x = t.remove(name).with_context(|| format!("{origin}: missing tensor `{name}`"))?;
            if x.dims() != shape {
                bail!("{origin}: tensor `{name}` has shape {:?} but the config implies {:?}", x.dims(), shape);
            }
            Ok(match dtype {
                Some(d) => x.to_dtype(d)?,
                None => x,
            })
        };
        let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (h, kv, v) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size);
        let names = Names::of(&cfg);
        let embed = take(names.embed, &[v, d])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        if cfg.hybrid.is_some() {
            layers.extend(nemotron_h::take_blocks(&cfg, &mut take)?.into_iter().map(Block::Hybrid));
        }
        for i in 0..if cfg.hybrid.is_some() { 0 } else { cfg.num_hidden_layers } {
            let p = format!("model.layers.{i}");
            let bias = |take: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, name: &str, n: usize, on: bool| -> Result<Option<Tensor>> {
                if on { take(&format!("{p}.self_attn.{name}.bias"), &[n]).map(Some) } else { Ok(None) }
            };
            let qwen3 = cfg.arch == super::Arch::Qwen3;
            let self_attn = Attention {
                q_proj: take(&format!("{p}.self_attn.q_proj.weight"), &[h * hd, d])?,
                k_proj: take(&format!("{p}.self_attn.k_proj.weight"), &[kv * hd, d])?,
                v_proj: take(&format!("{p}.self_attn.v_proj.weight"), &[kv * hd, d])?,
                o_proj: take(&format!("{p}.self_attn.o_proj.weight"), &[d, h * hd])?,
                q_bias: bias(&mut take, "q_proj", h * hd, cfg.qkv_bias)?,
                k_bias: bias(&mut take, "k_proj", kv * hd, cfg.qkv_bias)?,
                v_bias: bias(&mut take, "v_proj", kv * hd, cfg.qkv_bias)?,
                o_bias: bias(&mut take, "o_proj", d, cfg.o_bias)?,
                q_norm: if qwen3 { Some(take(&format!("{p}.self_attn.q_norm.weight"), &[hd])?) } else { None },
                k_norm: if qwen3 { Some(take(&format!("{p}.self_attn.k_norm.weight"), &[hd])?) } else { None },
            };
            let mlp = Mlp {
                gate_proj: take(&format!("{p}.mlp.gate_proj.weight"), &[f, d])?,
                up_proj: take(&format!("{p}.mlp.up_proj.weight"), &[f, d])?,
                down_proj: take(&format!("{p}.mlp.down_proj.weight"), &[d, f])?,
            };
            let input_norm = take(&format!("{p}.input_layernorm.weight"), &[d])?;
            let post_attn_norm = take(&format!("{p}.post_attention_layernorm.weight"), &[d])?;
            layers.push(Block::Decoder(Layer { input_norm, self_attn, post_attn_norm, mlp }));
        }
        let norm = take(names.norm, &[d])?;
        let lm_head = if cfg.tie_word_embeddings {
            t.remove("lm_head.weight"); // some tied checkpoints still store a copy
            None
        } else {
            Some(take("lm_head.weight", &[v, d])?)
        };
        t.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
        if let Some(extra) = t.keys().next() {
            bail!("{origin}: unexpected tensor `{extra}` (and {} more) for a {} model", t.len() - 1, cfg.arch.hf_class());
        }
        let rope = Rope::new(&cfg);
        Ok(Model { cfg, embed, layers, norm, lm_head, rope })
    }

    /// Every parameter with its Hugging Face name, in a fixed order (tied lm_head not repeated).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let names = Names::of(&self.cfg);
        let mut out = vec![(names.embed.to_string(), self.embed.clone())];
        for (i, block) in self.layers.iter().enumerate() {
            let l = match block {
                Block::Decoder(l) => l,
                Block::Hybrid(hb) => {
                    out.extend(hb.named_tensors(i));
                    continue;
                }
            };
            let p = format!("model.layers.{i}");
            let mut push = |n: &str, x: &Tensor| out.push((format!("{p}.{n}"), x.clone()));
            let (a, m) = (&l.self_attn, &l.mlp);
            push("self_attn.q_proj.weight", &a.q_proj);
            push("self_attn.k_proj.weight", &a.k_proj);
            push("self_attn.v_proj.weight", &a.v_proj);
            push("self_attn.o_proj.weight", &a.o_proj);
            for (n, b) in [("q_proj", &a.q_bias), ("k_proj", &a.k_bias), ("v_proj", &a.v_bias), ("o_proj", &a.o_bias)] {
                if let Some(b) = b {
                    push(&format!("self_attn.{n}.bias"), b);
                }
            }
            if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                push("self_attn.q_norm.weight", qn);
                push("self_attn.k_norm.weight", kn);
            }
            push("mlp.gate_proj.weight", &m.gate_proj);
            push("mlp.up_proj.weight", &m.up_proj);
            push("mlp.down_proj.weight", &m.down_proj);
            push("input_layernorm.weight", &l.input_norm);
            push("post_attention_layernorm.weight", &l.post_attn_norm);
        }
        out.push((names.norm.to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        out
    }

    fn map_tensors(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Model> {
        let map: HashMap<String, Tensor> = self.named_tensors().into_iter().map(|(n, t)| Ok((n, f(&t)?))).collect::<Result<_>>()?;
        Model::build(self.cfg.clone(), map, "model copy", None)
    }

    /// The dtype the model computes in: that of its weights (activations follow it; attention
    /// softmax and RMSNorm's normalisation run in f32, and logits are returned as f32).
    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// The device of the weights; inputs, caches and masks are built there.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Every weight cast to `dtype` (the same model when it already is). The cast is
    /// differentiable: a bf16 compute copy of `Var`-backed f32 weights sends f32 gradients back
    /// to the vars (bf16 compute with f32 master weights).
    pub fn to_dtype(&self, dtype: DType) -> Result<Model> {
        self.map_tensors(|t| Ok(t.to_dtype(dtype)?))
    }

    /// A view of the same weights that records no gradient (shares storage: sees in-place updates).
    pub fn detached(&self) -> Result<Model> {
        self.map_tensors(|t| Ok(t.detach()))
    }

    /// The same weights on `dev` (a copy unless they already live there).
    pub fn to_device(&self, dev: &Device) -> Result<Model> {
        self.map_tensors(|t| Ok(t.to_device(dev)?))
    }

    /// An independent copy of the weights (new storage).
    pub fn deep_copy(&self) -> Result<Model> {
        self.map_tensors(|t| Ok(t.copy()?))
    }

    /// Turn every weight into a trainable `Var`; the returned model computes with those vars.
    pub fn into_vars(self) -> Result<(Model, Vec<(String, Var)>)> {
        let mut vars = Vec::new();
        let mut map = HashMap::new();
        for (n, t) in self.named_tensors() {
            let v = Var::from_tensor(&t)?;
            map.insert(n.clone(), v.as_tensor().clone());
            vars.push((n, v));
        }
        Ok((Model::from_tensors(self.cfg, map, "model")?, vars))
    }

    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Grow the vocabulary to `new_vocab` rows (new think tokens), initialising each new row of
    /// the embedding (and of an untied lm_head) to the mean of the existing rows.
    pub fn grow_vocab(&mut self, new_vocab: usize) -> Result<()> {
        let old = self.cfg.vocab_size;
        if new_vocab <= old {
            return Ok(());
        }
        let grow = |w: &Tensor| -> Result<Tensor> {
            let mean = w.mean_keepdim(0)?; // [1, D]
            let extra = mean.broadcast_as((new_vocab - old, w.dim(1)?))?;
            Ok(Tensor::cat(&[w, &extra], 0)?.contiguous()?)
        };
        self.embed = grow(&self.embed)?;
        if let Some(h) = &self.lm_head {
            self.lm_head = Some(grow(h)?);
        }
        self.cfg.vocab_size = new_vocab;
        Ok(())
    }

    /// Final hidden states. ids [B, T] (u32), layout for B*T queries; with a cache the keys are
    /// the cached ones plus these T. Returns [B, T, D].
    pub fn forward_hidden(&self, ids: &Tensor, layout: &AttnLayout, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let inp = self.attention_inputs(ids, layout, past)?;
        let mut x = self.embed_ids(ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&self.cfg, &x, &inp, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.final_norm(&x)
    }

    /// The residual stream of ids [B, T]: the embeddings, the output of every block, and last the
    /// final-normed states (transformers' `output_hidden_states` convention), [B, T, D] each.
    pub fn hidden_states(&self, ids: &Tensor, layout: &AttnLayout) -> Result<Vec<Tensor>> {
        let inp = self.attention_inputs(ids, layout, 0)?;
        let mut out = vec![self.embed_ids(ids)?];
        for layer in &self.layers {
            out.push(layer.forward(&self.cfg, out.last().unwrap(), &inp, None)?);
        }
        let last = out.pop().unwrap();
        out.push(self.final_norm(&last)?);
        Ok(out)
    }

    /// Checks ids [B, T] and the layout against K = past + T keys; returns what every block reads:
    /// RoPE (cos, sin), the additive mask [B, 1, T, K], and for NemotronH the padding mask and
    /// the documents packed in a row.
    fn attention_inputs(&self, ids: &Tensor, layout: &AttnLayout, past: usize) -> Result<BlockInputs> {
        let (b, t) = ids.dims2()?;
        let k = past + t;
        if layout.positions.len() != b * t || layout.mask.len() != b * t * k {
            bail!("attention layout has {} positions / {} mask entries, expected {} / {}", layout.positions.len(), layout.mask.len(), b * t, b * t * k);
        }
        if let Some(max) = ids.flatten_all()?.max(0)?.to_scalar::<u32>().ok() {
            if max as usize >= self.cfg.vocab_size {
                bail!("token id {max} is outside the model's vocabulary of {v} (ids 0..{v}): the ids come from another tokenizer; encode with the tokenizer.json saved beside this model", v = self.cfg.vocab_size);
            }
        }
        let dev = ids.device();
        let mask = Tensor::from_slice(&layout.mask, (b, 1, t, k), dev)?;
        if self.cfg.hybrid.is_some() {
            let (real, segments) = layout.tokens_and_documents(b, t, past);
            let real = Tensor::from_vec(real, (b, t, 1), dev)?.to_dtype(self.dtype())?;
            return Ok(BlockInputs { cos_sin: None, mask, real: Some(real), segments });
        }
        let (cos, sin) = self.rope.cos_sin(&layout.positions, b, t, dev)?;
        let cos_sin = (cos.to_dtype(self.dtype())?, sin.to_dtype(self.dtype())?); // no-ops for f32
        Ok(BlockInputs { cos_sin: Some(cos_sin), mask, real: None, segments: None })
    }

    /// Token embeddings: ids [B, T] -> [B, T, D].
    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?)
    }

    /// `loss_of(forward_hidden(ids))` and its gradient with respect to `params` (the `Var`s the
    /// weights are, or are cast from), with gradient checkpointing per block: the forward keeps
    /// only each block's input [B, T, D]; the backward recomputes one block at a time from its
    /// input and back-propagates the incoming gradient g through it as
    /// ∂(Σ block(x) ⊙ g)/∂(x, weights). Peak memory is one block's activations plus the head's
    /// instead of every block's, for one extra forward. Gradients equal
    /// `loss_of(forward_hidden(ids)).backward()` up to float rounding (tested).
    pub fn checkpointed_backward(&self, ids: &Tensor, layout: &AttnLayout, params: &[&Tensor], loss_of: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<(Tensor, GradStore)> {
        self.checkpointed_backward_from(ids, layout, params, |top| {
            let loss = loss_of(&self.final_norm(top.as_tensor())?)?;
            let grads = loss.backward()?;
            Ok((loss, grads))
        })
    }

    /// `checkpointed_backward` with the head left to the caller: `head` gets the last block's
    /// output [B, T, D] (before the final norm) as a `Var` and returns the loss and a
    /// `GradStore` holding the gradients of that var and of the head's weights (final norm,
    /// lm_head); it may run several backward passes and add them up (see `take_grads`).
    pub fn checkpointed_backward_from(&self, ids: &Tensor, layout: &AttnLayout, params: &[&Tensor], head: impl FnOnce(&Var) -> Result<(Tensor, GradStore)>) -> Result<(Tensor, GradStore)> {
        let inp = self.attention_inputs(ids, layout, 0)?;
        let mut inputs = Vec::with_capacity(self.layers.len()); // block inputs, [B, T, D] each
        let mut x = self.embed_ids(ids)?.detach();
        for layer in &self.layers {
            let y = layer.forward(&self.cfg, &x, &inp, None)?.detach(); // drops the block's graph
            inputs.push(std::mem::replace(&mut x, y));
        }
        let top = Var::from_tensor(&x)?;
        drop(x);
        let (loss, mut head_grads) = head(&top)?;
        let mut grads = empty_grad_store(ids.device())?;
        take_grads(&mut grads, &mut head_grads, params)?;
        let mut dx = head_grads.remove(top.as_tensor()).context("the loss does not depend on the hidden states")?;
        drop(head_grads);
        for (layer, x) in self.layers.iter().zip(inputs).rev() {
            let xv = Var::from_tensor(&x)?;
            drop(x);
            let y = layer.forward(&self.cfg, xv.as_tensor(), &inp, None)?;
            let mut g = (y * &dx)?.sum_all()?.backward()?;
            dx = g.remove(xv.as_tensor()).context("block output does not depend on its input")?;
            take_grads(&mut grads, &mut g, params)?;
        }
        let mut g = (self.embed_ids(ids)? * &dx)?.sum_all()?.backward()?;
        take_grads(&mut grads, &mut g, params)?; // adds to a tied lm_head's
        Ok((loss, grads))
    }

    /// The final RMSNorm: last block's output [.., D] -> the hidden states `logits` takes.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.norm, self.cfg.rms_norm_eps)
    }

    /// Logits at every position: hidden [.., D] -> [.., V], always f32 (log-softmax, log-probs
    /// and losses are taken in f32 whatever the compute dtype).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(linear(hidden, self.lm_head_weight(), None)?.to_dtype(DType::F32)?)
    }

    /// Logits at every position of right-padded rows. Returns [B, T, V] with T = longest row;
    /// positions past a row's end hold garbage.
    pub fn forward_logits(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        let (ids, lens, t) = pad_right(rows, self.device())?;
        let layout = AttnLayout::right_padded(&lens, t);
        self.logits(&self.forward_hidden(&ids, &layout, None)?)
    }
}

/// Right-pad rows with id 0 into a [B, T] tensor; returns (ids, lengths, T).
pub fn pad_right(rows: &[Vec<u32>], dev: &Device) -> Result<(Tensor, Vec<usize>, usize)> {
    if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
        bail!("every sequence must hold at least one token");
    }
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let mut flat = Vec::with_capacity(rows.len() * t);
    for r in rows {
        flat.extend_from_slice(r);
        flat.extend(std::iter::repeat(0u32).take(t - r.len()));
    }
    let lens = rows.iter().map(|r| r.len()).collect();
    Ok((Tensor::from_vec(flat, (rows.len(), t), dev)?, lens, t))
}

/// log p(target) under logits: logits [N, V] or [B, T, V], targets (u32) of the leading shape.
/// Differentiable; fused on the CPU in f32 (`fused::target_logprobs`).
pub fn target_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    fused::target_logprobs(logits, targets)
}
