// /proc path translation; see proc_path.h.
#include "proc_path.h"

namespace homeward::preload {

const char* TranslateProcPath(const PidMap& map, const char* path, char* out,
                              long self_inner) {
  if (path == nullptr) return path;
  const char prefix[] = "/proc/";
  size_t i = 0;
  for (; prefix[i] != '\0'; ++i) {
    if (path[i] != prefix[i]) return path;
  }
  long id = 0;
  size_t digits = i;
  while (path[digits] >= '0' && path[digits] <= '9') {
    if (digits - i > 12) return path;
    id = id * 10 + (path[digits] - '0');
    ++digits;
  }
  if (digits == i || (path[digits] != '\0' && path[digits] != '/')) return path;
  long inner = map.ToInner(id);
  if (inner == id) return path;
  char number[24];
  size_t n = 0;
  if (inner == self_inner) {
    const char self[] = "fles";  // "self", written backwards like the digits below
    for (const char* c = self; *c != '\0'; ++c) number[n++] = *c;
  } else {
    for (long v = inner; v > 0; v /= 10) number[n++] = static_cast<char>('0' + v % 10);
  }
  size_t k = 0;
  for (; k < i; ++k) out[k] = prefix[k];
  while (n > 0) out[k++] = number[--n];
  for (const char* rest = path + digits; *rest != '\0'; ++rest) {
    if (k + 1 >= kProcPathMax) return path;
    out[k++] = *rest;
  }
  out[k] = '\0';
  return out;
}

}  // namespace homeward::preload
