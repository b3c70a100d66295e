// SCM_CREDENTIALS in raw recvmsg/sendmsg system calls (a program that bypasses libc: the
// Go runtime, its own syscall stubs). A filter cannot look into a msghdr, and trapping
// every recvmsg and sendmsg would add a signal delivery to hot calls, so they are trapped
// only in a process that asks for credentials: the first SO_PASSCRED it sets (setsockopt
// is trapped for that option alone) stacks a second filter that traps recvmsg, recvmmsg,
// sendmsg and sendmmsg. Filters are inherited by children and across execve, so the
// process's descendants are armed too; a new image learns it is by a probe.
#pragma once

#include <sys/socket.h>

#include "home_ids.h"
#include "pid_map.h"

namespace homeward::preload {

// At start: true when the inherited filter already traps the credential calls.
bool ProbeCredentialTraps();

// Whether this process traps them (else a trap of one is a filter of the program's own).
bool CredentialTrapsArmed();

// setsockopt(SOL_SOCKET, SO_PASSCRED) made for the program; turning it on arms the traps.
long Setsockopt(const long a[6]);

// recvmsg, recvmmsg, sendmsg, sendmmsg trapped (armed), made with their credentials'
// pids translated: home ids received, inner ones sent.
long CredentialCall(const PidMap& map, long nr, const long a[6]);

// How many receives the SIGSYS handler has translated on this thread: libc's wrappers
// compare it before and after their call, so that a call that trapped is not translated
// twice (a process may be armed by another thread in the middle of the call).
unsigned TranslatedReceives();

// The credentials of messages sent with sendmmsg, made inner in the program's own control
// buffers (too many to copy) and put back after `send(count)` sent them. At most
// kSavedCredentials per call: the messages after are left for the program's next call,
// as a short count tells it.
inline constexpr int kSavedCredentials = 64;

template <typename Send>
long SendmmsgInner(const PidMap& map, mmsghdr* messages, unsigned int count, Send send) {
  ucred* where[kSavedCredentials];
  pid_t was[kSavedCredentials];
  int saved = 0;
  unsigned int sent = 0;  // the messages whose credentials all fit
  for (; messages != nullptr && sent < count; ++sent) {
    int before = saved;
    bool fits = true;
    ForEachCredential(&messages[sent].msg_hdr, [&](ucred* cred) {
      if (saved == kSavedCredentials) {
        fits = false;
        return;
      }
      where[saved] = cred;
      was[saved++] = cred->pid;
    });
    if (!fits) {
      saved = before;
      break;
    }
  }
  // A first message with more than kSavedCredentials goes alone, as it is.
  if (sent == 0 && count > 0) sent = 1;
  for (int i = 0; i < saved; ++i) where[i]->pid = static_cast<pid_t>(map.ToInner(was[i]));
  long result = send(sent);
  for (int i = 0; i < saved; ++i) where[i]->pid = was[i];
  return result;
}

}  // namespace homeward::preload
