// A peer of the cluster asking a home to open a loopback connection, as a guest's daemon
// does (noded/jobs/loopback_carrier.cc): the real handshake with the cluster key, from a
// source address of our choosing (the node it stands for), then one LoopbackOpen. For the
// tests of who may ask (tests/system/test_loopback_trust.py).
//
//   loopback_open SOURCE HOME_ADDRESS PEER_PORT KEY_FILE HOME_PID TARGET_ADDRESS PORT
//
// Prints "opened" and exits 0 when the home connected (then sends "ping\n" and prints the
// line that comes back), or prints "refused ERRNO_NAME: why" and exits 1; 2 on a failure
// of its own.
#include <arpa/inet.h>
#include <string.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "config.h"
#include "error.h"
#include "loopback_stream.h"
#include "peer_auth.h"
#include "secure_channel.h"

using namespace homeward;

int main(int argc, char** argv) {
  if (argc != 8) {
    std::cerr << "usage: loopback_open SOURCE HOME PORT KEY_FILE HOME_PID TARGET PORT\n";
    return 2;
  }
  try {
    std::ifstream key_file(argv[4]);
    std::stringstream key_text;
    key_text << key_file.rdbuf();
    std::vector<uint8_t> key = ParseClusterKey(key_text.str());
    SetPeerSourceAddress(argv[1]);
    LoopbackTarget target;
    target.family = AF_INET;
    if (::inet_pton(AF_INET, argv[6], target.address.data()) != 1) {
      std::cerr << "not an IPv4 address: " << argv[6] << "\n";
      return 2;
    }
    target.port = static_cast<uint16_t>(std::stoi(argv[7]));
    auto stream = PeerConnectStream(argv[2], static_cast<uint16_t>(std::stoi(argv[3])), key,
                                    "loopback", std::chrono::seconds(10));
    SendLoopbackOpen(*stream, static_cast<pid_t>(std::stol(argv[5])), target);
    std::string why;
    int error = ReadLoopbackOpened(*stream, &why);
    if (error) {
      std::cout << "refused " << strerrorname_np(error) << ": " << why << std::endl;
      return 1;
    }
    std::cout << "opened" << std::endl;
    stream->Write("ping\n", 5);
    std::string line;
    char c;
    while (line.size() < 64 && stream->Read(&c, 1) == 1 && c != '\n') line += c;
    std::cout << line << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "loopback_open: " << e.what() << "\n";
    return 2;
  }
}
