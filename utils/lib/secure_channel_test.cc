// The record layer and the secure channel: records round-trip; a tampered, replayed,
// reordered or misdirected record is refused; a channel carries both directions, ends
// each on its own and closes on a record that fails to authenticate.
#include "secure_channel.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>
#include <thread>

#include "error.h"

namespace homeward {
namespace {

using Key = std::array<uint8_t, kPeerSessionKeyBytes>;

Key MakeKey(uint8_t fill) {
  Key key;
  key.fill(fill);
  return key;
}

std::string Random(size_t n) {
  std::string s(n, '\0');
  randombytes_buf(s.data(), n);
  return s;
}

class Records : public testing::TestWithParam<PeerCipher> {
 protected:
  void SetUp() override {
    ASSERT_GE(sodium_init(), 0);
    if (GetParam() == PeerCipher::kAes256Gcm && !crypto_aead_aes256gcm_is_available()) {
      GTEST_SKIP() << "no AES-GCM on this CPU";
    }
  }
};

TEST_P(Records, RoundTrip) {
  RecordSealer sealer(GetParam(), MakeKey(1));
  RecordOpener opener(GetParam(), MakeKey(1));
  std::string wire;
  std::string a = Random(1000), b = Random(kMaxRecordPlaintext);
  sealer.Seal(a, wire);
  sealer.Seal(b, wire);
  sealer.Seal({}, wire);
  EXPECT_EQ(wire.size(), a.size() + b.size() + 3 * (kRecordHeaderBytes + kRecordTagBytes));
  EXPECT_EQ(wire.find(a.substr(0, 32)), std::string::npos);  // not in clear
  // Fed a byte at a time, the records still come out whole.
  std::string plain;
  std::vector<RecordOpener::Result> results;
  for (char c : wire) {
    opener.Feed(std::string_view(&c, 1));
    for (;;) {
      auto r = opener.Next(plain);
      if (r == RecordOpener::Result::kNeedMore) break;
      results.push_back(r);
    }
  }
  EXPECT_EQ(plain, a + b);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0], RecordOpener::Result::kRecord);
  EXPECT_EQ(results[1], RecordOpener::Result::kRecord);
  EXPECT_EQ(results[2], RecordOpener::Result::kEnd);
}

TEST_P(Records, TamperedRecordIsRefused) {
  for (size_t at : {size_t{2}, size_t{4}, size_t{50}, size_t{4 + 100 + 3}}) {
    RecordSealer sealer(GetParam(), MakeKey(1));
    RecordOpener opener(GetParam(), MakeKey(1));
    std::string wire;
    sealer.Seal(Random(100), wire);
    wire[at] ^= 0x10;  // the length, the ciphertext, the tag
    opener.Feed(wire);
    std::string plain;
    auto r = opener.Next(plain);
    if (at < kRecordHeaderBytes && r == RecordOpener::Result::kNeedMore) continue;  // longer
    EXPECT_EQ(r, RecordOpener::Result::kBad) << "byte " << at;
    EXPECT_TRUE(plain.empty());
    // Once refused, nothing more is opened.
    EXPECT_EQ(opener.Next(plain), RecordOpener::Result::kBad);
  }
}

TEST_P(Records, ReplayedRecordIsRefused) {
  RecordSealer sealer(GetParam(), MakeKey(1));
  RecordOpener opener(GetParam(), MakeKey(1));
  std::string first;
  sealer.Seal("hello", first);
  opener.Feed(first);
  std::string plain;
  ASSERT_EQ(opener.Next(plain), RecordOpener::Result::kRecord);
  opener.Feed(first);  // the same record again
  EXPECT_EQ(opener.Next(plain), RecordOpener::Result::kBad);
  EXPECT_NE(opener.error().find("failed to authenticate"), std::string::npos);
  EXPECT_EQ(plain, "hello");
}

TEST_P(Records, ReorderedRecordIsRefused) {
  RecordSealer sealer(GetParam(), MakeKey(1));
  RecordOpener opener(GetParam(), MakeKey(1));
  std::string one, two;
  sealer.Seal("one", one);
  sealer.Seal("two", two);
  opener.Feed(two);
  std::string plain;
  EXPECT_EQ(opener.Next(plain), RecordOpener::Result::kBad);
}

