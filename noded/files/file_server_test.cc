// The file service's request handling: no name, symlink or node id reaches outside the
// export root, and ordinary operations do what the kernel would.
#include "file_server.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <memory>
#include <random>
#include <thread>

#include <capnp/message.h>

#include "file_ops.h"
#include "frame_stream.h"
#include "scratch_dir.h"

namespace homeward {
namespace {

namespace fs = std::filesystem;

class FileSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(base_ + "/export/dir");
    std::ofstream(base_ + "/secret") << "outside";
    std::ofstream(base_ + "/export/dir/file") << "inside";
    fs::create_symlink("../secret", base_ + "/export/up");
    fs::create_symlink("../created", base_ + "/export/dangling");
    fs::create_symlink("/", base_ + "/export/abs");
    root_ = Fd::Open(base_ + "/export", O_PATH | O_DIRECTORY);
    session_ = std::make_unique<FileSession>(root_.get(), FileSession::Root::kTrust);
  }

  struct Result {
    int error;
    uint64_t node;
    uint64_t fh;
    std::string data;
  };
  // Calls the fixture's session, or `session` when given; the caller is uid 0. `inspect`
  // sees the whole response.
  Result Call(schema::FileOp op, uint64_t node, const std::string& name,
              const std::function<void(schema::FileRequest::Builder)>& fill = {},
              FileSession* session = nullptr,
              const std::function<void(schema::FileResponse::Reader)>& inspect = {}) {
    capnp::MallocMessageBuilder in, out;
    auto rq = in.initRoot<schema::FileRequest>();
    rq.setVersion(schema::FILES_VERSION);
    rq.setOp(op);
    rq.setNode(node);
    rq.setName(name);
    if (fill) fill(rq);
    auto rs = out.initRoot<schema::FileResponse>();
    (session ? session : session_.get())->Handle(rq.asReader(), rs);
    if (inspect) inspect(rs.asReader());
    auto data = rs.getData();
    return {rs.getError(), rs.hasEntry() ? rs.getEntry().getNode() : 0, rs.getFh(),
            std::string(reinterpret_cast<const char*>(data.begin()), data.size())};
  }

  ScratchDir scratch_{"homeward-fs"};
  std::string base_ = scratch_.path();
  Fd root_;
  std::unique_ptr<FileSession> session_;
};

using Op = schema::FileOp;

// A create's fields for a plain file opened for writing, and a rename's destination.
void NewFile(schema::FileRequest::Builder rq) {
  rq.setFlags(O_WRONLY);
  rq.setMode(S_IFREG | 0644);
}
std::function<void(schema::FileRequest::Builder)> RenameTo(uint64_t dir, std::string name) {
  return [dir, name](schema::FileRequest::Builder rq) {
    rq.setNode2(dir);
    rq.setName2(name);
  };
}

TEST_F(FileSessionTest, DotDotAndSlashesAreRefused) {
  EXPECT_EQ(Call(Op::LOOKUP, 1, "..").error, EINVAL);
  EXPECT_EQ(Call(Op::LOOKUP, 1, "dir/../..").error, EINVAL);
  EXPECT_EQ(Call(Op::LOOKUP, 1, "/etc").error, EINVAL);
  EXPECT_EQ(Call(Op::MKDIR, 1, "..").error, EINVAL);
  EXPECT_EQ(Call(Op::RENAME, 1, "dir", [](auto rq) {
              rq.setNode2(1);
              rq.setName2("../stolen");
            }).error, EINVAL);
}

TEST_F(FileSessionTest, SymlinksAreNotFollowedOut) {
  auto up = Call(Op::LOOKUP, 1, "up");
  ASSERT_EQ(up.error, 0);
  EXPECT_EQ(Call(Op::READLINK, up.node, "").data, "../secret");
  // Opening the link itself must not reach ../secret.
  EXPECT_NE(Call(Op::OPEN, up.node, "", [](auto rq) { rq.setFlags(O_RDONLY); }).error, 0);
  auto abs = Call(Op::LOOKUP, 1, "abs");
  ASSERT_EQ(abs.error, 0);
  EXPECT_EQ(Call(Op::LOOKUP, abs.node, "etc").error, ENOTDIR);
  // Creating through a dangling link would create ../created outside the export.
  EXPECT_NE(Call(Op::CREATE, 1, "dangling", NewFile).error, 0);
  EXPECT_FALSE(fs::exists(base_ + "/created"));
}

TEST_F(FileSessionTest, UnknownNodesAndHandlesAreStale) {
  EXPECT_EQ(Call(Op::LOOKUP, 999, "x").error, ESTALE);
  EXPECT_EQ(Call(Op::READ, 1, "", [](auto rq) { rq.setFh(42); }).error, EBADF);
}

TEST_F(FileSessionTest, CreateWriteReadList) {
  auto dir = Call(Op::LOOKUP, 1, "dir");
  ASSERT_EQ(dir.error, 0);
  auto made = Call(Op::CREATE, dir.node, "new", [](auto rq) {
    rq.setFlags(O_RDWR);
    rq.setMode(S_IFREG | 0640);
  });
  ASSERT_EQ(made.error, 0);
  std::string text = "hello";
  ASSERT_EQ(Call(Op::WRITE, 0, "", [&](auto rq) {
              rq.setFh(made.fh);
              rq.setOffset(5ull << 30);  // past 4 GiB: sparse
              rq.setData(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(text.data()),
                                      text.size()));
            }).error, 0);
  auto read = Call(Op::READ, 0, "", [&](auto rq) {
    rq.setFh(made.fh);
    rq.setOffset(5ull << 30);
    rq.setSize(100);
  });
  EXPECT_EQ(read.data, "hello");
  EXPECT_EQ(fs::file_size(base_ + "/export/dir/new"), (5ull << 30) + 5);
  EXPECT_EQ(fs::status(base_ + "/export/dir/new").permissions(),
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  auto dh = Call(Op::OPENDIR, dir.node, "");
  ASSERT_EQ(dh.error, 0);
  capnp::MallocMessageBuilder in, out;
  auto rq = in.initRoot<schema::FileRequest>();
  rq.setOp(Op::READDIR);
  rq.setFh(dh.fh);
  rq.setSize(100);
  auto rs = out.initRoot<schema::FileResponse>();
  session_->Handle(rq.asReader(), rs);
  std::set<std::string> names;
  for (auto e : rs.getEntries()) names.insert(std::string(e.getName().cStr()));
  EXPECT_EQ(names, (std::set<std::string>{".", "..", "file", "new"}));
}

