// mosrun's side of an interactive job: see mosrun_terminal.h.
#include "mosrun_terminal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace homeward {
namespace {

// The modes to give back if mosrun dies of a fault while the terminal is raw: a signal
// handler can reach only what is static (one per process, set while raw).
termios g_saved_modes;
volatile sig_atomic_t g_raw = 0;

void RestoreAndDie(int sig) {
  if (g_raw) tcsetattr(0, TCSADRAIN, &g_saved_modes);
  signal(sig, SIG_DFL);
  raise(sig);
}

bool SameTerminal(int fd, const struct stat& terminal) {
  struct stat st;
  return isatty(fd) && fstat(fd, &st) == 0 && st.st_rdev == terminal.st_rdev;
}

}  // namespace

std::optional<UserTerminal> UserTerminal::Open() {
  struct stat terminal;
  termios modes;
  if (!isatty(0) || fstat(0, &terminal) != 0 || !SameTerminal(1, terminal) ||
      tcgetattr(0, &modes) != 0) {
    return std::nullopt;
  }
  // A fault in mosrun must not leave the user's terminal raw.
  struct sigaction action = {};
  action.sa_handler = RestoreAndDie;
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(sig, &action, nullptr);
  return UserTerminal(modes, SameTerminal(2, terminal));
}

UserTerminal::UserTerminal(UserTerminal&& other) noexcept
    : saved_(other.saved_), stderr_too_(other.stderr_too_), raw_(other.raw_) {
  other.owner_ = false;
}

UserTerminal::~UserTerminal() {
  if (owner_) Restore();
}

std::string UserTerminal::EnvEntry() const {
  return std::string(terminal::kEnvName) + (stderr_too_ ? "=0,1,2" : "=0,1");
}

std::string UserTerminal::InitialFrames() const {
  std::string frames;
  std::string modes = terminal::EncodeModes(saved_);
  terminal::AppendFrame(frames, terminal::FrameType::kModes, modes.data(), modes.size());
  frames += WindowFrame();
  return frames;
}

std::string UserTerminal::WindowFrame() const {
  winsize size{};
  if (ioctl(0, TIOCGWINSZ, &size) != 0) return {};
  std::string payload = terminal::EncodeWindow(size);
  std::string frame;
  terminal::AppendFrame(frame, terminal::FrameType::kWindow, payload.data(), payload.size());
  return frame;
}

std::string UserTerminal::DataFrame(const char* data, size_t size) {
  std::string frame;
  terminal::AppendFrame(frame, terminal::FrameType::kData, data, size);
  return frame;
}

bool UserTerminal::Foreground() const {
  pid_t group = tcgetpgrp(0);
  // Not mosrun's controlling terminal (mosrun in a session of its own): no job control
  // applies to it, and it is mosrun's to read.
  if (group < 0) return errno == ENOTTY;
  return group == getpgrp();
}

void UserTerminal::EnterRaw() {
  if (raw_ || !Foreground()) return;
  termios raw = saved_;
  raw.c_iflag &=
      ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXANY | IXOFF);
  raw.c_oflag &= ~OPOST;  // the job's terminal does the output processing
  raw.c_lflag &= ~(ECHO | ECHOE | ECHOK | ECHONL | ICANON | ISIG | IEXTEN);
  raw.c_cc[VMIN] = 1;
  raw.c_cc[VTIME] = 0;
  g_saved_modes = saved_;
  if (tcsetattr(0, TCSADRAIN, &raw) != 0) return;
  raw_ = true;
  g_raw = 1;
}

void UserTerminal::Restore() {
  if (!raw_) return;
  g_raw = 0;
  raw_ = false;
  // Not while in the background: tcsetattr would stop mosrun with SIGTTOU. The modes
  // were raw only while mosrun had the foreground, and a shell that took it away (a
  // stopped job) set its own modes.
  if (Foreground()) tcsetattr(0, TCSADRAIN, &saved_);
}

void UserTerminal::Output(const char* data, size_t size,
                          const std::function<void(const char*, size_t)>& write,
                          const std::function<void(int)>& stopped) {
  output_.Feed(data, size);
  while (auto frame = output_.Next()) {
    if (frame->type == terminal::FrameType::kData) {
      write(frame->payload.data(), frame->payload.size());
    } else if (frame->type == terminal::FrameType::kStopped && frame->payload.size() == 1) {
      stopped(static_cast<unsigned char>(frame->payload[0]));
    }
  }
}

void StopForJobControl(UserTerminal& terminal, int sig) {
  terminal.Restore();
  // By the job's own signal, so that the shell says why ("Stopped (tty input)").
  kill(0, sig == SIGTTIN || sig == SIGTTOU ? sig : SIGTSTP);
  // Continued (SIGCONT is blocked and read from mosrun's signalfd; it continues the process
  // all the same): take it off, the caller continues the job.
  sigset_t cont;
  sigemptyset(&cont);
  sigaddset(&cont, SIGCONT);
  sigset_t pending;
  if (sigpending(&pending) == 0 && sigismember(&pending, SIGCONT)) {
    timespec now{0, 0};
    sigtimedwait(&cont, nullptr, &now);
  }
}

}  // namespace homeward
