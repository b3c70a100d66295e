// AEAD records and the pump thread that carries a consumer's stream over them.
#include "secure_channel.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
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

namespace {

EVP_CIPHER_CTX* NewContext(PeerCipher cipher, const uint8_t* key, bool encrypt) {
  const EVP_CIPHER* type =
      cipher == PeerCipher::kAes256Gcm ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (!ctx) throw Error(ErrorKind::kOverloaded, "out of memory for a cipher context");
  // Both ciphers take the 96-bit nonce by default; the key schedule is made once here.
  int ok = encrypt ? EVP_EncryptInit_ex(ctx, type, nullptr, key, nullptr)
                   : EVP_DecryptInit_ex(ctx, type, nullptr, key, nullptr);
  if (ok != 1) {
    EVP_CIPHER_CTX_free(ctx);
    throw Error(ErrorKind::kFailed, "cannot set up the connection's cipher");
  }
  return ctx;
}

EVP_CIPHER_CTX* Ctx(void* p) {
  return static_cast<EVP_CIPHER_CTX*>(p);
}

}  // namespace

namespace {
std::atomic<bool> use_vector_aes{true};
}  // namespace

void UseVectorAesForTesting(bool use) {
  use_vector_aes = use;
}

RecordAead::RecordAead(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key) {
  static_assert(kPeerSessionKeyBytes == AesGcm256::kKeyBytes);
  static const bool vector_aes = AesGcm256::Available();
  if (cipher == PeerCipher::kAes256Gcm && vector_aes && use_vector_aes) {
    vector_ = std::make_unique<AesGcm256>(key.data());
    return;
  }
  encrypt_ = NewContext(cipher, key.data(), true);
  try {
    decrypt_ = NewContext(cipher, key.data(), false);
  } catch (...) {
    EVP_CIPHER_CTX_free(Ctx(encrypt_));
    throw;
  }
}

RecordAead::RecordAead(RecordAead&& other) noexcept
    : vector_(std::move(other.vector_)),
      encrypt_(std::exchange(other.encrypt_, nullptr)),
      decrypt_(std::exchange(other.decrypt_, nullptr)) {}

RecordAead& RecordAead::operator=(RecordAead&& other) noexcept {
  std::swap(vector_, other.vector_);
  std::swap(encrypt_, other.encrypt_);
  std::swap(decrypt_, other.decrypt_);
  return *this;
}

RecordAead::~RecordAead() {
  EVP_CIPHER_CTX_free(Ctx(encrypt_));  // wipes the key schedule
  EVP_CIPHER_CTX_free(Ctx(decrypt_));
}

void RecordAead::Seal(uint8_t* out, const uint8_t* plain, size_t length, const uint8_t* ad,
                      size_t ad_length, const uint8_t* nonce) {
  if (vector_) return vector_->Seal(out, plain, length, ad, ad_length, nonce);
  EVP_CIPHER_CTX* ctx = Ctx(encrypt_);
  int n = 0, tail = 0;
  bool ok = EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) == 1 &&
            EVP_EncryptUpdate(ctx, nullptr, &n, ad, static_cast<int>(ad_length)) == 1 &&
            (length == 0 || EVP_EncryptUpdate(ctx, out, &n, plain, static_cast<int>(length)) == 1) &&
            EVP_EncryptFinal_ex(ctx, out + length, &tail) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, kRecordTagBytes, out + length) == 1;
  if (!ok) throw Error(ErrorKind::kFailed, "sealing a record failed");
}

bool RecordAead::Open(uint8_t* out, const uint8_t* sealed, size_t sealed_length, const uint8_t* ad,
                      size_t ad_length, const uint8_t* nonce) {
  if (sealed_length < kRecordTagBytes) return false;
  size_t length = sealed_length - kRecordTagBytes;
  uint8_t tag[kRecordTagBytes];
  std::memcpy(tag, sealed + length, sizeof tag);  // before `out` may overwrite it
  return OpenDetached(out, sealed, length, tag, ad, ad_length, nonce);
}

