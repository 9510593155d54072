#include "model/model_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/gguf.h"
#include "util/check.h"
#include "util/json.h"

namespace hybridgen {

using json = nlohmann::json;

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::kLlama:
      return "llama";
    case Arch::kQwen2:
      return "qwen2";
    case Arch::kMistral:
      return "mistral";
    case Arch::kOpt:
      return "opt";
  }
  return "?";
}

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int v, const char* field) {
    HG_CHECK(v > 0, source + ": field '" + field + "' must be positive, got " + std::to_string(v));
  };
  positive(n_layers, "num_hidden_layers");
  positive(d_model, "hidden_size");
  positive(n_heads, "num_attention_heads");
  positive(n_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(d_ff, "intermediate_size");
  positive(vocab_size, "vocab_size");
  positive(max_positions, "max_position_embeddings");
  HG_CHECK(n_heads % n_kv_heads == 0, source + ": num_attention_heads (" + std::to_string(n_heads) +
                                          ") must be a multiple of num_key_value_heads (" +
                                          std::to_string(n_kv_heads) + ")");
  HG_CHECK(head_dim % 2 == 0, source + ": head_dim must be even, got " + std::to_string(head_dim));
  HG_CHECK(n_layers <= 1024 && d_model <= (1 << 17) && n_heads <= 1024 && head_dim <= 1024 &&
               d_ff <= (1 << 20) && vocab_size <= (1 << 24) && max_positions <= (1 << 24),
           source + ": model dimensions are implausibly large");
  if (!learned_positions) {
    HG_CHECK(rope_dim > 0 && rope_dim <= head_dim && rope_dim % 2 == 0,
             source + ": rope dimension " + std::to_string(rope_dim) + " is not in (0, head_dim]");
    HG_CHECK(rope_theta > 0, source + ": rope_theta must be positive");
  }
  HG_CHECK(norm_eps > 0 && norm_eps < 1, source + ": norm epsilon must be in (0, 1)");
  if (!rope_freq_factors.empty())
    HG_CHECK(rope_freq_factors.size() == static_cast<size_t>(rope_dim / 2),
             source + ": rope_freqs has " + std::to_string(rope_freq_factors.size()) +
                 " entries, expected rope_dim/2 = " + std::to_string(rope_dim / 2));
}

std::vector<float> ModelConfig::rope_inv_freq() const {
  const int half = rope_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    // As HF: base ** (arange(0, dim, 2).float() / dim), in float.
    float exponent = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
    inv[i] = 1.0f / std::pow(rope_theta, exponent);
  }
  if (rope_scale_factor > 0.f) {
    // Llama-3 ("rope_type": "llama3"): long wavelengths are slowed by `factor`, short ones
    // kept, and the band between is interpolated (transformers' _compute_llama3_parameters).
    const float old_ctx = static_cast<float>(rope_original_max_positions);
    const float low_wavelen = old_ctx / rope_low_freq_factor;
    const float high_wavelen = old_ctx / rope_high_freq_factor;
    for (int i = 0; i < half; ++i) {
      const float wavelen = 2.0f * static_cast<float>(M_PI) / inv[i];
      float f = wavelen > low_wavelen ? inv[i] / rope_scale_factor : inv[i];
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      if (medium) {
        const float smooth = (old_ctx / wavelen - rope_low_freq_factor) /
                             (rope_high_freq_factor - rope_low_freq_factor);
        f = (1 - smooth) * f / rope_scale_factor + smooth * f;
      }
      inv[i] = f;
    }
  }
  if (!rope_freq_factors.empty())
    for (int i = 0; i < half; ++i) inv[i] /= rope_freq_factors[i];
  return inv;
}

int64_t ModelConfig::n_params() const {
  const int64_t d = d_model, q = int64_t(n_heads) * head_dim, kv = int64_t(n_kv_heads) * head_dim;
  const int64_t per_layer = d * (q + 2 * kv) + q * d + (relu_ffn ? 2 : 3) * d * d_ff + 4 * d;
  int64_t total = int64_t(vocab_size) * d + n_layers * per_layer + d;
  if (!tied_embeddings) total += int64_t(vocab_size) * d;
  if (learned_positions) total += (int64_t(max_positions) + position_offset) * d;
  return total;
}

namespace {

// Field access with errors that name the file and the field.
struct JsonFields {
  const json& j;
  const std::string& path;

