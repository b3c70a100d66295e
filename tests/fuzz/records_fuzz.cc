// Fuzzes the record layer of peer connections (utils/lib/secure_channel: SecureStream's
// Read over RecordOpener), the first thing that parses a peer's bytes after the handshake.
// The first input byte picks the cipher, the reader's buffer size and the mode:
// - raw (a stranger's bytes): the rest goes to the stream as it is; nothing may be read
//   but an error (no record authenticates without the key).
// - sealed (a peer with the key, then the network): the rest is pieces (a 2-byte length,
//   the bytes; the last one's bytes repeated up to its length, so that records of 8 KiB
//   and more, which a large reader receives straight into its buffer, come from small
//   inputs) sealed honestly, then one byte of the wire flipped where the input says;
//   what is read must be the pieces' bytes up to the damaged record, and then an error.
// A stream that is cut (no end record) must be an error, never an end.
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "error.h"
#include "fuzz_util.h"
#include "secure_channel.h"

using namespace homeward;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  uint8_t mode = data[0];
  PeerCipher cipher = (mode & 1) ? PeerCipher::kAes256Gcm : PeerCipher::kChaCha20Poly1305;
  bool sealed = (mode & 2) != 0;
  bool ended = (mode & 4) != 0;  // an end record after the pieces
  size_t read_size = size_t{1} << ((mode >> 3) % 18);  // 1 byte .. 128 KiB reads
  PeerSession session;
  session.cipher = cipher;
  session.receive_key.fill(0x5a);
  std::string wire, expected;
  size_t flip = SIZE_MAX;
  if (!sealed) {
    wire.assign(reinterpret_cast<const char*>(data + 1), size - 1);
  } else {
    RecordSealer sealer(cipher, session.receive_key);
    flip = (size_t{data[1]} << 8 | data[2]);
    size_t at = 3;
    while (at + 2 <= size) {
      size_t length = size_t{data[at]} << 8 | data[at + 1];
      at += 2;
      if (length == 0 || at == size) continue;  // an empty record would be the end
      // A piece longer than the input left is that rest repeated: records of up to 64 KiB
      // from small inputs, which a large reader receives straight into its buffer.
      std::string piece;
      while (piece.size() < length) {
        piece.append(reinterpret_cast<const char*>(data + at),
                     std::min(length - piece.size(), size - at));
      }
      at += std::min(length, size - at);
      sealer.Seal(piece, wire);
      expected += piece;
    }
    if (ended) sealer.Seal({}, wire);
    if (flip < wire.size()) {
      wire[flip] ^= 0x01;
    } else {
      flip = SIZE_MAX;
    }
  }
  fuzz::SocketWithBytes socket(reinterpret_cast<const uint8_t*>(wire.data()), wire.size());
  int fd = ::dup(socket.fd());
  SecureStream stream(Fd::Adopt(fd), session, "fuzz");
  std::string got, buffer(read_size, '\0');
  bool clean_end = false;
  try {
    for (;;) {
      size_t n = stream.Read(buffer.data(), buffer.size());
      if (n == 0) {
        clean_end = true;
        break;
      }
      got.append(buffer.data(), n);
    }
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidInput && e.kind() != ErrorKind::kDisconnected) {
      fuzz::Broken("a record error is neither invalid input nor a cut");
    }
  }
  if (!sealed) {
    if (!got.empty() || clean_end) fuzz::Broken("bytes without the key were read as records");
    return 0;
  }
  if (clean_end && (!ended || flip != SIZE_MAX)) fuzz::Broken("a cut or damaged stream ended");
  if (flip == SIZE_MAX && got != expected) fuzz::Broken("honest records read wrong");
  if (got.size() > expected.size() || expected.compare(0, got.size(), got) != 0) {
    fuzz::Broken("a record read is not what was sealed");
  }
  return 0;
}
