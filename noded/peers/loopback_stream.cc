#include "loopback_stream.h"

#include <arpa/inet.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <utility>
#include <vector>

#include "error.h"
#include "schema/loopback.capnp.h"

namespace homeward {

namespace {

// The two messages are a few dozen bytes; anything longer is not one of them.
constexpr uint32_t kMaxMessageBytes = 4096;

void WriteFramed(SecureStream& stream, capnp::MessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  uint32_t length = htole32(static_cast<uint32_t>(bytes.size()));
  iovec iov[2] = {{&length, sizeof length}, {const_cast<kj::byte*>(bytes.begin()), bytes.size()}};
  stream.Write(iov, 2);
}

void ReadExactly(SecureStream& stream, void* data, size_t size) {
  auto* at = static_cast<char*>(data);
  while (size > 0) {
    size_t n = stream.Read(at, size);
    if (n == 0) Fail(ErrorKind::kDisconnected, "the peer ended the connection mid-message");
    at += n;
    size -= n;
  }
}

// One framed message's words (kept by the caller for the reader's lifetime).
kj::Array<capnp::word> ReadFramed(SecureStream& stream) {
  uint32_t length = 0;
  ReadExactly(stream, &length, sizeof length);
  length = le32toh(length);
  if (length == 0 || length > kMaxMessageBytes || length % sizeof(capnp::word) != 0) {
    Fail(ErrorKind::kInvalidInput, "loopback message of {} bytes", length);
  }
  auto words = kj::heapArray<capnp::word>(length / sizeof(capnp::word));
  ReadExactly(stream, words.begin(), length);
  return words;
}

capnp::ReaderOptions SmallReaderOptions() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kMaxMessageBytes / sizeof(capnp::word);
  options.nestingLimit = 8;
  return options;
}

}  // namespace

LoopbackTarget LoopbackTarget::FromSockaddr(const sockaddr_storage& address) {
  LoopbackTarget target;
  target.family = address.ss_family;
  if (address.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(address);
    std::memcpy(target.address.data(), &in6.sin6_addr, 16);
    target.port = ntohs(in6.sin6_port);
  } else {
    const auto& in = reinterpret_cast<const sockaddr_in&>(address);
    std::memcpy(target.address.data(), &in.sin_addr, 4);
    target.port = ntohs(in.sin_port);
  }
  return target;
}

sockaddr_storage LoopbackTarget::ToSockaddr(socklen_t* length) const {
  sockaddr_storage storage{};
  if (family == AF_INET6) {
    auto& in6 = reinterpret_cast<sockaddr_in6&>(storage);
    in6.sin6_family = AF_INET6;
    std::memcpy(&in6.sin6_addr, address.data(), 16);
    in6.sin6_port = htons(port);
    *length = sizeof in6;
  } else {
    auto& in = reinterpret_cast<sockaddr_in&>(storage);
    in.sin_family = AF_INET;
    std::memcpy(&in.sin_addr, address.data(), 4);
    in.sin_port = htons(port);
    *length = sizeof in;
  }
  return storage;
}

bool LoopbackTarget::IsLoopback() const {
  if (family == AF_INET) return address[0] == 127;
  if (family != AF_INET6) return false;
  in6_addr in6;
  std::memcpy(&in6, address.data(), 16);
  return IN6_IS_ADDR_LOOPBACK(&in6);
}

std::string LoopbackTarget::AddressText() const {
  char text[INET6_ADDRSTRLEN] = "?";
  ::inet_ntop(family, address.data(), text, sizeof text);
  return text;
}

std::string LoopbackTarget::ToString() const {
  return family == AF_INET6 ? fmt::format("[{}]:{}", AddressText(), port)
                            : fmt::format("{}:{}", AddressText(), port);
}

void SendLoopbackOpen(SecureStream& stream, pid_t home_pid, const LoopbackTarget& target,
                      LoopbackTransport transport) {
  capnp::MallocMessageBuilder message;
  auto open = message.initRoot<schema::LoopbackOpen>();
  if (transport == LoopbackTransport::kUdp) {
    // A home of version 1 refuses it, rather than connect TCP and take datagrams for bytes.
    open.setVersion(schema::LOOPBACK_UDP_VERSION);
    open.setTransport(schema::LoopbackTransport::UDP);
  } else {
    open.setVersion(schema::LOOPBACK_VERSION);
  }
  open.setHomePid(static_cast<uint32_t>(home_pid));
  size_t size = target.family == AF_INET6 ? 16 : 4;
  open.setAddress(kj::arrayPtr(target.address.data(), size));
  open.setPort(target.port);
  WriteFramed(stream, message);
}

