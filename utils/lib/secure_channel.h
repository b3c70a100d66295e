// The data layer of a peer connection, after the handshake (peer_auth.h): AEAD records
// under the connection's per-direction keys, and the SecureChannel that carries a
// consumer's plain byte stream over them.
//
// A record on the wire: [u32 big-endian length N][N bytes: ciphertext | 16-byte tag],
// sealed with ChaCha20-Poly1305 (IETF) or, when both sides have it in hardware,
// AES-256-GCM. The nonce is the direction's record counter (64 bits, little-endian, in a
// 96-bit nonce), never sent: a record replayed, dropped, reordered or moved to the other
// direction fails to authenticate, like a tampered one. The length is the additional
// data, so it cannot be changed either. A record with no plaintext is the end of the
// direction (a half-close), so a cut connection is told apart from an ended one.
//
// Two ways to use a connection:
// - SecureStream, for the bulk paths (homefs's FrameStream at both ends, the migration
//   image stream): blocking Read and Write on the caller's thread that seal straight from
//   the caller's bytes into the send buffer and open records in the receive buffer,
//   straight into the caller's memory when a whole record fits. No thread, no extra copy.
// - The SecureChannel, for consumers that need a plain descriptor (the libuv job relay,
//   capnp's fd readers): one end of a socket pair, with a pump thread that seals what they
//   write into records on the TCP socket and opens the records from TCP into their end.
//   Every byte crosses the pair too, so it costs about twice the CPU of a SecureStream.
//   A SecureStream can become a channel midway (IntoChannel), keeping its counters.
// A record that fails to authenticate ends the connection, with an error that says so.
#pragma once

#include <sys/uio.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "aes_gcm.h"
#include "fd.h"
#include "peer_auth.h"

namespace homeward {

inline constexpr size_t kRecordHeaderBytes = 4;
inline constexpr size_t kRecordTagBytes = 16;
// The most plaintext in one record.
inline constexpr size_t kMaxRecordPlaintext = 64 << 10;

// One direction's AEAD under its key: libipsec-mb's AES-256-GCM on 512-bit vectors
// (aes_gcm.h) when the CPU has VAES and VPCLMULQDQ, else OpenSSL's EVP (whose AES-GCM and ChaCha20-Poly1305 run
// two to three times as fast as libsodium's here); the records are the same bytes either
// way. Move-only; the key schedule is wiped when it goes.
class RecordAead {
 public:
  RecordAead(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key);
  RecordAead(RecordAead&&) noexcept;
  RecordAead& operator=(RecordAead&&) noexcept;
  ~RecordAead();
  // `out` gets `length` bytes of ciphertext and the tag; `plain` may be `out` itself.
  void Seal(uint8_t* out, const uint8_t* plain, size_t length, const uint8_t* ad, size_t ad_length,
            const uint8_t* nonce);
  // `sealed` is ciphertext and tag; `out` gets the plaintext (and is wiped if it does not
  // authenticate); it may be `sealed` itself. False when it does not authenticate.
  bool Open(uint8_t* out, const uint8_t* sealed, size_t sealed_length, const uint8_t* ad,
            size_t ad_length, const uint8_t* nonce);
  // The same with the tag apart from the `length` bytes of ciphertext.
  bool OpenDetached(uint8_t* out, const uint8_t* ciphertext, size_t length, const uint8_t* tag,
                    const uint8_t* ad, size_t ad_length, const uint8_t* nonce);

 private:
  std::unique_ptr<AesGcm256> vector_;  // AES-256-GCM when the CPU has the instructions
  void* encrypt_ = nullptr;            // else EVP_CIPHER_CTX*
  void* decrypt_ = nullptr;
};

// Tests and benchmarks: false makes connections set up from now on use OpenSSL's AES-GCM
// even where the vector one runs (the same bytes), to test and measure that path too.
void UseVectorAesForTesting(bool use);

// Seals one direction's records. Plaintext sessions (a benchmark's baseline) pass bytes
// through unchanged and have no records.
class RecordSealer {
 public:
  RecordSealer(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key);
  // Appends the record of `plain` (at most kMaxRecordPlaintext bytes; empty = the end).
  void Seal(std::string_view plain, std::string& out);
  // Seals in place: `record` holds kRecordHeaderBytes of room, `length` bytes of plaintext
  // and kRecordTagBytes of room after them; returns the record's size.
  size_t SealInPlace(uint8_t* record, size_t length);
  // Seals `length` bytes at `plain` (anywhere, or in place at record + header) into
  // `record`, which has room for the whole record; returns the record's size.
  size_t SealFrom(uint8_t* record, const uint8_t* plain, size_t length);

 private:
  RecordAead aead_;
  uint64_t counter_ = 0;
};

// Opens one direction's records from bytes as they arrive.
class RecordOpener {
 public:
  enum class Result { kNeedMore, kRecord, kEnd, kBad };
  RecordOpener(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key);

