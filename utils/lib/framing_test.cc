// Message framing: any chunking reassembles; truncated, oversized and garbage frames are
// refused with a clear error and never buffered beyond the limit.
#include "framing.h"

#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "error.h"
#include "fd.h"
#include "schema/control.capnp.h"

namespace homeward {
namespace {

using ::testing::HasSubstr;

std::string StatusFrame(const std::string& name) {
  capnp::MallocMessageBuilder message;
  auto status = message.initRoot<schema::ControlReply>().initStatus();
  status.setName(name);
  status.setUptimeMs(42);
  auto words = EncodeFrame(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

std::string NameOf(IncomingMessage& message) {
  return message.Root<schema::ControlReply>().getStatus().getName();
}

TEST(FramingTest, WholeFrameDecodes) {
  FrameDecoder decoder(1 << 20);
  std::string frame = StatusFrame("node1");
  decoder.Feed(frame.data(), frame.size());
  auto message = decoder.Next();
  ASSERT_TRUE(message);
  EXPECT_EQ(NameOf(*message), "node1");
  EXPECT_FALSE(decoder.Next());
  EXPECT_EQ(decoder.buffered(), 0u);
}

TEST(FramingTest, ByteByByteAndBackToBack) {
  FrameDecoder decoder(1 << 20);
  std::string stream = StatusFrame("a") + StatusFrame(std::string(1000, 'b')) + StatusFrame("c");
  std::vector<std::string> names;
  for (char byte : stream) {
    decoder.Feed(&byte, 1);
    while (auto message = decoder.Next()) names.push_back(NameOf(*message));
  }
  ASSERT_EQ(names.size(), 3u);
  EXPECT_EQ(names[0], "a");
  EXPECT_EQ(names[1], std::string(1000, 'b'));
  EXPECT_EQ(names[2], "c");
}

TEST(FramingTest, TruncatedFrameWaitsForMore) {
  FrameDecoder decoder(1 << 20);
  std::string frame = StatusFrame("node1");
  decoder.Feed(frame.data(), frame.size() - 1);
  EXPECT_FALSE(decoder.Next());
  EXPECT_EQ(decoder.buffered(), frame.size() - 1);
}

TEST(FramingTest, OversizedFrameIsRefusedFromItsHeader) {
  FrameDecoder decoder(256);
  std::string frame = StatusFrame(std::string(4096, 'x'));
  decoder.Feed(frame.data(), 16);  // only the segment table: refused before the body arrives
  try {
    decoder.Next();
    FAIL() << "oversized frame accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_THAT(e.what(), HasSubstr("exceeds the limit of 256 bytes"));
  }
}

TEST(FramingTest, GarbageSegmentCountIsRefused) {
  FrameDecoder decoder(1 << 20);
  uint32_t header[2] = {0xfffffff0u, 1};
  decoder.Feed(header, sizeof header);
  EXPECT_THROW(decoder.Next(), Error);
}

TEST(FramingTest, GarbageBodyIsRefusedOnRead) {
  FrameDecoder decoder(1 << 20);
  // One segment of 2 words whose root pointer points far outside the segment.
  uint32_t frame[6] = {0, 2, 0x7ffffff0u, 0x00010001u, 0, 0};
  decoder.Feed(frame, sizeof frame);
  auto message = decoder.Next();
  ASSERT_TRUE(message);
  EXPECT_ANY_THROW(message->Root<schema::ControlReply>().getStatus().getName());
}

TEST(FramingTest, BlockingReadDetectsCutMidFrame) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Fd reader = Fd::Adopt(fds[0]);
  Fd writer = Fd::Adopt(fds[1]);
  std::string frame = StatusFrame("node1");
  WriteAll(writer.get(), frame.data(), frame.size(), "test");
  WriteAll(writer.get(), frame.data(), 10, "test");
  writer.Reset();
  FrameDecoder decoder(1 << 20);
  auto first = ReadFrame(reader.get(), decoder);
  ASSERT_TRUE(first);
  EXPECT_EQ(NameOf(*first), "node1");
  try {
    ReadFrame(reader.get(), decoder);
    FAIL() << "cut frame accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDisconnected);
    EXPECT_THAT(e.what(), HasSubstr("middle of a message"));
  }
}

// A command writing to a daemon that has just closed its socket (a reload restarts it)
// gets an error it can handle, not a SIGPIPE that kills it.
TEST(FramingTest, WritingToAClosedPeerIsAnErrorNotASignal) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Fd writer = Fd::Adopt(fds[0]);
  ::close(fds[1]);
  capnp::MallocMessageBuilder message;
  message.initRoot<schema::ControlReply>().initStatus().setName("node1");
  EXPECT_EXIT(
      {
        ::signal(SIGPIPE, SIG_DFL);
        try {
          WriteFrame(writer.get(), message);
        } catch (const Error& e) {
          std::_Exit(std::string(e.what()).find("Broken pipe") != std::string::npos ? 3 : 4);
        }
        std::_Exit(5);
      },
      ::testing::ExitedWithCode(3), "");
}

TEST(FramingTest, BlockingReadCleanEnd) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Fd reader = Fd::Adopt(fds[0]);
  ::close(fds[1]);
  FrameDecoder decoder(1 << 20);
  EXPECT_FALSE(ReadFrame(reader.get(), decoder));
}

}  // namespace
}  // namespace homeward