TEST_P(Records, DroppedRecordIsRefused) {
  RecordSealer sealer(GetParam(), MakeKey(1));
  RecordOpener opener(GetParam(), MakeKey(1));
  std::string one, two, end;
  sealer.Seal("one", one);
  sealer.Seal("two", two);
  sealer.Seal({}, end);
  opener.Feed(one);
  opener.Feed(end);  // "two" cut out: the end comes with the wrong counter
  std::string plain;
  EXPECT_EQ(opener.Next(plain), RecordOpener::Result::kRecord);
  EXPECT_EQ(opener.Next(plain), RecordOpener::Result::kBad);
}

TEST_P(Records, OtherKeyIsRefused) {
  // A record of the other direction (or another connection) does not open.
  RecordSealer sealer(GetParam(), MakeKey(1));
  RecordOpener opener(GetParam(), MakeKey(2));
  std::string wire;
  sealer.Seal("hello", wire);
  opener.Feed(wire);
  std::string plain;
  EXPECT_EQ(opener.Next(plain), RecordOpener::Result::kBad);
}

TEST_P(Records, OversizedLengthIsRefused) {
  RecordOpener opener(GetParam(), MakeKey(1));
  opener.Feed(std::string("\x7f\xff\xff\xff", 4));
  std::string plain;
  EXPECT_EQ(opener.Next(plain), RecordOpener::Result::kBad);
}

INSTANTIATE_TEST_SUITE_P(Ciphers, Records,
                         testing::Values(PeerCipher::kChaCha20Poly1305, PeerCipher::kAes256Gcm));

// Two channels joined by a socket pair standing for the TCP connection.
struct Link {
  Fd a;  // the client's consumer end
  Fd b;  // the server's consumer end
};

PeerSession Session(bool client, PeerCipher cipher = PeerCipher::kChaCha20Poly1305) {
  PeerSession s;
  s.cipher = cipher;
  s.send_key = MakeKey(client ? 1 : 2);
  s.receive_key = MakeKey(client ? 2 : 1);
  return s;
}

Link MakeLink(PeerCipher cipher = PeerCipher::kChaCha20Poly1305) {
  int wire[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, wire), 0);
  Link link;
  link.a = StartSecureChannel(Fd::Adopt(wire[0]), Session(true, cipher), "test client");
  link.b = StartSecureChannel(Fd::Adopt(wire[1]), Session(false, cipher), "test server");
  return link;
}

void WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    ASSERT_GT(n, 0) << std::strerror(errno);
    data.remove_prefix(static_cast<size_t>(n));
  }
}

std::string ReadToEnd(int fd) {
  std::string all;
  char buffer[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) return all;
    all.append(buffer, static_cast<size_t>(n));
  }
}

TEST(SecureChannel, CarriesBothDirectionsAtOnce) {
  for (PeerCipher cipher : {PeerCipher::kChaCha20Poly1305, PeerCipher::kAes256Gcm}) {
    if (cipher == PeerCipher::kAes256Gcm && !crypto_aead_aes256gcm_is_available()) continue;
    Link link = MakeLink(cipher);
    // Both sides write 8 MiB before reading: the channel must not deadlock.
    std::string up = Random(8 << 20), down = Random(8 << 20);
    std::string got_up, got_down;
    std::thread writer_a([&] {
      WriteAll(link.a.get(), up);
      ::shutdown(link.a.get(), SHUT_WR);
    });
    std::thread writer_b([&] {
      WriteAll(link.b.get(), down);
      ::shutdown(link.b.get(), SHUT_WR);
    });
    std::thread reader_b([&] { got_up = ReadToEnd(link.b.get()); });
    got_down = ReadToEnd(link.a.get());
    writer_a.join();
    writer_b.join();
    reader_b.join();
    EXPECT_TRUE(got_up == up);
    EXPECT_TRUE(got_down == down);
  }
}

TEST(SecureChannel, HalfCloseKeepsTheOtherDirection) {
  Link link = MakeLink();
  WriteAll(link.a.get(), "question");
  ::shutdown(link.a.get(), SHUT_WR);
  EXPECT_EQ(ReadToEnd(link.b.get()), "question");
  WriteAll(link.b.get(), "answer");
  link.b.Reset();
  EXPECT_EQ(ReadToEnd(link.a.get()), "answer");
}

