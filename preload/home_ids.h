// The pids the kernel writes into memory rather than returns: a signal's sender (siginfo,
// signalfd), a unix socket's peer (SCM_CREDENTIALS), and the id fields of /proc/<pid>/status
// and /proc/<pid>/stat. Each is translated here from the job's namespace to its home ids, as
// getpid's result is (pid_map.h). Pure functions: no allocation, no library calls, safe in
// a signal handler; shared by the wrappers, the SIGSYS handler and the unit tests.
#pragma once

#include <sys/signalfd.h>
#include <sys/socket.h>

#include <csignal>
#include <cstddef>

#include "pid_map.h"

namespace homeward::preload {

// True when a siginfo of signal `signo` with code `code` carries a sender's (or a child's)
// pid in si_pid. Other codes use the same bytes for something else (a fault address, a
// timer id, a file descriptor), which must be left alone.
constexpr bool CarriesPid(int signo, int code) {
  switch (code) {
    case SI_USER:
    case SI_QUEUE:
    case SI_TKILL:
    case SI_MESGQ:
      return true;
    default:
      return signo == SIGCHLD && code >= CLD_EXITED && code <= CLD_CONTINUED;
  }
}

// si_pid as the home knows it. A sender outside the job's pid namespace is 0 there, as
// for any process of a pid namespace, and stays 0.
void SiginfoToHome(const PidMap& map, siginfo_t* info);

// The other way, for a siginfo the program hands to rt_sigqueueinfo: libc fills si_pid with
// getpid(), a home id, and the kernel passes it on as it is; made inner here, it comes out
// home on the receiving side like any other sender's.
void SiginfoToInner(const PidMap& map, siginfo_t* info);

// Each record of a signalfd read (`size` bytes).
void SignalfdToHome(const PidMap& map, signalfd_siginfo* records, size_t size);

// Calls `fn` with each control message of `msg` of SOL_SOCKET and `type` whose data holds
// at least `min_data` bytes, walked by hand (CMSG_NXTHDR may be a libc call); stops at a
// malformed length.
template <typename Fn>
void ForEachSocketControl(msghdr* msg, int type, size_t min_data, Fn fn) {
  if (msg == nullptr || msg->msg_control == nullptr) return;
  auto* at = static_cast<char*>(msg->msg_control);
  char* end = at + msg->msg_controllen;
  while (static_cast<size_t>(end - at) >= sizeof(cmsghdr)) {
    auto* header = reinterpret_cast<cmsghdr*>(at);
    if (header->cmsg_len < sizeof(cmsghdr) || header->cmsg_len > static_cast<size_t>(end - at)) {
      return;
    }
    if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == type &&
        header->cmsg_len >= CMSG_LEN(min_data)) {
      fn(header);
    }
    at += CMSG_ALIGN(header->cmsg_len);
  }
}

// Calls `fn` with each SCM_CREDENTIALS of `msg`.
template <typename Fn>
void ForEachCredential(msghdr* msg, Fn fn) {
  ForEachSocketControl(msg, SCM_CREDENTIALS, sizeof(ucred), [&](cmsghdr* header) {
    fn(reinterpret_cast<ucred*>(CMSG_DATA(header)));
  });
}

// The pid of every SCM_CREDENTIALS message among `msg`'s control messages, to home ids
// (received) or to inner pids (sent: the kernel checks the sender named itself).
void CredentialsToHome(const PidMap& map, msghdr* msg);
void CredentialsToInner(const PidMap& map, msghdr* msg);

// At start, marks the descriptors inherited through execve that are signalfds, so that
// their reads are translated as those of the image that made them (id_wrappers.cc).
void MarkInheritedSignalfds();

// Marks the signalfds among the descriptors `msg` received (SCM_RIGHTS), whichever
// process made them (id_wrappers.cc).
void MarkReceivedSignalfds(msghdr* msg);

// A lock owner's pid (F_GETLK's l_pid) to a home id. A value already in the job's block
// of home ids (one the home's file service answered with) is kept.
constexpr long LockOwnerToHome(const PidMap& map, long pid) {
  if (pid > map.base && pid < map.base + kPidSpan) return pid;
  return map.ToHome(pid);
}

// Which of the /proc files with ids `path` names: /proc/{self,thread-self,<pid>}/ and
// optionally task/<tid>/, then "status" or "stat".
enum class ProcIdFile { kNone, kStatus, kStat };
ProcIdFile ClassifyProcIdFile(const char* path);

// Rewrites the text of a /proc status or stat file (`in`, `size` bytes) into `out`
// (`capacity` bytes) with its ids as the home's: Pid, PPid, Tgid and TracerPid as home ids,
// NSpid, NStgid, NSpgid and NSsid as the one home id (the node's namespaces are hidden);
// stat's pid, ppid, pgrp, session and tpgid fields. Returns the length written, or -1
// when it does not fit.
long RewriteProcIdFile(const PidMap& map, ProcIdFile kind, const char* in, size_t size, char* out,
                       size_t capacity);

}  // namespace homeward::preload
