// The replay cache and the file service's use of it: a non-idempotent request sent again
// after its connection broke (the daemon restarted between) is answered, not performed
// twice.
#include "replay_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <capnp/message.h>

#include "file_server.h"
#include "fs_credentials.h"
#include "scratch_dir.h"

namespace homeward {
namespace {

namespace fs = std::filesystem;
using Op = schema::FileOp;
using State = ReplayCache::State;

class ReplayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(base_ + "/export");
    fs::create_directories(base_ + "/state");
    log_ = base_ + "/state/files-replay";
    root_ = Fd::Open(base_ + "/export", O_PATH | O_DIRECTORY);
  }

  // A daemon's cache and a client's session on it; Restart() is a killed daemon started
  // again (the log is read back) and the client's new connection.
  void Start() {
    cache_ = std::make_unique<ReplayCache>(log_);
    session_ = std::make_unique<FileSession>(root_.get(), FileSession::Root::kTrust, cache_.get());
    Call(Op::HELLO, 0, "", [](auto rq) { rq.setClient(0xc11e); });
  }
  void Restart() {
    session_.reset();
    cache_.reset();
    Start();
  }

  struct Result {
    int error;
    uint64_t node;
    uint64_t fh;
    uint64_t size;
  };
  Result Call(Op op, uint64_t node, const std::string& name,
              const std::function<void(schema::FileRequest::Builder)>& fill = {}, uint64_t id = 0,
              bool retry = false) {
    capnp::MallocMessageBuilder in, out;
    auto rq = in.initRoot<schema::FileRequest>();
    rq.setVersion(schema::FILES_VERSION);
    rq.setOp(op);
    rq.setNode(node);
    rq.setName(name);
    rq.setId(id);
    rq.setRetry(retry);
    if (fill) fill(rq);
    auto rs = out.initRoot<schema::FileResponse>();
    session_->Handle(rq.asReader(), rs);
    return {rs.getError(), rs.hasEntry() ? rs.getEntry().getNode() : 0, rs.getFh(), rs.getSize()};
  }
  std::string Read(const std::string& path) {
    std::ifstream in(base_ + "/export/" + path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  // What a daemon killed now would leave: a cache read from a copy of the log.
  std::unique_ptr<ReplayCache> KilledNow() {
    std::string copy = base_ + "/state/copy";
    fs::copy_file(log_, copy, fs::copy_options::overwrite_existing);
    return std::make_unique<ReplayCache>(copy);
  }

  ScratchDir scratch_{"homeward-replay"};
  std::string base_ = scratch_.path(), log_;
  Fd root_;
  std::unique_ptr<ReplayCache> cache_;
  std::unique_ptr<FileSession> session_;
};

TEST(ReplayCacheTest, RemembersStartedAndDoneAndForgetsWhatTheClientAcknowledged) {
  ReplayCache cache;
  EXPECT_EQ(cache.Find(1, 5).state, State::kUnknown);
  cache.Start(1, 5);
  EXPECT_EQ(cache.Find(1, 5).state, State::kStarted);
  cache.Finish(1, 5, EEXIST);
  EXPECT_EQ(cache.Find(1, 5).state, State::kDone);
  EXPECT_EQ(cache.Find(1, 5).err, EEXIST);
  EXPECT_EQ(cache.Find(2, 5).state, State::kUnknown);  // another client's id 5
  cache.Finish(1, 9, 0);
  cache.Ack(1, 6);  // the client has the answers of everything before 6
  EXPECT_EQ(cache.Find(1, 5).state, State::kUnknown);
  EXPECT_EQ(cache.Find(1, 9).state, State::kDone);
}

TEST(ReplayCacheTest, KeepsABoundedNumberPerClient) {
  ReplayCache cache;
  for (uint64_t id = 1; id <= ReplayCache::kPerClient + 10; ++id) cache.Finish(7, id, 0);
  EXPECT_EQ(cache.size(), ReplayCache::kPerClient);
  EXPECT_EQ(cache.Find(7, 10).state, State::kUnknown);
  EXPECT_EQ(cache.Find(7, ReplayCache::kPerClient + 10).state, State::kDone);
}

TEST_F(ReplayTest, OutlivesTheDaemonInItsLog) {
  {
    ReplayCache cache(log_);
    cache.Finish(1, 2, ENOENT);
    cache.Start(1, 3);
    cache.Finish(1, 4, 0);
    cache.Ack(1, 4);
  }
  ReplayCache again(log_);
  EXPECT_EQ(again.Find(1, 2).state, State::kUnknown);  // acknowledged
  EXPECT_EQ(again.Find(1, 3).state, State::kUnknown);
  EXPECT_EQ(again.Find(1, 4).state, State::kDone);
  again.Start(1, 8);
  ReplayCache third(log_);  // compacted at start, appended to since
  EXPECT_EQ(third.Find(1, 8).state, State::kStarted);
  EXPECT_EQ(third.Find(1, 4).state, State::kDone);
}

// A success's record waits for the next record or for WriteDeferred (before an answer is
// sent); a failure's is written at once. What a daemon killed now would leave is read
// from a copy of its log.
TEST_F(ReplayTest, ASuccesssRecordIsWrittenWithTheNextRecordOrBeforeAnAnswer) {
  ReplayCache cache(log_);
  cache.Start(1, 1);
  cache.Finish(1, 1, 0);
  EXPECT_EQ(cache.Find(1, 1).state, State::kDone);         // known at once
  EXPECT_EQ(KilledNow()->Find(1, 1).state, State::kStarted);  // not yet written
  cache.Start(1, 2);  // written with this one
  EXPECT_EQ(KilledNow()->Find(1, 1).state, State::kDone);
  cache.Finish(1, 2, EEXIST);  // a failure: at once
  EXPECT_EQ(KilledNow()->Find(1, 2).err, EEXIST);
  cache.Start(1, 3);
  cache.Finish(1, 3, 0);
  cache.WriteDeferred();
  EXPECT_EQ(KilledNow()->Find(1, 3).state, State::kDone);
  cache.WriteDeferred();  // nothing deferred: nothing written
  cache.Finish(1, 4, 0);
}

// What the client acknowledged is forgotten at once and written with the next record: a
// daemon killed before that only remembers more.
TEST_F(ReplayTest, AnAcknowledgementIsWrittenWithTheNextRecord) {
  ReplayCache cache(log_);
  cache.Start(1, 1);
  cache.Finish(1, 1, 0);
  cache.Start(1, 2);
  auto bytes = fs::file_size(log_);
  cache.Ack(1, 2);
  EXPECT_EQ(cache.Find(1, 1).state, State::kUnknown);  // forgotten at once
  EXPECT_EQ(fs::file_size(log_), bytes);                // no write of its own
  EXPECT_EQ(KilledNow()->Find(1, 1).state, State::kDone);
  cache.Finish(1, 2, 0);
  cache.WriteDeferred();  // before an answer: the acknowledgement with the success
  EXPECT_EQ(KilledNow()->Find(1, 1).state, State::kUnknown);
  EXPECT_EQ(KilledNow()->Find(1, 2).state, State::kDone);
}

// The record that takes the log past its size is written by a thread serving a user,
// with the user's fs ids; the rewritten log is still the daemon's, in its own directory
// (0700 here), and the log goes on.
TEST_F(ReplayTest, TheLogIsRewrittenFromAThreadServingAUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (a thread acting as another user)";
  fs::permissions(base_ + "/state", fs::perms::owner_all);
  ReplayCache cache(log_);
  // 48 bytes a request: 100,000 pass the 4 MiB at which the log is rewritten.
  constexpr uint64_t last = 100000;
  std::thread serving([&] {
    ScopedFsCredentials as_nobody(FsIdentity{65534, 65534, {}});
    for (uint64_t id = 1; id < last; ++id) {
      cache.Start(1, id);
      cache.Finish(1, id, 0);
    }
    cache.Start(1, last);
    cache.Finish(1, last, EEXIST);
  });
  serving.join();
  EXPECT_LT(fs::file_size(log_), 4u << 20);  // rewritten
  EXPECT_FALSE(fs::exists(log_ + ".new"));
  ReplayCache read_back(log_);  // as a restarted daemon
  EXPECT_EQ(read_back.Find(1, last).state, State::kDone);
  EXPECT_EQ(read_back.Find(1, last).err, EEXIST);
}

TEST_F(ReplayTest, RecordsFromManyThreadsAtOnceAreAllInTheLog) {
  // Durable, with group commit: threads share syncs; each one's records are in the log
  // (a success's once it is no longer deferred: at the latest when the cache ends),
  // across a compaction too (kPerClient records per client, many clients).
  {
    ReplayCache cache(log_, ReplayCache::Durability::kSynced);
    std::vector<std::thread> threads;
    for (uint64_t client = 1; client <= 8; ++client) {
      threads.emplace_back([&cache, client] {
        for (uint64_t id = 1; id <= 300; ++id) {
          cache.Start(client, id);
          cache.Finish(client, id, static_cast<int>(id % 7));
        }
      });
    }
    for (auto& thread : threads) thread.join();
  }
  ReplayCache again(log_);
  EXPECT_EQ(again.size(), 8u * 300u);
  for (uint64_t client = 1; client <= 8; ++client) {
    for (uint64_t id : {1u, 150u, 300u}) {
      auto seen = again.Find(client, id);
      EXPECT_EQ(seen.state, State::kDone);
      EXPECT_EQ(seen.err, static_cast<int>(id % 7));
    }
  }
}

TEST_F(ReplayTest, AnExclusiveCreateSentAgainOpensTheFileItMade) {
  Start();
  auto fill = [](auto rq) {
    rq.setFlags(O_WRONLY | O_CREAT | O_EXCL);
    rq.setMode(S_IFREG | 0644);
  };
  auto first = Call(Op::CREATE, 1, "new", fill, 11);
  ASSERT_EQ(first.error, 0);
  ASSERT_EQ(Call(
                Op::WRITE, 0, "",
                [&](auto rq) {
                  rq.setFh(first.fh);
                  rq.setData(kj::StringPtr("kept").asBytes());
                },
                12)
                .error,
            0);
  Restart();
  auto again = Call(Op::CREATE, 1, "new", fill, 11, true);
  EXPECT_EQ(again.error, 0);  // not EEXIST: it was this request that made it
  EXPECT_NE(again.fh, 0u);
  EXPECT_EQ(Read("new"), "kept");  // and not truncated
  // A new request for the same name is a new create: it fails.
  EXPECT_EQ(Call(Op::CREATE, 1, "new", fill, 13).error, EEXIST);
}

TEST_F(ReplayTest, RemovesAndRenamesSentAgainSucceedOnce) {
  Start();
  std::ofstream(base_ + "/export/a") << "a";
  std::ofstream(base_ + "/export/gone") << "g";
  ASSERT_EQ(Call(Op::UNLINK, 1, "gone", {}, 21).error, 0);
  ASSERT_EQ(Call(
                Op::RENAME, 1, "a",
                [](auto rq) {
                  rq.setNode2(1);
                  rq.setName2("b");
                },
                22)
                .error,
            0);
  ASSERT_EQ(Call(
                Op::MKDIR, 1, "d", [](auto rq) { rq.setMode(0755); }, 23)
                .error,
            0);
  Restart();
  EXPECT_EQ(Call(Op::UNLINK, 1, "gone", {}, 21, true).error, 0);
  EXPECT_EQ(Call(
                Op::RENAME, 1, "a",
                [](auto rq) {
                  rq.setNode2(1);
                  rq.setName2("b");
                },
                22, true)
                .error,
            0);
  auto dir = Call(
      Op::MKDIR, 1, "d", [](auto rq) { rq.setMode(0755); }, 23, true);
  EXPECT_EQ(dir.error, 0);
  EXPECT_NE(dir.node, 0u);
  EXPECT_EQ(Read("b"), "a");
  // Answers that were errors stay errors.
  EXPECT_EQ(Call(Op::UNLINK, 1, "nothing", {}, 24).error, ENOENT);
  std::ofstream(base_ + "/export/nothing") << "made since";
  Restart();
  EXPECT_EQ(Call(Op::UNLINK, 1, "nothing", {}, 24, true).error, ENOENT);
  EXPECT_TRUE(fs::exists(base_ + "/export/nothing"));
}

TEST_F(ReplayTest, ARequestADyingDaemonBeganIsTakenAsDoneWhenItsEffectIsThere) {
  Start();
  // The daemon logged the start, made the directory, and died before logging the end.
  cache_->Start(0xc11e, 31);
  fs::create_directory(base_ + "/export/half");
  Restart();
  auto dir = Call(
      Op::MKDIR, 1, "half", [](auto rq) { rq.setMode(0755); }, 31, true);
  EXPECT_EQ(dir.error, 0);
  EXPECT_NE(dir.node, 0u);
  // One that had not got as far is simply performed.
  cache_->Start(0xc11e, 32);
  Restart();
  EXPECT_EQ(Call(
                Op::MKDIR, 1, "later", [](auto rq) { rq.setMode(0755); }, 32, true)
                .error,
            0);
  EXPECT_TRUE(fs::is_directory(base_ + "/export/later"));
}

TEST_F(ReplayTest, AnAppendSentAgainIsNotWrittenTwice) {
  Start();
  std::ofstream(base_ + "/export/log") << "1\n";
  auto opened = Call(Op::LOOKUP, 1, "log");
  auto fh = Call(Op::OPEN, opened.node, "", [](auto rq) { rq.setFlags(O_WRONLY | O_APPEND); }).fh;
  auto append = [&](uint64_t fh, uint64_t id, bool retry) {
    return Call(
        Op::WRITE, 0, "",
        [&](auto rq) {
          rq.setFh(fh);
          rq.setFlags(O_APPEND);
          rq.setData(kj::StringPtr("2\n").asBytes());
        },
        id, retry);
  };
  ASSERT_EQ(append(fh, 41, false).size, 2u);
  Restart();
  opened = Call(Op::LOOKUP, 1, "log");
  fh = Call(Op::OPEN, opened.node, "", [](auto rq) { rq.setFlags(O_WRONLY | O_APPEND); }).fh;
  auto again = append(fh, 41, true);
  EXPECT_EQ(again.error, 0);
  EXPECT_EQ(again.size, 2u);
  EXPECT_EQ(Read("log"), "1\n2\n");
}

TEST_F(ReplayTest, AClientWithoutAnIdIsServedAsBefore) {
  cache_ = std::make_unique<ReplayCache>();
  session_ = std::make_unique<FileSession>(root_.get(), FileSession::Root::kTrust, cache_.get());
  ASSERT_EQ(Call(
                Op::MKDIR, 1, "d", [](auto rq) { rq.setMode(0755); }, 1)
                .error,
            0);
  EXPECT_EQ(cache_->size(), 0u);
}

}  // namespace
}  // namespace homeward
