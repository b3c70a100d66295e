// The migration stream: a directory arrives byte-identical, in clear (checksummed) and in
// authenticated records (without checksums); a cut, damaged or malformed stream, or a
// clear one without its checksums, is refused with the right kind and leaves no directory
// behind.
#include "image_stream.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include <capnp/message.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "error.h"
#include "fd.h"
#include "framing.h"
#include "peer_auth.h"
#include "schema/migration.capnp.h"
#include "scratch_dir.h"
#include "secure_channel.h"

namespace homeward::migrate {
namespace {

using ::testing::HasSubstr;

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// One end of an encrypted peer connection: the two ends' keys mirror each other.
std::unique_ptr<SecureStream> Sealed(Fd fd, bool sender) {
  PeerSession session;
  session.cipher = PeerCipher::kChaCha20Poly1305;
  session.send_key.fill(sender ? 1 : 2);
  session.receive_key.fill(sender ? 2 : 1);
  return std::make_unique<SecureStream>(std::move(fd), session, sender ? "target" : "source");
}

class ImageStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source_ = root_ + "/source";
    target_ = root_ + "/target";
    ASSERT_EQ(::mkdir(source_.c_str(), 0700), 0);
    std::mt19937_64 random(7);
    // Sizes that straddle the chunk size, an empty file and a small one.
    for (auto [name, size] :
         std::vector<std::pair<std::string, size_t>>{{"pages-1.img", (3 << 20) + 12345},
                                                     {"core-1.img", 700},
                                                     {"empty.img", 0},
                                                     {"pages-2.img", 1 << 20}}) {
      std::string data(size, '\0');
      for (auto& c : data) c = static_cast<char>(random());
      std::ofstream(source_ + "/" + name, std::ios::binary) << data;
    }
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    send_ = Fd::Adopt(fds[0]);
    receive_ = Fd::Adopt(fds[1]);
  }
  // Sends `message` alone and closes, as a hostile or broken peer would; the receiver must
  // refuse it as invalid, naming `why`, and leave no directory behind.
  void ExpectRefused(capnp::MallocMessageBuilder& message, const std::string& why) {
    WriteFrame(send_.get(), message);
    send_.Reset();
    try {
      ReceiveImages(receive_.get(), target_);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      EXPECT_THAT(e.what(), HasSubstr(why));
    }
    EXPECT_FALSE(Exists(target_));
  }

  // Sends in a thread (closing the sending end afterwards, as a dying peer would) and
  // receives here; returns the sender's error, if any.
  std::string SendAndReceive(const SendOptions& options, ReceivedImages* received,
                             std::optional<Error>* receive_error) {
    std::string send_error;
    JobMetadata job;
    job.job_id = 42;
    job.home_node = "node1";
    job.external_pipes = {{1234, "stdout"}, {5678, "stdin"}};
    std::thread sender([&] {
      try {
        SendImages(send_.get(), source_, job, options);
      } catch (const Error& e) {
        send_error = e.what();
      }
      send_.Reset();
    });
    try {
      *received = ReceiveImages(receive_.get(), target_);
    } catch (const Error& e) {
      receive_error->emplace(e);
    }
    receive_.Reset();  // a receiver that gave up closes its end, so the sender stops
    sender.join();
    return send_error;
  }

  // The same over encrypted SecureStreams (ends closed as a dying peer's would be).
  std::string SendAndReceiveSealed(const SendOptions& options, ReceivedImages* received,
                                   std::optional<Error>* receive_error) {
    auto sending = Sealed(std::move(send_), true);
    auto receiving = Sealed(std::move(receive_), false);
    std::string send_error;
    std::thread sender([&] {
      try {
        SendImages(*sending, source_, {}, options);
        sending->CloseWrite();
      } catch (const Error& e) {
        send_error = e.what();
        sending->Shutdown();
      }
    });
    try {
      *received = ReceiveImages(*receiving, target_);
      // The sender ends its direction after the stream (CloseWrite): wait for that end
      // before hanging up, or its end record may meet a closed connection.
      char rest;
      while (receiving->Read(&rest, 1) > 0) {
      }
    } catch (const Error& e) {
      if (!*receive_error) receive_error->emplace(e);
    }
    receiving->Shutdown();
    sender.join();
    return send_error;
  }