// A client that looks up more objects than the daemon may hold descriptors: past half
// its limit the session closes those of nodes no request holds and opens them again from
// their file handles when they are next used (open_by_handle_at: root only).
TEST_F(FileSessionTest, NodeDescriptorsAreReclaimedAndOpenedAgain) {
  if (::geteuid() != 0) GTEST_SKIP() << "open_by_handle_at needs CAP_DAC_READ_SEARCH";
  constexpr int kFiles = 300;
  for (int f = 0; f < kFiles; ++f) {
    std::ofstream(base_ + "/export/dir/f" + std::to_string(f)) << "file " << f;
  }
  // A file on a mount of which the session saw no directory (a file bind-mounted over
  // another) has no handle the session could open again: its descriptor stays open.
  std::string bound = base_ + "/export/dir/bound";
  std::ofstream(base_ + "/outside") << "outside";
  std::ofstream(bound) << "under";
  ASSERT_EQ(::mount((base_ + "/outside").c_str(), bound.c_str(), nullptr, MS_BIND, nullptr), 0)
      << std::strerror(errno);
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{bound};
  auto open_fds = [] {
    return std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator{});
  };
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit lowered = saved;
  lowered.rlim_cur = static_cast<rlim_t>(open_fds() + 200);  // a budget of about 100
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);
  auto dir = Call(Op::LOOKUP, 1, "dir");
  ASSERT_EQ(dir.error, 0);
  auto bound_node = Call(Op::LOOKUP, dir.node, "bound");  // the least recently used
  ASSERT_EQ(bound_node.error, 0);
  std::vector<uint64_t> nodes;
  for (int f = 0; f < kFiles; ++f) {
    auto found = Call(Op::LOOKUP, dir.node, "f" + std::to_string(f));
    ASSERT_EQ(found.error, 0) << f;
    nodes.push_back(found.node);
  }
  EXPECT_LT(open_fds(), static_cast<long>(lowered.rlim_cur));
  // Each opens again and reads what it was; a removed one is stale.
  for (int f = 0; f < kFiles; ++f) {
    auto opened = Call(Op::OPEN, nodes[f], "", [](auto rq) { rq.setFlags(O_RDONLY); });
    ASSERT_EQ(opened.error, 0) << f;
    auto read = Call(Op::READ, 0, "", [&](auto rq) {
      rq.setFh(opened.fh);
      rq.setSize(100);
    });
    EXPECT_EQ(read.data, "file " + std::to_string(f));
    Call(Op::RELEASE, 0, "", [&](auto rq) { rq.setFh(opened.fh); });
  }
  EXPECT_LT(open_fds(), static_cast<long>(lowered.rlim_cur));
  ASSERT_EQ(Call(Op::LOOKUP, dir.node, "f0").node, nodes[0]);  // the same node
  for (int f = 1; f < kFiles; ++f) Call(Op::LOOKUP, dir.node, "f" + std::to_string(f));
  fs::remove(base_ + "/export/dir/f0");
  for (int f = kFiles - 1; f > 0; --f) {  // f0 the least recently used: reclaimed
    Call(Op::GETATTR, nodes[f], "");
  }
  EXPECT_EQ(Call(Op::GETATTR, nodes[0], "").error, ESTALE);
  auto opened = Call(Op::OPEN, bound_node.node, "", [](auto rq) { rq.setFlags(O_RDONLY); });
  ASSERT_EQ(opened.error, 0);
  auto read = Call(Op::READ, 0, "", [&](auto rq) {
    rq.setFh(opened.fh);
    rq.setSize(100);
  });
  EXPECT_EQ(read.data, "outside");
  Call(Op::RELEASE, 0, "", [&](auto rq) { rq.setFh(opened.fh); });
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
}

// Every request that makes or removes a name answers with its directory as it is just
// after (the client answers the kernel's next getattr of it with them): the mtime and
// nlink a local stat sees then; a rename between directories with both.
TEST_F(FileSessionTest, NameChangesAnswerWithTheirDirectoriesAfter) {
  auto dir = Call(Op::LOOKUP, 1, "dir");
  ASSERT_EQ(dir.error, 0);
  auto matches = [this](const std::string& path, schema::Attr::Reader attr) {
    struct stat st;
    EXPECT_EQ(::stat((base_ + "/export/" + path).c_str(), &st), 0);
    EXPECT_EQ(attr.getIno(), st.st_ino);
    EXPECT_EQ(attr.getNlink(), st.st_nlink);
    EXPECT_EQ(attr.getMtimeNs(), st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec);
  };
  auto call = [&](Op op, uint64_t node, const std::string& name,
                  const std::function<void(schema::FileRequest::Builder)>& fill,
                  const std::function<void(schema::FileResponse::Reader)>& check) {
    bool had = false;
    int error = Call(op, node, name, fill, nullptr, [&](schema::FileResponse::Reader rs) {
                  had = rs.hasDirAttr();
                  if (had && rs.getError() == 0) check(rs);
                }).error;
    EXPECT_EQ(error, 0) << name;
    EXPECT_TRUE(had) << name;
  };
  call(Op::CREATE, dir.node, "made", [](auto rq) {
    rq.setFlags(O_WRONLY);
    rq.setMode(S_IFREG | 0644);
  }, [&](auto rs) { matches("dir", rs.getDirAttr()); });
  call(Op::MKDIR, dir.node, "sub", [](auto rq) { rq.setMode(0755); }, [&](auto rs) {
    matches("dir", rs.getDirAttr());
    EXPECT_EQ(rs.getDirAttr().getNlink(), 3u);  // ., its own name, sub's ..
  });
  call(Op::SYMLINK, dir.node, "link", [](auto rq) {
    rq.setData(kj::arrayPtr(reinterpret_cast<const capnp::byte*>("made"), 4));
  }, [&](auto rs) { matches("dir", rs.getDirAttr()); });
  auto sub = Call(Op::LOOKUP, dir.node, "sub");
  call(Op::RENAME, dir.node, "made", [&](auto rq) {
    rq.setNode2(sub.node);
    rq.setName2("moved");
  }, [&](auto rs) {
    matches("dir", rs.getDirAttr());
    ASSERT_TRUE(rs.hasDir2Attr());
    matches("dir/sub", rs.getDir2Attr());
  });
  call(Op::UNLINK, sub.node, "moved", {}, [&](auto rs) { matches("dir/sub", rs.getDirAttr()); });
  call(Op::RMDIR, dir.node, "sub", {}, [&](auto rs) {
    matches("dir", rs.getDirAttr());
    EXPECT_EQ(rs.getDirAttr().getNlink(), 2u);
  });
}

