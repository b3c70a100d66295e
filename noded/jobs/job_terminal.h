// The pseudo-terminal of an interactive job (mosrun on a terminal), as mosjob-init keeps it.
//
// The pair lives inside the job: the init opens the master in the job's own devpts
// instance and takes the slave as its session's controlling terminal, and the program runs
// in a process group of its own in the terminal's foreground, so CRIU dumps and restores
// both ends with the job. Why the program's group is in the init's session and not a
// session of its own: a session leader's group whose parent is outside the session is
// orphaned, and the kernel discards ^Z's SIGTSTP for an orphaned group (a login shell
// ignores it for that reason); with the init, in another group of the same session, as
// its parent, the program stops on ^Z as under a shell, and the init, its parent, sees it. The init relays between the master and the
// job's stdin and stdout pipes, which carry the terminal stream (utils/lib/terminal_stream.h):
// typed bytes, the user's modes and window size in; the terminal's output and the
// program's job-control stops out.
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <string>

#include "terminal_stream.h"

namespace homeward::job_init {

class TerminalRelay {
 public:
  // Opens the pair in the job's view (its devpts), the slave owned by `uid`. Dies on failure.
  static TerminalRelay Open(uid_t uid);

  TerminalRelay(const TerminalRelay&) = delete;
  TerminalRelay& operator=(const TerminalRelay&) = delete;
  TerminalRelay(TerminalRelay&&) = default;

  // In the init, before the program starts: the slave becomes the controlling terminal
  // of the init's session. Dies on failure.
  void TakeAsControllingTerminal();
  // In the program's process, before it is confined: a process group of its own, the
  // terminal's foreground, and the slave on stdin and stdout (and stderr when
  // `stderr_too`). The failed step, or nullptr.
  const char* AttachProgram(bool stderr_too);
  // In the init once the program runs: the init keeps only the master.
  void CloseSlave();

  // The program may start: the user's modes have come (or the input has ended).
  bool ready() const { return modes_set_ || !stdin_open_; }

  // The descriptors to poll now, at most kPollFds, and what came of the poll.
  static constexpr int kPollFds = 3;
  int Prepare(pollfd* fds);
  void Handle(const pollfd* fds, int count);

  // The program stopped for job control by `sig`: mosrun is told, to stop too.
  void Stopped(int sig);
  // SIGCONT for the job: the terminal's foreground process group is continued too (a
  // shell's `fg` continues a whole process group).
  void ContinueForeground();
  // Before the init reports the job's end: what the terminal still holds of the job's
  // output, and all that waits for stdout, is written.
  void Flush();

 private:
  TerminalRelay(int master, int slave) : master_(master), slave_(slave) {}
  void ReadInput();
  void ReadMaster();
  void WriteMaster();
  void WriteOutput();

  int master_;
  int slave_;
  terminal::FrameReader input_;
  std::string to_master_;  // typed bytes the terminal has not taken yet
  std::string to_output_;  // frames for the stdout pipe
  bool stdin_open_ = true;
  bool master_open_ = true;  // false once no process holds the slave (reads fail)
  bool output_open_ = true;
  bool modes_set_ = false;
};

}  // namespace homeward::job_init
