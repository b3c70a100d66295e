// A partner cluster's node offering a move whose job names a home of its choosing: the
// real handshake with a partnership's key, from a source address of our choosing, then
// the move request (startGuest) a moving node sends first. For the tests of what a
// partner's key speaks for (tests/system/test_partner_moves.py).
//
//   forged_move SOURCE TARGET_ADDRESS PEER_PORT KEY_FILE CLUSTER HOME HOME_CLUSTER HOME_PID
//
// Prints "accepted" and exits 0 when the target said yes to the request (the test then
// hangs up before any image is sent), or prints "refused: why" and exits 1; 2 on a
// failure of its own.
#include <unistd.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "config.h"
#include "control.capnp.h"
#include "peer_auth.h"
#include "secure_channel.h"

using namespace homeward;

namespace {

// Reads exactly what capnp asks for from the stream.
class StreamReader : public kj::InputStream {
 public:
  explicit StreamReader(SecureStream& stream) : stream_(stream) {}
  size_t tryRead(void* buffer, size_t min_bytes, size_t max_bytes) override {
    size_t got = 0;
    while (got < min_bytes) {
      size_t n = stream_.Read(static_cast<char*>(buffer) + got, max_bytes - got);
      if (n == 0) break;
      got += n;
    }
    return got;
  }

 private:
  SecureStream& stream_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 9) {
    std::cerr << "usage: forged_move SOURCE TARGET PORT KEY_FILE CLUSTER HOME HOME_CLUSTER "
                 "HOME_PID\n";
    return 2;
  }
  try {
    std::ifstream key_file(argv[4]);
    std::stringstream key_text;
    key_text << key_file.rdbuf();
    PeerCredentials credentials(ParseClusterKey(key_text.str()), argv[5]);
    SetPeerSourceAddress(argv[1]);
    auto stream = PeerConnectStream(argv[2], static_cast<uint16_t>(std::stoi(argv[3])),
                                    credentials, "migration", std::chrono::seconds(10));
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<schema::ControlRequest>();
    request.setVersion(schema::CONTROL_VERSION);
    auto guest = request.initStartGuest();
    auto job = guest.initJob();
    job.initArgv(1).set(0, "true");
    job.setCwd("/");
    guest.setHome(argv[6]);
    guest.setHomeCluster(argv[7]);
    auto identity = guest.initIdentity();
    identity.setUid(::getuid());
    identity.setGid(::getgid());
    identity.setHomePid(std::stoi(argv[8]));
    guest.setHomeHost(argv[1]);
    guest.setHomePort(1);
    auto words = capnp::messageToFlatArray(message);
    stream->Write(words.asBytes().begin(), words.asBytes().size());

    StreamReader input(*stream);
    capnp::InputStreamMessageReader reader(input);
    auto reply = reader.getRoot<schema::ControlReply>();
    if (reply.isDone()) {
      std::cout << "accepted" << std::endl;
      return 0;
    }
    if (reply.isError()) {
      std::cout << "refused: " << reply.getError().getMessage().cStr() << std::endl;
      return 1;
    }
    std::cerr << "forged_move: an answer that is neither yes nor an error\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "forged_move: " << e.what() << "\n";
    return 2;
  }
}