  // Room for received bytes: at most `max` bytes at data(); then Commit(n).
  uint8_t* Space(size_t max);
  // Room for at least `min` and up to `max` bytes (*room says how many) without moving
  // what is buffered unless less than `min` is left at the end: a reader that receives
  // big chunks then seldom copies a partial record to the front.
  uint8_t* SpaceAtLeast(size_t min, size_t max, size_t* room);
  void Commit(size_t n);
  void Feed(std::string_view bytes);  // Space + copy + Commit
  // Opens the next complete record into `plain` (appended). kBad: error() says why; the
  // connection must end.
  Result Next(std::string& plain);
  // The same, opened in place: `plain` points into the buffer, valid until the next
  // Space() or Open().
  Result Open(std::string_view* plain);
  // The same, but when the record's plaintext fits in `room` bytes it is opened straight
  // into `into` (and `plain` points there): one copy less for a reader with a buffer.
  Result OpenInto(uint8_t* into, size_t room, std::string_view* plain);
  // Receives the rest of the next record straight into the reader's memory and opens it
  // there, in place: for a reader with room for the record's plaintext when its header has
  // arrived but not the whole record (the bulk of a transfer). What had arrived of the
  // record is moved to `into`; `receive` (a scatter read of at least one byte that throws
  // on a cut) then fills the rest of the ciphertext there, the tag here, and the next
  // record's header, so that it too can come straight. The kernel's copy then lands where
  // the reader wants the bytes and the cipher works on them while they are in the cache:
  // no staging buffer, no second copy. kNeedMore when this does not apply (nothing has
  // been taken then); kRecord with `plain` at `into`; kBad as for Open (`into` is wiped).
  using Receiver = ssize_t (*)(void* context, iovec* iov, int count);
  Result ReceiveInto(uint8_t* into, size_t room, Receiver receive, void* context,
                     std::string_view* plain);
  const std::string& error() const { return error_; }
  // Bytes received but not yet opened.
  size_t buffered() const { return end_ - begin_; }

 private:
  RecordAead aead_;
  uint64_t counter_ = 0;
  std::vector<uint8_t> buffer_;
  size_t begin_ = 0;
  size_t end_ = 0;
  bool bad_ = false;
  std::string error_;
};

// An authenticated connection read and written in place (see above). Read and Write may
// run on two threads at once (one reader; writers take a lock); Shutdown from any thread.
class SecureStream {
 public:
  // Over the TCP socket `tcp` (made blocking) with the session's keys; with a plaintext
  // session (a benchmark's baseline) bytes pass through unchanged.
  SecureStream(Fd tcp, const PeerSession& session, std::string who);
  // A stream in clear over any connected descriptor: the services' unit tests and the
  // fuzzers drive the same code over a socket pair.
  static std::unique_ptr<SecureStream> Plain(Fd fd, std::string who);
  SecureStream(const SecureStream&) = delete;
  SecureStream& operator=(const SecureStream&) = delete;
  // Ends this direction (the end record), if not yet done, and closes the connection.
  ~SecureStream();

  // Reads at least one and at most `size` bytes, blocking; 0 once the peer has ended its
  // direction with its end record. Throws Error(kDisconnected) when the connection is cut
  // without that record (a truncated stream is never taken for an ended one) and
  // Error(kInvalidInput) when a record fails to authenticate (tampered, replayed,
  // reordered, dropped); the connection is of no further use then.
  size_t Read(void* data, size_t size);
  // Writes all the bytes, sealed in records of at most kMaxRecordPlaintext bytes, in one
  // send per few records. Throws Error naming the cause when the connection is broken.
  void Write(const iovec* iov, size_t count);
  void Write(const void* data, size_t size);
  // Ends this direction: the end record, then a TCP half-close. Reads go on.
  void CloseWrite();
  // The fault point stream-corrupt: the next Write flips a byte of its first record once
  // sealed, so that the peer refuses the record as tampered, as it would one altered on
  // the wire.
  void DamageNextRecord();
  // Breaks the connection at once from any thread: blocked calls return with an error.
  void Shutdown();
  // The TCP socket, for its options and for poll (readable when Read may not block, but
  // only if buffered() is 0).
  int fd() const { return tcp_.get(); }
  // Plaintext opened or received but not yet returned by Read.
  size_t buffered() const;
  bool plaintext() const { return plaintext_; }
  const std::string& who() const { return who_; }
  // Carries on as a SecureChannel (above): what was received but not read yet goes to
  // the returned descriptor first, and both directions keep their counters.
  static Fd IntoChannel(std::unique_ptr<SecureStream> stream);

 private:
  SecureStream(Fd fd, std::string who);
  // Sends all of it on the connection; a failure marks the stream broken and names the
  // peer. `iov` is used up.
  void SendAll(const void* data, size_t size);
  void SendAll(iovec* iov, size_t count);
  // One receive of at least a byte into `iov` (a RecordOpener::Receiver); throws
  // Error(kDisconnected) when the connection is cut.
  static ssize_t ReceiveSome(void* context, iovec* iov, int count);
  void Broken();

  Fd tcp_;
  std::string who_;
  bool plaintext_;
  std::mutex write_mutex_;
  std::unique_ptr<RecordSealer> sealer_;
  std::unique_ptr<RecordOpener> opener_;
  std::vector<uint8_t> send_buffer_;  // sealed records, sent in one call
  std::vector<uint8_t> gather_;       // a record's plaintext gathered from several pieces
  std::string_view plain_;            // opened plaintext not yet read (in the opener's buffer)
  bool write_ended_ = false;
  bool damage_next_ = false;  // under write_mutex_
  bool read_ended_ = false;
  // The connection is of no further use (a bad record, a cut, a failed send): set by the
  // reader or a writer, so atomic.
  std::atomic<bool> broken_{false};
};

// Carries a consumer's plain stream over the authenticated TCP socket `tcp` with the
// session's keys, on a thread of its own that owns `tcp`; returns the consumer's end (a
// blocking AF_UNIX stream socket). Closing or shutting down the consumer's end ends the
// connection (its write side: a half-close record). When the peer ends, is cut, or sends
// a record that fails to authenticate, the consumer's end is closed or shut down for
// writing. With a plaintext session (a benchmark's baseline) returns `tcp` itself.
// Throws Error when no socket pair or thread can be had.
Fd StartSecureChannel(Fd tcp, const PeerSession& session, std::string who);

}  // namespace homeward
