// The benchmark's job: touches N MiB of memory (so every page must be dumped), says
// "ready" on fd 3 (on stdout when fd 3 is not open: run by mosrun) and sleeps until killed.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  size_t bytes = std::strtoull(argv[1], nullptr, 10) << 20;
  auto* memory = static_cast<unsigned char*>(std::malloc(bytes));
  if (!memory) return 3;
  // Distinct, non-zero contents: no page is the zero page, none compresses to nothing.
  for (size_t i = 0; i < bytes; i += 64) memory[i] = static_cast<unsigned char>(i >> 12 | 1);
  int ready = fcntl(3, F_GETFD) >= 0 ? 3 : 1;
  if (write(ready, "ready\n", 6) != 6) return 4;
  for (;;) pause();
}