  void ExpectIdentical() {
    for (const char* name : {"pages-1.img", "core-1.img", "empty.img", "pages-2.img"}) {
      EXPECT_EQ(ReadFile(target_ + "/" + name), ReadFile(source_ + "/" + name)) << name;
    }
  }

  ScratchDir scratch_{"homeward-image-stream"};
  std::string root_ = scratch_.path(), source_, target_;
  Fd send_, receive_;
};

TEST_F(ImageStreamTest, DirectoryArrivesIdentical) {
  ReceivedImages received;
  std::optional<Error> error;
  EXPECT_EQ(SendAndReceive({}, &received, &error), "");
  ASSERT_FALSE(error) << error->what();
  EXPECT_EQ(received.stats.files, 4u);
  EXPECT_EQ(received.stats.bytes, (3u << 20) + 12345 + 700 + (1 << 20));
  EXPECT_EQ(received.job.job_id, 42u);
  EXPECT_EQ(received.job.home_node, "node1");
  ASSERT_EQ(received.job.external_pipes.size(), 2u);
  EXPECT_EQ(received.job.external_pipes[1].inode, 5678u);
  EXPECT_EQ(received.job.external_pipes[1].role, "stdin");
  ExpectIdentical();
}

TEST_F(ImageStreamTest, SealedStreamArrivesIdenticalWithoutChecksums) {
  ReceivedImages received;
  std::optional<Error> error;
  EXPECT_EQ(SendAndReceiveSealed({}, &received, &error), "");
  ASSERT_FALSE(error) << error->what();
  EXPECT_EQ(received.stats.files, 4u);
  ExpectIdentical();
}

// What a sealed sender writes, captured: its header says so and its file ends carry no
// checksum; a clear stream (over a socket pair) carries them.
std::vector<std::pair<bool, uint64_t>> HeaderAndChecksums(const std::string& wire) {
  std::vector<std::pair<bool, uint64_t>> seen;
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(wire.data()),
                                        wire.size() / sizeof(capnp::word));
  while (words.size() > 0) {
    capnp::FlatArrayMessageReader reader(words);
    auto msg = reader.getRoot<schema::StreamMessage>();
    if (msg.isHeader()) seen.push_back({msg.getHeader().getSealed(), 0});
    if (msg.isFileEnd()) seen.push_back({false, msg.getFileEnd().getXxh64()});
    words = kj::arrayPtr(reader.getEnd(), words.end());
  }
  return seen;
}

TEST_F(ImageStreamTest, OnlyAClearStreamCarriesChecksums) {
  for (bool sealed : {false, true}) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    Fd send_end = Fd::Adopt(fds[0]), clear_end = Fd::Adopt(fds[1]);
    auto sender = sealed ? Sealed(std::move(send_end), true) : nullptr;
    auto reader = sealed ? Sealed(std::move(clear_end), false) : nullptr;
    std::thread send([&] {
      if (sealed) {
        SendImages(*sender, source_, {});
        sender->CloseWrite();
      } else {
        SendImages(send_end.get(), source_, {});
        ::shutdown(send_end.get(), SHUT_WR);
      }
    });
    std::string wire;
    char buffer[1 << 16];
    for (;;) {
      size_t n = sealed ? reader->Read(buffer, sizeof buffer)
                        : ReadSome(clear_end.get(), buffer, sizeof buffer, "wire");
      if (n == 0) break;
      wire.append(buffer, n);
    }
    send.join();
    auto seen = HeaderAndChecksums(wire);
    ASSERT_EQ(seen.size(), 5u) << sealed;
    EXPECT_EQ(seen[0].first, sealed);
    for (size_t i = 1; i < seen.size(); ++i) {
      // The empty file's XXH3 is not 0 either.
      EXPECT_EQ(seen[i].second == 0, sealed) << i;
    }
  }
}