bool RecordAead::OpenDetached(uint8_t* out, const uint8_t* sealed, size_t length,
                              const uint8_t* tag, const uint8_t* ad, size_t ad_length,
                              const uint8_t* nonce) {
  bool ok;
  if (vector_) {
    ok = vector_->OpenDetached(out, sealed, length, tag, ad, ad_length, nonce);
  } else {
    uint8_t expected[kRecordTagBytes];
    std::memcpy(expected, tag, sizeof expected);
    EVP_CIPHER_CTX* ctx = Ctx(decrypt_);
    int n = 0, tail = 0;
    ok = EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, kRecordTagBytes, expected) == 1 &&
         EVP_DecryptUpdate(ctx, nullptr, &n, ad, static_cast<int>(ad_length)) == 1 &&
         (length == 0 || EVP_DecryptUpdate(ctx, out, &n, sealed, static_cast<int>(length)) == 1) &&
         EVP_DecryptFinal_ex(ctx, out + length, &tail) == 1;
  }
  // What did not authenticate never reaches anyone, not even as garbage in a buffer.
  if (!ok && length > 0) sodium_memzero(out, length);
  return ok;
}

RecordSealer::RecordSealer(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key)
    : aead_(cipher, key) {}

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
  return SealFrom(record, record + kRecordHeaderBytes, length);
}

size_t RecordSealer::SealFrom(uint8_t* record, const uint8_t* plain, size_t length) {
  if (length > kMaxRecordPlaintext) {
    throw Error(ErrorKind::kInvalidInput, "record larger than the most allowed");
  }
  if (counter_ == UINT64_MAX) throw Error(ErrorKind::kFailed, "record counter exhausted");
  size_t sealed = length + kRecordTagBytes;
  PutLength(static_cast<uint32_t>(sealed), record);
  unsigned char nonce[kNonceBytes];
  Nonce(counter_++, nonce);
  // Ciphertext out at the body (where the plaintext may already be).
  aead_.Seal(record + kRecordHeaderBytes, plain, length, record, kRecordHeaderBytes, nonce);
  return kRecordHeaderBytes + sealed;
}

RecordOpener::RecordOpener(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key)
    : aead_(cipher, key) {}

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

uint8_t* RecordOpener::SpaceAtLeast(size_t min, size_t max, size_t* room) {
  if (begin_ == end_) begin_ = end_ = 0;
  if (buffer_.size() < 4 * max) buffer_.resize(4 * max);
  if (buffer_.size() - end_ < min) Space(min);  // moves what is left to the front
  *room = std::min(max, buffer_.size() - end_);
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
  return OpenInto(nullptr, 0, plain);
}

namespace {
uint32_t GetLength(const unsigned char* header) {
  return (uint32_t{header[0]} << 24) | (uint32_t{header[1]} << 16) | (uint32_t{header[2]} << 8) |
         uint32_t{header[3]};
}
// Records received straight into a reader's memory (ReceiveInto) are at least this large:
// smaller ones cost a receive call of their own for little copying saved.
constexpr size_t kReceiveIntoMin = 8 << 10;
}  // namespace

