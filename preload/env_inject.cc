// Environment injection for execve; see env_inject.h. Plain loops over C strings: this
// runs inside a signal handler, so no library call that might allocate or lock.
#include "env_inject.h"

#include <cstdint>

namespace homeward::preload {
namespace {

size_t Length(const char* s) {
  size_t n = 0;
  while (s[n] != '\0') ++n;
  return n;
}

// The length of "NAME=" in a "NAME=value" entry, or 0 if it has no '='.
size_t NameLength(const char* entry) {
  for (size_t i = 0; entry[i] != '\0'; ++i) {
    if (entry[i] == '=') return i + 1;
  }
  return 0;
}

bool SameName(const char* a, const char* b) {
  size_t n = NameLength(b);
  if (n == 0) return false;
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

bool IsLdPreload(const char* entry) {
  return SameName(entry, "LD_PRELOAD=");
}

// True when the whitespace- or colon-separated list `list` names `library`.
bool ListHas(const char* list, const char* library) {
  size_t want = Length(library);
  const char* p = list;
  while (*p != '\0') {
    while (*p == ' ' || *p == ':' || *p == '\t') ++p;
    const char* start = p;
    while (*p != '\0' && *p != ' ' && *p != ':' && *p != '\t') ++p;
    size_t len = static_cast<size_t>(p - start);
    if (len == want && len > 0) {
      size_t i = 0;
      while (i < len && start[i] == library[i]) ++i;
      if (i == len) return true;
    }
  }
  return false;
}

size_t Count(char* const* envp) {
  size_t n = 0;
  if (envp != nullptr) {
    while (envp[n] != nullptr) ++n;
  }
  return n;
}

// The program's own LD_PRELOAD entry, if any (the last one wins, as in ld.so).
const char* FindLdPreload(char* const* envp) {
  const char* found = nullptr;
  for (size_t i = 0; envp != nullptr && envp[i] != nullptr; ++i) {
    if (IsLdPreload(envp[i])) found = envp[i];
  }
  return found;
}

}  // namespace

size_t InjectEnvSize(char* const* envp, const char* const* entries, int count) {
  size_t pointers = Count(envp) + static_cast<size_t>(count) + 1;
  size_t bytes = pointers * sizeof(char*);
  const char* theirs = FindLdPreload(envp);
  if (theirs != nullptr) {
    for (int i = 0; i < count; ++i) {
      if (IsLdPreload(entries[i])) bytes += Length(entries[i]) + Length(theirs) + 2;
    }
  }
  return bytes;
}

char** InjectEnv(char* const* envp, const char* const* entries, int count, const char* library,
                 void* buffer, size_t size) {
  if (size < InjectEnvSize(envp, entries, count)) return nullptr;
  size_t n = Count(envp);
  char** out = static_cast<char**>(buffer);
  char* strings = reinterpret_cast<char*>(out + n + static_cast<size_t>(count) + 1);
  size_t used = 0;
  for (size_t i = 0; i < n; ++i) {
    bool replaced = false;
    for (int e = 0; e < count && !replaced; ++e) replaced = SameName(envp[i], entries[e]);
    if (!replaced) out[used++] = envp[i];
  }
  const char* theirs = FindLdPreload(envp);
  for (int e = 0; e < count; ++e) {
    const char* entry = entries[e];
    if (IsLdPreload(entry) && theirs != nullptr) {
      const char* their_list = theirs + NameLength(theirs);
      if (ListHas(their_list, library)) {
        entry = theirs;
      } else if (*their_list != '\0') {
        // "LD_PRELOAD=<shim>:<theirs>": the shim first, so its symbols win.
        char* merged = strings;
        size_t k = 0;
        for (const char* c = entry; *c != '\0'; ++c) merged[k++] = *c;
        merged[k++] = ':';
        for (const char* c = their_list; *c != '\0'; ++c) merged[k++] = *c;
        merged[k++] = '\0';
        strings += k;
        entry = merged;
      }
    }
    out[used++] = const_cast<char*>(entry);
  }
  out[used] = nullptr;
  return out;
}

}  // namespace homeward::preload
