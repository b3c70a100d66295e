// AES-256-GCM (96-bit nonce, 16-byte tag) from Intel's Multi-Buffer Crypto for IPsec
// library (libipsec-mb), for the records of peer connections (secure_channel.h). OpenSSL
// 3.0, the version Debian ships, seals and opens with 128-bit AES-NI at about 4 GB/s per
// core here; libipsec-mb's AVX-512 code (VAES and VPCLMULQDQ, sixteen blocks a step) does
// about 10 GB/s, which is what keeps an encrypted transfer within 10% of the same transfer
// in clear when the CPU is all there is.
//
// The output is standard AES-256-GCM, byte for byte what OpenSSL's EVP_aes_256_gcm makes
// (aes_gcm_test.cc checks both ways, at every length around the block and step sizes). Only
// used when the library runs its AVX-512 code on this CPU (Available()); elsewhere the
// caller uses OpenSSL.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace homeward {

class AesGcm256 {
 public:
  static constexpr size_t kKeyBytes = 32;
  static constexpr size_t kNonceBytes = 12;
  static constexpr size_t kTagBytes = 16;

  // True when libipsec-mb runs its AVX-512 code here (VAES, VPCLMULQDQ, AVX-512 F/BW/VL).
  static bool Available();

  // Expands `key`; only when Available().
  explicit AesGcm256(const uint8_t* key);
  AesGcm256(const AesGcm256&) = delete;
  AesGcm256& operator=(const AesGcm256&) = delete;
  ~AesGcm256();  // wipes the expanded key

  // `out` gets `length` bytes of ciphertext, then the tag; `plain` may be `out` itself.
  void Seal(uint8_t* out, const uint8_t* plain, size_t length, const uint8_t* ad, size_t ad_length,
            const uint8_t* nonce) const;
  // `sealed` is `length` bytes of ciphertext then the tag; `out` gets the plaintext (it may
  // be `sealed` itself). False when the tag does not match: `out` then holds bytes that
  // must not be used (the caller wipes them).
  bool Open(uint8_t* out, const uint8_t* sealed, size_t length, const uint8_t* ad, size_t ad_length,
            const uint8_t* nonce) const;
  // The same with the tag apart from the ciphertext (a record received in two places).
  bool OpenDetached(uint8_t* out, const uint8_t* ciphertext, size_t length, const uint8_t* tag,
                    const uint8_t* ad, size_t ad_length, const uint8_t* nonce) const;

 private:
  struct Keys;  // the library's manager and expanded key
  std::unique_ptr<Keys> keys_;
};

}  // namespace homeward
