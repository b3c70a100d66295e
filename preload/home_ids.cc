// Pids in memory, to the home's; see home_ids.h.
#include "home_ids.h"

namespace homeward::preload {
namespace {

bool StartsWith(const char* s, const char* prefix, const char** rest) {
  while (*prefix != '\0') {
    if (*s++ != *prefix++) return false;
  }
  *rest = s;
  return true;
}

// Skips "<digits>/" at `s`; null when it is not there.
const char* Number(const char* s) {
  const char* start = s;
  while (*s >= '0' && *s <= '9') ++s;
  if (s == start || *s != '/') return nullptr;
  return s + 1;
}

bool Equal(const char* a, const char* b) {
  while (*a != '\0' && *a == *b) {
    ++a;
    ++b;
  }
  return *a == *b;
}

// Output with a bound: every write checks the room left.
struct Out {
  char* at;
  char* end;
  bool full = false;
  void Put(char c) {
    if (at < end) {
      *at++ = c;
    } else {
      full = true;
    }
  }
  void Put(const char* s, size_t n) {
    for (size_t i = 0; i < n; ++i) Put(s[i]);
  }
  void Number(long v) {
    if (v < 0) {
      Put('-');
      v = -v;
    }
    char digits[24];
    int n = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v > 0);
    while (n > 0) Put(digits[--n]);
  }
};

// Parses a (possibly negative) decimal number at `*s`, moving `*s` past it.
bool ParseNumber(const char** s, const char* end, long* value) {
  const char* p = *s;
  bool negative = p < end && *p == '-';
  if (negative) ++p;
  const char* digits = p;
  long v = 0;
  while (p < end && *p >= '0' && *p <= '9' && p - digits < 19) v = v * 10 + (*p++ - '0');
  if (p == digits) return false;
  *value = negative ? -v : v;
  *s = p;
  return true;
}

long RewriteStatus(const PidMap& map, const char* in, const char* end, Out& out) {
  // One id as the home's; the NS lists (one entry per pid namespace from the /proc's own
  // down to the process's) become the one home id: the innermost is the job's.
  constexpr const char* kOne[] = {"Pid", "PPid", "Tgid", "TracerPid"};
  constexpr const char* kList[] = {"NSpid", "NStgid", "NSpgid", "NSsid"};
  const char* line = in;
  while (line < end) {
    const char* eol = line;
    while (eol < end && *eol != '\n') ++eol;
    const char* colon = line;
    while (colon < eol && *colon != ':') ++colon;
    char key[16];
    size_t key_length = static_cast<size_t>(colon - line);
    bool one = false;
    bool list = false;
    if (colon < eol && key_length < sizeof(key)) {
      for (size_t i = 0; i < key_length; ++i) key[i] = line[i];
      key[key_length] = '\0';
      for (const char* k : kOne) one = one || Equal(key, k);
      for (const char* k : kList) list = list || Equal(key, k);
    }
    if (one || list) {
      const char* p = colon + 1;
      long last = 0;
      bool any = false;
      while (p < eol) {
        while (p < eol && (*p == ' ' || *p == '\t')) ++p;
        long value;
        if (p < eol && ParseNumber(&p, eol, &value)) {
          last = value;
          any = true;
        } else {
          break;
        }
      }
      if (any) {
        out.Put(line, static_cast<size_t>(colon - line) + 1);
        out.Put('\t');
        out.Number(map.ToHome(last));
        out.Put('\n');
        line = eol + 1;
        continue;
      }
    }
    out.Put(line, static_cast<size_t>(eol - line));
    if (eol < end) out.Put('\n');
    line = eol + 1;
  }
  return 0;
}

long RewriteStat(const PidMap& map, const char* in, const char* end, Out& out) {
  // "pid (comm) state ppid pgrp session tty_nr tpgid ...": comm may hold spaces and
  // parentheses, so the fields after it start at the last ')'.
  const char* close = nullptr;
  for (const char* p = in; p < end; ++p) {
    if (*p == ')') close = p;
  }
  const char* p = in;
  long pid;
  if (close == nullptr || !ParseNumber(&p, close, &pid)) {
    out.Put(in, static_cast<size_t>(end - in));
    return 0;
  }
  out.Number(map.ToHome(pid));
  out.Put(p, static_cast<size_t>(close + 1 - p));
  p = close + 1;
  // Fields after comm, counted from 1: state, ppid, pgrp, session, tty_nr, tpgid.
  int field = 0;
  while (p < end) {
    if (*p == ' ') {
      out.Put(*p++);
      continue;
    }
    ++field;
    const char* start = p;
    long value;
    bool id = field == 2 || field == 3 || field == 4 || field == 6;
    if (id && ParseNumber(&p, end, &value) && (p == end || *p == ' ' || *p == '\n')) {
      out.Number(map.ToHome(value));
    } else {
      p = start;
      while (p < end && *p != ' ') out.Put(*p++);
    }
    if (field >= 6) {
      out.Put(p, static_cast<size_t>(end - p));
      break;
    }
  }
  return 0;
}

}  // namespace

