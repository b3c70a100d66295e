// The record layer and the secure channel: records round-trip; a tampered, replayed,
// reordered or misdirected record is refused; a channel carries both directions, ends
// each on its own and closes on a record that fails to authenticate.
#include "secure_channel.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

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

}  // namespace
}  // namespace homeward