TEST(SecureChannel, ClosingOneEndEndsTheOther) {
  Link link = MakeLink();
  WriteAll(link.a.get(), "last words");
  link.a.Reset();
  EXPECT_EQ(ReadToEnd(link.b.get()), "last words");
  // Writing to a peer that is gone fails, as on a closed TCP connection (at once or
  // once the channel has seen the close).
  bool failed = false;
  for (int i = 0; i < 200 && !failed; ++i) {
    failed = ::send(link.b.get(), "x", 1, MSG_NOSIGNAL) < 0;
    if (!failed) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(failed);
}

// Two channels over a real TCP connection on loopback: a reset, a half-close and what the
// kernels have acknowledged behave as between two nodes.
Link MakeTcpLink() {
  Fd listener = Fd::Adopt(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  EXPECT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), length), 0);
  EXPECT_EQ(::listen(listener.get(), 1), 0);
  EXPECT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length), 0);
  Fd client = Fd::Adopt(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&address), length), 0);
  Fd server = Fd::Adopt(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  Link link;
  link.a = StartSecureChannel(std::move(client), Session(true), "test client");
  link.b = StartSecureChannel(std::move(server), Session(false), "test server");
  return link;
}

// A job's node sends its last output and closes, with words of the home unread; the home,
// whose mosrun is behind, reads late and meanwhile still writes (it tells the node what it
// has). The closing side resets the connection once its bytes are acknowledged, however
// long that takes; the home's channel must hand over all it received, its own writes
// failing, and never drop the received bytes for a failed send.
void LateReaderGetsAll(size_t size, std::chrono::milliseconds pause) {
  Link link = MakeTcpLink();
  std::string last = Random(size);
  WriteAll(link.b.get(), "unread by a");
  std::thread writer([&] {
    WriteAll(link.a.get(), last);
    link.a.Reset();
  });
  std::atomic<bool> reading_done{false};
  std::thread late_words([&] {
    while (!reading_done) {
      if (::send(link.b.get(), "had", 3, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno == EPIPE) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::this_thread::sleep_for(pause);
  // Then slower than the node: the channel's buffers stay full.
  std::string got;
  char piece[32 << 10];
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ssize_t n = ::recv(link.b.get(), piece, sizeof piece, 0);
    if (n <= 0) break;
    got.append(piece, static_cast<size_t>(n));
  }
  reading_done = true;
  writer.join();
  late_words.join();
  EXPECT_EQ(got.size(), last.size());
  EXPECT_TRUE(got == last);
}

TEST(SecureChannel, LastBytesReachAPeerThatReadsSlowlyAndWritesToTheClosedEnd) {
  LateReaderGetsAll(12 << 20, std::chrono::milliseconds(0));
}

TEST(SecureChannel, LastBytesWaitForAReaderPausedLongerThanTheLinger) {
  // The writer is done and gone at once; its bytes wait in the buffers on the way, some
  // of them unacknowledged when the linger is over.
  LateReaderGetsAll(10 << 20, std::chrono::seconds(11));
}

TEST(SecureChannel, TamperedRecordClosesTheConnection) {
  // The server's channel on one end of the "wire"; the test plays the client and seals
  // records itself, one honest and one with a flipped bit.
  int wire[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, wire), 0);
  Fd client_wire = Fd::Adopt(wire[0]);
  Fd server = StartSecureChannel(Fd::Adopt(wire[1]), Session(false), "test server");
  RecordSealer sealer(PeerCipher::kChaCha20Poly1305, Session(true).send_key);
  std::string honest, forged;
  sealer.Seal("MARKER-OK", honest);
  sealer.Seal("MARKER-EVIL", forged);
  forged[kRecordHeaderBytes + 2] ^= 0x20;
  WriteAll(client_wire.get(), honest);
  WriteAll(client_wire.get(), forged);
  // The consumer gets the honest record, then its end closes; never the forged one.
  EXPECT_EQ(ReadToEnd(server.get()), "MARKER-OK");
  // And the channel closed the wire too.
  char c;
  EXPECT_LE(::recv(client_wire.get(), &c, 1, 0), 0);
}

TEST(SecureChannel, ReplayedRecordClosesTheConnection) {
  int wire[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, wire), 0);
  Fd client_wire = Fd::Adopt(wire[0]);
  Fd server = StartSecureChannel(Fd::Adopt(wire[1]), Session(false), "test server");
  RecordSealer sealer(PeerCipher::kChaCha20Poly1305, Session(true).send_key);
  std::string record;
  sealer.Seal("once", record);
  WriteAll(client_wire.get(), record);
  WriteAll(client_wire.get(), record);
  EXPECT_EQ(ReadToEnd(server.get()), "once");
}

TEST(SecureChannel, PlaintextSessionIsTheSocketItself) {
  int wire[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, wire), 0);
  Fd other = Fd::Adopt(wire[1]);
  PeerSession clear;
  clear.plaintext = true;
  Fd fd = StartSecureChannel(Fd::Adopt(wire[0]), clear, "baseline");
  EXPECT_EQ(fd.get(), wire[0]);
}

