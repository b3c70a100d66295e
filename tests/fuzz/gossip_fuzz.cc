// Fuzzes the gossip datagram decoder (noded/gossip_codec): what any host on the network
// can send to a node's UDP port. The first input byte picks the mode: even, the rest is
// the datagram as received; odd, the rest is signed here with the cluster key first, so
// that the fuzzer also reaches the Cap'n Proto parsing and bounds checks behind the MAC
// (what a peer holding the key could send).
#include <sodium.h>

#include <cstdint>
#include <vector>

#include "error.h"
#include "fuzz_key.h"
#include "fuzz_util.h"
#include "gossip_codec.h"

using namespace homeward;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<uint8_t> key = fuzz::FuzzKey();
  static const GossipCodec codec(key);
  if (size < 1) return 0;
  std::vector<uint8_t> datagram(data + 1, data + size);
  if (data[0] & 1) {
    size_t signed_bytes = datagram.size();
    datagram.resize(signed_bytes + crypto_auth_BYTES);
    crypto_auth(datagram.data() + signed_bytes, datagram.data(), signed_bytes, key.data());
  }
  DropCounters drops;
  auto message = codec.Decode(datagram, &drops);
  if (!message) {
    if (drops.total() != 1) fuzz::Broken("a dropped datagram is counted once");
    return 0;
  }
  if (drops.total() != 0) fuzz::Broken("an accepted datagram is counted as dropped");
  // What this node accepts, it can also say: the decoded message encodes (unless it is
  // too large once its shared texts are spelled out) and decodes again.
  std::vector<uint8_t> again;
  try {
    again = codec.Encode(*message);
  } catch (const Error&) {
    return 0;
  }
  DropCounters second;
  auto back = codec.Decode(again, &second);
  if (!back && second[DropReason::kMalformed] != 0) {
    fuzz::Broken("a re-encoded datagram is refused as malformed");
  }
  if (back && (back->sender.name != message->sender.name ||
               back->entries.size() != message->entries.size() || back->seq != message->seq)) {
    fuzz::Broken("a re-encoded datagram decodes differently");
  }
  return 0;
}
