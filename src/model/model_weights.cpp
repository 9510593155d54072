#include "model/model_weights.h"

#include <cmath>
#include <cstring>
#include <set>

#include "cpu/quant/quant_gemv.h"
#include "cpu/quant/quant_gemv16.h"
#include "util/check.h"
#include "util/log.h"

namespace hybridgen {

uint64_t ModelWeights::bytes() const {
  uint64_t b =
      token_embedding.bytes() +
      (position_embedding.size() + final_norm.size() + final_norm_b.size()) * sizeof(float) +
      lm_head.weight_bytes();
  for (const LayerWeights& l : layers)
    b += l.qkv.weight_bytes() + l.out.weight_bytes() + l.up.weight_bytes() + l.down.weight_bytes() +
         (l.attn_norm.size() + l.attn_norm_b.size() + l.ffn_norm.size() + l.ffn_norm_b.size()) *
             sizeof(float);
  return b;
}

uint64_t ModelWeights::decode_step_bytes() const {
  return bytes() - token_embedding.bytes() - position_embedding.size() * sizeof(float);
}

std::string ModelWeights::format_name() const {
  int quant = 0, total = 0;
  bool bf16 = false, q8 = false;
  auto see = [&](const cpu::Linear& l) {
    ++total;
    quant += cpu::is_quant(l.type());
    q8 |= l.type() == cpu::WeightType::kQuantQ8;
    bf16 |= l.type() == cpu::WeightType::kBF16;
  };
  see(lm_head);
  for (const LayerWeights& l : layers) {
    see(l.qkv);
    see(l.out);
    see(l.up);
    see(l.down);
  }
  if (quant == total) return q8 ? "native-q8" : "native";
  if (quant > 0) return q8 ? "native-q8+bf16" : "native+bf16";
  return bf16 ? "bf16" : "f32";
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

  // One projection from the tensors `names` of shapes [outs[i], in] (rows concatenated in
  // order): quantized as stored when asked for and every tensor has a native GEMV, else float
  // weights (bf16 in place of kQuant / kQuantQ8).
  std::set<DType> logged_q8_types;  // native: types that run their 8-bit kernels, logged once
  auto linear = [&](int in, const std::vector<std::string>& names, const std::vector<int>& outs,
                    std::vector<std::vector<float>> biases) -> cpu::Linear {
    if (cpu::is_quant(type)) {
      std::vector<cpu::QuantPart> parts;
      for (size_t i = 0; i < names.size(); ++i) {
        const TensorInfo* t = src.quantized(names[i], {outs[i], in});
        if (!t || !cpu::quant_gemv_supports(t->dtype)) {
          if (t)
            log().info("{}: tensor '{}' is {}, which has no native GEMV: dequantized to bf16{}",
                       src.describe(), names[i], dtype_name(t->dtype),
                       names.size() > 1 ? " with the projection it is fused into" : "");
          parts.clear();
          break;
        }
        if (type == cpu::WeightType::kQuant && !cpu::quant_gemv16_supports(t->dtype) &&
            logged_q8_types.insert(t->dtype).second)
          log().info(
              "{}: {} tensors (first: '{}') have no 16-bit-activation kernel: their "
              "native-q8 kernel runs them (activations rounded to 8 bits, as llama.cpp)",
              src.describe(), dtype_name(t->dtype), names[i]);
        parts.push_back({t->dtype, outs[i], std::vector<uint8_t>(t->data, t->data + t->nbytes)});
      }
      if (!parts.empty())
        return cpu::concat_quant_rows(in, std::move(parts), std::move(biases), type);
    }
    const cpu::WeightType ft = cpu::is_quant(type) ? cpu::WeightType::kBF16 : type;
    std::vector<std::vector<float>> ws;
    for (size_t i = 0; i < names.size(); ++i) ws.push_back(src.load(names[i], {outs[i], in}));
    if (names.size() == 1)
      return cpu::Linear(outs[0], in, std::move(ws[0]), std::move(biases[0]), ft);
    return cpu::concat_rows(in, std::move(ws), std::move(biases), outs, ft);
  };
  auto opt_bias = [&](bool has, const std::string& name, int64_t n) {
    return has ? src.load(name, {n}) : std::vector<float>{};
  };

  // The embedding as stored when it is block-quantized (a row is dequantized when looked up,
  // bit-exactly as load() would), whatever the projections' format.
  if (const TensorInfo* t = src.quantized(embed_name, {vocab, d}))
    w.token_embedding = EmbeddingTable::from_blocks(
        t->dtype, vocab, d, std::vector<uint8_t>(t->data, t->data + t->nbytes),
        src.describe() + ": tensor '" + embed_name + "'");
  else
    w.token_embedding = EmbeddingTable::from_f32(vocab, d, src.load(embed_name, {vocab, d}));
  if (c.learned_positions)
    w.position_embedding = src.load(opt_prefix + "embed_positions.weight",
                                    {int64_t(c.max_positions) + c.position_offset, d});
  w.final_norm = src.load(final_norm, {d});
  if (c.layer_norm) w.final_norm_b = src.load(final_norm_b, {d});
  // Tied embeddings: some tied checkpoints still carry lm_head.weight (a copy); use it if so.
  if (!c.tied_embeddings || src.has(head_name))
    w.lm_head = linear(c.d_model, {head_name}, {c.vocab_size}, std::vector<std::vector<float>>(1));
  else if (cpu::is_quant(type) && src.quantized(embed_name, {vocab, d}))
    w.lm_head = linear(c.d_model, {embed_name}, {c.vocab_size}, std::vector<std::vector<float>>(1));
  else
    w.lm_head = cpu::Linear(c.vocab_size, c.d_model, w.token_embedding.to_f32(), {},
                            cpu::is_quant(type) ? cpu::WeightType::kBF16 : type);

  w.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerNames n = layer_names(c, naming, i, opt_prefix);
    LayerWeights& l = w.layers[i];
    l.attn_norm = src.load(n.attn_norm, {d});
    if (c.layer_norm) l.attn_norm_b = src.load(n.attn_norm_b, {d});
    l.qkv = linear(c.d_model, {n.q, n.k, n.v}, {int(q_out), int(kv_out), int(kv_out)},
                   {opt_bias(c.qkv_bias, n.q_b, q_out), opt_bias(c.qkv_bias, n.k_b, kv_out),
                    opt_bias(c.qkv_bias, n.v_b, kv_out)});
    l.out = linear(int(q_out), {n.o}, {c.d_model}, {opt_bias(c.linear_bias, n.o_b, d)});
    l.ffn_norm = src.load(n.ffn_norm, {d});
    if (c.layer_norm) l.ffn_norm_b = src.load(n.ffn_norm_b, {d});
    if (c.relu_ffn)
      l.up = linear(c.d_model, {n.up}, {c.d_ff}, {opt_bias(c.linear_bias, n.up_b, ff)});
    else
      l.up =
          linear(c.d_model, {n.gate, n.up}, {c.d_ff, c.d_ff}, std::vector<std::vector<float>>(2));
    l.down = linear(c.d_ff, {n.down}, {c.d_model}, {opt_bias(c.linear_bias, n.down_b, d)});
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
  w.token_embedding = EmbeddingTable::from_f32(c.vocab_size, d, rnd(int64_t(c.vocab_size) * d));
  if (c.learned_positions)
    w.position_embedding = rnd((int64_t(c.max_positions) + c.position_offset) * d);
  w.final_norm = ones(d);
  if (c.layer_norm) w.final_norm_b = rnd(d);
  w.lm_head = cpu::Linear(
      c.vocab_size, c.d_model,
      c.tied_embeddings ? w.token_embedding.to_f32() : rnd(int64_t(c.vocab_size) * d), {}, type);
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