LoopbackOpenRequest ReadLoopbackOpen(SecureStream& stream) {
  auto words = ReadFramed(stream);
  capnp::FlatArrayMessageReader reader(words, SmallReaderOptions());
  auto open = reader.getRoot<schema::LoopbackOpen>();
  if (open.getVersion() != schema::LOOPBACK_VERSION &&
      open.getVersion() != schema::LOOPBACK_UDP_VERSION) {
    Fail(ErrorKind::kInvalidInput, "loopback protocol version {} (this node speaks {} and {})",
         open.getVersion(), schema::LOOPBACK_VERSION, schema::LOOPBACK_UDP_VERSION);
  }
  LoopbackOpenRequest request;
  if (open.getVersion() == schema::LOOPBACK_UDP_VERSION) {
    switch (open.getTransport()) {
      case schema::LoopbackTransport::TCP:
        break;
      case schema::LoopbackTransport::UDP:
        request.transport = LoopbackTransport::kUdp;
        break;
      default:
        Fail(ErrorKind::kInvalidInput, "loopback transport {}",
             static_cast<int>(open.getTransport()));
    }
  }
  request.home_pid = static_cast<pid_t>(open.getHomePid());
  auto address = open.getAddress();
  if (address.size() != 4 && address.size() != 16) {
    Fail(ErrorKind::kInvalidInput, "a loopback address of {} bytes", address.size());
  }
  request.target.family = address.size() == 16 ? AF_INET6 : AF_INET;
  std::memcpy(request.target.address.data(), address.begin(), address.size());
  request.target.port = open.getPort();
  return request;
}

void SendLoopbackOpened(SecureStream& stream, int error, const std::string& why) {
  capnp::MallocMessageBuilder message;
  auto opened = message.initRoot<schema::LoopbackOpened>();
  opened.setVersion(schema::LOOPBACK_VERSION);
  opened.setError(error);
  opened.setMessage(why);
  WriteFramed(stream, message);
}

int ReadLoopbackOpened(SecureStream& stream, std::string* why) {
  auto words = ReadFramed(stream);
  capnp::FlatArrayMessageReader reader(words, SmallReaderOptions());
  auto opened = reader.getRoot<schema::LoopbackOpened>();
  if (why) *why = opened.getMessage().cStr();
  return opened.getError();
}

CarriedBytes CarryBothWays(SecureStream& stream, int socket) {
  CarriedBytes carried;
  // The stream to the socket on a second thread: Read and Write of a SecureStream may run
  // on two threads at once.
  std::thread inward([&] {
    std::vector<char> buffer(kCarryChunk);
    try {
      for (;;) {
        size_t n = stream.Read(buffer.data(), buffer.size());
        if (n == 0) {
          ::shutdown(socket, SHUT_WR);
          return;
        }
        SendAll(socket, buffer.data(), n, "write to the job's side");
        carried.from_stream += n;
      }
    } catch (const std::exception& e) {
      spdlog::debug("carried loopback connection: {}", e.what());
      ::shutdown(socket, SHUT_RDWR);
      stream.Shutdown();
    }
  });
  std::vector<char> buffer(kCarryChunk);
  try {
    for (;;) {
      ssize_t n = HW_SYSCALL(::recv(socket, buffer.data(), buffer.size(), 0),
                             "read from the job's side");
      if (n == 0) {
        stream.CloseWrite();
        break;
      }
      stream.Write(buffer.data(), static_cast<size_t>(n));
      carried.to_stream += static_cast<uint64_t>(n);
    }
  } catch (const std::exception& e) {
    spdlog::debug("carried loopback connection: {}", e.what());
    stream.Shutdown();
    ::shutdown(socket, SHUT_RDWR);
  }
  inward.join();
  return carried;
}

void WriteDatagram(SecureStream& stream, const void* data, size_t size) {
  if (size > kMaxDatagram) Fail(ErrorKind::kInvalidInput, "a datagram of {} bytes", size);
  uint16_t length = htole16(static_cast<uint16_t>(size));
  iovec iov[2] = {{&length, sizeof length}, {const_cast<void*>(data), size}};
  stream.Write(iov, size ? 2 : 1);
}

bool ReadDatagram(SecureStream& stream, std::string* datagram) {
  uint16_t length = 0;
  size_t n = stream.Read(&length, 1);
  if (n == 0) return false;
  ReadExactly(stream, reinterpret_cast<char*>(&length) + 1, 1);
  datagram->resize(le16toh(length));
  ReadExactly(stream, datagram->data(), datagram->size());
  return true;
}

