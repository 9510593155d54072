#include "model/model_weights.h"

#include <cmath>
#include <cstring>

#include "util/check.h"

namespace hybridgen {

uint64_t ModelWeights::bytes() const {
  uint64_t b = (token_embedding.size() + position_embedding.size() + final_norm.size() +
                final_norm_b.size()) *
                   sizeof(float) +
               lm_head.weight_bytes();
  for (const LayerWeights& l : layers)
    b += l.qkv.weight_bytes() + l.out.weight_bytes() + l.up.weight_bytes() + l.down.weight_bytes() +
         (l.attn_norm.size() + l.attn_norm_b.size() + l.ffn_norm.size() + l.ffn_norm_b.size()) *
             sizeof(float);
  return b;
}

uint64_t ModelWeights::decode_step_bytes() const {
  return bytes() - (token_embedding.size() + position_embedding.size()) * sizeof(float);
}

namespace {

// Tensor names of one layer in a naming scheme.
struct LayerNames {
  std::string attn_norm, attn_norm_b, q, k, v, q_b, k_b, v_b, o, o_b, ffn_norm, ffn_norm_b, gate,
      up, up_b, down, down_b;
};

LayerNames layer_names(const ModelConfig& c, Naming naming, int i, const std::string& opt_prefix) {
  LayerNames n;
  if (naming == Naming::kGguf) {
    const std::string p = "blk." + std::to_string(i) + ".";
    n.attn_norm = p + "attn_norm.weight";
    n.q = p + "attn_q.weight";
    n.k = p + "attn_k.weight";
    n.v = p + "attn_v.weight";
    n.q_b = p + "attn_q.bias";
    n.k_b = p + "attn_k.bias";
    n.v_b = p + "attn_v.bias";
    n.o = p + "attn_output.weight";
    n.ffn_norm = p + "ffn_norm.weight";
    n.gate = p + "ffn_gate.weight";
    n.up = p + "ffn_up.weight";
    n.down = p + "ffn_down.weight";
  } else if (c.arch == Arch::kOpt) {
    const std::string p = opt_prefix + "layers." + std::to_string(i) + ".";
    n.attn_norm = p + "self_attn_layer_norm.weight";
    n.attn_norm_b = p + "self_attn_layer_norm.bias";
    n.q = p + "self_attn.q_proj.weight";
    n.k = p + "self_attn.k_proj.weight";
    n.v = p + "self_attn.v_proj.weight";
    n.q_b = p + "self_attn.q_proj.bias";
    n.k_b = p + "self_attn.k_proj.bias";
    n.v_b = p + "self_attn.v_proj.bias";
    n.o = p + "self_attn.out_proj.weight";
    n.o_b = p + "self_attn.out_proj.bias";
    n.ffn_norm = p + "final_layer_norm.weight";
    n.ffn_norm_b = p + "final_layer_norm.bias";
    n.up = p + "fc1.weight";
    n.up_b = p + "fc1.bias";
    n.down = p + "fc2.weight";
    n.down_b = p + "fc2.bias";
  } else {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    n.attn_norm = p + "input_layernorm.weight";
    n.q = p + "self_attn.q_proj.weight";
    n.k = p + "self_attn.k_proj.weight";
    n.v = p + "self_attn.v_proj.weight";
    n.q_b = p + "self_attn.q_proj.bias";
    n.k_b = p + "self_attn.k_proj.bias";
    n.v_b = p + "self_attn.v_proj.bias";
    n.o = p + "self_attn.o_proj.weight";
    n.ffn_norm = p + "post_attention_layernorm.weight";
    n.gate = p + "mlp.gate_proj.weight";
    n.up = p + "mlp.up_proj.weight";
    n.down = p + "mlp.down_proj.weight";
  }
  return n;
}

}  // namespace

ModelWeights load_weights(const ModelConfig& c, const TensorSource& src, Naming naming,
                          cpu::WeightType type) {
  const int64_t d = c.d_model, hd = c.head_dim, q_out = int64_t(c.n_heads) * hd,
                kv_out = int64_t(c.n_kv_heads) * hd, ff = c.d_ff, vocab = c.vocab_size;
  ModelWeights w;
  // OPT checkpoints name their tensors "model.decoder.*" or "decoder.*".
  std::string opt_prefix = "model.decoder.";
  if (c.arch == Arch::kOpt && naming == Naming::kHuggingFace &&
      !src.has(opt_prefix + "embed_tokens.weight") && src.has("decoder.embed_tokens.weight"))
    opt_prefix = "decoder.";

  std::string embed_name, final_norm, final_norm_b, head_name;
  if (naming == Naming::kGguf) {
    embed_name = "token_embd.weight";
    final_norm = "output_norm.weight";
    head_name = "output.weight";
  } else if (c.arch == Arch::kOpt) {
    embed_name = opt_prefix + "embed_tokens.weight";
    final_norm = opt_prefix + "final_layer_norm.weight";
    final_norm_b = opt_prefix + "final_layer_norm.bias";
    head_name = "lm_head.weight";
  } else {
    embed_name = "model.embed_tokens.weight";
    final_norm = "model.norm.weight";
    head_name = "lm_head.weight";
  }

  w.token_embedding = src.load(embed_name, {vocab, d});
  if (c.learned_positions)
    w.position_embedding = src.load(opt_prefix + "embed_positions.weight",
                                    {int64_t(c.max_positions) + c.position_offset, d});
  w.final_norm = src.load(final_norm, {d});
  if (c.layer_norm) w.final_norm_b = src.load(final_norm_b, {d});
  // Tied embeddings: some tied checkpoints still carry lm_head.weight (a copy); use it if so.
  if (!c.tied_embeddings || src.has(head_name))
    w.lm_head = cpu::Linear(c.vocab_size, c.d_model, src.load(head_name, {vocab, d}), {}, type);
  else
    w.lm_head = cpu::Linear(c.vocab_size, c.d_model, w.token_embedding, {}, type);

  w.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerNames n = layer_names(c, naming, i, opt_prefix);
    LayerWeights& l = w.layers[i];
    l.attn_norm = src.load(n.attn_norm, {d});
    if (c.layer_norm) l.attn_norm_b = src.load(n.attn_norm_b, {d});
    std::vector<std::vector<float>> qkv_b(3);
    if (c.qkv_bias) {
      qkv_b[0] = src.load(n.q_b, {q_out});
      qkv_b[1] = src.load(n.k_b, {kv_out});
      qkv_b[2] = src.load(n.v_b, {kv_out});
    }
    l.qkv = cpu::concat_rows(
        c.d_model,
        {src.load(n.q, {q_out, d}), src.load(n.k, {kv_out, d}), src.load(n.v, {kv_out, d})},
        std::move(qkv_b), {int(q_out), int(kv_out), int(kv_out)}, type);
    l.out = cpu::Linear(c.d_model, int(q_out), src.load(n.o, {d, q_out}),
                        c.linear_bias ? src.load(n.o_b, {d}) : std::vector<float>{}, type);
    l.ffn_norm = src.load(n.ffn_norm, {d});
    if (c.layer_norm) l.ffn_norm_b = src.load(n.ffn_norm_b, {d});
    if (c.relu_ffn) {
      l.up = cpu::Linear(c.d_ff, c.d_model, src.load(n.up, {ff, d}),
                         c.linear_bias ? src.load(n.up_b, {ff}) : std::vector<float>{}, type);
    } else {
      l.up = cpu::concat_rows(c.d_model, {src.load(n.gate, {ff, d}), src.load(n.up, {ff, d})},
                              {{}, {}}, {c.d_ff, c.d_ff}, type);
    }
    l.down = cpu::Linear(c.d_model, c.d_ff, src.load(n.down, {d, ff}),
                         c.linear_bias ? src.load(n.down_b, {d}) : std::vector<float>{}, type);
  }
  return w;
}

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [-a, a] with a = std * sqrt(3) (so the standard deviation is `std`), from a
// counter-based hash: element i of stream `stream` does not depend on the thread count.
std::vector<float> random_tensor(int64_t n, uint64_t seed, uint64_t stream, float std) {
  std::vector<float> v(n);
  const float a = std * std::sqrt(3.0f);
  const uint64_t base = splitmix64(seed ^ splitmix64(stream));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = splitmix64(base + static_cast<uint64_t>(i));
    const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    v[i] = (2.f * u - 1.f) * a;
  }
  return v;
}

}  // namespace

