// The migration stream: a directory arrives byte-identical; a cut, damaged or malformed
// stream is refused with the right kind and leaves no directory behind.
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
#include "schema/migration.capnp.h"
#include "scratch_dir.h"

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
  for (const char* name : {"pages-1.img", "core-1.img", "empty.img", "pages-2.img"}) {
    EXPECT_EQ(ReadFile(target_ + "/" + name), ReadFile(source_ + "/" + name)) << name;
  }
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
