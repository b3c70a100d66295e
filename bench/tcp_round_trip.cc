// The round trip any networked file system pays per call, on this machine: one process
// asks over TCP (a small request) and another answers (a reply of `--reply` bytes), one
// call at a time, on loopback between two addresses, as two homeward nodes of a loopback
// cluster talk. Prints the median round trip in microseconds. Run by bench/run homefs,
// which sets it beside passthrough_ll's time per read: a local FUSE call plus this round
// trip is the fastest a remote read can be here, whatever the file system does.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "fd.h"
#include "error.h"

using namespace homeward;

namespace {

constexpr size_t kRequestBytes = 64;

sockaddr_in Address(const std::string& ip, uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  if (::inet_pton(AF_INET, ip.c_str(), &address.sin_addr) != 1) {
    throw SystemError(EINVAL, "address " + ip);
  }
  return address;
}

void NoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Reads exactly `size` bytes; false at the peer's end.
bool ReadAll(int fd, char* into, size_t size) {
  while (size > 0) {
    ssize_t n = ::recv(fd, into, size, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    into += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// The answering process, from its own address as a peer node's would be: a reply for
// every request until the asker closes.
[[noreturn]] void Answer(const sockaddr_in& server, const sockaddr_in& from, size_t reply) {
  Fd fd = Fd::Adopt(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&from), sizeof from) != 0 ||
      ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&server), sizeof server) != 0) {
    std::perror("tcp_round_trip: connect");
    ::_exit(1);
  }
  NoDelay(fd.get());
  std::vector<char> buffer(std::max(reply, kRequestBytes));
  while (ReadAll(fd.get(), buffer.data(), kRequestBytes)) {
    SendAll(fd.get(), buffer.data(), reply, "answer");
  }
  ::_exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Median TCP round trip between two processes on loopback"};
  std::string asker = "127.0.0.1", answerer = "127.0.0.2";
  size_t reply = 4096;
  int calls = 20000;
  app.add_option("--asker", asker, "the asking process's address (it listens there)");
  app.add_option("--answerer", answerer, "the answering process's address");
  app.add_option("--reply", reply, "bytes in each answer");
  app.add_option("--calls", calls, "round trips timed")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    Fd listener = Fd::Adopt(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in server = Address(asker, 0);
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&server), sizeof server) != 0 ||
        ::listen(listener.get(), 1) != 0) {
      throw SystemError(errno, "listen on " + asker);
    }
    socklen_t length = sizeof server;
    ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&server), &length);
    sockaddr_in from = Address(answerer, 0);
    pid_t child = ::fork();
    if (child < 0) throw SystemError(errno, "fork");
    if (child == 0) Answer(server, from, reply);
    Fd peer = Fd::Adopt(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!peer.valid()) throw SystemError(errno, "accept");
    NoDelay(peer.get());
    std::vector<char> buffer(std::max(reply, kRequestBytes));
    std::vector<double> micros;
    micros.reserve(static_cast<size_t>(calls));
    for (int i = 0; i < calls + calls / 10; ++i) {
      auto start = std::chrono::steady_clock::now();
      SendAll(peer.get(), buffer.data(), kRequestBytes, "request");
      if (!ReadAll(peer.get(), buffer.data(), reply)) throw SystemError(EPIPE, "answer");
      std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
      if (i >= calls / 10) micros.push_back(took.count());  // the first tenth warms up
    }
    peer.Reset();
    int status = 0;
    ::waitpid(child, &status, 0);
    std::nth_element(micros.begin(), micros.begin() + micros.size() / 2, micros.end());
    std::printf("%.1f\n", micros[micros.size() / 2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tcp_round_trip: %s\n", e.what());
    return 1;
  }
  return 0;
}