RecordOpener::Result RecordOpener::OpenInto(uint8_t* into, size_t room, std::string_view* plain) {
  if (bad_) return Result::kBad;
  if (end_ - begin_ < kRecordHeaderBytes) return Result::kNeedMore;
  unsigned char* header = buffer_.data() + begin_;
  uint32_t sealed = GetLength(header);
  if (sealed < kRecordTagBytes || sealed > kMaxRecordPlaintext + kRecordTagBytes) {
    bad_ = true;
    error_ = fmt::format("a record of {} bytes (not a record of this connection)", sealed);
    return Result::kBad;
  }
  if (end_ - begin_ < kRecordHeaderBytes + sealed) return Result::kNeedMore;
  unsigned char nonce[kNonceBytes];
  Nonce(counter_, nonce);
  unsigned char* body = header + kRecordHeaderBytes;  // ciphertext in
  // Plaintext out: into the caller's memory when it fits, else in place.
  unsigned char* out = into != nullptr && sealed - kRecordTagBytes <= room ? into : body;
  size_t length = sealed - kRecordTagBytes;
  if (!aead_.Open(out, body, sealed, header, kRecordHeaderBytes, nonce)) {
    bad_ = true;
    error_ = fmt::format("record {} failed to authenticate (tampered, replayed or out of order)",
                         counter_);
    return Result::kBad;
  }
  ++counter_;
  begin_ += kRecordHeaderBytes + sealed;
  *plain = std::string_view(reinterpret_cast<const char*>(out), length);
  return length == 0 ? Result::kEnd : Result::kRecord;
}

RecordOpener::Result RecordOpener::ReceiveInto(uint8_t* into, size_t room, Receiver receive,
                                               void* context, std::string_view* plain) {
  if (bad_ || end_ - begin_ < kRecordHeaderBytes) return Result::kNeedMore;
  uint32_t sealed = GetLength(buffer_.data() + begin_);
  // A bad length is Open's to report; a whole record is opened from the buffer.
  if (sealed < kRecordTagBytes || sealed > kMaxRecordPlaintext + kRecordTagBytes ||
      end_ - begin_ >= kRecordHeaderBytes + sealed) {
    return Result::kNeedMore;
  }
  size_t length = sealed - kRecordTagBytes;
  if (length > room || length < kReceiveIntoMin) return Result::kNeedMore;
  unsigned char header[kRecordHeaderBytes];
  std::memcpy(header, buffer_.data() + begin_, sizeof header);
  // What has arrived of the record goes where the rest will.
  uint8_t tag[kRecordTagBytes];
  size_t have = end_ - begin_ - kRecordHeaderBytes;
  size_t body = std::min(have, length);
  std::memcpy(into, buffer_.data() + begin_ + kRecordHeaderBytes, body);
  size_t tag_have = have - body;
  std::memcpy(tag, buffer_.data() + begin_ + kRecordHeaderBytes + body, tag_have);
  begin_ = end_ = 0;
  if (buffer_.size() < kRecordHeaderBytes) buffer_.resize(kRecordHeaderBytes);
  try {
    while (tag_have < kRecordTagBytes) {
      iovec iov[3] = {{into + body, length - body},
                      {tag + tag_have, kRecordTagBytes - tag_have},
                      {buffer_.data(), kRecordHeaderBytes}};
      auto n = static_cast<size_t>(receive(context, iov, 3));
      size_t to_body = std::min(n, length - body);
      body += to_body;
      n -= to_body;
      size_t to_tag = std::min(n, kRecordTagBytes - tag_have);
      tag_have += to_tag;
      end_ = n - to_tag;  // the next record's header, or the first bytes of it
    }
  } catch (...) {
    // Cut inside the record: the record is lost, and so is the connection.
    bad_ = true;
    error_ = fmt::format("connection cut inside record {}", counter_);
    sodium_memzero(into, body);
    throw;
  }
  unsigned char nonce[kNonceBytes];
  Nonce(counter_, nonce);
  if (!aead_.OpenDetached(into, into, length, tag, header, kRecordHeaderBytes, nonce)) {
    bad_ = true;
    error_ = fmt::format("record {} failed to authenticate (tampered, replayed or out of order)",
                         counter_);
    return Result::kBad;
  }
  ++counter_;
  *plain = std::string_view(reinterpret_cast<const char*>(into), length);
  return Result::kRecord;
}