ModelWeights random_weights(const ModelConfig& c, uint64_t seed, cpu::WeightType type) {
  const int64_t d = c.d_model, q_out = int64_t(c.n_heads) * c.head_dim,
                kv_out = int64_t(c.n_kv_heads) * c.head_dim, ff = c.d_ff;
  uint64_t stream = 0;
  auto rnd = [&](int64_t n, float std = 0.02f) { return random_tensor(n, seed, ++stream, std); };
  auto ones = [&](int64_t n) { return std::vector<float>(n, 1.f); };
  ModelWeights w;
  w.token_embedding = rnd(int64_t(c.vocab_size) * d);
  if (c.learned_positions)
    w.position_embedding = rnd((int64_t(c.max_positions) + c.position_offset) * d);
  w.final_norm = ones(d);
  if (c.layer_norm) w.final_norm_b = rnd(d);
  w.lm_head =
      cpu::Linear(c.vocab_size, c.d_model,
                  c.tied_embeddings ? w.token_embedding : rnd(int64_t(c.vocab_size) * d), {}, type);
  w.layers.resize(c.n_layers);
  for (LayerWeights& l : w.layers) {
    l.attn_norm = ones(d);
    if (c.layer_norm) l.attn_norm_b = rnd(d);
    std::vector<std::vector<float>> qkv_b(3);
    if (c.qkv_bias) qkv_b = {rnd(q_out), rnd(kv_out), rnd(kv_out)};
    l.qkv = cpu::concat_rows(c.d_model, {rnd(q_out * d), rnd(kv_out * d), rnd(kv_out * d)},
                             std::move(qkv_b), {int(q_out), int(kv_out), int(kv_out)}, type);
    l.out = cpu::Linear(c.d_model, int(q_out), rnd(d * q_out),
                        c.linear_bias ? rnd(d) : std::vector<float>{}, type);
    l.ffn_norm = ones(d);
    if (c.layer_norm) l.ffn_norm_b = rnd(d);
    if (c.relu_ffn)
      l.up = cpu::Linear(c.d_ff, c.d_model, rnd(ff * d),
                         c.linear_bias ? rnd(ff) : std::vector<float>{}, type);
    else
      l.up =
          cpu::concat_rows(c.d_model, {rnd(ff * d), rnd(ff * d)}, {{}, {}}, {c.d_ff, c.d_ff}, type);
    l.down = cpu::Linear(c.d_model, c.d_ff, rnd(d * ff),
                         c.linear_bias ? rnd(d) : std::vector<float>{}, type);
  }
  return w;
}

}  // namespace hybridgen
