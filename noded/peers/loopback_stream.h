// Carrying a guest's loopback TCP connections and UDP flows to its home: the two messages of the
// peer service "loopback" (utils/schema/loopback.capnp), the pump that carries a connection's bytes
// both ways with bounded memory, and the set of carried connections an owner ends together. Used by
// the guest's side (noded/jobs/loopback_carrier.h) and the home's (loopback_service.h).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fd.h"
#include "secure_channel.h"

namespace homeward {

// Where on a loopback a connection goes: an IPv4 or IPv6 address and a port.
struct LoopbackTarget {
  int family = AF_INET;
  std::array<uint8_t, 16> address{};  // the first 4 bytes for AF_INET
  uint16_t port = 0;

  // From a socket's local address (a connection TPROXY gave us: where the job connected).
  static LoopbackTarget FromSockaddr(const sockaddr_storage& address);
  sockaddr_storage ToSockaddr(socklen_t* length) const;
  // In 127.0.0.0/8 or ::1: the only addresses a home connects to for a guest.
  bool IsLoopback() const;
  std::string AddressText() const;
  std::string ToString() const;  // "127.0.0.1:5432", "[::1]:5432"
};

enum class LoopbackTransport { kTcp, kUdp };

// The guest's side: asks for a connection (or a UDP flow) to `target` on the home's
// loopback for the job `home_pid`; returns 0 when the home connected, else the home's
// errno (and why).
void SendLoopbackOpen(SecureStream& stream, pid_t home_pid, const LoopbackTarget& target,
                      LoopbackTransport transport = LoopbackTransport::kTcp);
int ReadLoopbackOpened(SecureStream& stream, std::string* why);

// The home's side. ReadLoopbackOpen throws Error(kInvalidInput) on a malformed request.
struct LoopbackOpenRequest {
  pid_t home_pid = 0;
  LoopbackTarget target;
  LoopbackTransport transport = LoopbackTransport::kTcp;
};
LoopbackOpenRequest ReadLoopbackOpen(SecureStream& stream);
void SendLoopbackOpened(SecureStream& stream, int error, const std::string& why);

// Carries bytes between `socket` (a TCP connection on a loopback) and `stream` both ways
// until both directions have ended, on this thread and one more. Each direction holds at
// most kCarryChunk bytes at a time and reads again only once they are written on, so a
// slow reader at either end stops the writer at the other (TCP's own back-pressure,
// through the peer connection's). An end of file becomes an end of that direction (a
// half-close: shutdown(SHUT_WR) or the stream's end record); an error or a cut at either
// end breaks both. Returns the bytes carried each way.
constexpr size_t kCarryChunk = 64 * 1024;
struct CarriedBytes {
  uint64_t to_stream = 0;
  uint64_t from_stream = 0;
};
CarriedBytes CarryBothWays(SecureStream& stream, int socket);

// A UDP flow carried over a stream: each datagram as a 2-byte little-endian length and its
// bytes (a datagram of 0 bytes is one too). ReadDatagram returns false at the stream's end.
constexpr size_t kMaxDatagram = 65535;
void WriteDatagram(SecureStream& stream, const void* data, size_t size);
bool ReadDatagram(SecureStream& stream, std::string* datagram);

// Datagrams handed to a flow by another thread (the guest's carrier, which received them
// before the flow's own socket was there): a queue of at most kMaxFed (more are dropped,
// as a full socket buffer would) and an eventfd that is readable while it holds any.
class DatagramFeed {
 public:
  static constexpr size_t kMaxFed = 64;
  DatagramFeed();
  bool Push(std::string datagram);  // false: dropped
  std::vector<std::string> TakeAll();
  int fd() const { return event_.get(); }

 private:
  std::mutex mutex_;
  std::vector<std::string> queue_;
  Fd event_;
};

// Carries datagrams between the connected UDP `socket` and `stream` both ways, on this
// thread and one more, until the stream ends or breaks, the socket is shut down, `idle`
// passes without a datagram either way (idle <= 0: never), or `stop` is set (with the
// feed's eventfd written to wake this thread). Datagrams in `feed` (optional) go to the
// stream as the socket's do. A datagram the socket cannot take (an ICMP error pending, a
// full buffer) is dropped, as UDP does.
struct DatagramCarry {
  std::chrono::milliseconds idle{0};
  DatagramFeed* feed = nullptr;
  const std::atomic<bool>* stop = nullptr;
};
CarriedBytes CarryDatagrams(SecureStream& stream, int socket, const DatagramCarry& how);

// Carried connections, each on a thread of its own, that their owner ends together:
// StopAll breaks every one (its socket shut down, its stream broken) and waits for its
// thread. A connection's descriptors are closed by its thread when it ends.
class CarriedConnections {
 public:
  struct Slot {
    Fd socket;
    std::unique_ptr<SecureStream> stream;
    std::thread thread;
    bool done = false;
  };
  using Work = std::function<void(Slot& slot)>;

  CarriedConnections() = default;
  CarriedConnections(const CarriedConnections&) = delete;
  CarriedConnections& operator=(const CarriedConnections&) = delete;
  ~CarriedConnections() { StopAll(); }

  // Runs `work` on a thread of its own with `socket` and `stream` (either may be empty) in
  // its slot; false (both closed) when stopped or no thread can be had.
  bool Launch(Fd socket, std::unique_ptr<SecureStream> stream, Work work);
  // Put a descriptor in the slot, where StopAll can break it (slots are read under the
  // lock): false when stopping. The work's thread then uses it through the slot.
  bool SetStream(Slot& slot, std::unique_ptr<SecureStream> stream);
  bool SetSocket(Slot& slot, Fd socket);
  void StopAll();

 private:
  void Reap();  // joins the threads of ended connections; under mutex_
  std::mutex mutex_;
  std::list<Slot> slots_;
  bool stopping_ = false;
};

}  // namespace homeward