namespace {

constexpr size_t kReceiveChunk = 128 << 10;
constexpr size_t kWholeRecord = kRecordHeaderBytes + kMaxRecordPlaintext + kRecordTagBytes;
constexpr int kPairBuffer = 4 << 20;
// Once the consumer has closed its end and the peer has all it wrote, how long the peer
// has to end its direction too, for a clean end rather than a reset.
constexpr auto kLinger = std::chrono::seconds(10);
// While the peer's kernel acknowledges the last bytes, how often to look: from every 5 ms
// to every second for a peer whose reader is slow (a job's last output for a mosrun that
// is behind may wait long; the bytes are owed all the same).
constexpr int kAckPollMs = 5;
constexpr int kAckPollMaxMs = 1000;

class Pump {
 public:
  Pump(Fd tcp, Fd local, std::unique_ptr<RecordSealer> sealer,
       std::unique_ptr<RecordOpener> opener, std::string carried, bool read_ended, std::string who)
      : tcp_(std::move(tcp)),
        local_(std::move(local)),
        sealer_owned_(std::move(sealer)),
        opener_owned_(std::move(opener)),
        sealer_(*sealer_owned_),
        opener_(*opener_owned_),
        who_(std::move(who)),
        carried_(std::move(carried)) {
    // What a SecureStream had opened but not yet handed to its reader goes first.
    to_local_ = carried_;
    tcp_read_done_ = read_ended;
  }

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
          // Reset by the peer (it closed with these bytes unread) or cut: nothing more can
          // be sent, but what the peer sent before is still in the socket and goes to the
          // consumer (a job's last output, its exit) before its end closes.
          spdlog::debug("peer {}: sending: {}; delivering what was received", who_,
                        std::strerror(errno));
          SendingBroken();
          progress = true;
          break;
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
          if (n < 0) SendingBroken();  // a reset or a timed out connection
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
        // Data for a consumer that closed its end is dropped, and, as TCP would, the
        // connection is reset so that the peer's writes fail too; but only once what the
        // consumer wrote before it closed has reached the peer, since a reset discards
        // whatever is still unsent or unacknowledged (a job's last output, its exit).
        to_local_at_ = to_local_.size();
        reset_pending_ = true;
        progress = true;
      }
      if (reset_pending_ && Delivered()) {
        linger abort{1, 0};
        ::setsockopt(tcp_.get(), SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
        return;
      }
      if (tcp_read_done_ && ToLocal() == 0 && !local_write_shut_ && !local_gone_) {
        ::shutdown(local_.get(), SHUT_WR);
        local_write_shut_ = true;
      }
      if (tcp_write_shut_ && tcp_read_done_ && ToLocal() == 0) return;  // both ended
      // Waiting for the peer's kernel to take the last bytes: no limit but the connection's
      // own (a close now would drop them); once it has them all, the peer has kLinger.
      bool awaiting_acks = (local_gone_ || reset_pending_) && !Delivered();
      if (local_gone_ && !awaiting_acks &&
          linger_until == std::chrono::steady_clock::time_point{}) {
        linger_until = std::chrono::steady_clock::now() + kLinger;
      }
      if (progress) {
        ack_poll_ms_ = kAckPollMs;
        continue;
      }

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
      // Waiting for the peer to acknowledge the last bytes: look again soon, then seldom.
      int timeout = -1;
      if (awaiting_acks && local_read_done_ && ToTcp() == 0) {
        timeout = ack_poll_ms_;
        ack_poll_ms_ = std::min(ack_poll_ms_ * 2, kAckPollMaxMs);
      }
      if (linger_until != std::chrono::steady_clock::time_point{}) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        linger_until - std::chrono::steady_clock::now())
                        .count();
        if (left <= 0) return;
        timeout = timeout < 0 ? static_cast<int>(left) : std::min(timeout, static_cast<int>(left));
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
          SendingBroken();
        }
      }
    }
  }

  // Ends the connection at once (both sockets close when the pump ends).
  void Abort(const std::string& why) { spdlog::error("peer {}: {}", who_, why); }

  // Nothing more can be sent: what the consumer writes from now on is not read, and no
  // acknowledgement is awaited. Receiving goes on.
  void SendingBroken() {
    local_read_done_ = true;
    tcp_write_shut_ = true;
    tcp_broken_ = true;
    to_tcp_length_ = 0;
    to_tcp_at_ = 0;
  }

  // All the consumer wrote has reached the peer's kernel, or never can: a close or a
  // reset now loses nothing that could still arrive.
  bool Delivered() const {
    return local_read_done_ && ToTcp() == 0 && (tcp_broken_ || Unacknowledged() == 0);
  }

  // Bytes sent to the peer that it has not acknowledged yet (or not yet sent).
  size_t Unacknowledged() const {
    int queued = 0;
    if (::ioctl(tcp_.get(), SIOCOUTQ, &queued) != 0) return 0;
    return static_cast<size_t>(queued);
  }

  Fd tcp_;
  Fd local_;
  std::unique_ptr<RecordSealer> sealer_owned_;
  std::unique_ptr<RecordOpener> opener_owned_;
  RecordSealer& sealer_;
  RecordOpener& opener_;
  std::string who_;
  std::string carried_;
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
  bool reset_pending_ = false;  // the consumer is gone and the peer still sends: reset once sent
  bool tcp_broken_ = false;     // reset, cut or timed out: nothing can be sent
  int ack_poll_ms_ = kAckPollMs;
};

