#include "aes_gcm.h"

#include <algorithm>

// The library's header aligns its key and context structures (64 bytes, which its AVX-512
// code needs) only when told it is on Linux.
#ifndef LINUX
#define LINUX
#endif
#include <intel-ipsec-mb.h>
#include <openssl/crypto.h>

#include "error.h"

namespace homeward {

namespace {

// The library's manager holds only the function table chosen for this CPU: no state
// changes in the direct GCM calls, so one manager serves every key and thread.
struct Manager {
  IMB_MGR* mgr = nullptr;
  IMB_ARCH arch = IMB_ARCH_NONE;

  Manager() {
    mgr = alloc_mb_mgr(0);
    if (mgr != nullptr) init_mb_mgr_auto(mgr, &arch);
  }
  ~Manager() { free_mb_mgr(mgr); }
};

const Manager& TheManager() {
  static const Manager manager;
  return manager;
}

}  // namespace

struct AesGcm256::Keys {
  IMB_MGR* mgr;
  gcm_key_data key;  // aligned by its declaration
};

bool AesGcm256::Available() {
  const Manager& m = TheManager();
  return m.mgr != nullptr && m.arch == IMB_ARCH_AVX512;
}

AesGcm256::AesGcm256(const uint8_t* key) : keys_(std::make_unique<Keys>()) {
  if (!Available()) Fail(ErrorKind::kUnimplemented, "AES-GCM with AVX-512 is not available here");
  keys_->mgr = TheManager().mgr;
  IMB_AES256_GCM_PRE(keys_->mgr, key, &keys_->key);
}

AesGcm256::~AesGcm256() {
  OPENSSL_cleanse(&keys_->key, sizeof keys_->key);
}

void AesGcm256::Seal(uint8_t* out, const uint8_t* plain, size_t length, const uint8_t* ad,
                     size_t ad_length, const uint8_t* nonce) const {
  gcm_context_data context;
  IMB_AES256_GCM_ENC(keys_->mgr, &keys_->key, &context, out, plain, length, nonce, ad, ad_length,
                     out + length, kTagBytes);
}

bool AesGcm256::Open(uint8_t* out, const uint8_t* sealed, size_t length, const uint8_t* ad,
                     size_t ad_length, const uint8_t* nonce) const {
  uint8_t expected[kTagBytes];
  // The tag is read before `out` may overwrite the ciphertext it follows.
  std::copy(sealed + length, sealed + length + kTagBytes, expected);
  return OpenDetached(out, sealed, length, expected, ad, ad_length, nonce);
}

bool AesGcm256::OpenDetached(uint8_t* out, const uint8_t* ciphertext, size_t length,
                             const uint8_t* expected, const uint8_t* ad, size_t ad_length,
                             const uint8_t* nonce) const {
  uint8_t tag[kTagBytes];
  gcm_context_data context;
  IMB_AES256_GCM_DEC(keys_->mgr, &keys_->key, &context, out, ciphertext, length, nonce, ad,
                     ad_length, tag, kTagBytes);
  return CRYPTO_memcmp(tag, expected, kTagBytes) == 0;
}

}  // namespace homeward