// --- SecureStream: the same records, sealed and opened in place on the caller's thread.

struct StreamPair {
  std::unique_ptr<SecureStream> client;
  std::unique_ptr<SecureStream> server;
};

StreamPair MakeStreams(PeerCipher cipher) {
  int wire[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, wire), 0);
  StreamPair p;
  p.client = std::make_unique<SecureStream>(Fd::Adopt(wire[0]), Session(true, cipher), "client");
  p.server = std::make_unique<SecureStream>(Fd::Adopt(wire[1]), Session(false, cipher), "server");
  return p;
}

std::string ReadStreamToEnd(SecureStream& stream, size_t piece = 1 << 20) {
  std::string all;
  std::vector<char> buffer(piece);
  for (;;) {
    size_t n = stream.Read(buffer.data(), buffer.size());
    if (n == 0) return all;
    all.append(buffer.data(), n);
  }
}

class Streams : public testing::TestWithParam<PeerCipher> {
 protected:
  void SetUp() override {
    ASSERT_GE(sodium_init(), 0);
    if (GetParam() == PeerCipher::kAes256Gcm && !crypto_aead_aes256gcm_is_available()) {
      GTEST_SKIP() << "no AES-GCM on this CPU";
    }
  }
};

TEST_P(Streams, LargeAndSmallWritesArriveWhole) {
  StreamPair p = MakeStreams(GetParam());
  // Pieces of every size around a record's: across records, in one iovec and gathered
  // from several; read back in small and large reads.
  std::vector<std::string> pieces;
  for (size_t size : {size_t{1}, size_t{7}, kMaxRecordPlaintext - 1, kMaxRecordPlaintext,
                      kMaxRecordPlaintext + 1, size_t{3} << 20, size_t{100}}) {
    pieces.push_back(Random(size));
  }
  std::string expected;
  for (auto& piece : pieces) expected += piece;
  std::thread writer([&] {
    for (size_t i = 0; i + 1 < pieces.size(); i += 2) {
      iovec iov[2] = {{pieces[i].data(), pieces[i].size()},
                      {pieces[i + 1].data(), pieces[i + 1].size()}};
      p.client->Write(iov, 2);
    }
    p.client->Write(pieces.back().data(), pieces.back().size());
    p.client->Write(static_cast<const void*>(""), 0);  // nothing: not an end record
    p.client->CloseWrite();
  });
  std::string got;
  char small[13];
  for (int i = 0; i < 50; ++i) got.append(small, p.server->Read(small, sizeof small));
  got += ReadStreamToEnd(*p.server);
  writer.join();
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected);
  // The end stays the end.
  EXPECT_EQ(p.server->Read(small, sizeof small), 0u);
}

TEST_P(Streams, BothDirectionsAtOnce) {
  StreamPair p = MakeStreams(GetParam());
  std::string up = Random(8 << 20), down = Random(8 << 20);
  std::string got_up, got_down;
  std::thread a([&] {
    p.client->Write(up.data(), up.size());
    p.client->CloseWrite();
  });
  std::thread b([&] {
    p.server->Write(down.data(), down.size());
    p.server->CloseWrite();
  });
  std::thread reader([&] { got_up = ReadStreamToEnd(*p.server); });
  got_down = ReadStreamToEnd(*p.client, 4096);
  a.join();
  b.join();
  reader.join();
  EXPECT_TRUE(got_up == up);
  EXPECT_TRUE(got_down == down);
}

