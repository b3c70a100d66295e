// Pids the kernel writes into memory come out as the home's ids; the bytes around them,
// and fields that are no pid, are left alone.
#include "home_ids.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace homeward::preload {
namespace {

constexpr PidMap kMap{.home_pid = 31337, .home_ppid = 31000, .base = 5 * kPidSpan};
constexpr long kBase = 5 * kPidSpan;

std::string Rewrite(ProcIdFile kind, const std::string& in) {
  char out[8192];
  long n = RewriteProcIdFile(kMap, kind, in.data(), in.size(), out, sizeof(out));
  return n < 0 ? "<too long>" : std::string(out, static_cast<size_t>(n));
}

TEST(HomeIds, SiginfoOfASenderOrChildBecomesHome) {
  siginfo_t info = {};
  info.si_signo = SIGUSR1;
  info.si_code = SI_USER;
  info.si_pid = 7;
  SiginfoToHome(kMap, &info);
  EXPECT_EQ(info.si_pid, kBase + 7);

  info = {};
  info.si_signo = SIGCHLD;
  info.si_code = CLD_EXITED;
  info.si_pid = 2;
  SiginfoToHome(kMap, &info);
  EXPECT_EQ(info.si_pid, 31337);

  // A sender outside the job's pid namespace is 0, as in any pid namespace.
  info.si_pid = 0;
  info.si_code = SI_QUEUE;
  SiginfoToHome(kMap, &info);
  EXPECT_EQ(info.si_pid, 0);
}

TEST(HomeIds, SiginfoWithoutASenderIsLeftAlone) {
  siginfo_t info = {};
  info.si_signo = SIGSEGV;
  info.si_code = SEGV_MAPERR;
  info.si_addr = reinterpret_cast<void*>(0x1234);
  SiginfoToHome(kMap, &info);
  EXPECT_EQ(info.si_addr, reinterpret_cast<void*>(0x1234));
  info = {};
  info.si_signo = SIGALRM;
  info.si_code = SI_TIMER;
  info.si_pid = 3;  // the same bytes as the timer id
  SiginfoToHome(kMap, &info);
  EXPECT_EQ(info.si_pid, 3);
}

TEST(HomeIds, QueuedSiginfoGoesInnerThenComesBackHome) {
  siginfo_t info = {};
  info.si_signo = SIGUSR2;
  info.si_code = SI_QUEUE;
  info.si_pid = static_cast<pid_t>(kBase + 9);
  SiginfoToInner(kMap, &info);
  EXPECT_EQ(info.si_pid, 9);
  SiginfoToHome(kMap, &info);
  EXPECT_EQ(info.si_pid, kBase + 9);
}

TEST(HomeIds, SignalfdRecords) {
  signalfd_siginfo records[2] = {};
  records[0].ssi_signo = SIGUSR1;
  records[0].ssi_code = SI_USER;
  records[0].ssi_pid = 2;
  records[1].ssi_signo = SIGCHLD;
  records[1].ssi_code = CLD_KILLED;
  records[1].ssi_pid = 12;
  SignalfdToHome(kMap, records, sizeof(records));
  EXPECT_EQ(records[0].ssi_pid, 31337u);
  EXPECT_EQ(records[1].ssi_pid, static_cast<uint32_t>(kBase + 12));
}

TEST(HomeIds, CredentialsBothWays) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(ucred))] = {};
  msghdr msg = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* rights = CMSG_FIRSTHDR(&msg);
  rights->cmsg_level = SOL_SOCKET;
  rights->cmsg_type = SCM_RIGHTS;
  rights->cmsg_len = CMSG_LEN(sizeof(int));
  int fd = 5;
  memcpy(CMSG_DATA(rights), &fd, sizeof(fd));
  cmsghdr* creds = CMSG_NXTHDR(&msg, rights);
  creds->cmsg_level = SOL_SOCKET;
  creds->cmsg_type = SCM_CREDENTIALS;
  creds->cmsg_len = CMSG_LEN(sizeof(ucred));
  ucred cred = {.pid = 4, .uid = 1000, .gid = 1000};
  memcpy(CMSG_DATA(creds), &cred, sizeof(cred));
  CredentialsToHome(kMap, &msg);
  memcpy(&cred, CMSG_DATA(creds), sizeof(cred));
  EXPECT_EQ(cred.pid, kBase + 4);
  EXPECT_EQ(cred.uid, 1000u);
  memcpy(&fd, CMSG_DATA(rights), sizeof(fd));
  EXPECT_EQ(fd, 5);
  CredentialsToInner(kMap, &msg);
  memcpy(&cred, CMSG_DATA(creds), sizeof(cred));
  EXPECT_EQ(cred.pid, 4);
}

