// The terminal stream: what mosrun and the init of a job with a pseudo-terminal say to each
// other over the job's stdin and stdout pipes. The daemons relay those bytes as they relay
// any job's stdio (offsets, moves, restarts), and know nothing of what is in them.
// Header only: mosjob-init links nothing of ours.
#pragma once

#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>

#include <optional>
#include <string>
#include <string_view>

namespace homeward::terminal {

// mosrun tells the init, by this variable in the job's environment, that the job is to get a
// pseudo-terminal; its value names what the terminal is: "0,1" (stdin and stdout) or
// "0,1,2" (stderr too). The init takes it out of the program's environment.
inline constexpr const char kEnvName[] = "HOMEWARD_TERMINAL";

// A frame: one byte of type, four of payload length (little-endian), the payload.
enum class FrameType : uint8_t {
  kData = 1,     // bytes typed at the user's terminal (to the job), or written by the job
  kModes = 2,    // the user's terminal modes (to the job), once before the program starts
  kWindow = 3,   // the user's window size (to the job), at start and on every SIGWINCH
  kStopped = 4,  // the job's program stopped for job control (from the job): the signal
};

inline constexpr size_t kHeaderBytes = 5;
// Larger frames are refused: the stream is not a terminal stream (or is damaged).
inline constexpr uint32_t kMaxPayload = 1 << 20;

inline void AppendFrame(std::string& out, FrameType type, const void* data, size_t size) {
  char header[kHeaderBytes] = {static_cast<char>(type), static_cast<char>(size & 0xff),
                               static_cast<char>((size >> 8) & 0xff),
                               static_cast<char>((size >> 16) & 0xff),
                               static_cast<char>((size >> 24) & 0xff)};
  out.append(header, kHeaderBytes);
  out.append(static_cast<const char*>(data), size);
}

inline void PutU32(std::string& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

inline uint32_t GetU32(std::string_view in, size_t at) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= uint32_t(static_cast<uint8_t>(in[at + i])) << (8 * i);
  return value;
}

// Modes as fields, not the struct's bytes, so that the layout is the stream's own.
inline std::string EncodeModes(const termios& modes) {
  std::string out;
  PutU32(out, modes.c_iflag);
  PutU32(out, modes.c_oflag);
  PutU32(out, modes.c_cflag);
  PutU32(out, modes.c_lflag);
  PutU32(out, static_cast<uint32_t>(cfgetispeed(&modes)));
  PutU32(out, static_cast<uint32_t>(cfgetospeed(&modes)));
  out.push_back(static_cast<char>(modes.c_line));
  out.append(reinterpret_cast<const char*>(modes.c_cc), NCCS);
  return out;
}

inline constexpr size_t kModesBytes = 6 * 4 + 1 + NCCS;

inline std::optional<termios> DecodeModes(std::string_view in) {
  if (in.size() != kModesBytes) return std::nullopt;
  termios modes{};
  cfsetispeed(&modes, static_cast<speed_t>(GetU32(in, 16)));
  cfsetospeed(&modes, static_cast<speed_t>(GetU32(in, 20)));
  // After the speeds, which glibc keeps in c_cflag too: the flags as they were.
  modes.c_iflag = GetU32(in, 0);
  modes.c_oflag = GetU32(in, 4);
  modes.c_cflag = GetU32(in, 8);
  modes.c_lflag = GetU32(in, 12);
  modes.c_line = static_cast<cc_t>(in[24]);
  memcpy(modes.c_cc, in.data() + 25, NCCS);
  return modes;
}

inline std::string EncodeWindow(const winsize& size) {
  std::string out;
  PutU32(out, size.ws_row);
  PutU32(out, size.ws_col);
  PutU32(out, size.ws_xpixel);
  PutU32(out, size.ws_ypixel);
  return out;
}

inline std::optional<winsize> DecodeWindow(std::string_view in) {
  if (in.size() != 16) return std::nullopt;
  winsize size{};
  size.ws_row = static_cast<unsigned short>(GetU32(in, 0));
  size.ws_col = static_cast<unsigned short>(GetU32(in, 4));
  size.ws_xpixel = static_cast<unsigned short>(GetU32(in, 8));
  size.ws_ypixel = static_cast<unsigned short>(GetU32(in, 12));
  return size;
}

struct Frame {
  FrameType type;
  std::string_view payload;  // valid until the reader is fed again or asked for the next
};

// Cuts a byte stream that arrives in pieces into frames. A frame larger than kMaxPayload
// makes the reader fail for good: what follows cannot be told apart.
class FrameReader {
 public:
  void Feed(const char* data, size_t size) {
    if (failed_) return;
    if (start_ > 0 && start_ == buffer_.size()) {
      buffer_.clear();
      start_ = 0;
    } else if (start_ > 64 * 1024) {
      buffer_.erase(0, start_);
      start_ = 0;
    }
    buffer_.append(data, size);
  }

  // The next whole frame, or nothing until more is fed. Frames of types this reader does
  // not know are given too: the caller skips them (a later version's).
  std::optional<Frame> Next() {
    if (failed_ || buffer_.size() - start_ < kHeaderBytes) return std::nullopt;
    std::string_view rest(buffer_.data() + start_, buffer_.size() - start_);
    uint32_t length = GetU32(rest, 1);
    if (length > kMaxPayload) {
      failed_ = true;
      return std::nullopt;
    }
    if (rest.size() < kHeaderBytes + length) return std::nullopt;
    start_ += kHeaderBytes + length;
    return Frame{static_cast<FrameType>(rest[0]), rest.substr(kHeaderBytes, length)};
  }

  bool failed() const { return failed_; }
  // Bytes of a frame begun but not whole yet.
  size_t partial() const { return buffer_.size() - start_; }

 private:
  std::string buffer_;
  size_t start_ = 0;
  bool failed_ = false;
};

}  // namespace homeward::terminal
