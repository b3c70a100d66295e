// AEAD records and the pump thread that carries a consumer's stream over them.
#include "secure_channel.h"

#include <fcntl.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <system_error>
#include <thread>

#include <spdlog/spdlog.h>

#include "error.h"

namespace homeward {

namespace {

constexpr size_t kNonceBytes = 12;  // both ciphers' IETF nonce
static_assert(crypto_aead_chacha20poly1305_ietf_NPUBBYTES == kNonceBytes);
static_assert(crypto_aead_aes256gcm_NPUBBYTES == kNonceBytes);
static_assert(crypto_aead_chacha20poly1305_ietf_ABYTES == kRecordTagBytes);
static_assert(crypto_aead_aes256gcm_ABYTES == kRecordTagBytes);

void Nonce(uint64_t counter, unsigned char* nonce) {
  std::memset(nonce, 0, kNonceBytes);
  for (int i = 0; i < 8; ++i) nonce[i] = static_cast<unsigned char>(counter >> (8 * i));
}

void PutLength(uint32_t n, unsigned char* out) {
  out[0] = static_cast<unsigned char>(n >> 24);
  out[1] = static_cast<unsigned char>(n >> 16);
  out[2] = static_cast<unsigned char>(n >> 8);
  out[3] = static_cast<unsigned char>(n);
}

}  // namespace

RecordSealer::RecordSealer(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key)
    : cipher_(cipher), key_(key) {}

void RecordSealer::Seal(std::string_view plain, std::string& out) {
  if (plain.size() > kMaxRecordPlaintext) {
    throw Error(ErrorKind::kInvalidInput, "record larger than the most allowed");
  }
  size_t at = out.size();
  out.resize(at + kRecordHeaderBytes + plain.size() + kRecordTagBytes);
  auto* record = reinterpret_cast<uint8_t*>(out.data() + at);
  // An empty view may have no data at all, and memcpy from a null pointer is undefined
  // even for no bytes.
  if (!plain.empty()) std::memcpy(record + kRecordHeaderBytes, plain.data(), plain.size());
  SealInPlace(record, plain.size());
}

size_t RecordSealer::SealInPlace(uint8_t* record, size_t length) {
  if (length > kMaxRecordPlaintext) {
    throw Error(ErrorKind::kInvalidInput, "record larger than the most allowed");
  }
  if (counter_ == UINT64_MAX) throw Error(ErrorKind::kFailed, "record counter exhausted");
  size_t sealed = length + kRecordTagBytes;
  PutLength(static_cast<uint32_t>(sealed), record);
  unsigned char nonce[kNonceBytes];
  Nonce(counter_++, nonce);
  unsigned long long written = 0;
  unsigned char* body = record + kRecordHeaderBytes;  // plaintext in, ciphertext out
  if (cipher_ == PeerCipher::kAes256Gcm) {
    crypto_aead_aes256gcm_encrypt(body, &written, body, length, record, kRecordHeaderBytes, nullptr,
                                  nonce, key_.data());
  } else {
    crypto_aead_chacha20poly1305_ietf_encrypt(body, &written, body, length, record,
                                              kRecordHeaderBytes, nullptr, nonce, key_.data());
  }
  return kRecordHeaderBytes + sealed;
}

RecordOpener::RecordOpener(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key)
    : cipher_(cipher), key_(key) {}

uint8_t* RecordOpener::Space(size_t max) {
  if (begin_ == end_) begin_ = end_ = 0;
  if (buffer_.size() - end_ < max) {
    // Move what is left to the front first; grow only when that is not enough.
    if (begin_ > 0) {
      std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (buffer_.size() - end_ < max) buffer_.resize(end_ + max);
  }
  return buffer_.data() + end_;
}

void RecordOpener::Commit(size_t n) {
  end_ += n;
}

void RecordOpener::Feed(std::string_view bytes) {
  std::memcpy(Space(bytes.size()), bytes.data(), bytes.size());
  Commit(bytes.size());
}

RecordOpener::Result RecordOpener::Next(std::string& plain) {
  std::string_view view;
  Result result = Open(&view);
  if (result == Result::kRecord) plain.append(view);
  return result;
}

RecordOpener::Result RecordOpener::Open(std::string_view* plain) {
  if (bad_) return Result::kBad;
  if (end_ - begin_ < kRecordHeaderBytes) return Result::kNeedMore;
  unsigned char* header = buffer_.data() + begin_;
  uint32_t sealed = (uint32_t{header[0]} << 24) | (uint32_t{header[1]} << 16) |
                    (uint32_t{header[2]} << 8) | uint32_t{header[3]};
  if (sealed < kRecordTagBytes || sealed > kMaxRecordPlaintext + kRecordTagBytes) {
    bad_ = true;
    error_ = fmt::format("a record of {} bytes (not a record of this connection)", sealed);
    return Result::kBad;
  }
  if (end_ - begin_ < kRecordHeaderBytes + sealed) return Result::kNeedMore;
  unsigned char nonce[kNonceBytes];
  Nonce(counter_, nonce);
  unsigned char* body = header + kRecordHeaderBytes;  // ciphertext in, plaintext out
  unsigned long long length = 0;
  int status;
  if (cipher_ == PeerCipher::kAes256Gcm) {
    status = crypto_aead_aes256gcm_decrypt(body, &length, nullptr, body, sealed, header,
                                           kRecordHeaderBytes, nonce, key_.data());
  } else {
    status = crypto_aead_chacha20poly1305_ietf_decrypt(body, &length, nullptr, body, sealed, header,
                                                       kRecordHeaderBytes, nonce, key_.data());
  }
  if (status != 0) {
    bad_ = true;
    error_ = fmt::format("record {} failed to authenticate (tampered, replayed or out of order)",
                         counter_);
    return Result::kBad;
  }
  ++counter_;
  begin_ += kRecordHeaderBytes + sealed;
  *plain = std::string_view(reinterpret_cast<const char*>(body), length);
  return length == 0 ? Result::kEnd : Result::kRecord;
}

namespace {

constexpr size_t kReceiveChunk = 128 << 10;
constexpr int kPairBuffer = 4 << 20;
// Once the consumer has closed its end, how long the peer has to end its direction too
// (closing a socket with unread data would reset it and could lose what was sent).
constexpr auto kLinger = std::chrono::seconds(10);

class Pump {
 public:
  Pump(Fd tcp, Fd local, const PeerSession& session, std::string who)
      : tcp_(std::move(tcp)),
        local_(std::move(local)),
        sealer_(session.cipher, session.send_key),
        opener_(session.cipher, session.receive_key),
        who_(std::move(who)) {}

  void Run() {
    try {
      Loop();
    } catch (const std::exception& e) {
      spdlog::error("peer {}: secure channel: {}", who_, e.what());
    }
  }

 private:
  size_t ToTcp() const { return to_tcp_length_ - to_tcp_at_; }
  size_t ToLocal() const { return to_local_.size() - to_local_at_; }

  void Loop() {
    // The record being sent: the consumer's bytes are read into it and sealed in place.
    std::vector<uint8_t> record(kRecordHeaderBytes + kMaxRecordPlaintext + kRecordTagBytes);
    to_tcp_ = record.data();
    std::chrono::steady_clock::time_point linger_until{};
    for (;;) {
      bool progress = false;
      // The consumer's bytes, sealed into a record (one at a time: back-pressure).
      if (!local_read_done_ && ToTcp() == 0) {
        ssize_t n = ::recv(local_.get(), record.data() + kRecordHeaderBytes, kMaxRecordPlaintext,
                           MSG_DONTWAIT);
        if (n > 0 || n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
          to_tcp_at_ = 0;
          if (n > 0) {
            to_tcp_length_ = sealer_.SealInPlace(record.data(), static_cast<size_t>(n));
          } else {
            to_tcp_length_ = sealer_.SealInPlace(record.data(), 0);  // the consumer's end
            local_read_done_ = true;
            if (local_hup_) local_gone_ = true;
          }
          progress = true;
        }
      }
      while (ToTcp() > 0 && !tcp_write_shut_) {
        ssize_t n = ::send(tcp_.get(), to_tcp_ + to_tcp_at_, ToTcp(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          return Abort(fmt::format("sending: {}", std::strerror(errno)));
        }
        to_tcp_at_ += static_cast<size_t>(n);
        progress = true;
      }
      if (local_read_done_ && ToTcp() == 0 && !tcp_write_shut_) {
        ::shutdown(tcp_.get(), SHUT_WR);
        tcp_write_shut_ = true;
      }
      // The peer's records, opened for the consumer.
      if (!tcp_read_done_ && ToLocal() == 0) {
        // One record at a time, opened in place and delivered from there; what
        // authenticated before a bad record has reached the consumer by then.
        for (;;) {
          std::string_view opened;
          auto result = opener_.Open(&opened);
          if (result == RecordOpener::Result::kBad) {
            return Abort(fmt::format("{}; connection closed", opener_.error()));
          }
          if (result == RecordOpener::Result::kEnd) {
            tcp_read_done_ = true;
            progress = true;
            break;
          }
          if (result == RecordOpener::Result::kRecord) {
            to_local_ = opened;
            to_local_at_ = 0;
            progress = true;
            break;
          }
          ssize_t n = ::recv(tcp_.get(), opener_.Space(kReceiveChunk), kReceiveChunk, MSG_DONTWAIT);
          if (n > 0) {
            opener_.Commit(static_cast<size_t>(n));
            progress = true;
            continue;
          }
          if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
          // Cut without the end record: the consumer sees its end closed as before, but
          // the log says the stream was cut rather than ended.
          spdlog::warn("peer {}: connection cut ({})", who_,
                       n == 0 ? "closed without its end record" : std::strerror(errno));
          tcp_read_done_ = true;
          if (n < 0) {
            // A reset or a timed out connection: nothing more can be sent either.
            local_read_done_ = true;
            tcp_write_shut_ = true;
          }
          progress = true;
          break;
        }
      }
      while (ToLocal() > 0 && !local_gone_) {
        ssize_t n = ::send(local_.get(), to_local_.data() + to_local_at_, ToLocal(),
                           MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          local_gone_ = true;  // the consumer closed its end: what arrives is dropped
          break;
        }
        to_local_at_ += static_cast<size_t>(n);
        progress = true;
      }
      if (local_gone_ && ToLocal() > 0) {
        // Data for a consumer that closed its end: as TCP would, reset the connection, so
        // that the peer's writes fail too.
        linger abort{1, 0};
        ::setsockopt(tcp_.get(), SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
        return;
      }
      if (tcp_read_done_ && ToLocal() == 0 && !local_write_shut_ && !local_gone_) {
        ::shutdown(local_.get(), SHUT_WR);
        local_write_shut_ = true;
      }
      if (tcp_write_shut_ && tcp_read_done_ && ToLocal() == 0) return;  // both ended
      if (local_gone_ && local_read_done_ &&
          linger_until == std::chrono::steady_clock::time_point{}) {
        linger_until = std::chrono::steady_clock::now() + kLinger;
      }
      if (progress) continue;

      pollfd polled[2] = {{-1, 0, 0}, {-1, 0, 0}};
      short local_events = 0;
      if (!local_read_done_ && ToTcp() == 0) local_events |= POLLIN;
      if (ToLocal() > 0) local_events |= POLLOUT;
      // With no events asked, poll still reports a hang-up (the consumer closing its end,
      // the peer resetting): asked once, so that it cannot spin.
      if (local_events != 0 || (!local_gone_ && !local_write_shut_ && !local_hup_)) {
        polled[0] = {local_.get(), local_events, 0};
      }
      short tcp_events = 0;
      if (!tcp_read_done_ && ToLocal() == 0) tcp_events |= POLLIN;
      if (ToTcp() > 0 && !tcp_write_shut_) tcp_events |= POLLOUT;
      if (tcp_events != 0 || (!(tcp_read_done_ && tcp_write_shut_) && !tcp_hup_)) {
        polled[1] = {tcp_.get(), tcp_events, 0};
      }
      int timeout = -1;
      if (linger_until != std::chrono::steady_clock::time_point{}) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        linger_until - std::chrono::steady_clock::now())
                        .count();
        if (left <= 0) return;
        timeout = static_cast<int>(left);
      }
      int ready = ::poll(polled, 2, timeout);
      if (ready < 0 && errno != EINTR) return Abort(fmt::format("poll: {}", std::strerror(errno)));
      if (ready <= 0) continue;
      if ((polled[0].revents & (POLLHUP | POLLERR)) && !local_write_shut_) {
        // The consumer closed its end (or shut it down both ways): once its last bytes
        // are sealed, nothing more goes to it.
        local_hup_ = true;
        if (local_read_done_) local_gone_ = true;
      }
      if (polled[1].revents & (POLLERR | POLLHUP)) {
        tcp_hup_ = true;
        if (tcp_read_done_ && !tcp_write_shut_) {
          // The peer is gone entirely: nothing more can be sent.
          spdlog::warn("peer {}: connection lost while sending", who_);
          local_read_done_ = true;
          tcp_write_shut_ = true;
          to_tcp_length_ = 0;
          to_tcp_at_ = 0;
        }
      }
    }
  }

  // Ends the connection at once (both sockets close when the pump ends).
  void Abort(const std::string& why) { spdlog::error("peer {}: {}", who_, why); }

  Fd tcp_;
  Fd local_;
  RecordSealer sealer_;
  RecordOpener opener_;
  std::string who_;
  const uint8_t* to_tcp_ = nullptr;  // a sealed record, sent from to_tcp_at_
  size_t to_tcp_length_ = 0;
  size_t to_tcp_at_ = 0;
  std::string_view to_local_;  // an opened record (in the opener's buffer)
  size_t to_local_at_ = 0;
  bool local_read_done_ = false;  // the consumer ended its direction; the end is sealed
  bool tcp_write_shut_ = false;
  bool tcp_read_done_ = false;  // the peer's end record, or the connection cut
  bool local_write_shut_ = false;
  bool local_gone_ = false;  // the consumer closed its end
  bool local_hup_ = false;
  bool tcp_hup_ = false;
};

}  // namespace

Fd StartSecureChannel(Fd tcp, const PeerSession& session, std::string who) {
  if (session.plaintext) {
    int flags = ::fcntl(tcp.get(), F_GETFL);
    ::fcntl(tcp.get(), F_SETFL, flags & ~O_NONBLOCK);
    return tcp;
  }
  int pair[2];
  HW_SYSCALL(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair),
             "socket pair for the connection to {}", who);
  Fd consumer = Fd::Adopt(pair[0]);
  Fd local = Fd::Adopt(pair[1]);
  // Room for a whole large frame (a 1 MiB read reply, an image chunk) in the pair, so
  // that the consumer hands it over in one call and the pump seals it in big records.
  // Raising the buffer above the system's default limit needs CAP_NET_ADMIN (the daemon
  // has it); without, the default stays.
  for (int fd : pair) {
    int size = kPairBuffer;
    if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) != 0) {
      ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    }
  }
  // The pump never blocks on one socket while the other has work.
  int flags = ::fcntl(tcp.get(), F_GETFL);
  ::fcntl(tcp.get(), F_SETFL, flags | O_NONBLOCK);
  flags = ::fcntl(local.get(), F_GETFL);
  ::fcntl(local.get(), F_SETFL, flags | O_NONBLOCK);
  auto pump = std::make_unique<Pump>(std::move(tcp), std::move(local), session, who);
  // A thread that cannot be had throws here (std::system_error): the caller loses this
  // connection only, and the pump's sockets close with it.
  try {
    std::thread([pump = std::move(pump)] { pump->Run(); }).detach();
  } catch (const std::system_error& e) {
    throw SystemError(e.code().value(), fmt::format("no thread for the connection to {}", who));
  }
  return consumer;
}

}  // namespace homeward