TEST_P(Streams, NotInClearOnTheWire) {
  int wire[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, wire), 0);
  Fd raw = Fd::Adopt(wire[1]);
  SecureStream stream(Fd::Adopt(wire[0]), Session(true, GetParam()), "client");
  std::string secret = "SECRET-" + Random(64 << 10);
  stream.Write(secret.data(), secret.size());
  std::string wire_bytes(secret.size() + 64, '\0');
  size_t got = 0;
  while (got < secret.size() + kRecordHeaderBytes + kRecordTagBytes) {
    ssize_t n = ::recv(raw.get(), wire_bytes.data() + got, wire_bytes.size() - got, 0);
    ASSERT_GT(n, 0);
    got += static_cast<size_t>(n);
  }
  EXPECT_EQ(wire_bytes.find("SECRET-"), std::string::npos);
}

// The test plays the peer on the raw wire and seals records itself.
struct RawPeer {
  Fd wire;
  std::unique_ptr<SecureStream> server;
  RecordSealer sealer;
  explicit RawPeer(PeerCipher cipher) : sealer(cipher, Session(true, cipher).send_key) {
    int pair[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
    wire = Fd::Adopt(pair[0]);
    server = std::make_unique<SecureStream>(Fd::Adopt(pair[1]), Session(false, cipher), "server");
  }
  std::string Seal(std::string_view plain) {
    std::string record;
    sealer.Seal(plain, record);
    return record;
  }
};

TEST_P(Streams, TamperedRecordIsAnError) {
  RawPeer peer(GetParam());
  std::string honest = peer.Seal("MARKER-OK");
  std::string forged = peer.Seal(std::string(4000, 'E'));
  forged[kRecordHeaderBytes + 2] ^= 0x20;
  WriteAll(peer.wire.get(), honest + forged);
  char buffer[1 << 16];
  ASSERT_EQ(peer.server->Read(buffer, sizeof buffer), 9u);
  EXPECT_EQ(std::string_view(buffer, 9), "MARKER-OK");
  // Opened straight into the reader's buffer when it fits: nothing of the forged record
  // may be left there.
  std::memset(buffer, 0, sizeof buffer);
  try {
    peer.server->Read(buffer, sizeof buffer);
    ADD_FAILURE() << "a tampered record was read";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("failed to authenticate"), std::string::npos);
  }
  EXPECT_EQ(std::string(buffer, sizeof buffer).find('E'), std::string::npos);
}

TEST_P(Streams, TamperedLengthIsAnError) {
  RawPeer peer(GetParam());
  std::string record = peer.Seal("0123456789");
  record[3] = static_cast<char>(record[3] - 2);  // claims 2 bytes fewer: the tag moves
  WriteAll(peer.wire.get(), record + std::string(2, 'x'));
  char buffer[64];
  EXPECT_THROW(peer.server->Read(buffer, sizeof buffer), Error);
}

TEST_P(Streams, ReorderedRecordIsAnError) {
  RawPeer peer(GetParam());
  std::string one = peer.Seal("one");
  std::string two = peer.Seal("two");
  WriteAll(peer.wire.get(), two + one);
  char buffer[16];
  EXPECT_THROW(peer.server->Read(buffer, sizeof buffer), Error);
}

TEST_P(Streams, ReplayedRecordIsAnError) {
  RawPeer peer(GetParam());
  std::string once = peer.Seal("once");
  WriteAll(peer.wire.get(), once + once);
  char buffer[16];
  ASSERT_EQ(peer.server->Read(buffer, sizeof buffer), 4u);
  EXPECT_THROW(peer.server->Read(buffer, sizeof buffer), Error);
}

TEST_P(Streams, TruncatedStreamIsAnErrorNotAnEnd) {
  // Cut between records: no end record, so not an end.
  {
    RawPeer peer(GetParam());
    WriteAll(peer.wire.get(), peer.Seal("all of it?"));
    peer.wire.Reset();
    char buffer[64];
    ASSERT_EQ(peer.server->Read(buffer, sizeof buffer), 10u);
    try {
      peer.server->Read(buffer, sizeof buffer);
      ADD_FAILURE() << "a cut stream read as ended";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kDisconnected);
      EXPECT_NE(std::string(e.what()).find("without its end record"), std::string::npos);
    }
  }
  // Cut inside a record.
  {
    RawPeer peer(GetParam());
    std::string record = peer.Seal(Random(5000));
    WriteAll(peer.wire.get(), record.substr(0, record.size() / 2));
    peer.wire.Reset();
    char buffer[8192];
    EXPECT_THROW(peer.server->Read(buffer, sizeof buffer), Error);
  }
  // The end record, then the close: an end.
  {
    RawPeer peer(GetParam());
    std::string done = peer.Seal("done");
    WriteAll(peer.wire.get(), done + peer.Seal({}));
    peer.wire.Reset();
    char buffer[64];
    ASSERT_EQ(peer.server->Read(buffer, sizeof buffer), 4u);
    EXPECT_EQ(peer.server->Read(buffer, sizeof buffer), 0u);
  }
}