// The pump's half of a channel: the consumer's end is returned.
Fd StartPump(Fd tcp, std::unique_ptr<RecordSealer> sealer, std::unique_ptr<RecordOpener> opener,
             std::string carried, bool read_ended, const std::string& who) {
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
  auto pump = std::make_unique<Pump>(std::move(tcp), std::move(local), std::move(sealer),
                                     std::move(opener), std::move(carried), read_ended, who);
  // A thread that cannot be had throws here (std::system_error): the caller loses this
  // connection only, and the pump's sockets close with it.
  try {
    std::thread([pump = std::move(pump)] { pump->Run(); }).detach();
  } catch (const std::system_error& e) {
    throw SystemError(e.code().value(), fmt::format("no thread for the connection to {}", who));
  }
  return consumer;
}

}  // namespace

Fd StartSecureChannel(Fd tcp, const PeerSession& session, std::string who) {
  return SecureStream::IntoChannel(std::make_unique<SecureStream>(std::move(tcp), session, who));
}

// ---------------------------------------------------------------------------------------
// SecureStream

namespace {
// Records sealed before one send: big enough that a send is worth its call, small enough
// that the receiver starts opening while the sender still seals (two cores at work).
constexpr size_t kRecordsPerSend = 4;
// A piece of a write at least this large starts a record of its own (see Write).
constexpr size_t kLargePiece = 16 << 10;
}  // namespace

SecureStream::SecureStream(Fd fd, std::string who)
    : tcp_(std::move(fd)), who_(std::move(who)), plaintext_(true) {}

SecureStream::SecureStream(Fd tcp, const PeerSession& session, std::string who)
    : tcp_(std::move(tcp)), who_(std::move(who)), plaintext_(session.plaintext) {
  int flags = ::fcntl(tcp_.get(), F_GETFL);
  if (flags >= 0 && (flags & O_NONBLOCK)) ::fcntl(tcp_.get(), F_SETFL, flags & ~O_NONBLOCK);
  if (!plaintext_) {
    sealer_ = std::make_unique<RecordSealer>(session.cipher, session.send_key);
    opener_ = std::make_unique<RecordOpener>(session.cipher, session.receive_key);
  }
}

std::unique_ptr<SecureStream> SecureStream::Plain(Fd fd, std::string who) {
  return std::unique_ptr<SecureStream>(new SecureStream(std::move(fd), std::move(who)));
}

