// Writes the harnesses' seed corpus (tests/fuzz/corpus/<harness>/): a few small, valid
// inputs made with the real encoders, so that each fuzzer starts from messages the code
// accepts. Run by hand after a protocol change: make_corpus OUTDIR.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "fd.h"
#include "framing.h"
#include "fuzz_key.h"
#include "gossip_codec.h"
#include "image_stream.h"
#include "schema/control.capnp.h"
#include "schema/files.capnp.h"

using namespace homeward;

namespace {

std::string out_dir;

void Put(const std::string& harness, const std::string& name, const std::string& bytes) {
  std::filesystem::create_directories(out_dir + "/" + harness);
  std::ofstream(out_dir + "/" + harness + "/" + name, std::ios::binary) << bytes;
}

std::string Frame(capnp::MessageBuilder& message) {
  auto words = EncodeFrame(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

NodeRecord Record(const std::string& name, const std::string& address) {
  NodeRecord r;
  r.name = name;
  r.address = address;
  r.gossip_port = 4700;
  r.peer_port = 4701;
  r.cores = 2;
  r.load = 0.5f;
  r.mem_free_mb = 1000;
  r.mem_total_mb = 2000;
  r.incarnation = 3;
  return r;
}

void Gossip() {
  GossipCodec codec(fuzz::FuzzKey());
  GossipMessage ping;
  ping.kind = GossipMessage::Kind::kPing;
  ping.seq = 7;
  ping.sender = Record("node1", "127.0.0.1");
  ping.entries.push_back({Record("node2", "127.0.0.2"), 10, MemberState::kAlive});
  ping.entries.push_back({Record("node3", "127.0.0.3"), 4000, MemberState::kSuspect});
  ping.news = 1;
  GossipMessage req = ping;
  req.kind = GossipMessage::Kind::kPingReq;
  req.probe_name = "node3";
  req.probe = {"127.0.0.3", 4700};
  int n = 0;
  for (const auto& message : {ping, req}) {
    auto datagram = codec.Encode(message);
    std::string bytes(datagram.begin(), datagram.end());
    // Mode 1: the harness signs; the seed is the datagram without its MAC.
    Put("gossip", "sealed-" + std::to_string(n),
        "\x01" + bytes.substr(0, bytes.size() - kGossipMacBytes));
    Put("gossip", "raw-" + std::to_string(n), std::string(1, '\0') + bytes);
    ++n;
  }
}

void Control() {
  std::vector<std::string> frames;
  {
    capnp::MallocMessageBuilder m;
    auto rq = m.initRoot<schema::ControlRequest>();
    rq.setVersion(schema::CONTROL_VERSION);
    rq.setStatus();
    frames.push_back(Frame(m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto rq = m.initRoot<schema::ControlRequest>();
    rq.setVersion(schema::CONTROL_VERSION);
    auto job = rq.initStartJob();
    auto argv = job.initArgv(2);
    argv.set(0, "sleep");
    argv.set(1, "1");
    job.initEnv(1).set(0, "HOME=/root");
    job.setCwd("/tmp");
    job.setWhere("node2");
    job.setMinFreeMb(10);
    frames.push_back(Frame(m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto rq = m.initRoot<schema::ControlRequest>();
    rq.setVersion(schema::CONTROL_VERSION);
    auto guest = rq.initStartGuest();
    guest.initJob().initArgv(1).set(0, "true");
    guest.setHome("node1");
    auto id = guest.initIdentity();
    id.setUid(1000);
    id.initGroups(2).set(1, 27);
    auto limit = id.initLimits(1)[0];
    limit.setResource(7);
    limit.setSoft(1024);
    limit.setHard(4096);
    guest.setHomeHost("127.0.0.1");
    frames.push_back(Frame(m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto rq = m.initRoot<schema::ControlRequest>();
    rq.setVersion(schema::CONTROL_VERSION);
    auto mig = rq.initMigrateJob();
    mig.setHomePid(1234);
    mig.setCheckpoint("/tmp/ckpt");
    frames.push_back(Frame(m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto rq = m.initRoot<schema::ControlRequest>();
    rq.setVersion(schema::CONTROL_VERSION);
    auto mount = rq.initHomeMount();
    mount.setName("node2");
    mount.setAddress("127.0.0.2");
    mount.setUp(true);
    frames.push_back(Frame(m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto rq = m.initRoot<schema::ControlRequest>();
    rq.setVersion(schema::CONTROL_VERSION);
    rq.setJobInput(kj::StringPtr("hello\n").asBytes());
    frames.push_back(Frame(m));
  }
  {
    capnp::MallocMessageBuilder m;
    auto reply = m.initRoot<schema::ControlReply>();
    auto nodes = reply.initNodes().initNodes(1);
    nodes[0].setName("node1");
    nodes[0].setState("alive");
    frames.push_back(Frame(m));
  }
  for (size_t i = 0; i < frames.size(); ++i)
    Put("control", "frame-" + std::to_string(i), frames[i]);
  // A connection's worth: several requests in one stream.
  Put("control", "stream", frames[0] + frames[5] + frames[3]);
  // Framing: [limit selector][chunking seed][frames].
  Put("framing", "one", std::string("\x0a\x05", 2) + frames[1]);
  Put("framing", "several", std::string("\x0b\x11", 2) + frames[0] + frames[2] + frames[6]);
  Put("framing", "small-limit", std::string("\x02\x03", 2) + frames[2]);
  // A message of several segments.
  {
    capnp::MallocMessageBuilder m(4, capnp::AllocationStrategy::FIXED_SIZE);
    auto rq = m.initRoot<schema::ControlRequest>();
    rq.setVersion(schema::CONTROL_VERSION);
    auto argv = rq.initStartJob().initArgv(3);
    argv.set(0, "a");
    argv.set(1, "bb");
    argv.set(2, "ccc");
    Put("framing", "segments", std::string("\x0a\x07", 2) + Frame(m));
    Put("control", "segments", Frame(m));
  }
}

std::string FileRequest(schema::FileOp op, uint64_t node, const std::string& name, uint64_t fh = 0,
                        const std::string& data = {}, uint32_t flags = 0, uint32_t mode = 0,
                        uint64_t size = 0, uint64_t node2 = 0, const std::string& name2 = {}) {
  static uint64_t id = 1;
  capnp::MallocMessageBuilder m;
  auto rq = m.initRoot<schema::FileRequest>();
  rq.setVersion(schema::FILES_VERSION);
  rq.setId(id++);
  rq.setOp(op);
  rq.initCred().setUid(1000);
  rq.setNode(node);
  if (!name.empty()) rq.setName(name);
  rq.setFh(fh);
  rq.setHasFh(fh != 0);
  if (!data.empty()) rq.setData(kj::StringPtr(data.c_str()).asBytes());
  rq.setFlags(flags);
  rq.setMode(mode);
  rq.setSize(size);
  rq.setNode2(node2);
  if (!name2.empty()) rq.setName2(name2);
  return Frame(m);
}

void Files() {
  using Op = schema::FileOp;
  // Node ids are given out in order from 2; file handles from 1.
  Put("file_request", "hello", FileRequest(Op::HELLO, 0, ""));
  Put("file_request", "create-write-read",
      FileRequest(Op::HELLO, 0, "") + FileRequest(Op::CREATE, 1, "f", 0, {}, O_RDWR, 0644) +
          FileRequest(Op::WRITE, 0, "", 1, "some bytes\n") +
          FileRequest(Op::READ, 0, "", 1, {}, 0, 0, 4096) + FileRequest(Op::GETATTR, 2, "") +
          FileRequest(Op::RELEASE, 0, "", 1));
  Put("file_request", "dirs",
      FileRequest(Op::MKDIR, 1, "d", 0, {}, 0, 0755) +
          FileRequest(Op::MKNOD, 2, "p", 0, {}, 0, 0010644) +
          FileRequest(Op::SYMLINK, 2, "l", 0, "../d") + FileRequest(Op::OPENDIR, 2, "") +
          FileRequest(Op::READDIR, 0, "", 1, {}, 0, 0, 16) + FileRequest(Op::LOOKUP, 2, "l") +
          FileRequest(Op::READLINK, 5, "") +
          FileRequest(Op::RENAME, 2, "l", 0, {}, 0, 0, 0, 1, "m") +
          FileRequest(Op::FORGET, 5, "", 0, {}, 0, 0, 1) + FileRequest(Op::RMDIR, 1, "d"));
  Put("file_request", "attrs",
      FileRequest(Op::CREATE, 1, "x", 0, {}, O_WRONLY, 0600) +
          FileRequest(Op::SETXATTR, 2, "user.k", 0, "v") +
          FileRequest(Op::GETXATTR, 2, "user.k", 0, {}, 0, 0, 64) +
          FileRequest(Op::LISTXATTR, 2, "", 0, {}, 0, 0, 64) + FileRequest(Op::STATFS, 1, "") +
          FileRequest(Op::ACCESS, 2, "", 0, {}, 0, 4) +
          FileRequest(Op::FALLOCATE, 0, "", 1, {}, 0, 0, 8192) + FileRequest(Op::FSYNC, 0, "", 1) +
          FileRequest(Op::LINK, 2, "", 0, {}, 0, 0, 0, 1, "y") + FileRequest(Op::UNLINK, 1, "x"));

  auto reply = [](auto fill) {
    capnp::MallocMessageBuilder m;
    fill(m.initRoot<schema::ServerMessage>());
    return Frame(m);
  };
  auto attr = [](schema::Attr::Builder a) {
    a.setIno(42);
    a.setMode(0100644);
    a.setNlink(1);
    a.setUid(1000);
    a.setSize(11);
    a.setMtimeNs(1700000000123456789);
  };
  std::string entry = reply([&](schema::ServerMessage::Builder s) {
    auto rs = s.initResponse();
    rs.setId(1);
    rs.initEntry().setNode(1);
    attr(rs.getEntry().initAttr());
  });
  std::string listing = reply([&](schema::ServerMessage::Builder s) {
    auto rs = s.initResponse();
    rs.setId(2);
    auto entries = rs.initEntries(3);
    const char* names[] = {".", "..", "file"};
    for (unsigned i = 0; i < 3; ++i) {
      entries[i].setName(names[i]);
      entries[i].setOffset(i + 1);
      attr(entries[i].initAttr());
    }
    entries[2].setNode(7);
  });
  std::string data = reply([](schema::ServerMessage::Builder s) {
    auto rs = s.initResponse();
    rs.setId(3);
    rs.setData(kj::StringPtr("file contents").asBytes());
  });
  std::string error = reply([](schema::ServerMessage::Builder s) {
    auto rs = s.initResponse();
    rs.setId(4);
    rs.setError(71);
    rs.setMessage("file service version 9 is not 1");
  });
  std::string statfs = reply([](schema::ServerMessage::Builder s) {
    auto st = s.initResponse().initStatfs();
    st.setBsize(4096);
    st.setBlocks(1000);
    st.setNamemax(255);
  });
  std::string notice = reply([](schema::ServerMessage::Builder s) {
    auto n = s.initNotice();
    n.setParent(1);
    n.setName("changed");
  });
  Put("file_reply", "entry", entry);
  Put("file_reply", "listing", listing);
  Put("file_reply", "mixed", data + error + statfs + notice + entry);
}

void Images() {
  std::string dir = std::filesystem::temp_directory_path() / "homeward-make-corpus-images";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/inventory.img") << "inventory";
  std::ofstream(dir + "/pages-1.img") << std::string(3000, 'p');
  std::ofstream(dir + "/empty.img");
  migrate::JobMetadata job;
  job.job_id = 9;
  job.home_node = "node1";
  job.home_pid = 4321;
  job.criu_version = "4.1.1";
  job.external_pipes = {{1234, "stdin"}, {1235, "stdout"}};
  std::string path = out_dir + "/image_stream/three-files";
  std::filesystem::create_directories(out_dir + "/image_stream");
  {
    Fd out = Fd::Open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    migrate::SendOptions options;
    options.chunk_bytes = 1024;
    migrate::SendImages(out.get(), dir, job, options);
  }
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  {
    Fd out = Fd::Open(out_dir + "/image_stream/no-files", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    migrate::SendImages(out.get(), dir, job);
  }
  std::filesystem::remove_all(dir);
}

// Page relay frames (migrate/page_relay.h): an 8-byte header (kind, length), then data.
std::string PageFrame(uint32_t kind, const std::string& data = {}) {
  uint32_t header[2] = {kind, static_cast<uint32_t>(data.size())};
  return std::string(reinterpret_cast<const char*>(header), sizeof header) + data;
}

void Pages() {
  constexpr uint32_t kBegin = 1, kData = 2, kEnd = 3, kDone = 4;
  Put("page_relay", "one-session",
      PageFrame(kBegin) + PageFrame(kData, std::string(64, 'p')) + PageFrame(kEnd) +
          PageFrame(kDone));
  Put("page_relay", "a-retry",
      PageFrame(kBegin) + PageFrame(kData, "abc") + PageFrame(kEnd) + PageFrame(kBegin) +
          PageFrame(kEnd) + PageFrame(kDone));
  Put("page_relay", "no-session", PageFrame(kDone));
}

void Config() {
  Put("config", "minimal",
      "[node]\nname = \"node1\"\naddress = \"127.0.0.1\"\n\n[cluster]\nkey_file = \"key\"\n");
  Put("config", "full",
      "[node]\nname = \"node2\"\naddress = \"10.0.0.2\"\nstate_dir = \"/var/lib/homeward\"\n"
      "mosix_root = \"/mosix\"\nexport_root = \"/\"\nlog_level = \"debug\"\n\n"
      "[ports]\ngossip = 4700\npeer = 4701\n\n[control]\nsocket = \"/run/hw.sock\"\n\n"
      "[cluster]\nkey_file = \"key\"\nseeds = [\"10.0.0.1\", \"10.0.0.3:4800\"]\n\n"
      "[gossip]\ninterval_ms = 500\nsuspect_ms = 2000\ndead_ms = 6000\nwindow = 8\n\n"
      "[balance]\nautomatic = false\ninterval_ms = 1000\nmin_residency_ms = 3000\n"
      "hysteresis_percent = 30\nusher_free_mb = 128\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus OUTDIR\n");
    return 2;
  }
  out_dir = argv[1];
  Gossip();
  Control();
  Files();
  Images();
  Pages();
  Config();
  return 0;
}
