// Uses only the installed public headers: loading a missing model must be a hybridgen::Error.
#include <hybridgen/hybridgen.h>

#include <cstdio>

int main() {
  hybridgen::LoadOptions load;
  load.model_path = "/nonexistent/model.gguf";
  try {
    hybridgen::Engine::load(load);
  } catch (const hybridgen::Error& e) {
    std::printf("consumer ok: %s\n", e.what());
    return 0;
  }
  return 1;
}
