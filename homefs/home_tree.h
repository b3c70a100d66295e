// HomeTree: every node's files at /mosix/home in one FUSE mount (`mosmount --tree`), so
// that a node's cost follows use, not the cluster's size. The root lists the live nodes
// the daemon tells it of; a home's entry is its Fs, made (and connected) on the first
// lookup of its name, sharing one connection among all of this node's guests of that
// home, which is closed after an idle time and made again on the next call. This node's
// own entry is an empty directory on which the daemon's bind mount of its own tree sits
// (no FUSE in the way of local jobs).
//
// A home once used keeps its Fs (and node ids) for the life of the mount: its guests'
// views hold its nodes, so a home that dies leaves the listing but not the tree, and its
// guests' calls wait for it as on any hard mount.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client.h"
#include "fs.h"
#include "live_nodes.h"
#include "mounted.h"

namespace homeward {

struct HomeTreeOptions {
  std::string self;       // this node's name: its entry holds the bind of its own tree
  ClientOptions client;   // for every home (its host and port are the home's)
  // Partner clusters' nodes are reached with their partnership's credentials.
  std::map<std::string, PeerCredentials> partners;
  FsOptions fs;           // for every home (its id_base is the home's slot)
  std::chrono::milliseconds idle{60000};  // [files] idle_disconnect_s
};

class HomeTree : public Mounted {
 public:
  explicit HomeTree(HomeTreeOptions options);
  HomeTree(const HomeTree&) = delete;
  HomeTree& operator=(const HomeTree&) = delete;
  ~HomeTree() override;

  // The live nodes now (the listing); a used home at a new address reconnects there.
  void SetLive(LiveNodes live);
  // Reads the daemon's lists (one datagram each, ParseLiveNodes) from `fd`, on a thread
  // of its own, until the daemon closes it.
  void FollowDaemon(int fd);
  // After the mount: change notices go to `session`, and idle connections start to close.
  void Start(fuse_session* session);
  // Before the session goes: every home's connection and threads end.
  void Stop();

  Fs* NodeFs(fuse_ino_t ino) override;
  void Lookup(Request r, fuse_ino_t parent, const std::string& name) override;
  void Getattr(Request r, fuse_ino_t ino) override;
  void Opendir(Request r, fuse_ino_t ino, fuse_file_info* fi) override;
  void Readdir(Request r, fuse_ino_t ino, size_t size, off_t off, bool plus) override;
  void Statfs(Request r) override;

 private:
  struct Home {
    std::string name;
    uint64_t slot = 0;
    std::mutex probing;  // one connection attempt at a time
    std::unique_ptr<FileClient> client;
    std::unique_ptr<Fs> fs;  // once made, also in by_slot_
  };
  Fs* Ready(const Home& home) const { return by_slot_[home.slot].load(); }
  // The home `name`, made and probed if need be; null (and `err`) when it cannot be.
  Home* Use(const std::string& name, int* err);
  struct stat DirAttr(fuse_ino_t ino) const;
  void IdleLoop();

  HomeTreeOptions options_;
  fuse_session* session_ = nullptr;
  std::mutex mutex_;
  LiveNodes live_;
  std::map<std::string, std::unique_ptr<Home>> homes_;
  uint64_t next_slot_ = 1;  // slot 0 is the tree's own
  // Each home's Fs by slot, read without a lock by every operation.
  std::unique_ptr<std::atomic<Fs*>[]> by_slot_;
  std::condition_variable stop_;
  bool stopping_ = false;
  std::thread idle_thread_;
  std::thread daemon_thread_;
  int daemon_fd_ = -1;
};

}  // namespace homeward