TEST_P(Streams, DestroyedStreamEndsItsDirection) {
  StreamPair p = MakeStreams(GetParam());
  p.client->Write("bye", 3);
  p.client.reset();
  EXPECT_EQ(ReadStreamToEnd(*p.server), "bye");
}

TEST_P(Streams, BecomesAChannelMidway) {
  // Counters and what was received but not read carry over to the pump.
  StreamPair p = MakeStreams(GetParam());
  p.client->Write("first second", 12);
  char buffer[6];
  ASSERT_EQ(p.server->Read(buffer, sizeof buffer), 6u);
  EXPECT_EQ(std::string_view(buffer, 6), "first ");
  Fd server = SecureStream::IntoChannel(std::move(p.server));
  p.client->Write(" third", 6);
  WriteAll(server.get(), "reply");
  ::shutdown(server.get(), SHUT_WR);
  char reply[5];
  size_t got = 0;
  while (got < 5) got += p.client->Read(reply + got, 5 - got);
  EXPECT_EQ(std::string_view(reply, 5), "reply");
  EXPECT_EQ(p.client->Read(reply, 5), 0u);
  p.client->CloseWrite();
  EXPECT_EQ(ReadToEnd(server.get()), "second third");
}

TEST_P(Streams, SealedRecordsOpenWithLibsodium) {
  // The records are standard AEAD: what OpenSSL seals, libsodium opens (and a peer with
  // either library reads the other's).
  auto key = MakeKey(7);
  RecordSealer sealer(GetParam(), key);
  std::string wire;
  std::string plain = Random(1000);
  sealer.Seal(plain, wire);
  unsigned char nonce[12] = {};
  std::string out(plain.size(), '\0');
  unsigned long long length = 0;
  auto* record = reinterpret_cast<const unsigned char*>(wire.data());
  int status =
      GetParam() == PeerCipher::kAes256Gcm
          ? crypto_aead_aes256gcm_decrypt(reinterpret_cast<unsigned char*>(out.data()), &length,
                                          nullptr, record + 4, wire.size() - 4, record, 4, nonce,
                                          key.data())
          : crypto_aead_chacha20poly1305_ietf_decrypt(
                reinterpret_cast<unsigned char*>(out.data()), &length, nullptr, record + 4,
                wire.size() - 4, record, 4, nonce, key.data());
  ASSERT_EQ(status, 0);
  EXPECT_TRUE(out == plain);
}

// What a stream writes, as records on the wire (the write side closed, so it ends with the
// end record).
std::string WireOf(PeerCipher cipher, const std::vector<std::string>& pieces) {
  int wire[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, wire), 0);
  Fd raw = Fd::Adopt(wire[1]);
  std::thread writer([&, fd = wire[0]] {
    SecureStream stream(Fd::Adopt(fd), Session(true, cipher), "client");
    std::vector<iovec> iov;
    for (const auto& piece : pieces) iov.push_back({const_cast<char*>(piece.data()), piece.size()});
    stream.Write(iov.data(), iov.size());
    stream.CloseWrite();
  });
  std::string bytes = ReadToEnd(raw.get());
  writer.join();
  return bytes;
}

// The plaintext lengths of the records on `wire`.
std::vector<size_t> RecordLengths(const std::string& wire) {
  std::vector<size_t> lengths;
  for (size_t at = 0; at + kRecordHeaderBytes <= wire.size();) {
    auto* h = reinterpret_cast<const uint8_t*>(wire.data() + at);
    size_t sealed = (size_t{h[0]} << 24) | (size_t{h[1]} << 16) | (size_t{h[2]} << 8) | h[3];
    lengths.push_back(sealed - kRecordTagBytes);
    at += kRecordHeaderBytes + sealed;
  }
  return lengths;
}