  bool has(const char* k) const { return j.contains(k) && !j.at(k).is_null(); }
  int get_int(const char* k) const {
    HG_CHECK(has(k), path + ": missing field '" + k + "'");
    const json& v = j.at(k);
    HG_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
             path + ": field '" + k + "' must be a non-negative integer, got " + v.dump());
    return v.get<int>();
  }
  int get_int(const char* k, int def) const { return has(k) ? get_int(k) : def; }
  float get_float(const char* k, float def) const {
    if (!has(k)) return def;
    const json& v = j.at(k);
    HG_CHECK(v.is_number(), path + ": field '" + k + "' must be a number, got " + v.dump());
    return v.get<float>();
  }
  bool get_bool(const char* k, bool def) const {
    if (!has(k)) return def;
    const json& v = j.at(k);
    HG_CHECK(v.is_boolean(), path + ": field '" + k + "' must be true or false, got " + v.dump());
    return v.get<bool>();
  }
  std::string get_string(const char* k, const std::string& def) const {
    if (!has(k)) return def;
    const json& v = j.at(k);
    HG_CHECK(v.is_string(), path + ": field '" + k + "' must be a string, got " + v.dump());
    return v.get<std::string>();
  }
};

void parse_rope(const json& j, const std::string& path, ModelConfig& c) {
  JsonFields f{j, path};
  c.rope_theta = f.get_float("rope_theta", 10000.f);
  // transformers >= 5 writes "rope_parameters"; older configs "rope_scaling".
  const json* scaling = nullptr;
  if (f.has("rope_parameters"))
    scaling = &j.at("rope_parameters");
  else if (f.has("rope_scaling"))
    scaling = &j.at("rope_scaling");
  if (!scaling) return;
  HG_CHECK(scaling->is_object(), path + ": field 'rope_scaling' must be an object");
  JsonFields s{*scaling, path};
  if (s.has("rope_theta")) c.rope_theta = s.get_float("rope_theta", c.rope_theta);
  std::string type = s.get_string("rope_type", s.get_string("type", "default"));
  if (type == "default") return;
  HG_CHECK(type == "llama3", path + ": rope_scaling type '" + type +
                                 "' is not supported (supported: default, llama3)");
  c.rope_scale_factor = s.get_float("factor", 0.f);
  HG_CHECK(c.rope_scale_factor > 0, path + ": rope_scaling.factor must be positive");
  c.rope_low_freq_factor = s.get_float("low_freq_factor", 1.f);
  c.rope_high_freq_factor = s.get_float("high_freq_factor", 4.f);
  HG_CHECK(c.rope_high_freq_factor > c.rope_low_freq_factor,
           path + ": rope_scaling.high_freq_factor must exceed low_freq_factor");
  c.rope_original_max_positions = s.get_int("original_max_position_embeddings", 8192);
}

}  // namespace

ModelConfig parse_hf_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  HG_CHECK(in, path + ": cannot open the model's config.json");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const json j = parse_json(text, path);
  HG_CHECK(j.is_object(), path + ": expected a JSON object");
  JsonFields f{j, path};
  std::string type = f.get_string("model_type", "");
  HG_CHECK(!type.empty(), path + ": missing field 'model_type'");

  ModelConfig c;
  if (type == "llama")
    c.arch = Arch::kLlama;
  else if (type == "mistral")
    c.arch = Arch::kMistral;
  else if (type == "qwen2")
    c.arch = Arch::kQwen2;
  else if (type == "opt")
    c.arch = Arch::kOpt;
  else
    fail(path + ": unknown architecture model_type='" + type +
         "' (supported: llama, mistral, qwen2, opt)");

  c.vocab_size = f.get_int("vocab_size");
  c.n_layers = f.get_int("num_hidden_layers");
  c.d_model = f.get_int("hidden_size");
  c.n_heads = f.get_int("num_attention_heads");
  c.max_positions = f.get_int("max_position_embeddings");
  c.bos_id = f.has("bos_token_id") && j.at("bos_token_id").is_number_integer()
                 ? j.at("bos_token_id").get<int>()
                 : -1;
  c.eos_id = f.has("eos_token_id") && j.at("eos_token_id").is_number_integer()
                 ? j.at("eos_token_id").get<int>()
                 : -1;

  if (c.arch == Arch::kOpt) {
    c.n_kv_heads = c.n_heads;
    c.head_dim = c.d_model / std::max(c.n_heads, 1);
    c.d_ff = f.get_int("ffn_dim");
    c.layer_norm = true;
    c.relu_ffn = true;
    c.qkv_bias = f.get_bool("enable_bias", true);
    c.linear_bias = c.qkv_bias;
    c.tied_embeddings = f.get_bool("tie_word_embeddings", true);
    c.learned_positions = true;
    c.position_offset = 2;
    c.norm_eps = 1e-5f;
    std::string act = f.get_string("activation_function", "relu");
    HG_CHECK(act == "relu",
             path + ": OPT activation_function '" + act + "' is not supported (relu)");
    HG_CHECK(f.get_bool("do_layer_norm_before", true),
             path + ": OPT with do_layer_norm_before=false (OPT-350m) is not supported");
    HG_CHECK(f.get_int("word_embed_proj_dim", c.d_model) == c.d_model,
             path + ": OPT with word_embed_proj_dim != hidden_size (OPT-350m) is not supported");
    HG_CHECK(f.get_bool("layer_norm_elementwise_affine", true),
             path + ": OPT without LayerNorm affine parameters is not supported");
  } else {
    c.n_kv_heads = f.get_int("num_key_value_heads", c.n_heads);
    c.head_dim = f.get_int("head_dim", c.d_model / std::max(c.n_heads, 1));
    c.d_ff = f.get_int("intermediate_size");
    c.norm_eps = f.get_float("rms_norm_eps", 1e-6f);
    c.tied_embeddings = f.get_bool("tie_word_embeddings", false);
    c.qkv_bias = c.arch == Arch::kQwen2 || f.get_bool("attention_bias", false);
    HG_CHECK(!f.get_bool("mlp_bias", false), path + ": mlp_bias=true is not supported");
    std::string act = f.get_string("hidden_act", "silu");
    HG_CHECK(act == "silu", path + ": hidden_act '" + act + "' is not supported (silu)");
    parse_rope(j, path, c);
    c.rope_dim = c.head_dim;
    c.rope_style = RopeStyle::kNeox;
    if (c.arch == Arch::kMistral) c.sliding_window = f.get_int("sliding_window", 0);
    if (c.arch == Arch::kQwen2 && f.get_bool("use_sliding_window", false))
      fail(path + ": Qwen2 use_sliding_window=true is not supported");
  }
  c.validate(path);
  return c;
}