SecureStream::~SecureStream() {
  if (!tcp_.valid() || plaintext_ || write_ended_ || broken_) return;
  // The end record, so that the peer tells this end from a cut; without waiting for a
  // peer that reads nothing more (then it sees a cut, which it is).
  try {
    uint8_t record[kRecordHeaderBytes + kRecordTagBytes];
    size_t n = sealer_->SealInPlace(record, 0);
    ::send(tcp_.get(), record, n, MSG_NOSIGNAL | MSG_DONTWAIT);
  } catch (const std::exception&) {
  }
}

void SecureStream::Broken() {
  broken_ = true;
}

size_t SecureStream::buffered() const {
  return plain_.size() + (opener_ ? opener_->buffered() : 0);
}

size_t SecureStream::Read(void* data, size_t size) {
  if (size == 0) return 0;
  if (plaintext_) {
    for (;;) {
      ssize_t n = ::recv(tcp_.get(), data, size, 0);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      throw SystemError(errno, fmt::format("peer {}: receive", who_));
    }
  }
  if (!plain_.empty()) {
    size_t n = std::min(size, plain_.size());
    std::memcpy(data, plain_.data(), n);
    plain_.remove_prefix(n);
    return n;
  }
  if (read_ended_) return 0;
  auto* into = static_cast<uint8_t*>(data);
  auto bad = [this] {
    // The connection ends here, both ways, as the peer must learn at once.
    Broken();
    ::shutdown(tcp_.get(), SHUT_RDWR);
    return Error(ErrorKind::kInvalidInput,
                 fmt::format("peer {}: {}; connection unusable", who_, opener_->error()));
  };
  for (;;) {
    std::string_view opened;
    auto result = opener_->OpenInto(into, size, &opened);
    if (result == RecordOpener::Result::kNeedMore && size >= kReceiveIntoMin) {
      // The bulk of a transfer: the rest of a large record straight into the caller's
      // memory, opened there.
      result = opener_->ReceiveInto(into, size, &SecureStream::ReceiveSome, this, &opened);
    }
    switch (result) {
      case RecordOpener::Result::kRecord:
        if (opened.data() == data) return opened.size();
        {
          size_t n = std::min(size, opened.size());
          std::memcpy(data, opened.data(), n);
          plain_ = opened.substr(n);
          return n;
        }
      case RecordOpener::Result::kEnd:
        read_ended_ = true;
        return 0;
      case RecordOpener::Result::kBad:
        throw bad();
      case RecordOpener::Result::kNeedMore:
        break;
    }
    // At least a whole record's room, up to a chunk: the buffer (four chunks) is compacted
    // about once per three chunks, moving less than a record. A reader of more than a
    // record with nothing buffered takes only the next record's header, so that the record
    // itself comes straight into its memory (above).
    size_t room = 0;
    uint8_t* space = opener_->SpaceAtLeast(kWholeRecord, kReceiveChunk, &room);
    if (size > kMaxRecordPlaintext && opener_->buffered() == 0) room = kRecordHeaderBytes;
    iovec iov{space, room};
    opener_->Commit(static_cast<size_t>(ReceiveSome(this, &iov, 1)));
  }
}

ssize_t SecureStream::ReceiveSome(void* context, iovec* iov, int count) {
  auto* self = static_cast<SecureStream*>(context);
  for (;;) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(count);
    ssize_t n = ::recvmsg(self->tcp_.get(), &msg, 0);
    if (n > 0) return n;
    if (n < 0 && errno == EINTR) continue;
    std::string why = n == 0 ? "closed without its end record" : std::strerror(errno);
    self->Broken();
    throw Error(ErrorKind::kDisconnected,
                fmt::format("peer {}: connection cut ({})", self->who_, why));
  }
}

void SecureStream::SendAll(const void* data, size_t size) {
  iovec piece{const_cast<void*>(data), size};
  SendAll(&piece, 1);
}

void SecureStream::SendAll(iovec* iov, size_t count) {
  try {
    homeward::SendAll(tcp_.get(), iov, count, "send");
  } catch (const Error& e) {
    Broken();
    throw SystemError(e.sys_errno(), fmt::format("peer {}: send", who_));
  }
}

