// Fuzzes the file service's handling of requests (noded/file_server: FileSession), in
// process, on a scratch export directory: the input is a stream of framed FileRequests,
// decoded with the service's frame limit and performed one after the other by one
// session, as a peer's homefs would send them. Responses are serialized as for sending.
//
// The requests run as an unprivileged user (nobody) whatever credentials they carry, on
// a thread of their own (the service sets fs credentials per thread): a fuzzer acting as
// root could create device nodes and write through them. Opens are made non-blocking,
// so a FIFO it made cannot hang the run, and files are limited to 64 MiB (RLIMIT_FSIZE).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "error.h"
#include "fd.h"
#include "file_server.h"
#include "framing.h"
#include "fuzz_util.h"

using namespace homeward;

namespace {

constexpr uint32_t kNobody = 65534;

// One thread that runs every request: its fs credentials are the session's to change.
class RequestThread {
 public:
  RequestThread() : thread_([this] { Run(); }) {}
  void Do(std::function<void()> job) {
    std::unique_lock lock(mutex_);
    job_ = std::move(job);
    changed_.notify_all();
    changed_.wait(lock, [&] { return !job_; });
  }

 private:
  void Run() {
    ::unshare(CLONE_FS);  // like the service's workers: an fs context of its own
    ::umask(0);
    std::unique_lock lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return static_cast<bool>(job_); });
      job_();
      job_ = nullptr;
      changed_.notify_all();
    }
  }
  std::mutex mutex_;
  std::condition_variable changed_;
  std::function<void()> job_;
  std::thread thread_;
};

struct World {
  std::string dir;
  Fd root;
  uid_t uid;
  gid_t gid;
  RequestThread* thread;
};

World& TheWorld() {
  static World* world = [] {
    auto* w = new World;
    w->dir = fuzz::ScratchDir("homeward-fuzz-files");
    w->uid = ::geteuid() == 0 ? kNobody : ::geteuid();
    w->gid = ::geteuid() == 0 ? kNobody : ::getegid();
    if (::chown(w->dir.c_str(), w->uid, w->gid) != 0) fuzz::Broken("chown scratch dir");
    ::chmod(w->dir.c_str(), 0755);
    w->root = Fd::Open(w->dir, O_PATH | O_DIRECTORY);
    rlimit limit{64 << 20, 64 << 20};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    std::signal(SIGXFSZ, SIG_IGN);
    w->thread = new RequestThread;  // never joined: lives as long as the process
    return w;
  }();
  return *world;
}

// Empties the export directory between inputs (as root: a request may have left a
// directory the user cannot enter).
void Clear(const std::string& dir) {
  std::error_code ec;
  ::chmod(dir.c_str(), 0755);
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::filesystem::remove_all(it->path(), ec);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& world = TheWorld();
  FrameDecoder decoder(kMaxFileFrameBytes);
  decoder.Feed(data, size);
  {
    FileSession session(world.root.get());
    // The shape of FileServer::Serve: the request is read (its op and size, to choose a
    // thread) outside the job's catch; the loop's catches end the connection.
    try {
      for (int i = 0; i < 64; ++i) {
        auto message = decoder.Next();
        if (!message) break;
        auto request = message->Root<schema::FileRequest>();
        (void)request.getOp();
        (void)request.getSize();
        try {
          // The job's part: here with the credentials replaced (see above).
          capnp::MallocMessageBuilder copy;
          copy.setRoot(request);
          auto own = copy.getRoot<schema::FileRequest>();
          auto cred = own.initCred();
          cred.setUid(world.uid);
          cred.setGid(world.gid);
          if (own.getOp() == schema::FileOp::OPEN || own.getOp() == schema::FileOp::CREATE) {
            own.setFlags(own.getFlags() | O_NONBLOCK);
          }
          capnp::MallocMessageBuilder reply(2048);
          auto response = reply.initRoot<schema::ServerMessage>().initResponse();
          world.thread->Do([&] { session.Handle(own.asReader(), response); });
          (void)capnp::messageToFlatArray(reply);
        } catch (const std::exception&) {
          // The service sends no reply for this request.
        }
      }
    } catch (const Error&) {
    } catch (const kj::Exception&) {
    }
  }
  Clear(world.dir);
  return 0;
}
