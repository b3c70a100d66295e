// The cluster key every harness and seed generator uses: fixed, so that seeds stay valid.
#pragma once

#include <cstdint>
#include <vector>

namespace homeward::fuzz {

inline std::vector<uint8_t> FuzzKey() {
  std::vector<uint8_t> key(32);
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(0xA5 ^ (i * 7));
  return key;
}

}  // namespace homeward::fuzz
