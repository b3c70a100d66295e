// libipsec-mb's AES-256-GCM (aes_gcm.h) against the published test vectors and against
// OpenSSL, both ways, at every length around its block and step sizes, in place and not; anything
// changed in a sealed record (ciphertext, tag, additional data, nonce) fails to open.
#include "aes_gcm.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sodium.h>

#include <string>
#include <vector>

namespace homeward {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes Hex(const std::string& hex) {
  Bytes out;
  for (size_t i = 0; i < hex.size(); i += 2)
    out.push_back(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

Bytes Random(size_t n) {
  Bytes out(n);
  if (n > 0) randombytes_buf(out.data(), n);
  return out;
}

// OpenSSL's AES-256-GCM: the reference.
Bytes OpenSslSeal(const Bytes& key, const Bytes& nonce, const Bytes& ad, const Bytes& plain) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  Bytes out(plain.size() + AesGcm256::kTagBytes);
  int n = 0;
  EXPECT_EQ(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nonce.data()), 1);
  EXPECT_EQ(EVP_EncryptUpdate(ctx, nullptr, &n, ad.data(), static_cast<int>(ad.size())), 1);
  if (!plain.empty()) {
    EXPECT_EQ(EVP_EncryptUpdate(ctx, out.data(), &n, plain.data(), static_cast<int>(plain.size())),
              1);
  }
  EXPECT_EQ(EVP_EncryptFinal_ex(ctx, out.data() + plain.size(), &n), 1);
  EXPECT_EQ(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, out.data() + plain.size()), 1);
  EVP_CIPHER_CTX_free(ctx);
  return out;
}

class AesGcmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GE(sodium_init(), 0);
    if (!AesGcm256::Available()) GTEST_SKIP() << "no VAES/VPCLMULQDQ/AVX-512 on this CPU";
  }
};

TEST_F(AesGcmTest, PublishedVectors) {
  // The GCM specification's test cases 13 and 14 (AES-256, zero key and nonce).
  Bytes key(32, 0), nonce(12, 0);
  AesGcm256 gcm(key.data());
  Bytes tag(16);
  gcm.Seal(tag.data(), nullptr, 0, nullptr, 0, nonce.data());
  EXPECT_EQ(tag, Hex("530f8afbc74536b9a963b4f1c4cb738b"));
  Bytes plain(16, 0), sealed(32);
  gcm.Seal(sealed.data(), plain.data(), 16, nullptr, 0, nonce.data());
  EXPECT_EQ(sealed, Hex("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"));
}

TEST_F(AesGcmTest, SameBytesAsOpenSslAtEveryLength) {
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 1100; ++n) lengths.push_back(n);
  for (size_t n = 65536 - 300; n <= 65536 + 20; ++n) lengths.push_back(n);
  Bytes key = Random(32);
  AesGcm256 gcm(key.data());
  for (size_t length : lengths) {
    for (size_t ad_length : {0, 4, 15, 16, 17, 40}) {
      Bytes nonce = Random(12), ad = Random(ad_length), plain = Random(length);
      Bytes expected = OpenSslSeal(key, nonce, ad, plain);
      Bytes sealed(length + 16);
      gcm.Seal(sealed.data(), plain.data(), length, ad.data(), ad_length, nonce.data());
      ASSERT_EQ(sealed, expected) << length << " bytes, " << ad_length << " of additional data";
      // In place, both ways.
      Bytes in_place = plain;
      in_place.resize(length + 16);
      gcm.Seal(in_place.data(), in_place.data(), length, ad.data(), ad_length, nonce.data());
      ASSERT_EQ(in_place, expected) << length;
      Bytes opened(length);
      ASSERT_TRUE(
          gcm.Open(opened.data(), expected.data(), length, ad.data(), ad_length, nonce.data()));
      ASSERT_EQ(opened, plain) << length;
      ASSERT_TRUE(
          gcm.Open(in_place.data(), in_place.data(), length, ad.data(), ad_length, nonce.data()));
      ASSERT_TRUE(std::equal(plain.begin(), plain.end(), in_place.begin())) << length;
    }
  }
}

TEST_F(AesGcmTest, AnyChangeFailsToOpen) {
  Bytes key = Random(32);
  AesGcm256 gcm(key.data());
  for (size_t length : {0, 1, 16, 255, 256, 257, 4096, 65536}) {
    Bytes nonce = Random(12), ad = Random(4), plain = Random(length);
    Bytes sealed(length + 16), out(length);
    gcm.Seal(sealed.data(), plain.data(), length, ad.data(), ad.size(), nonce.data());
    // Every bit of short records, a spread of bits of long ones, the tag's every bit.
    size_t step = length <= 300 ? 1 : 97;
    for (size_t byte = 0; byte < sealed.size(); byte += byte >= length ? 1 : step) {
      for (int bit = 0; bit < 8; ++bit) {
        Bytes bad = sealed;
        bad[byte] ^= static_cast<uint8_t>(1 << bit);
        ASSERT_FALSE(gcm.Open(out.data(), bad.data(), length, ad.data(), ad.size(), nonce.data()))
            << "byte " << byte << " bit " << bit << " of a " << length << "-byte record";
      }
    }
    for (size_t i = 0; i < 12; ++i) {
      Bytes other = nonce;
      other[i] ^= 0x80;
      ASSERT_FALSE(gcm.Open(out.data(), sealed.data(), length, ad.data(), ad.size(), other.data()));
    }
    for (size_t i = 0; i < ad.size(); ++i) {
      Bytes other = ad;
      other[i] ^= 1;
      ASSERT_FALSE(
          gcm.Open(out.data(), sealed.data(), length, other.data(), other.size(), nonce.data()));
    }
    // Another key.
    Bytes key2 = key;
    key2[31] ^= 1;
    AesGcm256 other(key2.data());
    ASSERT_FALSE(other.Open(out.data(), sealed.data(), length, ad.data(), ad.size(), nonce.data()));
    ASSERT_TRUE(gcm.Open(out.data(), sealed.data(), length, ad.data(), ad.size(), nonce.data()));
    ASSERT_EQ(out, plain);
  }
}

}  // namespace
}  // namespace homeward
