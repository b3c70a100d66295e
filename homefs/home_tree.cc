// The tree of every home: the root's listing, a home's Fs made on first use, idle
// connections closed.
#include "home_tree.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "error.h"

namespace homeward {

namespace {

constexpr fuse_ino_t kSelfIno = 2;  // this node's entry: the bind mount of its own tree sit on it
// The tree's own nodes never change but for the listing, which is read afresh each time.
constexpr double kOwnTimeout = 86400;

// A directory entry's inode number for a home not used yet (no node id of its own).
ino_t NameIno(const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return static_cast<ino_t>(h | 1);
}

}  // namespace

HomeTree::HomeTree(HomeTreeOptions options)
    : options_(std::move(options)), by_slot_(new std::atomic<Fs*>[kMaxSlots]()) {}

HomeTree::~HomeTree() {
  Stop();
}

void HomeTree::SetLive(LiveNodes live) {
  std::lock_guard lock(mutex_);
  live_ = std::move(live);
  for (auto& [name, home] : homes_) {
    auto it = live_.find(name);
    if (it != live_.end()) home->client->MoveTo(it->second.host, it->second.port);
  }
}

void HomeTree::FollowDaemon(int fd) {
  daemon_fd_ = fd;
  daemon_thread_ = std::thread([this, fd] {
    std::vector<char> buffer(1 << 20);
    for (;;) {
      ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        {
          std::lock_guard lock(mutex_);
          if (stopping_) return;
        }
        // The homes in use stay served: their guests do not depend on the daemon.
        spdlog::warn("homefs: the daemon has closed its connection; the listing stays as it was");
        return;
      }
      try {
        SetLive(ParseLiveNodes(std::string(buffer.data(), static_cast<size_t>(n))));
      } catch (const Error& e) {
        spdlog::warn("homefs: from the daemon: {}", e.what());
      }
    }
  });
}

void HomeTree::Start(fuse_session* session) {
  session_ = session;
  idle_thread_ = std::thread([this] { IdleLoop(); });
}

void HomeTree::Stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  stop_.notify_all();
  if (idle_thread_.joinable()) idle_thread_.join();
  if (daemon_fd_ >= 0) ::shutdown(daemon_fd_, SHUT_RDWR);
  if (daemon_thread_.joinable()) daemon_thread_.join();
  std::vector<Home*> homes;
  {
    std::lock_guard lock(mutex_);
    for (auto& [name, home] : homes_) homes.push_back(home.get());
  }
  for (Home* home : homes) {
    std::lock_guard probing(home->probing);
    home->client->Stop();
    if (home->fs) {
      home->fs->StopResending();
      home->fs->StopNotices();
    }
  }
}

void HomeTree::IdleLoop() {
  auto tick = std::clamp(options_.idle / 4, std::chrono::milliseconds(100),
                         std::chrono::milliseconds(1000));
  std::unique_lock lock(mutex_);
  while (!stop_.wait_for(lock, tick, [&] { return stopping_; })) {
    std::vector<Home*> homes;
    for (auto& [name, home] : homes_) {
      if (Ready(*home)) homes.push_back(home.get());
    }
    lock.unlock();
    for (Home* home : homes) {
      // Open files and locks live in the home's session: kept connected while there are any.
      if (home->client->running() && Ready(*home)->Idle()) {
        home->client->DisconnectIdle(options_.idle);
      }
    }
    lock.lock();
  }
}

Fs* HomeTree::NodeFs(fuse_ino_t ino) {
  uint64_t slot = SlotOf(ino);
  if (slot == 0) return nullptr;
  Fs* fs = by_slot_[slot].load();
  if (!fs) Fail(ErrorKind::kInvalidInput, "node id {} is of no home reached here", ino);
  return fs;
}

HomeTree::Home* HomeTree::Use(const std::string& name, int* err) {
  Home* home;
  {
    std::lock_guard lock(mutex_);
    auto it = homes_.find(name);
    if (it == homes_.end()) {
      auto address = live_.find(name);
      if (address == live_.end() || stopping_) {
        *err = ENOENT;
        return nullptr;
      }
      if (next_slot_ >= kMaxSlots) {
        spdlog::warn("homefs: no room for {}'s files: {} homes in use", name, next_slot_ - 1);
        *err = ENOSPC;
        return nullptr;
      }
      auto made = std::make_unique<Home>();
      made->name = name;
      made->slot = next_slot_++;
      ClientOptions client = options_.client;
      client.host = address->second.host;
      client.port = address->second.port;
      if (!address->second.cluster.empty()) {
        auto partner = options_.partners.find(address->second.cluster);
        if (partner == options_.partners.end()) {
          spdlog::warn("homefs: {} is of cluster {}, which is no partner here", name,
                       address->second.cluster);
          *err = EACCES;
          return nullptr;
        }
        client.key = partner->second;
      }
      client.on_demand = true;
      made->client = std::make_unique<FileClient>(client);
      it = homes_.emplace(name, std::move(made)).first;
    }
    home = it->second.get();
  }
  if (Ready(*home)) return home;
  std::lock_guard probing(home->probing);
  if (Ready(*home)) return home;
  try {
    // The first connection, made here: the caller learns at once that the home cannot
    // be reached (a node in the listing that is down or refuses the key).
    auto root = home->client->Probe();
    FsOptions fs = options_.fs;
    fs.id_base = home->slot << kSlotShift;
    home->fs = std::make_unique<Fs>(*home->client, fs, root);
    home->fs->StartNotices(session_);
    home->client->Start();
    by_slot_[home->slot].store(home->fs.get());
    spdlog::info("homefs: {}'s files are served here", name);
    return home;
  } catch (const Error& e) {
    spdlog::warn("homefs: cannot reach {}'s files: {}", name, e.what());
    *err = EHOSTUNREACH;
    return nullptr;
  }
}