void SecureStream::Write(const void* data, size_t size) {
  iovec iov{const_cast<void*>(data), size};
  Write(&iov, 1);
}

void SecureStream::Write(const iovec* iov, size_t count) {
  std::lock_guard lock(write_mutex_);
  if (write_ended_) throw Error(ErrorKind::kFailed, fmt::format("peer {}: write after end", who_));
  if (plaintext_) {
    std::vector<iovec> left(iov, iov + count);
    SendAll(left.data(), left.size());
    return;
  }
  size_t total = 0;
  for (size_t i = 0; i < count; ++i) total += iov[i].iov_len;
  if (total == 0) return;  // an empty record would end the direction
  if (send_buffer_.empty()) send_buffer_.resize(kRecordsPerSend * kWholeRecord);
  size_t index = 0, offset = 0, filled = 0;
  while (total > 0) {
    size_t length = std::min(total, kMaxRecordPlaintext);
    uint8_t* record = send_buffer_.data() + filled;
    while (index < count && offset == iov[index].iov_len) ++index, offset = 0;
    const auto* piece = static_cast<const uint8_t*>(iov[index].iov_base) + offset;
    if (iov[index].iov_len - offset >= length) {
      // The usual case (a chunk of a file, a read reply): sealed from where it lies.
      filled += sealer_->SealFrom(record, piece, length);
      offset += length;
    } else {
      // A record across pieces (a frame's table and a small message): gathered first, but
      // cut where a large piece begins (a file's chunk after its frame's table and
      // header), which is then sealed from where it lies rather than copied, and opened
      // straight into the reader's buffer at the other end.
      uint8_t* at = record + kRecordHeaderBytes;
      size_t gathered = 0;
      while (gathered < length) {
        while (offset == iov[index].iov_len) ++index, offset = 0;
        size_t left = iov[index].iov_len - offset;
        if (gathered > 0 && offset == 0 && left >= kLargePiece) break;
        size_t n = std::min(length - gathered, left);
        std::memcpy(at, static_cast<const uint8_t*>(iov[index].iov_base) + offset, n);
        at += n;
        offset += n;
        gathered += n;
      }
      filled += sealer_->SealInPlace(record, gathered);
      length = gathered;
    }
    if (damage_next_) {
      record[kRecordHeaderBytes] ^= 0x5a;  // the first byte of its ciphertext
      damage_next_ = false;
    }
    total -= length;
    if (send_buffer_.size() - filled < kWholeRecord) {
      SendAll(send_buffer_.data(), filled);
      filled = 0;
    }
  }
  if (filled > 0) SendAll(send_buffer_.data(), filled);
}

void SecureStream::CloseWrite() {
  std::lock_guard lock(write_mutex_);
  if (write_ended_) return;
  write_ended_ = true;
  if (!plaintext_) {
    uint8_t record[kRecordHeaderBytes + kRecordTagBytes];
    SendAll(record, sealer_->SealInPlace(record, 0));
  }
  ::shutdown(tcp_.get(), SHUT_WR);
}

void SecureStream::DamageNextRecord() {
  std::lock_guard lock(write_mutex_);
  damage_next_ = !plaintext_;
}

void SecureStream::Shutdown() {
  ::shutdown(tcp_.get(), SHUT_RDWR);
}

Fd SecureStream::IntoChannel(std::unique_ptr<SecureStream> stream) {
  if (stream->plaintext_) {
    int flags = ::fcntl(stream->tcp_.get(), F_GETFL);
    ::fcntl(stream->tcp_.get(), F_SETFL, flags & ~O_NONBLOCK);
    return std::move(stream->tcp_);
  }
  std::string carried(stream->plain_);
  stream->write_ended_ = true;  // the pump ends it now
  return StartPump(std::move(stream->tcp_), std::move(stream->sealer_), std::move(stream->opener_),
                   std::move(carried), stream->read_ended_, stream->who_);
}

}  // namespace homeward
