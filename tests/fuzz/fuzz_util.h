// Helpers shared by the fuzz harnesses: turning the fuzzer's bytes into the kind of
// descriptor a decoder reads from, a private scratch directory, and a walk over every
// field of a Cap'n Proto message (what a handler that reads everything would do).
#pragma once

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include <capnp/dynamic.h>
#include <capnp/schema.h>

#include "fd.h"

namespace homeward::fuzz {

// Stops the run with a message: the fuzzer reports it as a crash with this input.
[[noreturn]] inline void Broken(const char* what) {
  std::fprintf(stderr, "fuzz: invariant broken: %s\n", what);
  std::abort();
}

// A descriptor that reads `data` and then ends: a memfd, for decoders that read().
inline Fd FileWithBytes(const uint8_t* data, size_t size) {
  Fd fd = Fd::Adopt(::memfd_create("fuzz-input", MFD_CLOEXEC));
  if (!fd.valid()) Broken("memfd_create failed");
  WriteAll(fd.get(), data, size, "fuzz input");
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) Broken("lseek failed");
  return fd;
}

// A connected stream socket whose far end sends `data` and then shuts down its side,
// for decoders that recv(). The writer thread is joined when this goes away.
class SocketWithBytes {
 public:
  SocketWithBytes(const uint8_t* data, size_t size) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      Broken("socketpair failed");
    }
    reader_ = Fd::Adopt(fds[0]);
    // Most inputs fit in the socket's buffer at once: then no thread is needed.
    int buffer = 4 << 20;
    if (::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof buffer) != 0) {
      ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
    }
    ssize_t sent = size == 0 ? 0 : ::send(fds[1], data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent == static_cast<ssize_t>(size)) {
      ::shutdown(fds[1], SHUT_WR);
      writer_end_ = Fd::Adopt(fds[1]);
      return;
    }
    size_t skip = sent > 0 ? static_cast<size_t>(sent) : 0;
    data += skip;
    size -= skip;
    writer_ = std::thread([fd = fds[1], data, size] {
      size_t done = 0;
      while (done < size) {
        ssize_t n = ::send(fd, data + done, size - done, MSG_NOSIGNAL);
        if (n <= 0) break;  // the reader stopped early and closed its end
        done += static_cast<size_t>(n);
      }
      ::shutdown(fd, SHUT_WR);
      char sink[4096];
      while (::recv(fd, sink, sizeof sink, 0) > 0) {
      }
      ::close(fd);
    });
  }
  SocketWithBytes(const SocketWithBytes&) = delete;
  SocketWithBytes& operator=(const SocketWithBytes&) = delete;
  ~SocketWithBytes() {
    // Closing our end ends the writer's send and its drain loop.
    ::shutdown(reader_.get(), SHUT_RDWR);
    if (writer_.joinable()) writer_.join();
  }
  int fd() const { return reader_.get(); }

 private:
  Fd reader_;
  Fd writer_end_;  // when everything was sent at once
  std::thread writer_;
};

// A fresh private directory under $TMPDIR (or /tmp), removed at exit.
inline std::string ScratchDir(const char* name) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/" + name + ".XXXXXX";
  if (!::mkdtemp(pattern.data())) Broken("mkdtemp failed");
  static std::string* to_remove = new std::string();
  *to_remove = pattern;
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(*to_remove, ec);
  });
  return pattern;
}

// Reads every field of a message reached through `value`, as a handler that uses all
// of a request would (lists up to 64 Ki elements); bytes of texts and data are summed so
// nothing is optimized away.
inline uint64_t Walk(capnp::DynamicValue::Reader value, int depth = 0) {
  if (depth > 64) return 0;
  uint64_t sum = 0;
  switch (value.getType()) {
    case capnp::DynamicValue::TEXT:
      for (char c : value.as<capnp::Text>()) sum += static_cast<uint8_t>(c);
      break;
    case capnp::DynamicValue::DATA:
      for (auto b : value.as<capnp::Data>()) sum += b;
      break;
    case capnp::DynamicValue::LIST: {
      // Up to 64 Ki elements of each list: every element is read the same way, and a
      // message may hold millions of empty ones within its traversal limit, which would
      // make one input take seconds.
      auto list = value.as<capnp::DynamicList>();
      for (uint32_t i = 0; i < list.size() && i < (1u << 16); ++i) sum += Walk(list[i], depth + 1);
      break;
    }
    case capnp::DynamicValue::ENUM: {
      auto e = value.as<capnp::DynamicEnum>();
      sum += e.getRaw();
      KJ_IF_MAYBE (enumerant, e.getEnumerant()) {
        sum += enumerant->getOrdinal();
      }
      break;
    }
    case capnp::DynamicValue::STRUCT: {
      auto s = value.as<capnp::DynamicStruct>();
      for (auto field : s.getSchema().getNonUnionFields()) sum += Walk(s.get(field), depth + 1);
      KJ_IF_MAYBE (field, s.which()) {
        sum += Walk(s.get(*field), depth + 1);
      }
      break;
    }
    case capnp::DynamicValue::INT:
      sum += static_cast<uint64_t>(value.as<int64_t>());
      break;
    case capnp::DynamicValue::UINT:
      sum += value.as<uint64_t>();
      break;
    case capnp::DynamicValue::BOOL:
      sum += value.as<bool>();
      break;
    default:
      break;
  }
  return sum;
}

}  // namespace homeward::fuzz
