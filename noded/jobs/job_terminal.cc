// The pseudo-terminal of an interactive job: see job_terminal.h.
#include "job_terminal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>

#include "job_view.h"

namespace homeward::job_init {
namespace {

constexpr int kStdin = 0;
constexpr int kStdout = 1;
// How much the relay holds in each direction before it stops reading: the pipes and the
// terminal's own buffers hold the rest, so back-pressure reaches mosrun and the program.
constexpr size_t kHeld = 64 * 1024;

}  // namespace

TerminalRelay TerminalRelay::Open(uid_t uid) {
  // The job's own devpts instance (its view's /dev/pts): the slave is /dev/pts/N to the
  // program, and a restore into a fresh instance gets the same index back.
  std::string ptmx = std::string(kJobView) + "/dev/pts/ptmx";
  int master = open(ptmx.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
  if (master < 0) Die("open the job's terminal " + ptmx);
  int unlock = 0;
  if (ioctl(master, TIOCSPTLCK, &unlock) != 0) Die("unlock the job's terminal");
  int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (slave < 0) Die("open the job's terminal's slave");
  // The user's own, as a login's terminal is (mesg, write and ttyname look at it).
  if (fchown(slave, uid, static_cast<gid_t>(-1)) != 0 || fchmod(slave, 0620) != 0) {
    Die("give the job's terminal to its user");
  }
  return TerminalRelay(master, slave);
}

void TerminalRelay::TakeAsControllingTerminal() {
  if (ioctl(slave_, TIOCSCTTY, 0) != 0) Die("take the job's terminal as the session's");
}

const char* TerminalRelay::AttachProgram(bool stderr_too) {
  // A process group of its own in the init's session, in the terminal's foreground (the
  // init's signals are still blocked here, so tcsetpgrp from the background does not stop
  // it with SIGTTOU).
  if (setpgid(0, 0) != 0) return "start a process group";
  if (tcsetpgrp(slave_, getpid()) != 0) return "take the terminal's foreground";
  if (dup2(slave_, kStdin) < 0 || dup2(slave_, kStdout) < 0) return "attach the terminal";
  if (stderr_too && dup2(slave_, 2) < 0) return "attach the terminal";
  close(slave_);
  close(master_);
  return nullptr;
}

void TerminalRelay::CloseSlave() {
  if (slave_ >= 0) close(slave_);
  slave_ = -1;
}

int TerminalRelay::Prepare(pollfd* fds) {
  int count = 0;
  if (stdin_open_ && to_master_.size() < kHeld) fds[count++] = {kStdin, POLLIN, 0};
  short master_events = 0;
  if (master_open_ && to_output_.size() < kHeld) master_events |= POLLIN;
  if (master_open_ && !to_master_.empty()) master_events |= POLLOUT;
  if (master_events) fds[count++] = {master_, master_events, 0};
  if (output_open_ && !to_output_.empty()) fds[count++] = {kStdout, POLLOUT, 0};
  return count;
}

void TerminalRelay::Handle(const pollfd* fds, int count) {
  for (int i = 0; i < count; ++i) {
    if (!fds[i].revents) continue;
    if (fds[i].fd == kStdin) ReadInput();
    if (fds[i].fd == master_) {
      if (fds[i].revents & POLLOUT) WriteMaster();
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) ReadMaster();
    }
    if (fds[i].fd == kStdout) WriteOutput();
  }
}

void TerminalRelay::ReadInput() {
  char buffer[16 * 1024];
  ssize_t n = read(kStdin, buffer, sizeof buffer);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    // The user's terminal is gone (mosrun read its end): mosrun's SIGHUP, forwarded, is
    // what the job hears of it, as at home.
    stdin_open_ = false;
    return;
  }
  input_.Feed(buffer, static_cast<size_t>(n));
  while (auto frame = input_.Next()) {
    switch (frame->type) {
      case terminal::FrameType::kData:
        to_master_.append(frame->payload);
        break;
      case terminal::FrameType::kModes:
        if (auto modes = terminal::DecodeModes(frame->payload)) {
          tcsetattr(master_, TCSANOW, &*modes);
          modes_set_ = true;
        }
        break;
      case terminal::FrameType::kWindow:
        // On the master, the slave's size: the kernel sends SIGWINCH to the terminal's
        // foreground process group when it changes.
        if (auto size = terminal::DecodeWindow(frame->payload)) {
          ioctl(master_, TIOCSWINSZ, &*size);
        }
        break;
      default:
        break;  // a later version's
    }
  }
  if (input_.failed()) stdin_open_ = false;  // not a terminal stream: nothing more is read
  if (!to_master_.empty()) WriteMaster();
}

void TerminalRelay::WriteMaster() {
  while (!to_master_.empty()) {
    ssize_t n = write(master_, to_master_.data(), to_master_.size());
    if (n > 0) {
      to_master_.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    to_master_.clear();  // no process holds the slave: typed bytes go nowhere, as at home
    return;
  }
}

void TerminalRelay::ReadMaster() {
  char buffer[16 * 1024];
  for (;;) {
    ssize_t n = read(master_, buffer, sizeof buffer);
    if (n > 0) {
      terminal::AppendFrame(to_output_, terminal::FrameType::kData, buffer, static_cast<size_t>(n));
      if (to_output_.size() >= kHeld) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // EIO: every process of the job has closed the slave.
    master_open_ = false;
    break;
  }
  if (!to_output_.empty()) WriteOutput();
}

void TerminalRelay::WriteOutput() {
  // The stdout pipe is blocking (it is the daemon's to make, and CRIU gives a restored job
  // a fresh one): after POLLOUT a pipe takes PIPE_BUF bytes without blocking.
  pollfd ready = {kStdout, POLLOUT, 0};
  while (output_open_ && !to_output_.empty() && poll(&ready, 1, 0) == 1) {
    if (ready.revents & (POLLERR | POLLHUP)) {
      output_open_ = false;
      to_output_.clear();
      break;
    }
    size_t size = std::min<size_t>(to_output_.size(), PIPE_BUF);
    ssize_t n = write(kStdout, to_output_.data(), size);
    if (n > 0) {
      to_output_.erase(0, static_cast<size_t>(n));
    } else if (n < 0 && errno != EINTR && errno != EAGAIN) {
      output_open_ = false;  // EPIPE: the daemon's end is gone; the job runs on
      to_output_.clear();
    }
  }
}

void TerminalRelay::Stopped(int sig) {
  char byte = static_cast<char>(sig);
  terminal::AppendFrame(to_output_, terminal::FrameType::kStopped, &byte, 1);
  WriteOutput();
}

void TerminalRelay::ContinueForeground() {
  pid_t group = 0;
  if (ioctl(master_, TIOCGPGRP, &group) == 0 && group > 1) kill(-group, SIGCONT);
}

void TerminalRelay::Flush() {
  if (master_open_) ReadMaster();
  while (output_open_ && !to_output_.empty()) {
    pollfd ready = {kStdout, POLLOUT, 0};
    if (poll(&ready, 1, -1) < 0 && errno != EINTR) break;
    WriteOutput();
    if (master_open_ && to_output_.size() < kHeld) ReadMaster();
  }
}

}  // namespace homeward::job_init