TEST(HomeIds, LockOwners) {
  EXPECT_EQ(LockOwnerToHome(kMap, 2), 31337);
  EXPECT_EQ(LockOwnerToHome(kMap, 5), kBase + 5);
  EXPECT_EQ(LockOwnerToHome(kMap, kBase + 5), kBase + 5);  // already the home's
  EXPECT_EQ(LockOwnerToHome(kMap, 0), 0);
  EXPECT_EQ(LockOwnerToHome(kMap, -1), -1);  // an open file description's lock
}

TEST(HomeIds, WhichProcFilesHoldIds) {
  EXPECT_EQ(ClassifyProcIdFile("/proc/self/status"), ProcIdFile::kStatus);
  EXPECT_EQ(ClassifyProcIdFile("/proc/thread-self/stat"), ProcIdFile::kStat);
  EXPECT_EQ(ClassifyProcIdFile("/proc/2/status"), ProcIdFile::kStatus);
  EXPECT_EQ(ClassifyProcIdFile("/proc/2/task/14/stat"), ProcIdFile::kStat);
  EXPECT_EQ(ClassifyProcIdFile("/proc/self/statm"), ProcIdFile::kNone);
  EXPECT_EQ(ClassifyProcIdFile("/proc/stat"), ProcIdFile::kNone);
  EXPECT_EQ(ClassifyProcIdFile("/proc/self/task/x/stat"), ProcIdFile::kNone);
  EXPECT_EQ(ClassifyProcIdFile("/data/proc/self/status"), ProcIdFile::kNone);
  EXPECT_EQ(ClassifyProcIdFile("/proc/self/status/"), ProcIdFile::kNone);
}

TEST(HomeIds, StatusShowsHomeIdsAndHidesTheNamespaces) {
  std::string in =
      "Name:\tprog\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t2\nNgid:\t0\nPid:\t2\n"
      "PPid:\t1\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\n"
      "NStgid:\t81234\t2\nNSpid:\t81234\t2\nNSpgid:\t81234\t2\nNSsid:\t81230\t1\n"
      "VmPeak:\t   1000 kB\n";
  std::string want =
      "Name:\tprog\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t31337\nNgid:\t0\nPid:\t31337\n"
      "PPid:\t31000\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\n"
      "NStgid:\t31337\nNSpid:\t31337\nNSpgid:\t31337\nNSsid:\t31000\n"
      "VmPeak:\t   1000 kB\n";
  EXPECT_EQ(Rewrite(ProcIdFile::kStatus, in), want);
}

TEST(HomeIds, StatFieldsAfterAnAwkwardName) {
  std::string in = "7 (a) b (c) S 2 7 1 34816 7 4194560 90 0 0 0\n";
  std::string want = "20971527 (a) b (c) S 31337 20971527 31000 34816 20971527 4194560 90 0 0 0\n";
  EXPECT_EQ(Rewrite(ProcIdFile::kStat, in), want);
  // A session leader with no terminal: tpgid -1 stays.
  EXPECT_EQ(Rewrite(ProcIdFile::kStat, "2 (sh) S 1 2 2 0 -1 0\n"),
            "31337 (sh) S 31000 31337 31337 0 -1 0\n");
}

TEST(HomeIds, TooSmallABufferSaysSo) {
  char out[4];
  std::string in = "Pid:\t2\n";
  EXPECT_EQ(RewriteProcIdFile(kMap, ProcIdFile::kStatus, in.data(), in.size(), out, sizeof(out)),
            -1);
}

}  // namespace
}  // namespace homeward::preload