// A sender (broken or hostile) that says its stream is sealed while it travels in clear
// would leave damage unnoticed: the receiver refuses it at the header.
TEST_F(ImageStreamTest, ClearStreamWithoutItsChecksumsIsRefused) {
  capnp::MallocMessageBuilder message;
  auto header = message.initRoot<schema::StreamMessage>().initHeader();
  header.setVersion(schema::MIGRATION_VERSION);
  header.setSealed(true);
  auto files = header.initFiles(1);
  files[0].setName("pages-1.img");
  files[0].setSize(4);
  header.setTotalBytes(4);
  ExpectRefused(message, "arrived in clear: refused without its checksums");
}

// The same over a SecureStream in clear (a benchmark's baseline): no records, no trust.
TEST_F(ImageStreamTest, SealedHeaderOnAPlainSecureStreamIsRefused) {
  capnp::MallocMessageBuilder message;
  auto header = message.initRoot<schema::StreamMessage>().initHeader();
  header.setVersion(schema::MIGRATION_VERSION);
  header.setSealed(true);
  WriteFrame(send_.get(), message);
  send_.Reset();
  auto plain = SecureStream::Plain(std::move(receive_), "source");
  try {
    ReceiveImages(*plain, target_);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_THAT(e.what(), HasSubstr("refused without its checksums"));
  }
  EXPECT_FALSE(Exists(target_));
}

TEST_F(ImageStreamTest, SentFilesCanBeRemovedAsTheyGo) {
  std::string reference = ReadFile(source_ + "/pages-1.img");
  SendOptions options;
  options.remove_sent_files = true;
  ReceivedImages received;
  std::optional<Error> error;
  EXPECT_EQ(SendAndReceive(options, &received, &error), "");
  ASSERT_FALSE(error) << error->what();
  EXPECT_FALSE(Exists(source_ + "/pages-1.img"));
  EXPECT_EQ(ReadFile(target_ + "/pages-1.img"), reference);
}

TEST_F(ImageStreamTest, StreamCutHalfwayRemovesTheDirectory) {
  SendOptions options;
  options.faults = FaultPoints::Parse("stream-mid");
  ReceivedImages received;
  std::optional<Error> error;
  EXPECT_THAT(SendAndReceive(options, &received, &error), HasSubstr("stream-mid"));
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kDisconnected) << error->what();
  EXPECT_THAT(error->what(), HasSubstr("pages-1.img"));
  EXPECT_FALSE(Exists(target_));
}

TEST_F(ImageStreamTest, DamagedChunkFailsItsChecksum) {
  SendOptions options;
  options.faults = FaultPoints::Parse("stream-corrupt");
  ReceivedImages received;
  std::optional<Error> error;
  SendAndReceive(options, &received, &error);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kInvalidInput);
  EXPECT_THAT(error->what(), HasSubstr("checksum"));
  EXPECT_FALSE(Exists(target_));
}

// Sealed, the fault alters a record of the first chunk as the wire might: the record
// layer refuses it, and the stream fails as invalid with no directory left.
TEST_F(ImageStreamTest, DamagedRecordFailsToAuthenticate) {
  SendOptions options;
  options.faults = FaultPoints::Parse("stream-corrupt");
  ReceivedImages received;
  std::optional<Error> error;
  SendAndReceiveSealed(options, &received, &error);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->kind(), ErrorKind::kInvalidInput) << error->what();
  EXPECT_THAT(error->what(), HasSubstr("failed to authenticate"));
  EXPECT_FALSE(Exists(target_));
}