void SiginfoToHome(const PidMap& map, siginfo_t* info) {
  if (info == nullptr || !CarriesPid(info->si_signo, info->si_code)) return;
  info->si_pid = static_cast<pid_t>(map.ToHome(info->si_pid));
}

void SiginfoToInner(const PidMap& map, siginfo_t* info) {
  if (info == nullptr || !CarriesPid(info->si_signo, info->si_code)) return;
  info->si_pid = static_cast<pid_t>(map.ToInner(info->si_pid));
}

void SignalfdToHome(const PidMap& map, signalfd_siginfo* records, size_t size) {
  for (size_t i = 0; i < size / sizeof(signalfd_siginfo); ++i) {
    signalfd_siginfo& r = records[i];
    if (CarriesPid(static_cast<int>(r.ssi_signo), r.ssi_code)) {
      r.ssi_pid = static_cast<uint32_t>(map.ToHome(static_cast<long>(r.ssi_pid)));
    }
  }
}

void CredentialsToHome(const PidMap& map, msghdr* msg) {
  ForEachCredential(msg,
                    [&](ucred* cred) { cred->pid = static_cast<pid_t>(map.ToHome(cred->pid)); });
}

void CredentialsToInner(const PidMap& map, msghdr* msg) {
  ForEachCredential(msg,
                    [&](ucred* cred) { cred->pid = static_cast<pid_t>(map.ToInner(cred->pid)); });
}

ProcIdFile ClassifyProcIdFile(const char* path) {
  if (path == nullptr) return ProcIdFile::kNone;
  const char* rest;
  if (!StartsWith(path, "/proc/", &rest)) return ProcIdFile::kNone;
  const char* after;
  if (StartsWith(rest, "self/", &after) || StartsWith(rest, "thread-self/", &after)) {
    rest = after;
  } else if ((after = Number(rest)) != nullptr) {
    rest = after;
  } else {
    return ProcIdFile::kNone;
  }
  if (StartsWith(rest, "task/", &after)) {
    rest = Number(after);
    if (rest == nullptr) return ProcIdFile::kNone;
  }
  if (Equal(rest, "status")) return ProcIdFile::kStatus;
  if (Equal(rest, "stat")) return ProcIdFile::kStat;
  return ProcIdFile::kNone;
}

long RewriteProcIdFile(const PidMap& map, ProcIdFile kind, const char* in, size_t size, char* out,
                       size_t capacity) {
  Out writer{out, out + capacity};
  if (kind == ProcIdFile::kStatus) {
    RewriteStatus(map, in, in + size, writer);
  } else if (kind == ProcIdFile::kStat) {
    RewriteStat(map, in, in + size, writer);
  } else {
    writer.Put(in, size);
  }
  if (writer.full) return -1;
  return writer.at - out;
}

}  // namespace homeward::preload