DatagramFeed::DatagramFeed()
    : event_(Fd::Adopt(HW_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"))) {}

bool DatagramFeed::Push(std::string datagram) {
  {
    std::lock_guard lock(mutex_);
    if (queue_.size() >= kMaxFed) return false;
    queue_.push_back(std::move(datagram));
  }
  uint64_t one = 1;
  if (::write(event_.get(), &one, sizeof one) < 0) {
    spdlog::debug("datagram feed: {}", strerror(errno));
  }
  return true;
}

std::vector<std::string> DatagramFeed::TakeAll() {
  uint64_t count = 0;
  if (::read(event_.get(), &count, sizeof count) < 0 && errno != EAGAIN) {
    spdlog::debug("datagram feed: {}", strerror(errno));
  }
  std::lock_guard lock(mutex_);
  return std::exchange(queue_, {});
}

CarriedBytes CarryDatagrams(SecureStream& stream, int socket, const DatagramCarry& how) {
  CarriedBytes carried;
  auto now = [] { return std::chrono::steady_clock::now().time_since_epoch().count(); };
  std::atomic<int64_t> last_active{now()};
  // The stream to the socket on a second thread, as for a connection.
  std::thread inward([&] {
    std::string datagram;
    try {
      while (ReadDatagram(stream, &datagram)) {
        // Dropped when the socket cannot take it (a pending ICMP error, a full buffer).
        if (::send(socket, datagram.data(), datagram.size(), MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) {
          carried.from_stream += datagram.size();
        }
        last_active = now();
      }
    } catch (const std::exception& e) {
      spdlog::debug("carried UDP flow: {}", e.what());
    }
    ::shutdown(socket, SHUT_RDWR);  // wakes this side's other thread
  });
  std::vector<char> buffer(kMaxDatagram);
  try {
    pollfd fds[2] = {{socket, POLLIN, 0}, {how.feed ? how.feed->fd() : -1, POLLIN, 0}};
    for (;;) {
      if (how.stop && how.stop->load()) break;
      int timeout = -1;
      if (how.idle.count() > 0) {
        auto idle_for = std::chrono::steady_clock::duration(now() - last_active.load());
        auto left = how.idle - std::chrono::duration_cast<std::chrono::milliseconds>(idle_for);
        if (left.count() <= 0) break;
        timeout = static_cast<int>(left.count());
      }
      if (::poll(fds, 2, timeout) < 0) {
        if (errno == EINTR) continue;
        Fail(ErrorKind::kFailed, "poll a carried UDP flow: {}", strerror(errno));
      }
      if (fds[1].revents) {
        for (const std::string& datagram : how.feed->TakeAll()) {
          WriteDatagram(stream, datagram.data(), datagram.size());
          carried.to_stream += datagram.size();
          last_active = now();
        }
      }
      if (fds[0].revents & POLLHUP) break;  // shut down: by the other thread, or stopped
      if (!fds[0].revents) continue;
      ssize_t n = ::recv(socket, buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n < 0) {
        // ECONNREFUSED and its kind: an ICMP error for an earlier datagram, which UDP
        // drops; the flow goes on.
        if (errno == EAGAIN || errno == EINTR || errno == ECONNREFUSED || errno == EHOSTUNREACH ||
            errno == ENETUNREACH) {
          continue;
        }
        Fail(ErrorKind::kFailed, "read a carried UDP flow: {}", strerror(errno));
      }
      WriteDatagram(stream, buffer.data(), static_cast<size_t>(n));
      carried.to_stream += static_cast<uint64_t>(n);
      last_active = now();
    }
  } catch (const std::exception& e) {
    spdlog::debug("carried UDP flow: {}", e.what());
  }
  stream.Shutdown();
  ::shutdown(socket, SHUT_RDWR);
  inward.join();
  return carried;
}

bool CarriedConnections::Launch(Fd socket, std::unique_ptr<SecureStream> stream, Work work) {
  std::lock_guard lock(mutex_);
  if (stopping_) return false;  // StopAll walks the slots from here on
  Reap();
  Slot& slot = slots_.emplace_back();
  slot.socket = std::move(socket);
  slot.stream = std::move(stream);
  try {
    slot.thread = std::thread([this, &slot, work = std::move(work)] {
      try {
        work(slot);
      } catch (const std::exception& e) {
        spdlog::warn("carried loopback connection: {}", e.what());
      }
      Fd socket;
      std::unique_ptr<SecureStream> stream;
      {
        std::lock_guard lock(mutex_);
        socket = std::move(slot.socket);
        stream = std::move(slot.stream);
        slot.done = true;
      }
      // Closed outside the lock: a stream's end record may wait on the network.
    });
  } catch (const std::system_error& e) {
    spdlog::warn("no thread for a loopback connection: {}", e.what());
    slots_.pop_back();
    return false;
  }
  return true;
}

bool CarriedConnections::SetStream(Slot& slot, std::unique_ptr<SecureStream> stream) {
  std::lock_guard lock(mutex_);
  if (stopping_) return false;
  slot.stream = std::move(stream);
  return true;
}

bool CarriedConnections::SetSocket(Slot& slot, Fd socket) {
  std::lock_guard lock(mutex_);
  if (stopping_) return false;
  slot.socket = std::move(socket);
  return true;
}

void CarriedConnections::StopAll() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (Slot& slot : slots_) {
      if (slot.done) continue;
      if (slot.socket.valid()) ::shutdown(slot.socket.get(), SHUT_RDWR);
      if (slot.stream) slot.stream->Shutdown();
    }
  }
  // The threads take mutex_ at their end: joined without it (no slot is added or
  // reaped once stopping).
  for (Slot& slot : slots_) {
    if (slot.thread.joinable()) slot.thread.join();
  }
  std::lock_guard lock(mutex_);
  slots_.clear();
}

void CarriedConnections::Reap() {
  for (auto it = slots_.begin(); it != slots_.end();) {
    if (!it->done) {
      ++it;
      continue;
    }
    if (it->thread.joinable()) it->thread.join();
    it = slots_.erase(it);
  }
}

}  // namespace homeward