// A write that carries O_APPEND lands at the end of the file as it is now, whatever
// offset the client's kernel thought was the end (another writer appended meanwhile); a
// positional write on the same handle (the kernel's writeback of mmap pages, or O_APPEND
// cleared with fcntl) goes where it says, though the handle was opened O_APPEND.
TEST_F(FileSessionTest, AppendsLandAtTheEnd) {
  auto dir = Call(Op::LOOKUP, 1, "dir");
  ASSERT_EQ(dir.error, 0);
  auto log = Call(Op::CREATE, dir.node, "log", [](auto rq) {
    rq.setFlags(O_WRONLY | O_APPEND);
    rq.setMode(S_IFREG | 0644);
  });
  ASSERT_EQ(log.error, 0);
  auto write = [&](const std::string& text, uint64_t offset, uint32_t flags) {
    return Call(Op::WRITE, 0, "", [&](auto rq) {
             rq.setFh(log.fh);
             rq.setOffset(offset);
             rq.setFlags(flags);
             rq.setData(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(text.data()),
                                     text.size()));
           }).error;
  };
  auto contents = [&] {
    std::ifstream in(base_ + "/export/dir/log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  ASSERT_EQ(write("one,", 0, O_APPEND), 0);
  std::ofstream(base_ + "/export/dir/log", std::ios::app) << "home,";
  ASSERT_EQ(write("two,", 4, O_APPEND), 0);  // the client's stale end: 4
  EXPECT_EQ(contents(), "one,home,two,");
  ASSERT_EQ(write("ONE", 0, 0), 0);
  EXPECT_EQ(contents(), "ONE,home,two,");
  ASSERT_EQ(write("three", 0, O_APPEND), 0);
  EXPECT_EQ(contents(), "ONE,home,two,three");
}

// An open names the parent and name the client found the file under: when a rename has
// put another file there, or the name is gone, the open answers ESTALE (the kernel then
// looks the path up again); without a name, or with the name still right, it opens, and
// answers the opened file's attributes.
TEST_F(FileSessionTest, OpenOfAReplacedNameIsStale) {
  auto dir = Call(Op::LOOKUP, 1, "dir");
  auto file = Call(Op::LOOKUP, dir.node, "file");
  ASSERT_EQ(file.error, 0);
  auto open = [&](const std::string& name) {
    capnp::MallocMessageBuilder in, out;
    auto rq = in.initRoot<schema::FileRequest>();
    rq.setOp(Op::OPEN);
    rq.setNode(file.node);
    rq.setFlags(O_RDONLY);
    if (!name.empty()) {
      rq.setNode2(dir.node);
      rq.setName2(name);
    }
    auto rs = out.initRoot<schema::FileResponse>();
    session_->Handle(rq.asReader(), rs);
    int64_t size = rs.hasEntry() ? rs.getEntry().getAttr().getSize() : -1;
    return std::make_pair(rs.getError(), size);
  };
  EXPECT_EQ(open("file"), std::make_pair(0, int64_t{6}));
  std::ofstream(base_ + "/export/dir/file.tmp") << "the new version";
  fs::rename(base_ + "/export/dir/file.tmp", base_ + "/export/dir/file");
  EXPECT_EQ(open("file").first, ESTALE);
  EXPECT_EQ(open(""), std::make_pair(0, int64_t{6}));  // the old file, held by its node
  fs::remove(base_ + "/export/dir/file");
  EXPECT_EQ(open("file").first, ESTALE);
  EXPECT_EQ(open("../x").first, EINVAL);
}

// A FORGET from the peer may come while other requests on the same node are still running
// (the kernel forgets an inode whenever it likes; the client sends without waiting). Each
// request must hold the node's descriptor until its system call is done: a reader sees its
// own file or ESTALE, never EBADF, and never another object that reused the descriptor's
// number. (ThreadSanitizer cannot see this race by itself: it is on a descriptor number in
// the kernel, and TSan follows descriptors only through the few libc calls it intercepts.
// The test fails in the TSan build through its own checks, and runs there to show that
// holding the node brings no race on memory either.)
TEST_F(FileSessionTest, ForgetRacesReads) {
  constexpr int kFiles = 6, kReaders = 3, kForgetters = 2;
  std::vector<uint64_t> inode(kFiles);
  for (int f = 0; f < kFiles; ++f) {
    std::string path = base_ + "/export/f" + std::to_string(f);
    std::ofstream(path) << "file " << f;
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    inode[f] = st.st_ino;
  }
  std::vector<std::atomic<uint64_t>> current(kFiles);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, served{0};
  std::mutex failures_mutex;
  std::vector<std::string> failures;
  auto fail = [&](std::string what) {
    ++bad;
    std::lock_guard lock(failures_mutex);
    if (failures.size() < 5) failures.push_back(std::move(what));
  };
  // Each forgetter looks files up and forgets each a few lookups later, so node ids come
  // and go and descriptor numbers are reused by other files' lookups.
  auto forgetter = [&](int seed) {
    std::minstd_rand random(seed);
    std::deque<uint64_t> held;
    auto forget_oldest = [&] {
      Call(Op::FORGET, held.front(), "", [](auto rq) { rq.setSize(1); });
      held.pop_front();
    };
    while (!stop) {
      int f = static_cast<int>(random() % kFiles);
      auto found = Call(Op::LOOKUP, 1, "f" + std::to_string(f));
      if (found.error != 0) {
        fail("lookup: errno " + std::to_string(found.error));
        continue;
      }
      current[f] = found.node;
      held.push_back(found.node);
      if (held.size() > 3) forget_oldest();
    }
    while (!held.empty()) forget_oldest();
  };
  auto reader = [&](int seed) {
    std::minstd_rand random(seed);
    while (!stop) {
      int f = static_cast<int>(random() % kFiles);
      uint64_t node = current[f];
      if (node == 0) continue;
      capnp::MallocMessageBuilder in, out;
      auto rq = in.initRoot<schema::FileRequest>();
      rq.setOp(random() % 2 ? Op::GETATTR : Op::STATFS);
      rq.setNode(node);
      auto rs = out.initRoot<schema::FileResponse>();
      session_->Handle(rq.asReader(), rs);
      int error = rs.getError();
      if (error == ESTALE) continue;
      ++served;
      if (error != 0) {
        fail(std::string(rq.getOp() == Op::GETATTR ? "getattr" : "statfs") + ": errno " +
             std::to_string(error));
      } else if (rq.getOp() == Op::GETATTR && rs.getEntry().getAttr().getIno() != inode[f]) {
        fail("getattr of f" + std::to_string(f) + " answered another object's attributes");
      }
      // Open and read the node too: the open goes through the node's descriptor.
      auto opened = Call(Op::OPEN, node, "", [](auto rq) { rq.setFlags(O_RDONLY); });
      if (opened.error == ESTALE) continue;
      if (opened.error != 0) {
        fail("open: errno " + std::to_string(opened.error));
        continue;
      }
      auto read = Call(Op::READ, 0, "", [&](auto rq) {
        rq.setFh(opened.fh);
        rq.setSize(64);
      });
      if (read.data != "file " + std::to_string(f)) {
        fail("read of f" + std::to_string(f) + " answered '" + read.data + "'");
      }
      Call(Op::RELEASE, 0, "", [&](auto rq) { rq.setFh(opened.fh); });
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < kForgetters; ++i) threads.emplace_back(forgetter, i + 1);
  for (int i = 0; i < kReaders; ++i) threads.emplace_back(reader, 100 + i);
  // The race is run for a fixed time, not until it is seen: seen or not, it must not be.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  stop = true;
  for (auto& t : threads) t.join();
  for (const auto& failure : failures) ADD_FAILURE() << failure;
  EXPECT_EQ(bad, 0);
  EXPECT_GT(served, 0);
}

// The change notices one client hears (FileSession::Watch), by entry name ("" for an
// object's own change), waited for as the watcher thread sends them.
class Notices {
 public:
  // The log is shared with the session's watcher, which may still be telling a notice
  // after this object is gone (the session, a fixture member, outlives the test's body).
  explicit Notices(FileSession& session) : log_(std::make_shared<Log>()) {
    session.Watch([log = log_](uint64_t, uint64_t, const std::string& name) {
      std::lock_guard lock(log->mutex);
      log->names.push_back(name);
      log->changed.notify_all();
    });
  }
  // Every name heard up to and with `last`, which a local process changed after the
  // changes under test: notices come in order, so what is not heard by then never is.
  std::vector<std::string> Until(const std::string& last) {
    std::unique_lock lock(log_->mutex);
    bool heard = log_->changed.wait_for(lock, std::chrono::seconds(30), [&] {
      return std::find(log_->names.begin(), log_->names.end(), last) != log_->names.end();
    });
    EXPECT_TRUE(heard) << "no notice of " << last;
    auto at = std::find(log_->names.begin(), log_->names.end(), last);
    return {log_->names.begin(), at == log_->names.end() ? at : at + 1};
  }

 private:
  struct Log {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<std::string> names;
  };
  std::shared_ptr<Log> log_;
};

TEST_F(FileSessionTest, AClientsOwnNameChangesAreNotToldBack) {
  Notices heard(*session_);
  auto dir = Call(Op::LOOKUP, 1, "dir");
  ASSERT_EQ(dir.error, 0);
  ASSERT_EQ(Call(Op::CREATE, dir.node, "tmp", NewFile).error, 0);
  ASSERT_EQ(Call(Op::RENAME, dir.node, "tmp", RenameTo(dir.node, "target")).error, 0);
  ASSERT_EQ(Call(Op::UNLINK, dir.node, "file").error, 0);
  std::ofstream(base_ + "/export/dir/marker") << "x";
  auto names = heard.Until("marker");
  for (const char* own : {"tmp", "target", "file"}) {
    EXPECT_EQ(std::count(names.begin(), names.end(), own), 0) << own;
  }
}

// An object the client looked up and then removed (or replaced by a rename) reports its
// link count going down on its own watch: the client's own change, not told back.
TEST_F(FileSessionTest, AnObjectThisClientRemovedIsNotToldBack) {
  Notices heard(*session_);
  auto dir = Call(Op::LOOKUP, 1, "dir");
  ASSERT_EQ(dir.error, 0);
  ASSERT_EQ(Call(Op::LOOKUP, dir.node, "file").error, 0);  // watched from here on
  ASSERT_EQ(Call(Op::CREATE, dir.node, "new", NewFile).error, 0);
  ASSERT_EQ(Call(Op::LOOKUP, dir.node, "file").error, 0);
  ASSERT_EQ(Call(Op::RENAME, dir.node, "new", RenameTo(dir.node, "file")).error, 0);
  ASSERT_EQ(Call(Op::UNLINK, dir.node, "file").error, 0);
  std::ofstream(base_ + "/export/dir/marker") << "x";
  auto names = heard.Until("marker");
  EXPECT_EQ(std::count(names.begin(), names.end(), ""), 0);  // no object's own notice
}

// A file the caller may not read is watched all the same (the daemon adds the watch):
// another's change of it is told.
// A request's caller: nobody, an ordinary user.
void AsNobody(schema::FileRequest::Builder rq) {
  rq.initCred().setUid(FileSession::kSquashedId);
  rq.getCred().setGid(FileSession::kSquashedId);
}

TEST_F(FileSessionTest, AFileTheCallerMayNotReadIsWatchedAllTheSame) {
  Notices heard(*session_);
  std::ofstream(base_ + "/export/dir/sealed") << "x";
  ASSERT_EQ(::chmod((base_ + "/export/dir/sealed").c_str(), 0), 0);
  // On a thread of its own: a serving thread keeps its caller's fs ids.
  Result dir{}, sealed{};
  std::thread([&] {
    dir = Call(Op::LOOKUP, 1, "dir", AsNobody);
    if (dir.error == 0) sealed = Call(Op::LOOKUP, dir.node, "sealed", AsNobody);
  }).join();
  ASSERT_EQ(dir.error, 0);
  ASSERT_EQ(sealed.error, 0);
  ASSERT_EQ(::chmod((base_ + "/export/dir/sealed").c_str(), 0400), 0);
  std::ofstream(base_ + "/export/dir/marker") << "x";
  auto names = heard.Until("marker");
  EXPECT_GE(std::count(names.begin(), names.end(), ""), 1);  // the object's own notice
}

// A forget or a release carries no caller and checks nothing: the serving thread keeps
// the last caller's fs ids through it rather than change them there and back again.
TEST_F(FileSessionTest, AForgetOrAReleaseLeavesTheThreadsIdsAsTheyWere) {
  ASSERT_EQ(::chmod((base_ + "/export/dir").c_str(), 0777), 0);
  // On a thread of its own: a serving thread keeps its caller's fs ids.
  std::thread([&] {
    auto dir = Call(Op::LOOKUP, 1, "dir", AsNobody);
    ASSERT_EQ(dir.error, 0);
    auto made = Call(Op::CREATE, dir.node, "made", [&](auto rq) {
      AsNobody(rq);
      NewFile(rq);
    });
    ASSERT_EQ(made.error, 0);
    auto ids = [] {
      return std::pair{static_cast<uint32_t>(::syscall(SYS_setfsuid, -1)),
                       static_cast<uint32_t>(::syscall(SYS_setfsgid, -1))};
    };
    const std::pair nobody{FileSession::kSquashedId, FileSession::kSquashedId};
    ASSERT_EQ(ids(), nobody);
    EXPECT_EQ(Call(Op::RELEASE, 0, "", [&](auto rq) { rq.setFh(made.fh); }).error, 0);
    EXPECT_EQ(ids(), nobody);
    EXPECT_EQ(Call(Op::FORGET, made.node, "", [](auto rq) { rq.setSize(1); }).error, 0);
    EXPECT_EQ(ids(), nobody);
    EXPECT_EQ(file_ops::current_credentials.uid, FileSession::kSquashedId);
    // Both were done all the same.
    EXPECT_EQ(Call(Op::READ, 0, "", [&](auto rq) { rq.setFh(made.fh); }).error, EBADF);
    EXPECT_EQ(Call(Op::GETATTR, made.node, "", AsNobody).error, ESTALE);
  }).join();
  struct stat st;
  ASSERT_EQ(::stat((base_ + "/export/dir/made").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, FileSession::kSquashedId);  // made as the caller
}

// A removal's event is judged by what it left (nothing, as this client's unlink left it),
// not by a look at the entry: a name made again by anyone else right after is still told,
// by its own event.
TEST_F(FileSessionTest, ANameThisClientRemovedAndAnotherMadeAgainIsTold) {
  Notices heard(*session_);
  auto dir = Call(Op::LOOKUP, 1, "dir");
  ASSERT_EQ(dir.error, 0);
  ASSERT_EQ(Call(Op::UNLINK, dir.node, "file").error, 0);
  std::ofstream(base_ + "/export/dir/marker") << "x";
  auto names = heard.Until("marker");
  EXPECT_EQ(std::count(names.begin(), names.end(), "file"), 0);  // its own removal
  std::ofstream(base_ + "/export/dir/file") << "again";
  std::ofstream(base_ + "/export/dir/marker2") << "x";
  names = heard.Until("marker2");
  EXPECT_GE(std::count(names.begin(), names.end(), "file"), 1);  // made by another
}

// A client's writes to a file report its content changed on the file's watch: its own
// change, not told back. An attribute changed by anyone else right after (a mode, a
// capability set at the home) is told all the same: it is not what a write does.
TEST_F(FileSessionTest, AnAttributeChangedRightAfterThisClientsWriteIsTold) {
  Notices heard(*session_);
  auto dir = Call(Op::LOOKUP, 1, "dir");
  ASSERT_EQ(dir.error, 0);
  auto made = Call(Op::CREATE, dir.node, "written", NewFile);
  ASSERT_EQ(made.error, 0);
  std::string text = "content";
  ASSERT_EQ(Call(Op::WRITE, 0, "", [&](auto rq) {
              rq.setFh(made.fh);
              rq.setData(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(text.data()),
                                      text.size()));
            }).error,
            0);
  std::ofstream(base_ + "/export/dir/marker") << "x";
  auto names = heard.Until("marker");
  EXPECT_EQ(std::count(names.begin(), names.end(), ""), 0);  // the write: its own
  ASSERT_EQ(::chmod((base_ + "/export/dir/written").c_str(), 0600), 0);
  std::ofstream(base_ + "/export/dir/marker2") << "x";
  names = heard.Until("marker2");
  EXPECT_GE(std::count(names.begin(), names.end(), ""), 1);  // the mode: another's
}

// Two nodes write a file each and rename it over the same name: each must hear of the
// other's rename, however soon after its own it came, or it keeps a name that no longer
// holds the file it names (the entry stays cached for entry_timeout).
TEST_F(FileSessionTest, AnotherClientsChangeOfAnEntryJustChangedIsTold) {
  FileSession other(root_.get(), FileSession::Root::kTrust);
  Notices heard(*session_);
  Notices other_heard(other);
  auto dir = Call(Op::LOOKUP, 1, "dir");
  auto other_dir = Call(Op::LOOKUP, 1, "dir", {}, &other);
  ASSERT_EQ(dir.error, 0);
  ASSERT_EQ(other_dir.error, 0);
  ASSERT_EQ(Call(Op::CREATE, dir.node, "mine", NewFile).error, 0);
  ASSERT_EQ(Call(Op::CREATE, other_dir.node, "theirs", NewFile, &other).error, 0);
  ASSERT_EQ(Call(Op::RENAME, dir.node, "mine", RenameTo(dir.node, "target")).error, 0);
  ASSERT_EQ(
      Call(Op::RENAME, other_dir.node, "theirs", RenameTo(other_dir.node, "target"), &other).error,
      0);
  // A failed change is no change of one's own: another's change of that name is told.
  ASSERT_EQ(Call(Op::UNLINK, dir.node, "gone").error, ENOENT);
  std::ofstream(base_ + "/export/dir/gone") << "x";
  std::ofstream(base_ + "/export/dir/marker") << "x";
  auto names = heard.Until("marker");
  // (Told once or twice: its own rename's event may be read when the name is theirs.)
  EXPECT_GE(std::count(names.begin(), names.end(), "target"), 1);
  EXPECT_GE(std::count(names.begin(), names.end(), "gone"), 1);
  EXPECT_EQ(std::count(names.begin(), names.end(), "mine"), 0);
  names = other_heard.Until("marker");
  EXPECT_EQ(std::count(names.begin(), names.end(), "theirs"), 0);
}

// A connection served end to end: pipelined requests (some run on the pool) are all
// answered, and Serve returns once the peer has closed and the last reply is written.
TEST_F(FileSessionTest, ServeAnswersEveryRequestThenEnds) {
  FileServer server(base_ + "/export", 2, FileSession::Root::kTrust);
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  std::thread serving([&] { server.Serve(Fd::Adopt(sv[0]), PeerIdentity{"test", "files", ""}); });
  Fd client_fd = Fd::Adopt(sv[1]);
  FrameStream client(client_fd.get(), kMaxFileFrameBytes);
  constexpr int kRequests = 50;
  for (int id = 1; id <= kRequests; ++id) {
    capnp::MallocMessageBuilder message;
    auto rq = message.initRoot<schema::FileRequest>();
    rq.setVersion(schema::FILES_VERSION);
    rq.setId(static_cast<uint64_t>(id));
    rq.setOp(id == 1 ? Op::HELLO : Op::GETATTR);
    rq.setNode(1);
    client.Write(message);
  }
  std::set<uint64_t> answered;
  while (answered.size() < kRequests) {
    auto message = client.Read();
    ASSERT_TRUE(message);
    auto reply = message->Root<schema::ServerMessage>();
    if (!reply.isResponse()) continue;  // a change notice
    EXPECT_EQ(reply.getResponse().getError(), 0);
    answered.insert(reply.getResponse().getId());
  }
  EXPECT_EQ(answered.size(), static_cast<size_t>(kRequests));
  ::shutdown(client_fd.get(), SHUT_WR);
  serving.join();
  server.Stop();
}
}  // namespace
// A peer's root acts as nobody unless the node trusts it ([files] trust_root).
TEST_F(FileSessionTest, PeersRootIsSquashedByDefault) {
  std::ofstream(base_ + "/export/dir/private") << "root only";
  ::chmod((base_ + "/export/dir/private").c_str(), 0600);
  FileSession squashed(root_.get());  // the default
  for (FileSession* session : {&squashed, session_.get()}) {
    int denied = session == session_.get() ? 0 : EACCES;
    auto dir = Call(Op::LOOKUP, 1, "dir", {}, session);
    ASSERT_EQ(dir.error, 0);
    auto file = Call(Op::LOOKUP, dir.node, "private", {}, session);
    ASSERT_EQ(file.error, 0);
    EXPECT_EQ(Call(Op::OPEN, file.node, "", [](auto rq) { rq.setFlags(O_RDONLY); }, session).error,
              denied);
    EXPECT_EQ(Call(Op::CREATE, dir.node, "planted", NewFile, session).error, denied);
  }
}


// Locks: each client lock owner holds its locks on a description of its own at the home,
// so owners exclude each other and the home's own processes; waits end when their lock
// is free, when cancelled, and a lost node's locks go.
class FileLockTest : public FileSessionTest {
 protected:
  void SetUp() override {
    FileSessionTest::SetUp();
    auto dir = Call(Op::LOOKUP, 1, "dir");
    auto file = Call(Op::LOOKUP, dir.node, "file");
    ASSERT_EQ(file.error, 0);
    node_ = file.node;
    path_ = base_ + "/export/dir/file";
  }
  uint64_t Open() {
    auto opened = Call(Op::OPEN, node_, "", [](auto rq) { rq.setFlags(O_RDWR); });
    EXPECT_EQ(opened.error, 0);
    return opened.fh;
  }
  // A setlk (or flock) answered at once, or, when it waits, by `later`.
  std::pair<bool, int> Lock(Op op, uint64_t fh, uint64_t owner, short type, uint64_t id,
                            FileSession::Later later = {}, bool wait = false) {
    capnp::MallocMessageBuilder in, out;
    auto rq = in.initRoot<schema::FileRequest>();
    rq.setOp(op);
    rq.setId(id);
    rq.setFh(fh);
    rq.setOwner(owner);
    if (op == Op::FLOCK) {
      rq.setFlags(static_cast<uint32_t>(type) | (wait ? 0 : LOCK_NB));
    } else {
      rq.initLock().setType(type);
      rq.getLock().setPid(4242);
      rq.setFlags(wait ? 1 : 0);
    }
    auto rs = out.initRoot<schema::FileResponse>();
    bool answered = session_->Handle(rq.asReader(), rs, std::move(later));
    return {answered, rs.getError()};
  }
  uint64_t node_ = 0;
  std::string path_;
};

TEST_F(FileLockTest, OwnersExcludeEachOtherAndLocalProcesses) {
  uint64_t a = Open(), b = Open();
  EXPECT_EQ(Lock(Op::SETLK, a, 1, F_WRLCK, 10).second, 0);
  EXPECT_EQ(Lock(Op::SETLK, a, 1, F_WRLCK, 11).second, 0);  // an owner's own lock again
  EXPECT_EQ(Lock(Op::SETLK, b, 2, F_RDLCK, 12).second, EAGAIN);
  // The same owner through another open file of it: one process's POSIX locks.
  EXPECT_EQ(Lock(Op::SETLK, b, 1, F_WRLCK, 13).second, 0);
  // A process at home sees the lock (an OFD lock of the service's).
  Fd local = Fd::Open(path_, O_RDWR);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  EXPECT_EQ(::fcntl(local.get(), F_SETLK, &fl), -1);
  EXPECT_EQ(errno, EAGAIN);
  // F_GETLK through another owner names the holder by the pid its node gave.
  auto got = [&] {
    capnp::MallocMessageBuilder in, out;
    auto rq = in.initRoot<schema::FileRequest>();
    rq.setOp(Op::GETLK);
    rq.setFh(b);
    rq.setOwner(2);
    rq.initLock().setType(F_WRLCK);
    auto rs = out.initRoot<schema::FileResponse>();
    session_->Handle(rq.asReader(), rs);
    return std::pair{rs.getLock().getType(), rs.getLock().getPid()};
  }();
  EXPECT_EQ(got, (std::pair<int16_t, int32_t>{F_WRLCK, 4242}));
  // The owner's process closes the file: its locks go.
  EXPECT_EQ(Call(Op::UNLOCK_OWNER, 0, "", [&](auto rq) {
              rq.setFh(a);
              rq.setOwner(1);
            }).error, 0);
  EXPECT_EQ(::fcntl(local.get(), F_SETLK, &fl), 0);
  EXPECT_EQ(Lock(Op::SETLK, b, 2, F_RDLCK, 14).second, EAGAIN);  // the local process's
}

TEST_F(FileLockTest, AWaitEndsWhenTheLockIsFreeOrWhenCancelled) {
  uint64_t a = Open(), b = Open();
  ASSERT_EQ(Lock(Op::FLOCK, a, 1, LOCK_EX, 20).second, 0);
  std::promise<int> first, second;
  auto [answered, err] =
      Lock(Op::FLOCK, b, 2, LOCK_EX, 21, [&](int e) { first.set_value(e); }, true);
  EXPECT_FALSE(answered);
  // Cancelled (the client's FUSE interrupt): EINTR, and the lock stays with its holder.
  EXPECT_EQ(Call(Op::LOCK_CANCEL, 0, "", [](auto rq) { rq.setCancels(21); }).error, 0);
  EXPECT_EQ(first.get_future().get(), EINTR);
  EXPECT_EQ(Lock(Op::FLOCK, b, 2, LOCK_EX, 22).second, EAGAIN);
  // Waiting again; the holder's file is released: the waiter has the lock.
  auto future = second.get_future();
  EXPECT_FALSE(
      Lock(Op::FLOCK, b, 2, LOCK_EX, 23, [&](int e) { second.set_value(e); }, true).first);
  EXPECT_EQ(future.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  EXPECT_EQ(Call(Op::RELEASE, 0, "", [&](auto rq) { rq.setFh(a); }).error, 0);
  EXPECT_EQ(future.get(), 0);
  Fd local = Fd::Open(path_, O_RDWR);
  EXPECT_EQ(::flock(local.get(), LOCK_EX | LOCK_NB), -1);
}

TEST_F(FileLockTest, NoWaitStartsOnceTheConnectionEnded) {
  uint64_t a = Open(), b = Open();
  ASSERT_EQ(Lock(Op::FLOCK, a, 1, LOCK_EX, 40).second, 0);
  // A request still being handled as the connection ends must not hold its gate for ever.
  session_->EndLockWaits(EINTR);
  std::promise<int> ended;
  EXPECT_FALSE(
      Lock(Op::FLOCK, b, 2, LOCK_EX, 41, [&](int e) { ended.set_value(e); }, true).first);
  EXPECT_EQ(ended.get_future().get(), EINTR);
}

TEST_F(FileLockTest, ALostNodesLocksGo) {
  uint64_t a = Open(), b = Open();
  ASSERT_EQ(Lock(Op::FLOCK, a, 1, LOCK_EX, 30).second, 0);
  ASSERT_EQ(Lock(Op::SETLK, b, 2, F_WRLCK, 31).second, 0);
  Fd local = Fd::Open(path_, O_RDWR);
  std::promise<int> waited;
  std::thread waiter([&] {
    // A wait of the lost node's own ends with ENOLCK.
    Lock(Op::SETLK, a, 3, F_RDLCK, 32, [&](int e) { waited.set_value(e); }, true);
  });
  waiter.join();
  session_->DropLocks();
  EXPECT_EQ(waited.get_future().get(), ENOLCK);
  EXPECT_EQ(::flock(local.get(), LOCK_EX | LOCK_NB), 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  EXPECT_EQ(::fcntl(local.get(), F_SETLK, &fl), 0);
}

TEST_F(FileLockTest, LocksWaitAtHomeWhileTheirJobMoves) {
  // The job's old node (source) and its new one (target): two clients of one home.
  auto locks = std::make_shared<HomeLocks>();
  FileSession source(root_.get(), FileSession::Root::kTrust, nullptr, locks);
  FileSession target(root_.get(), FileSession::Root::kTrust, nullptr, locks);
  auto file_of = [&](FileSession& s) {
    return Call(Op::LOOKUP, Call(Op::LOOKUP, 1, "dir", {}, &s).node, "file", {}, &s).node;
  };
  auto handle = [&](FileSession& s, Op op, const std::function<void(schema::FileRequest::Builder)>&
                                               fill) {
    capnp::MallocMessageBuilder in, out;
    auto rq = in.initRoot<schema::FileRequest>();
    rq.setOp(op);
    fill(rq);
    auto rs = out.initRoot<schema::FileResponse>();
    s.Handle(rq.asReader(), rs);
    return rs.getError();
  };
  uint64_t node = file_of(source);
  auto open_rw = [](auto rq) { rq.setFlags(O_RDWR); };
  uint64_t a = Call(Op::OPEN, node, "", open_rw, &source).fh;
  uint64_t b = Call(Op::OPEN, node, "", open_rw, &source).fh;
  ASSERT_EQ(handle(source, Op::SETLK, [&](auto rq) {
    rq.setFh(a);
    rq.setOwner(7);
    rq.initLock().setType(F_WRLCK);
  }), 0);
  ASSERT_EQ(handle(source, Op::FLOCK, [&](auto rq) {
    rq.setFh(b);
    rq.setOwner(8);
    rq.setFlags(LOCK_EX | LOCK_NB);
  }), 0);
  // Parked under a token, then the source's copy of the job dies: its closes.
  ASSERT_EQ(handle(source, Op::PARK_LOCKS, [&](auto rq) {
    rq.setCarry(99);
    auto parked = rq.initParked(2);
    parked[0].setNode(node);
    parked[0].setOwner(7);
    parked[0].setPid(5);
    parked[1].setFh(b);
    parked[1].setFlock(true);
  }), 0);
  handle(source, Op::UNLOCK_OWNER, [&](auto rq) {
    rq.setFh(a);
    rq.setOwner(7);
  });
  handle(source, Op::RELEASE, [&](auto rq) { rq.setFh(a); });
  handle(source, Op::RELEASE, [&](auto rq) { rq.setFh(b); });
  Fd local = Fd::Open(path_, O_RDWR);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  EXPECT_EQ(::fcntl(local.get(), F_SETLK, &fl), -1);  // still held, for the moving job
  EXPECT_EQ(::flock(local.get(), LOCK_EX | LOCK_NB), -1);
  // The target claims them; the restore's open binds the flock, the process's first
  // request (here its unlock) its POSIX locks.
  ASSERT_EQ(handle(target, Op::CLAIM_LOCKS, [&](auto rq) { rq.setCarry(99); }), 0);
  auto tagged = [](auto rq) {
    rq.setCarry(99);
    rq.setCarryPid(5);
  };
  uint64_t c = Call(Op::OPEN, file_of(target), "", [&](auto rq) {
    rq.setFlags(O_RDWR);
    tagged(rq);
  }, &target).fh;
  EXPECT_EQ(::flock(local.get(), LOCK_EX | LOCK_NB), -1);
  EXPECT_EQ(::fcntl(local.get(), F_SETLK, &fl), -1);
  ASSERT_EQ(handle(target, Op::SETLK, [&](auto rq) {
    rq.setFh(c);
    rq.setOwner(70);
    rq.initLock().setType(F_UNLCK);
    tagged(rq);
  }), 0);
  EXPECT_EQ(::fcntl(local.get(), F_SETLK, &fl), 0);  // the moved process let go
  fl.l_type = F_UNLCK;
  ::fcntl(local.get(), F_SETLK, &fl);
  EXPECT_EQ(::flock(local.get(), LOCK_EX | LOCK_NB), -1);
  handle(target, Op::RELEASE, [&](auto rq) { rq.setFh(c); });  // its file closed
  EXPECT_EQ(::flock(local.get(), LOCK_EX | LOCK_NB), 0);
}
}  // namespace homeward

namespace homeward {
namespace {

// A connection's writes run in the order they came, whether a worker or the connection's
// own thread (RunOrPost) runs them, however many workers there are.
TEST(StrandTest, JobsRunOneAtATimeInOrder) {
  WorkerPool pool(4);
  auto strand = std::make_shared<Strand>(pool);
  std::mutex mutex;
  std::vector<int> ran;
  std::atomic<int> running{0}, overlapped{0};
  constexpr int kJobs = 2000;
  std::promise<void> all;
  for (int i = 0; i < kJobs; ++i) {
    auto job = [&, i] {
      if (running.fetch_add(1) != 0) ++overlapped;
      if (i % 97 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
      {
        std::lock_guard lock(mutex);
        ran.push_back(i);
      }
      running.fetch_sub(1);
      if (i == kJobs - 1) all.set_value();
    };
    if (i % 3 == 0) {
      strand->RunOrPost(job);
    } else {
      strand->Post(job);
    }
  }
  ASSERT_EQ(all.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
  std::lock_guard lock(mutex);
  ASSERT_EQ(ran.size(), static_cast<size_t>(kJobs));
  for (int i = 0; i < kJobs; ++i) ASSERT_EQ(ran[i], i);
  EXPECT_EQ(overlapped.load(), 0);
}

}  // namespace
}  // namespace homeward
