// AES-256-GCM (96-bit nonce, 16-byte tag) with VAES and VPCLMULQDQ on 512-bit vectors, for
// the records of peer connections (secure_channel.h). OpenSSL 3.0, the version Debian
// ships, seals and opens with 128-bit AES-NI at about 3.5 GB/s per core here; this does
// sixteen blocks per step, about three times as fast, which is what keeps an encrypted
// transfer within 10% of the same transfer in clear when the CPU is all there is.
//
// The output is standard AES-256-GCM, byte for byte what OpenSSL's EVP_aes_256_gcm makes
// (aes_gcm_test.cc checks both ways, at every length around the block and step sizes). Only
// used when the CPU has the instructions (Available()); the caller falls back to OpenSSL.
// Constant time: table-free AES rounds and carry-less multiplication, and the tag is
// compared without an early exit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace homeward {

class AesGcm256 {
 public:
  static constexpr size_t kKeyBytes = 32;
  static constexpr size_t kNonceBytes = 12;
  static constexpr size_t kTagBytes = 16;

  // True when this CPU has AES-NI, PCLMULQDQ, VAES, VPCLMULQDQ and AVX-512 (F, BW, VL).
  static bool Available();

  // Expands `key`; only when Available().
  explicit AesGcm256(const uint8_t* key);
  AesGcm256(const AesGcm256&) = delete;
  AesGcm256& operator=(const AesGcm256&) = delete;
  ~AesGcm256();  // wipes the key schedule and the powers of H

  // `out` gets `length` bytes of ciphertext, then the tag; `plain` may be `out` itself.
  void Seal(uint8_t* out, const uint8_t* plain, size_t length, const uint8_t* ad, size_t ad_length,
            const uint8_t* nonce) const;
  // `sealed` is `length` bytes of ciphertext then the tag; `out` gets the plaintext (it may
  // be `sealed` itself). False when the tag does not match: `out` then holds bytes that
  // must not be used (the caller wipes them).
  bool Open(uint8_t* out, const uint8_t* sealed, size_t length, const uint8_t* ad, size_t ad_length,
            const uint8_t* nonce) const;

 private:
  alignas(64) uint8_t round_keys_[15][16];
  // H^16 .. H^1 (byte-reflected), four to a 512-bit vector, lane 0 first.
  alignas(64) uint8_t powers_[16][16];
};

}  // namespace homeward
