// /proc path translation; see proc_path.h.
#include "proc_path.h"

namespace homeward::preload {
namespace {

// Parses the decimal component at `path + at` (ended by '\0' or '/'); its end, or `at`
// when it is not one.
size_t Component(const char* path, size_t at, long* id) {
  size_t end = at;
  long value = 0;
  while (path[end] >= '0' && path[end] <= '9') {
    if (end - at > 12) return at;
    value = value * 10 + (path[end] - '0');
    ++end;
  }
  if (end == at || (path[end] != '\0' && path[end] != '/')) return at;
  *id = value;
  return end;
}

bool Follows(const char* path, size_t at, const char* word) {
  for (; *word != '\0'; ++word, ++at) {
    if (path[at] != *word) return false;
  }
  return true;
}

// Appends `v` (> 0) to `out` at `*k`.
void PutNumber(char* out, size_t* k, long v) {
  char digits[24];
  size_t n = 0;
  for (; v > 0; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
  while (n > 0) out[(*k)++] = digits[--n];
}

}  // namespace

const char* TranslateProcPath(const PidMap& map, const char* path, char* out, long self_inner) {
  if (path == nullptr) return path;
  const char prefix[] = "/proc/";
  const size_t start = sizeof(prefix) - 1;
  if (!Follows(path, 0, prefix)) return path;
  // "/proc/<id>" or "/proc/self", then optionally "/task/<tid>".
  long id = 0;
  size_t id_end = Component(path, start, &id);
  bool self = id_end == start && Follows(path, start, "self") &&
              (path[start + 4] == '\0' || path[start + 4] == '/');
  if (id_end == start && !self) return path;
  if (self) id_end = start + 4;
  long tid = 0;
  size_t tid_start = id_end + sizeof("/task/") - 1;
  size_t tid_end = Follows(path, id_end, "/task/") ? Component(path, tid_start, &tid) : 0;
  bool has_tid = tid_end > tid_start;
  long inner = self ? id : map.ToInner(id);
  long inner_tid = has_tid ? map.ToInner(tid) : tid;
  if (inner == id && inner_tid == tid) return path;
  size_t k = 0;
  for (; k < start; ++k) out[k] = prefix[k];
  if (self || inner == self_inner) {
    for (const char* c = "self"; *c != '\0'; ++c) out[k++] = *c;
  } else {
    PutNumber(out, &k, inner);
  }
  const char* rest = path + id_end;
  if (has_tid) {
    for (const char* c = "/task/"; *c != '\0'; ++c) out[k++] = *c;
    PutNumber(out, &k, inner_tid);
    rest = path + tid_end;
  }
  for (; *rest != '\0'; ++rest) {
    if (k + 1 >= kProcPathMax) return path;
    out[k++] = *rest;
  }
  out[k] = '\0';
  return out;
}

}  // namespace homeward::preload