TEST_F(ImageStreamTest, ReceiverFaultRemovesTheDirectory) {
  ReceiveOptions options;
  options.faults = FaultPoints::Parse("receive-mid");
  std::thread sender([&] {
    try {
      SendImages(send_.get(), source_, {});
    } catch (const Error&) {
      // The receiver stops reading; the sender sees its end closed.
    }
  });
  try {
    ReceiveImages(receive_.get(), target_, options);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("receive-mid"));
  }
  receive_.Reset();
  sender.join();
  EXPECT_FALSE(Exists(target_));
}

// The hold that lets a system test kill a move's target while the move is certainly under
// way: the sender says it holds the stream halfway, and goes on (into a closed socket)
// once the receiver hangs up, well before its minute's bound.
TEST_F(ImageStreamTest, HeldStreamGoesOnWhenTheReceiverHangsUp) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(16);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("stream-hold", sink));
  SendOptions send;
  send.faults = FaultPoints::Parse("stream-hold");
  ReceiveOptions receive;
  receive.faults = FaultPoints::Parse("receive-mid");
  std::string send_error;
  auto started = std::chrono::steady_clock::now();
  std::thread sender([&] {
    try {
      SendImages(send_.get(), source_, {}, send);
    } catch (const Error& e) {
      send_error = e.what();
    }
  });
  EXPECT_THROW(ReceiveImages(receive_.get(), target_, receive), Error);
  receive_.Reset();
  sender.join();
  spdlog::set_default_logger(previous);
  EXPECT_NE(send_error, "");
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(30));
  std::string logged;
  for (const auto& line : sink->last_formatted()) logged += line;
  EXPECT_THAT(logged, HasSubstr("fault point stream-hold: holding the stream after"));
  EXPECT_THAT(logged, HasSubstr("fault point stream-hold: the stream goes on"));
}

TEST_F(ImageStreamTest, GarbageIsInvalidInput) {
  std::string garbage(4096, '\xff');
  WriteAll(send_.get(), garbage.data(), garbage.size(), "garbage");
  send_.Reset();
  try {
    ReceiveImages(receive_.get(), target_);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << e.what();
  }
  EXPECT_FALSE(Exists(target_));
}

TEST_F(ImageStreamTest, PathTraversalInHeaderIsRefused) {
  capnp::MallocMessageBuilder message;
  auto header = message.initRoot<schema::StreamMessage>().initHeader();
  header.setVersion(schema::MIGRATION_VERSION);
  auto files = header.initFiles(1);
  files[0].setName("../escape");
  ExpectRefused(message, "../escape");
  EXPECT_FALSE(Exists(root_ + "/escape"));
}

TEST_F(ImageStreamTest, SizesThatWrapAroundAreRefused) {
  // 2^64 - 1 and 1 add up to 0 in 64 bits: the stream would pass for an empty one.
  capnp::MallocMessageBuilder message;
  auto header = message.initRoot<schema::StreamMessage>().initHeader();
  header.setVersion(schema::MIGRATION_VERSION);
  auto files = header.initFiles(2);
  files[0].setName("huge.img");
  files[0].setSize(UINT64_MAX);
  files[1].setName("one.img");
  files[1].setSize(1);
  header.setTotalBytes(0);
  ExpectRefused(message, "2^64");
}

TEST_F(ImageStreamTest, EmptyStreamIsDisconnected) {
  send_.Reset();
  try {
    ReceiveImages(receive_.get(), target_);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDisconnected);
    EXPECT_THAT(e.what(), HasSubstr("header"));
  }
  EXPECT_FALSE(Exists(target_));
}

TEST_F(ImageStreamTest, ReceiverReadsNoByteBeyondTheStream) {
  std::thread sender([&] {
    SendImages(send_.get(), source_, {});
    WriteAll(send_.get(), "next", 4, "after the stream");
  });
  ReceiveImages(receive_.get(), target_);
  sender.join();
  char after[4];
  ASSERT_EQ(ReadSome(receive_.get(), after, 4, "after"), 4u);
  EXPECT_EQ(std::string(after, 4), "next");
}

}  // namespace
}  // namespace homeward::migrate
