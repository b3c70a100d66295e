// Fuzzes homefs's side of the file service (homefs/client.cc and fs.cc): the bytes a home
// node sends back. The stream is read as FileClient's receiving thread reads it
// (FrameStream over a socket, with the client's frame limit); each ServerMessage is then
// decoded as the operations' reply handlers decode theirs: notices, errors, entries and
// attributes (ToStat), data, statfs, and directory listings packed into the kernel's
// buffer with fuse_add_direntry(_plus), exactly as Fs::Readdir packs them.
#include <fuse_lowlevel.h>

#include <cstdint>
#include <string>
#include <vector>

#include <kj/exception.h>

#include "error.h"
#include "frame_stream.h"
#include "fs.h"
#include "fuzz_util.h"
#include "schema/files.capnp.h"

using namespace homeward;

namespace {

constexpr size_t kClientFrameBytes = 4 << 20;  // homefs/client.cc kMaxFrameBytes

uint64_t Sink(const struct stat& st) {
  return st.st_ino + st.st_mode + st.st_size + static_cast<uint64_t>(st.st_mtim.tv_nsec);
}

uint64_t Readdir(schema::FileResponse::Reader rs, size_t size, bool plus) {
  std::vector<char> buffer(size);
  size_t used = 0;
  auto entries = rs.getEntries();
  for (unsigned i = 0; i < entries.size(); ++i) {
    auto entry = entries[i];
    std::string name = entry.getName();
    auto next = static_cast<off_t>(entry.getOffset());
    size_t need;
    if (plus) {
      fuse_entry_param e{};
      e.attr = ToStat(entry.getAttr());
      e.ino = entry.getNode();
      need = fuse_add_direntry_plus(nullptr, nullptr, 0, name.c_str(), &e, next);
      if (used + need > size) break;
      fuse_add_direntry_plus(nullptr, buffer.data() + used, size - used, name.c_str(), &e, next);
    } else {
      struct stat st = ToStat(entry.getAttr());
      need = fuse_add_direntry(nullptr, nullptr, 0, name.c_str(), &st, next);
      if (used + need > size) break;
      fuse_add_direntry(nullptr, buffer.data() + used, size - used, name.c_str(), &st, next);
    }
    used += need;
  }
  return used;
}

uint64_t Decode(schema::ServerMessage::Reader server) {
  uint64_t sum = 0;
  if (server.isNotice()) {
    auto notice = server.getNotice();
    std::string name = notice.getName();
    return notice.getNode() + notice.getParent() + name.size();
  }
  if (!server.isResponse()) return 0;
  auto rs = server.getResponse();
  sum += rs.getId();
  if (rs.getError() != 0) return sum + rs.getMessage().size();
  sum += Sink(ToStat(rs.getEntry().getAttr())) + rs.getEntry().getNode();
  sum += rs.getFh() + rs.getSize();
  auto data = rs.getData();
  sum += std::string(reinterpret_cast<const char*>(data.begin()), data.size()).size();
  auto s = rs.getStatfs();
  sum += s.getBsize() + s.getFrsize() + s.getBlocks() + s.getNamemax();
  sum += Readdir(rs, 4096, true) + Readdir(rs, 4096, false);
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::SocketWithBytes socket(data, size);
  FrameStream stream(socket.fd(), kClientFrameBytes);
  // The shape of FileClient::ConnectionLoop: the message is routed (notice, or the id of
  // a pending call) on the receiving thread, outside any per-message catch; only a reply
  // handler's own exceptions are caught per message, and the loop's catches end the
  // connection. Anything else that escaped the loop would end the thread and the mount.
  try {
    for (int i = 0; i < 256; ++i) {
      auto message = stream.Read();
      if (!message) break;
      auto server = message->Root<schema::ServerMessage>();
      if (server.isNotice()) {
        (void)Decode(server);
        continue;
      }
      if (!server.isResponse()) continue;
      (void)server.getResponse().getId();
      try {
        (void)Decode(message->Root<schema::ServerMessage>());
      } catch (const std::exception&) {
      }
    }
  } catch (const Error&) {
    // The connection is dropped and re-established.
  } catch (const kj::Exception&) {
    // Likewise for a message that frames but does not read.
  }
  return 0;
}
