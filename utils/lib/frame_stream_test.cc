// FrameStream: messages of every size cross a socket intact; oversized, truncated and
// garbled frames are refused.
#include "frame_stream.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <thread>

#include "error.h"
#include "hold_flusher.h"
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

capnp::MallocMessageBuilder& Numbered(capnp::MallocMessageBuilder& message, uint64_t id) {
  message.initRoot<schema::FileRequest>().setId(id);
  return message;
}

uint64_t IdOf(std::optional<IncomingMessage> message) {
  EXPECT_TRUE(message);
  return message ? message->Root<schema::FileRequest>().getId() : 0;
}

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

TEST(FrameStream, HeldMessagesGoOutBeforeTheNextWriteInOrder) {
  SocketPair pair;
  FrameStream out(pair.a.get(), 1 << 20), in(pair.b.get(), 1 << 20);
  capnp::MallocMessageBuilder m1, m2, m3, m4;
  EXPECT_TRUE(out.Hold(Numbered(m1, 1)));
  EXPECT_FALSE(out.Hold(Numbered(m2, 2)));
  EXPECT_FALSE(Readable(pair.b.get()));  // held: nothing sent yet
  out.Write(Numbered(m3, 3));
  EXPECT_TRUE(out.Hold(Numbered(m4, 4)));  // a new run
  out.Flush();
  out.Flush();  // nothing held: nothing sent
  for (uint64_t id : {1, 2, 3, 4}) EXPECT_EQ(IdOf(in.Read()), id);
  EXPECT_FALSE(Readable(pair.b.get()));
}

TEST(FrameStream, HeldBytesPastTheLimitGoOutAtOnce) {
  SocketPair pair;
  FrameStream out(pair.a.get(), 1 << 20), in(pair.b.get(), 1 << 20);
  std::string data(FrameStream::kMaxHeldBytes / 4, 'x');
  for (uint64_t id = 1; id <= 4; ++id) {
    capnp::MallocMessageBuilder message;
    Numbered(message, id).getRoot<schema::FileRequest>().setData(
        capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), data.size()));
    out.Hold(message);
  }
  EXPECT_TRUE(Readable(pair.b.get()));
  for (uint64_t id : {1, 2, 3, 4}) EXPECT_EQ(IdOf(in.Read()), id);
}

// The reading thread's answers to a run of requests read at once go out together, once
// it has taken the whole run and before it waits for more.
TEST(FrameStream, AnswersToARunGoOutBeforeTheReaderWaits) {
  SocketPair pair;
  FrameStream client(pair.a.get(), 1 << 20), server(pair.b.get(), 1 << 20);
  capnp::MallocMessageBuilder r1, r2, r3;
  client.Hold(Numbered(r1, 1));
  client.Hold(Numbered(r2, 2));
  client.Write(Numbered(r3, 3));  // the three in one send
  std::thread serving([&] {
    try {
      for (int i = 0; i < 3; ++i) {
        auto request = server.Read();
        capnp::MallocMessageBuilder answer;
        server.WriteSoon(Numbered(answer, 10 + IdOf(std::move(request))));
        // The first two wait for the last of the run; the last goes when the server
        // would wait for more.
        if (i < 2) {
          EXPECT_FALSE(Readable(pair.a.get())) << "answer " << i << " not held";
        }
      }
      server.Read();  // flushes, then sees the end
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  });
  for (uint64_t id : {11, 12, 13}) EXPECT_EQ(IdOf(client.Read()), id);
  ::shutdown(pair.a.get(), SHUT_WR);
  serving.join();
}

// What a thread other than the reader holds (a client's requests behind, held to go out
// together) stays held when the reader waits for more: it goes with the next Write or
// Flush, not each time an answer has been read.
TEST(FrameStream, TheReaderLeavesWhatOthersHoldHeld) {
  SocketPair pair;
  FrameStream client(pair.a.get(), 1 << 20), server(pair.b.get(), 1 << 20);
  capnp::MallocMessageBuilder answer, r1, r2;
  server.Write(Numbered(answer, 11));
  client.Hold(Numbered(r1, 1));
  EXPECT_EQ(IdOf(client.Read()), 11u);  // read with its buffer empty: it had to wait
  EXPECT_FALSE(Readable(pair.b.get())) << "the reader sent what was held";
  client.Write(Numbered(r2, 2));
  for (uint64_t id : {1, 2}) EXPECT_EQ(IdOf(server.Read()), id);
}

TEST(FrameStream, WriteSoonOffTheReadingThreadWritesAtOnce) {
  SocketPair pair;
  FrameStream out(pair.a.get(), 1 << 20), in(pair.b.get(), 1 << 20);
  capnp::MallocMessageBuilder message;
  out.WriteSoon(Numbered(message, 7));
  EXPECT_EQ(IdOf(in.Read()), 7u);
}

// The hook runs before each send, never for a message only held: what it records (the
// file service's replay log) is there before the peer can read the answer.
TEST(FrameStream, TheHookRunsBeforeEachSendAndNotForAHold) {
  SocketPair pair;
  FrameStream out(pair.a.get(), 1 << 20), in(pair.b.get(), 1 << 20);
  std::vector<bool> readable_at_hook;
  out.BeforeEachSend([&] { readable_at_hook.push_back(Readable(pair.b.get())); });
  capnp::MallocMessageBuilder m1, m2, m3;
  out.Hold(Numbered(m1, 1));
  EXPECT_TRUE(readable_at_hook.empty());
  out.Flush();
  EXPECT_EQ(IdOf(in.Read()), 1u);
  out.Write(Numbered(m2, 2));
  EXPECT_EQ(IdOf(in.Read()), 2u);
  out.Hold(Numbered(m3, 3));
  out.Flush();
  out.Flush();  // nothing held: nothing sent, no hook
  EXPECT_EQ(IdOf(in.Read()), 3u);
  EXPECT_EQ(readable_at_hook, (std::vector<bool>{false, false, false}));
}

TEST(HoldFlusher, SendsWhatIsHeldAfterTheHold) {
  SocketPair pair;
  auto out = std::make_shared<FrameStream>(pair.a.get(), 1 << 20);
  FrameStream in(pair.b.get(), 1 << 20);
  HoldFlusher flusher(std::chrono::microseconds(200));
  for (uint64_t id = 1; id <= 3; ++id) {
    capnp::MallocMessageBuilder message;
    if (out->Hold(Numbered(message, id))) flusher.Due(out);
  }
  // Read blocks until the flusher has sent the run.
  for (uint64_t id : {1, 2, 3}) EXPECT_EQ(IdOf(in.Read()), id);
}

TEST(HoldFlusher, FlushesWhatIsDueWhenItEnds) {
  SocketPair pair;
  auto out = std::make_shared<FrameStream>(pair.a.get(), 1 << 20);
  FrameStream in(pair.b.get(), 1 << 20);
  {
    HoldFlusher flusher(std::chrono::hours(1));
    capnp::MallocMessageBuilder message;
    ASSERT_TRUE(out->Hold(Numbered(message, 5)));
    flusher.Due(out);
  }
  EXPECT_EQ(IdOf(in.Read()), 5u);
}

}  // namespace
}  // namespace homeward