TEST_P(Streams, LargePieceStartsARecordOfItsOwn) {
  // A frame's table and header, then a chunk: the small pieces share a record that ends
  // where the chunk begins, and the chunk goes in whole records from its first byte.
  std::vector<std::string> pieces = {Random(8), Random(40), Random(2 * kMaxRecordPlaintext + 5),
                                     Random(3), Random(16 << 10)};
  std::string wire = WireOf(GetParam(), pieces);
  EXPECT_EQ(RecordLengths(wire), (std::vector<size_t>{48, kMaxRecordPlaintext, kMaxRecordPlaintext,
                                                      5 + 3, 16 << 10, 0}));
  // Small pieces alone still share one record.
  wire = WireOf(GetParam(), {Random(8), Random(40), Random(1000), Random(7)});
  EXPECT_EQ(RecordLengths(wire), (std::vector<size_t>{1055, 0}));
}

TEST_P(Streams, CutAtEveryByteIsNeverAnEnd) {
  // The stream of a small frame then a large piece, cut at every byte: what arrives
  // before the cut is a prefix of what was sent, and the cut is an error, never an end;
  // only the whole stream with its end record ends.
  std::vector<std::string> pieces = {Random(8), Random(40), Random(17000)};
  std::string sent = pieces[0] + pieces[1] + pieces[2];
  std::string wire = WireOf(GetParam(), pieces);
  ASSERT_EQ(RecordLengths(wire), (std::vector<size_t>{48, 17000, 0}));
  for (size_t cut = 0; cut <= wire.size(); ++cut) {
    RawPeer peer(GetParam());
    WriteAll(peer.wire.get(), std::string_view(wire).substr(0, cut));
    peer.wire.Reset();
    std::string got;
    bool ended = false;
    try {
      char buffer[4096];
      for (;;) {
        size_t n = peer.server->Read(buffer, sizeof buffer);
        if (n == 0) {
          ended = true;
          break;
        }
        got.append(buffer, n);
      }
    } catch (const Error& e) {
      ASSERT_EQ(e.kind(), ErrorKind::kDisconnected) << "cut at " << cut << ": " << e.what();
    }
    ASSERT_EQ(ended, cut == wire.size()) << "cut at " << cut;
    ASSERT_TRUE(sent.compare(0, got.size(), got) == 0) << "cut at " << cut;
    if (ended) {
      EXPECT_TRUE(got == sent);
    }
  }
}

// Reads `peer`'s stream to its end: first a small read (so that the receive buffer holds
// part of a record), then reads of `piece` bytes. Returns what was read and whether the
// stream ended; rethrows nothing but a cut.
std::pair<std::string, bool> ReadCut(RawPeer& peer, size_t piece) {
  std::string got;
  std::vector<char> buffer(piece);
  try {
    char first[16];
    size_t n = peer.server->Read(first, sizeof first);
    if (n == 0) return {got, true};
    got.append(first, n);
    for (;;) {
      n = peer.server->Read(buffer.data(), buffer.size());
      if (n == 0) return {got, true};
      got.append(buffer.data(), n);
    }
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDisconnected) << e.what();
  }
  return {got, false};
}

TEST_P(Streams, LargeReadsCutAnywhereAreNeverAnEnd) {
  // Records received straight into a large reader's memory (ReceiveInto): the stream of a
  // small frame then three records' worth of a chunk, cut around every record's edges
  // (header, body, tag) and every 997th byte elsewhere, read in 1 MiB and in one record's
  // reads: a prefix of what was sent, and an error, never an end, unless whole.
  std::vector<std::string> pieces = {Random(8), Random(40), Random(2 * kMaxRecordPlaintext + 300)};
  std::string sent = pieces[0] + pieces[1] + pieces[2];
  std::string wire = WireOf(GetParam(), pieces);
  std::vector<size_t> lengths = RecordLengths(wire);
  ASSERT_EQ(lengths, (std::vector<size_t>{48, kMaxRecordPlaintext, kMaxRecordPlaintext, 300, 0}));
  std::set<size_t> cuts;
  size_t edge = 0;
  for (size_t length : lengths) {
    for (size_t at : {edge, edge + kRecordHeaderBytes, edge + kRecordHeaderBytes + length,
                      edge + kRecordHeaderBytes + length + kRecordTagBytes}) {
      for (size_t c = at >= 24 ? at - 24 : 0; c <= at + 24 && c <= wire.size(); ++c) cuts.insert(c);
    }
    edge += kRecordHeaderBytes + length + kRecordTagBytes;
  }
  for (size_t c = 0; c <= wire.size(); c += 997) cuts.insert(c);
  cuts.insert(wire.size());
  for (size_t piece : {size_t{1} << 20, kMaxRecordPlaintext}) {
    for (size_t cut : cuts) {
      RawPeer peer(GetParam());
      std::thread writer([&] {
        WriteAll(peer.wire.get(), std::string_view(wire).substr(0, cut));
        peer.wire.Reset();
      });
      auto [got, ended] = ReadCut(peer, piece);
      writer.join();
      ASSERT_EQ(ended, cut == wire.size()) << "cut at " << cut << ", reads of " << piece;
      ASSERT_TRUE(sent.compare(0, got.size(), got) == 0) << "cut at " << cut;
      if (ended) {
        ASSERT_TRUE(got == sent);
      }
    }
  }
}

