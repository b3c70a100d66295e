// FrameStream: messages of every size cross a socket intact; oversized, truncated and
// garbled frames are refused.
#include "frame_stream.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <thread>

#include "error.h"
#include "schema/files.capnp.h"

namespace homeward {
namespace {

struct SocketPair {
  Fd a, b;
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    a = Fd::Adopt(fds[0]);
    b = Fd::Adopt(fds[1]);
  }
};

TEST(FrameStream, RoundTripsSmallAndLargeMessages) {
  SocketPair pair;
  FrameStream out(pair.a.get(), 8 << 20), in(pair.b.get(), 8 << 20);
  std::string big(3 << 20, 'x');
  big[12345] = 'y';
  std::thread writer([&] {
    for (size_t size : {0ul, 1ul, 7ul, 4096ul, big.size()}) try {
        capnp::MallocMessageBuilder message(64);  // small first segment: several segments
        auto rq = message.initRoot<schema::FileRequest>();
        rq.setId(size);
        rq.setName("name");
        capnp::Data::Reader data(reinterpret_cast<const capnp::byte*>(big.data()), size);
        if (size > 0 && size % 8 == 0) {
          rq.adoptData(message.getOrphanage().referenceExternalData(data));  // its own segment
        } else {
          rq.setData(data);
        }
        out.Write(message);
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
    pair.a.Reset();
  });
  for (size_t size : {0ul, 1ul, 7ul, 4096ul, big.size()}) {
    std::optional<IncomingMessage> message;
    try {
      message = in.Read();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "reading " << size << ": " << e.what();
      break;
    }
    if (!message) {
      ADD_FAILURE() << "no message of " << size << " bytes";
      break;
    }
    try {
      auto rq = message->Root<schema::FileRequest>();
      EXPECT_EQ(rq.getId(), size);
      EXPECT_EQ(std::string(rq.getName().cStr()), "name");
      EXPECT_EQ(rq.getData().size(), size);
      if (rq.getData().size() != size) break;
      EXPECT_TRUE(std::string(reinterpret_cast<const char*>(rq.getData().begin()), size) ==
                  big.substr(0, size));
    } catch (const kj::Exception& e) {
      ADD_FAILURE() << size << ": " << e.getDescription().cStr();
      break;
    }
  }
  writer.join();
  EXPECT_FALSE(in.Read());  // clean end of stream
}

TEST(FrameStream, RefusesOversizedFrames) {
  SocketPair pair;
  FrameStream out(pair.a.get(), 8 << 20), in(pair.b.get(), 1 << 20);
  std::string big(2 << 20, 'x');
  std::thread writer([&] {
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::FileRequest>().setData(
        kj::arrayPtr(reinterpret_cast<const capnp::byte*>(big.data()), big.size()));
    try {
      out.Write(message);
    } catch (const Error&) {
      // The reader hangs up after refusing the frame.
    }
  });
  try {
    in.Read();
    FAIL() << "oversized frame accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
  }
  pair.b.Reset();
  writer.join();
}

TEST(FrameStream, TruncatedFrameIsADisconnection) {
  SocketPair pair;
  FrameStream in(pair.b.get(), 1 << 20);
  uint32_t header[2] = {0, 100};  // one segment of 100 words, then nothing
  ASSERT_EQ(::send(pair.a.get(), header, sizeof header, 0), (ssize_t)sizeof header);
  pair.a.Reset();
  try {
    in.Read();
    FAIL() << "truncated frame accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDisconnected);
  }
}

TEST(FrameStream, TooManySegmentsAreRefused) {
  SocketPair pair;
  FrameStream in(pair.b.get(), 1 << 20);
  uint32_t header[2] = {100000, 1};
  ASSERT_EQ(::send(pair.a.get(), header, sizeof header, 0), (ssize_t)sizeof header);
  EXPECT_THROW(in.Read(), Error);
}

TEST(FrameStream, SegmentCountDoesNotWrap) {
  SocketPair pair;
  FrameStream in(pair.b.get(), 1 << 20);
  uint32_t header[4] = {0xffffffff, 1, 0, 0};  // "2^32 segments", sent less one
  ASSERT_EQ(::send(pair.a.get(), header, sizeof header, 0), (ssize_t)sizeof header);
  try {
    in.Read();
    FAIL() << "a wrapped segment count was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
  }
}

TEST(FrameStream, HeaderCutAfterAMessageIsADisconnection) {
  SocketPair pair;
  FrameStream out(pair.a.get(), 1 << 20), in(pair.b.get(), 1 << 20);
  capnp::MallocMessageBuilder message;
  message.initRoot<schema::FileRequest>().setId(1);
  out.Write(message);
  uint8_t partial[3] = {0, 0, 0};  // the start of a next frame, then the end of stream
  ASSERT_EQ(::send(pair.a.get(), partial, sizeof partial, 0), (ssize_t)sizeof partial);
  pair.a.Reset();
  ASSERT_TRUE(in.Read());  // the whole message and the partial header arrive together
  try {
    in.Read();
    FAIL() << "a cut frame header was taken for a clean end";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDisconnected);
  }
}

}  // namespace
}  // namespace homeward