struct stat HomeTree::DirAttr(fuse_ino_t ino) const {
  struct stat st {};
  st.st_ino = ino;
  // The root is nobody's to change (its entries are the cluster's nodes), and everyone's
  // to pass through: r-x for its owner, root, and for others, as 0555 would say. Its group
  // is one no process can be in (the kernel's invalid id, shown as the overflow group)
  // and has no bits: with group bits the kernel consults the root's ACLs at every path
  // walk of a user through it, and the mount's root is made before INIT says ACLs are on,
  // which leaves its ACLs uncached, so each walk was a call into homefs.
  if (ino == FUSE_ROOT_ID) {
    st.st_mode = S_IFDIR | 0505;
    st.st_gid = static_cast<gid_t>(-1);
  } else {
    st.st_mode = S_IFDIR | 0755;
  }
  st.st_nlink = 2;
  st.st_blksize = 4096;
  return st;
}

void HomeTree::Lookup(Request r, fuse_ino_t parent, const std::string& name) {
  if (parent != FUSE_ROOT_ID) return r.Err(ENOENT);  // this node's entry: covered by its tree
  fuse_entry_param e{};
  if (name == options_.self) {
    e.ino = kSelfIno;
    e.attr = DirAttr(kSelfIno);
    e.attr_timeout = e.entry_timeout = kOwnTimeout;
    return r.Entry(e);
  }
  int err = 0;
  Home* home = Use(name, &err);
  if (!home) {
    if (err != ENOENT) return r.Err(err);
    // Not remembered: a node joining appears at once.
    return r.Entry(e);
  }
  // Answered from what the home last said, never waiting for it: a home once used stays
  // found (its guests' views hold its nodes; a dead home waits for its return).
  r.Entry(Ready(*home)->RootEntry());
}

void HomeTree::Getattr(Request r, fuse_ino_t ino) {
  if (ino != FUSE_ROOT_ID && ino != kSelfIno) return r.Err(ENOENT);
  r.Attr(DirAttr(ino), kOwnTimeout);
}

void HomeTree::Opendir(Request r, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino != FUSE_ROOT_ID && ino != kSelfIno) return r.Err(ENOENT);
  fi->fh = 0;
  r.Open(*fi);
}

void HomeTree::Readdir(Request r, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  struct Item {
    std::string name;
    ino_t ino;
  };
  std::vector<Item> items = {{".", ino}, {"..", FUSE_ROOT_ID}};
  if (ino == FUSE_ROOT_ID) {
    std::lock_guard lock(mutex_);
    if (!options_.self.empty()) items.push_back({options_.self, kSelfIno});
    for (const auto& [name, address] : live_) {
      if (name == options_.self) continue;
      auto home = homes_.find(name);
      Fs* fs = home == homes_.end() ? nullptr : Ready(*home->second);
      items.push_back({name, fs ? fs->root() : NameIno(name)});
    }
  }
  std::vector<char> buffer(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(std::max<off_t>(off, 0)); i < items.size(); ++i) {
    fuse_entry_param e{};
    e.attr.st_ino = items[i].ino;
    e.attr.st_mode = S_IFDIR;
    // Plus: no node id, so the kernel takes no reference and asks (lookup) when used.
    size_t need = plus ? fuse_add_direntry_plus(r.get(), buffer.data() + used, size - used,
                                                items[i].name.c_str(), &e, static_cast<off_t>(i + 1))
                       : fuse_add_direntry(r.get(), buffer.data() + used, size - used,
                                           items[i].name.c_str(), &e.attr, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  r.Buf(buffer.data(), used);
}

void HomeTree::Statfs(Request r) {
  struct statvfs st {};
  st.f_bsize = st.f_frsize = 4096;
  st.f_namemax = 255;
  r.Statfs(st);
}

}  // namespace homeward