ModelConfig parse_gguf_config(const GgufFile& g) {
  const std::string path = g.path();
  const std::string arch = g.get_string("general.architecture");
  ModelConfig c;
  if (arch == "llama")
    c.arch = Arch::kLlama;
  else if (arch == "qwen2")
    c.arch = Arch::kQwen2;
  else
    fail(path + ": unknown architecture general.architecture='" + arch +
         "' (GGUF support covers llama and qwen2)");
  auto u = [&](const std::string& key) {
    uint64_t v = g.get_uint(arch + "." + key);
    HG_CHECK(v <= INT32_MAX, path + ": " + arch + "." + key + " is too large");
    return static_cast<int>(v);
  };
  auto u_or = [&](const std::string& key, int def) {
    uint64_t v = g.get_uint(arch + "." + key, static_cast<uint64_t>(def));
    HG_CHECK(v <= INT32_MAX, path + ": " + arch + "." + key + " is too large");
    return static_cast<int>(v);
  };
  c.n_layers = u("block_count");
  c.d_model = u("embedding_length");
  c.d_ff = u("feed_forward_length");
  c.n_heads = u("attention.head_count");
  c.n_kv_heads = u_or("attention.head_count_kv", c.n_heads);
  c.max_positions = u_or("context_length", 4096);
  c.head_dim = c.n_heads > 0 ? c.d_model / c.n_heads : 0;
  c.head_dim = u_or("attention.key_length", c.head_dim);
  c.rope_dim = u_or("rope.dimension_count", c.head_dim);
  c.rope_theta = static_cast<float>(g.get_float(arch + ".rope.freq_base", 10000.0));
  c.norm_eps = static_cast<float>(g.get_float(arch + ".attention.layer_norm_rms_epsilon", 1e-5));
  const auto tokens = g.get(std::string("tokenizer.ggml.tokens"));
  int vocab_from_tokens = 0;
  if (tokens && std::holds_alternative<GgufArray>(tokens->v))
    vocab_from_tokens = static_cast<int>(std::get<GgufArray>(tokens->v).size());
  c.vocab_size = u_or("vocab_size", vocab_from_tokens);
  c.qkv_bias = c.arch == Arch::kQwen2;
  // llama.cpp's converter permutes llama Q/K so pairs are adjacent; qwen2 keeps HF's layout.
  c.rope_style = c.arch == Arch::kLlama ? RopeStyle::kInterleaved : RopeStyle::kNeox;
  c.tied_embeddings = g.find("output.weight") == nullptr;
  auto token_id = [&](const char* key) {
    if (!g.get(key)) return -1;
    uint64_t v = g.get_uint(key);
    HG_CHECK(v < static_cast<uint64_t>(c.vocab_size),
             path + ": " + key + " = " + std::to_string(v) + " is outside the vocabulary");
    return static_cast<int>(v);
  };
  c.bos_id = token_id("tokenizer.ggml.bos_token_id");
  c.eos_id = token_id("tokenizer.ggml.eos_token_id");
  const std::string scaling = g.get_string(arch + ".rope.scaling.type", "none");
  HG_CHECK(scaling == "none" || scaling == "llama3",
           path + ": " + arch + ".rope.scaling.type '" + scaling + "' is not supported");
  c.validate(path);
  return c;
}

}  // namespace hybridgen
