// Credentials in raw recvmsg/sendmsg; see credentials.h. Runs in the SIGSYS handler:
// raw calls only, nothing allocates.
#include "credentials.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/syscall.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

#include "raw_syscall.h"

namespace homeward::preload {
namespace {

std::atomic<bool> g_armed{false};
__attribute__((tls_model("initial-exec"))) thread_local unsigned t_translated_receives = 0;

constexpr unsigned kArgLow = offsetof(seccomp_data, args[5]);
constexpr unsigned kArgHigh = kArgLow + 4;

// Stacks the filter that traps the four credential calls unless they carry the magic.
// Written by hand: libseccomp allocates, and this runs in the handler.
long InstallCredentialFilter() {
  const uint32_t low = static_cast<uint32_t>(kSyscallMagic);
  const uint32_t high = static_cast<uint32_t>(kSyscallMagic >> 32);
  sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 5),  // else allow (7)
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_recvmsg, 4, 0),  // to the magic check (8)
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_recvmmsg, 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendmsg, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sendmmsg, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kArgLow),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, low, 0, 3),  // else trap (13)
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, kArgHigh),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, high, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
  };
  sock_fprog program = {static_cast<unsigned short>(sizeof(code) / sizeof(code[0])), code};
  // The shim's first filter set no_new_privs, which an unprivileged filter needs.
  return RawSyscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                    reinterpret_cast<long>(&program));
}

void Arm() {
  if (g_armed.exchange(true)) return;
  // Unarmed, libc's wrappers go on translating: only the raw calls stay inner.
  if (InstallCredentialFilter() != 0) g_armed.store(false);
}

long Sendmsg(const PidMap& map, const long a[6]) {
  auto* msg = reinterpret_cast<const msghdr*>(a[1]);
  alignas(cmsghdr) char control[1024];
  if (msg == nullptr || msg->msg_control == nullptr || msg->msg_controllen > sizeof(control)) {
    return RawSyscall(SYS_sendmsg, a[0], a[1], a[2]);
  }
  msghdr copy = *msg;
  const auto* from = static_cast<const char*>(msg->msg_control);
  for (size_t i = 0; i < msg->msg_controllen; ++i) control[i] = from[i];
  copy.msg_control = control;
  CredentialsToInner(map, &copy);
  return RawSyscall(SYS_sendmsg, a[0], reinterpret_cast<long>(&copy), a[2]);
}

}  // namespace

bool ProbeCredentialTraps() {
  bool armed = RawSyscall6(SYS_recvmsg, -1, 0, 0, 0, 0, kProbe) == kProbeAnswer;
  if (armed) g_armed.store(true);
  return armed;
}

bool CredentialTrapsArmed() {
  return g_armed.load(std::memory_order_relaxed);
}

long Setsockopt(const long a[6]) {
  long result = RawSyscall(SYS_setsockopt, a[0], a[1], a[2], a[3], a[4]);
  // The kernel read the value, so the pointer is good.
  if (result == 0 && a[3] != 0 && a[4] >= static_cast<long>(sizeof(int)) &&
      *reinterpret_cast<const int*>(a[3]) != 0) {
    Arm();
  }
  return result;
}

long CredentialCall(const PidMap& map, long nr, const long a[6]) {
  switch (nr) {
    case SYS_recvmsg: {
      long result = RawSyscall(nr, a[0], a[1], a[2]);
      if (result >= 0) {
        CredentialsToHome(map, reinterpret_cast<msghdr*>(a[1]));
        MarkReceivedSignalfds(reinterpret_cast<msghdr*>(a[1]));
      }
      ++t_translated_receives;
      return result;
    }
    case SYS_recvmmsg: {
      long result = RawSyscall(nr, a[0], a[1], a[2], a[3], a[4]);
      auto* messages = reinterpret_cast<mmsghdr*>(a[1]);
      for (long i = 0; i < result && messages != nullptr; ++i) {
        CredentialsToHome(map, &messages[i].msg_hdr);
        MarkReceivedSignalfds(&messages[i].msg_hdr);
      }
      ++t_translated_receives;
      return result;
    }
    case SYS_sendmsg:
      return Sendmsg(map, a);
    case SYS_sendmmsg:
      return SendmmsgInner(
          map, reinterpret_cast<mmsghdr*>(a[1]), static_cast<unsigned>(a[2]),
          [&](unsigned int count) { return RawSyscall(SYS_sendmmsg, a[0], a[1], count, a[3]); });
    default:
      return -ENOSYS;
  }
}

unsigned TranslatedReceives() {
  return t_translated_receives;
}

}  // namespace homeward::preload