TEST_P(Streams, TamperedRecordReceivedIntoTheReaderIsWiped) {
  // A large record received straight into the reader's buffer that fails to authenticate:
  // an error, and nothing of it is left in the buffer (not even its ciphertext).
  RawPeer peer(GetParam());
  std::string honest = peer.Seal(std::string(20000, 'A'));
  std::string forged = peer.Seal(std::string(kMaxRecordPlaintext, 'E'));
  forged[forged.size() - 3] ^= 0x01;  // in the tag
  std::thread writer([&] { WriteAll(peer.wire.get(), honest + forged); });
  std::vector<char> buffer(1 << 20);
  ASSERT_EQ(peer.server->Read(buffer.data(), buffer.size()), 20000u);
  EXPECT_EQ(std::string_view(buffer.data(), 20000), std::string(20000, 'A'));
  std::fill(buffer.begin(), buffer.end(), 0);
  try {
    peer.server->Read(buffer.data(), buffer.size());
    ADD_FAILURE() << "a tampered record was read";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("failed to authenticate"), std::string::npos);
  }
  writer.join();
  EXPECT_TRUE(std::all_of(buffer.begin(), buffer.end(), [](char c) { return c == 0; }));
}

TEST(SecureStream, VectorAndOpenSslAesInteroperate) {
  // A node whose CPU has VAES seals with the vector AES-GCM, one without with OpenSSL's:
  // each opens the other's records, at every size around a record's.
  ASSERT_GE(sodium_init(), 0);
  if (!AesGcm256::Available()) GTEST_SKIP() << "no VAES/VPCLMULQDQ/AVX-512 on this CPU";
  for (bool vector_sends : {true, false}) {
    int wire[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, wire), 0);
    UseVectorAesForTesting(vector_sends);
    SecureStream client(Fd::Adopt(wire[0]), Session(true, PeerCipher::kAes256Gcm), "client");
    UseVectorAesForTesting(!vector_sends);
    SecureStream server(Fd::Adopt(wire[1]), Session(false, PeerCipher::kAes256Gcm), "server");
    UseVectorAesForTesting(true);
    std::string sent;
    for (size_t size : {size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{255}, size_t{257},
                        kMaxRecordPlaintext - 1, kMaxRecordPlaintext + 300, size_t{1} << 20}) {
      sent += Random(size);
    }
    std::thread writer([&] {
      client.Write(sent.data(), sent.size());
      client.CloseWrite();
    });
    std::string got = ReadStreamToEnd(server, 1000);
    writer.join();
    EXPECT_TRUE(got == sent) << (vector_sends ? "vector to OpenSSL" : "OpenSSL to vector");
  }
}

TEST(SecureStream, PlaintextPassesThrough) {
  int wire[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, wire), 0);
  Fd raw = Fd::Adopt(wire[1]);
  auto stream = SecureStream::Plain(Fd::Adopt(wire[0]), "baseline");
  stream->Write("clear", 5);
  char buffer[8];
  ASSERT_EQ(::recv(raw.get(), buffer, sizeof buffer, 0), 5);
  EXPECT_EQ(std::string_view(buffer, 5), "clear");
  raw.Reset();
  EXPECT_EQ(stream->Read(buffer, sizeof buffer), 0u);  // as TCP: no end record in clear
}

INSTANTIATE_TEST_SUITE_P(Ciphers, Streams,
                         testing::Values(PeerCipher::kChaCha20Poly1305, PeerCipher::kAes256Gcm));

}  // namespace
}  // namespace homeward
