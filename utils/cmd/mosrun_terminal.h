// mosrun's side of an interactive job: the user's terminal, put in raw mode while the job
// has it and given back as it was, and the terminal stream to and from the job's
// pseudo-terminal (utils/lib/terminal_stream.h, noded/jobs/job_terminal.h).
#pragma once

#include <termios.h>

#include <functional>
#include <optional>
#include <string>

#include "terminal_stream.h"

namespace homeward {

class UserTerminal {
 public:
  // The terminal mosrun runs on, when its stdin and stdout are that terminal; nothing
  // otherwise (then the job's stdio stays pipes).
  static std::optional<UserTerminal> Open();
  ~UserTerminal();
  UserTerminal(UserTerminal&& other) noexcept;
  UserTerminal& operator=(UserTerminal&&) = delete;
  UserTerminal(const UserTerminal&) = delete;

  // HOMEWARD_TERMINAL=..., for the job's environment: which descriptors are the terminal.
  std::string EnvEntry() const;
  // The first input of the job: the user's modes and window size.
  std::string InitialFrames() const;
  // The window size now, after a SIGWINCH.
  std::string WindowFrame() const;
  static std::string DataFrame(const char* data, size_t size);

  // Whether mosrun is in the terminal's foreground process group: only then does it read
  // the terminal or change its modes (a background job that did would be stopped by
  // SIGTTIN or SIGTTOU, as at home).
  bool Foreground() const;
  // Raw mode while mosrun is in the foreground: every key goes to the job's terminal,
  // whose line discipline does what the user's would (echo, ^C, ^Z, ^\).
  void EnterRaw();
  // The user's modes back, as they were before mosrun.
  void Restore();

  // Output of the job (its stdout stream): the terminal's bytes are written to stdout;
  // `stopped(sig)` is called when the job's program stopped for job control.
  void Output(const char* data, size_t size, const std::function<void(const char*, size_t)>& write,
              const std::function<void(int)>& stopped);

 private:
  UserTerminal(const termios& saved, bool stderr_too) : saved_(saved), stderr_too_(stderr_too) {}

  termios saved_;
  bool stderr_too_;
  bool raw_ = false;
  bool owner_ = true;
  terminal::FrameReader output_;
};

// mosrun's own stop for job control, after the job's (by `sig`): the terminal is given back
// and mosrun's process group stops by the same signal (as the terminal would have stopped it
// at home),
// so that the shell sees a stopped job; returns once continued (fg, bg, or at once when
// the group is orphaned and the kernel does not stop it). The SIGCONT that continued it is
// taken off the pending signals: the caller continues the job itself.
void StopForJobControl(UserTerminal& terminal, int sig);

}  // namespace homeward
