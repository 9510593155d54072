// The smallest program using libhybridgen: load a model, generate from a prompt, stream text.
//   hybridgen-example MODEL.gguf "Once upon a time"
#include <hybridgen/hybridgen.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL PROMPT\n", argv[0]);
    return 2;
  }
  try {
    hybridgen::LoadOptions load;
    load.model_path = argv[1];
    auto engine = hybridgen::Engine::load(load);
    hybridgen::GenerateOptions gen;
    gen.n_predict = 32;
    gen.sampling.temperature = 0;  // greedy
    auto result = engine->generate(engine->tokenize(argv[2]), gen, [](std::string_view text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("\n[%d tokens, %.1f tokens/s]\n", result.stats.n_generated,
                result.stats.decode_tokens_per_second());
  } catch (const hybridgen::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
