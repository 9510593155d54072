#include "model/model_loader.h"

#include <filesystem>

#include "cpu/quant/quant_gemv.h"
#include "model/dequant.h"
#include "model/gguf.h"
#include "model/gguf_vocab.h"
#include "model/safetensors.h"
#include "util/check.h"
#include "util/log.h"

namespace hybridgen {

namespace fs = std::filesystem;

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// Reads one checkpoint tensor into float32, checking its shape.
std::vector<float> to_f32(const TensorInfo& t, const std::vector<int64_t>& shape,
                          const std::string& file) {
  HG_CHECK(t.shape == shape, file + ": tensor '" + t.name + "' has shape " + shape_str(t.shape) +
                                 ", expected " + shape_str(shape));
  HG_CHECK(t.dtype != DType::kI32 && t.dtype != DType::kI64,
           file + ": tensor '" + t.name + "' has integer dtype " +
               std::string(dtype_name(t.dtype)) + ", expected a floating-point or quantized type");
  std::vector<float> out(t.numel());
  dequantize(t.dtype, t.data, out.data(), t.numel());
  return out;
}

class SafetensorsSource : public TensorSource {
 public:
  SafetensorsSource(std::unique_ptr<SafetensorsModel> m, std::string dir)
      : model_(std::move(m)), dir_(std::move(dir)) {}
  bool has(const std::string& name) const override { return model_->find(name) != nullptr; }
  std::vector<float> load(const std::string& name,
                          const std::vector<int64_t>& shape) const override {
    const TensorInfo* t = model_->find(name);
    HG_CHECK(t, dir_ + ": missing tensor '" + name + "' (expected shape " + shape_str(shape) + ")");
    return to_f32(*t, shape, model_->file_of(name));
  }
  std::string describe() const override { return dir_; }

 private:
  std::unique_ptr<SafetensorsModel> model_;
  std::string dir_;
};

class GgufSource : public TensorSource {
 public:
  explicit GgufSource(const GgufFile& g) : g_(g) {}
  bool has(const std::string& name) const override { return g_.find(name) != nullptr; }
  std::vector<float> load(const std::string& name,
                          const std::vector<int64_t>& shape) const override {
    const TensorInfo* t = g_.find(name);
    HG_CHECK(
        t, g_.path() + ": missing tensor '" + name + "' (expected shape " + shape_str(shape) + ")");
    return to_f32(*t, shape, g_.path());
  }
  std::string describe() const override { return g_.path(); }
  const TensorInfo* quantized(const std::string& name,
                              const std::vector<int64_t>& shape) const override {
    const TensorInfo* t = g_.find(name);
    if (!t || dtype_block_size(t->dtype) == 1) return nullptr;
    HG_CHECK(t->shape == shape, g_.path() + ": tensor '" + t->name + "' has shape " +
                                    shape_str(t->shape) + ", expected " + shape_str(shape));
    return t;
  }

 private:
  const GgufFile& g_;
};

}  // namespace

bool native_is_auto_here() {
  // Policy, per quantized GEMV path: whether native decode (16-bit activations) measured faster
  // than bf16 (decode of the default model, same run, docs/quantization.md) and whether auto
  // takes it. Faster is not enough: the answers must not change. native-q8 (llama.cpp's 8-bit
  // activations) changes the README's greedy chat answer ("What is the capital of France?":
  // "L'Étoile, la Marseur, ..." instead of "The capital of France is Paris."), so auto never
  // takes it; native (int16 per block of 32) answers Paris on every path tested and its logits
  // are our f32 weights' to 0.0077 (tests cli_default_chat_*, NativeModel.Int16*).
  static constexpr struct {
    cpu::QuantPath path;
    bool measured_faster;
    bool auto_native;
  } kPolicy[] = {
      // HYBRIDGEN_CPU_ISA=portable on the AVX2 EPYC, -t 2, 32 tokens, 2 runs each, idle:
      // native 61.02 / 58.85 ms/token vs bf16 27.74 / 23.41 (the scalar block kernels lose to
      // the compiler-vectorized bf16 GEMV): slower, so bf16.
      {cpu::QuantPath::kPortable, false, false},
      // AMD EPYC (AVX2, no AVX-512), 2 cores, scripts/bench-cpu-isa.sh, medians of 3, 128
      // tokens, machine otherwise idle: -t 2 native 15.13 ms/token vs bf16 23.57 (native-q8
      // 16.23, llama.cpp 15.93); -t 1 21.93 vs 39.43 (native-q8 24.61, llama.cpp 23.75).
      // Paris on cli_default_chat_detected / _avx2 (docs/benchmarks.md).
      {cpu::QuantPath::kAvx2, true, true},
      // The 16-bit AVX-512 kernels have not run on an AVX-512 CPU yet (this host has none):
      // unmeasured, so auto stays bf16 there (native-q8 measured faster: docs/benchmarks.md).
      {cpu::QuantPath::kAvx512, false, false},
      {cpu::QuantPath::kAvx512Vnni, false, false},
  };
  const cpu::QuantPath p = cpu::quant_gemv_path();
  for (const auto& e : kPolicy)
    if (e.path == p) return e.measured_faster && e.auto_native;
  return false;
}

