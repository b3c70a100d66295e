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
// The consumers of peer connections (FrameStream, image streams, the libuv relay) all take
// a file descriptor; the SecureChannel gives them one end of a socket pair and runs a pump
// thread that seals what they write into records on the TCP socket and opens the records
// from TCP into their end. A record that fails to authenticate ends the connection, with
// a log line that says so.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fd.h"
#include "peer_auth.h"

namespace homeward {

inline constexpr size_t kRecordHeaderBytes = 4;
inline constexpr size_t kRecordTagBytes = 16;
// The most plaintext in one record.
inline constexpr size_t kMaxRecordPlaintext = 64 << 10;

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

 private:
  PeerCipher cipher_;
  std::array<uint8_t, kPeerSessionKeyBytes> key_;
  uint64_t counter_ = 0;
};

// Opens one direction's records from bytes as they arrive.
class RecordOpener {
 public:
  enum class Result { kNeedMore, kRecord, kEnd, kBad };
  RecordOpener(PeerCipher cipher, const std::array<uint8_t, kPeerSessionKeyBytes>& key);

  // Room for received bytes: at most `max` bytes at data(); then Commit(n).
  uint8_t* Space(size_t max);
  void Commit(size_t n);
  void Feed(std::string_view bytes);  // Space + copy + Commit
  // Opens the next complete record into `plain` (appended). kBad: error() says why; the
  // connection must end.
  Result Next(std::string& plain);
  // The same, opened in place: `plain` points into the buffer, valid until the next
  // Space() or Open().
  Result Open(std::string_view* plain);
  const std::string& error() const { return error_; }
  // Bytes received but not yet opened.
  size_t buffered() const { return end_ - begin_; }

 private:
  PeerCipher cipher_;
  std::array<uint8_t, kPeerSessionKeyBytes> key_;
  uint64_t counter_ = 0;
  std::vector<uint8_t> buffer_;
  size_t begin_ = 0;
  size_t end_ = 0;
  bool bad_ = false;
  std::string error_;
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