cpu::WeightType resolve_weight_type(const ModelConfig& c, WeightChoice choice,
                                    bool checkpoint_is_f32, bool checkpoint_is_quantized) {
  switch (choice) {
    case WeightChoice::kF32:
      return cpu::WeightType::kF32;
    case WeightChoice::kBF16:
      return cpu::WeightType::kBF16;
    case WeightChoice::kNative:
    case WeightChoice::kNativeQ8:
      if (checkpoint_is_quantized)
        return choice == WeightChoice::kNative ? cpu::WeightType::kQuant
                                               : cpu::WeightType::kQuantQ8;
      log().info("--weight-format {}: the checkpoint has no quantized matrices; bf16 weights",
                 choice == WeightChoice::kNative ? "native" : "native-q8");
      return cpu::WeightType::kBF16;
    case WeightChoice::kAuto:
      if (checkpoint_is_quantized && native_is_auto_here()) return cpu::WeightType::kQuant;
      break;
    case WeightChoice::kAutoFloat:
      break;
  }
  // float32 only where it is exact and affordable: a float32 checkpoint of at most 2 B
  // parameters. Quantized and half-precision checkpoints run with bf16 weights: half the bytes
  // per decoded token (the default model: top-1 identical to float32 transformers at 298 of
  // 300 positions; tests/unit/default_model_test.cpp).
  return checkpoint_is_f32 && c.n_params() <= 2'000'000'000 ? cpu::WeightType::kF32
                                                            : cpu::WeightType::kBF16;
}

namespace {
// Whether any of the checkpoint's matrices is stored in a type with a native GEMV.
template <typename Tensors>
bool has_native_matrices(const Tensors& tensors) {
  for (const TensorInfo* t : tensors)
    if (t->shape.size() >= 2 && cpu::quant_gemv_supports(t->dtype)) return true;
  return false;
}
// Whether the checkpoint's matrices (2-D tensors) are all stored as float32.
template <typename Tensors>
bool matrices_are_f32(const Tensors& tensors) {
  for (const TensorInfo* t : tensors)
    if (t->shape.size() >= 2 && t->dtype != DType::kF32) return false;
  return true;
}
}  // namespace

LoadedModel load_model(const std::string& path, bool use_random_weights, uint64_t seed,
                       WeightChoice choice) {
  LoadedModel m;
  std::error_code ec;
  HG_CHECK(fs::exists(path, ec), path + ": no such file or directory (the -m / --model flag)");

  if (use_random_weights) {
    const fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
    const std::string config_path = fs::is_directory(path) ? (dir / "config.json").string() : path;
    m.config = parse_hf_config(config_path);
    const cpu::WeightType type = resolve_weight_type(m.config, choice, true);
    log().info("generating seeded random weights (seed {}) for {} ({:.2f} B parameters)", seed,
               config_path, m.config.n_params() / 1e9);
    m.weights = random_weights(m.config, seed, type);
    if (fs::exists(dir / "tokenizer.json", ec))
      m.tokenizer = Tokenizer::from_hf_files((dir / "tokenizer.json").string(),
                                             fs::exists(dir / "tokenizer_config.json", ec)
                                                 ? (dir / "tokenizer_config.json").string()
                                                 : std::string());
    m.source = "random weights (seed " + std::to_string(seed) + ") of " + config_path;
    return m;
  }

  if (fs::is_directory(path)) {
    const fs::path dir(path);
    m.config = parse_hf_config((dir / "config.json").string());
    auto st = SafetensorsModel::open_dir(path);
    std::vector<const TensorInfo*> all;
    for (const std::string& name : st->names()) all.push_back(st->find(name));
    const cpu::WeightType type = resolve_weight_type(m.config, choice, matrices_are_f32(all));
    SafetensorsSource src(std::move(st), path);
    m.weights = load_weights(m.config, src, Naming::kHuggingFace, type);
    const fs::path tok = dir / "tokenizer.json";
    const fs::path tok_cfg = dir / "tokenizer_config.json";
    if (fs::exists(tok, ec))
      m.tokenizer =
          Tokenizer::from_hf_files(tok.string(), fs::exists(tok_cfg, ec) ? tok_cfg.string() : "");
    else
      log().warn("{}: no tokenizer.json; the model takes token ids only", path);
    m.source = path;
    return m;
  }

  // A file: GGUF (by its magic; GgufFile names the file if it is not one).
  auto g = GgufFile::open(path);
  m.config = parse_gguf_config(*g);
  if (const TensorInfo* rf = g->find("rope_freqs.weight")) {
    // Llama-3.1-style frequency scaling, stored by llama.cpp's converter as divisors.
    m.config.rope_freq_factors = to_f32(*rf, {int64_t(m.config.rope_dim / 2)}, path);
    m.config.validate(path);
  }
  GgufSource src(*g);
  std::vector<const TensorInfo*> all;
  for (const TensorInfo& t : g->tensors()) all.push_back(&t);
  m.weights = load_weights(
      m.config, src, Naming::kGguf,
      resolve_weight_type(m.config, choice, matrices_are_f32(all), has_native_matrices(all)));
  GgufVocab vocab = read_gguf_vocab(*g);
  HG_CHECK(static_cast<int>(vocab.tokens.size()) <= m.config.vocab_size,
           path + ": tokenizer.ggml.tokens has " + std::to_string(vocab.tokens.size()) +
               " tokens but the embedding has only " + std::to_string(m.config.vocab_size) +
               " rows");
  m.tokenizer = Tokenizer::from_gguf_vocab(vocab);
  m.source = path;
  return m;
}

}  // namespace hybridgen
