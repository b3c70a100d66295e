// AES-256-GCM on 512-bit vectors (see aes_gcm.h). GHASH works on byte-reflected blocks
// (Intel's "Carry-Less Multiplication and its Usage for Computing the GCM Mode"): products
// of sixteen blocks with H^16..H^1 are summed unreduced and reduced once per step, since
// the shift and the reduction are linear.
#include "aes_gcm.h"

// GCC 12 takes the deliberately undefined vectors inside its own AVX-512 intrinsics
// (_mm512_undefined_epi32 in broadcasts and extracts) for uninitialized variables.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <cpuid.h>
#include <immintrin.h>
#include <sodium.h>

#include <cstring>

// Only these functions use the instructions; the rest of the program stays generic x86-64
// and calls them only after Available().
#define HW_VAES __attribute__((target("aes,pclmul,avx2,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")))

namespace homeward {
namespace {

HW_VAES inline __m128i Reverse() {
  return _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

HW_VAES inline __m128i ByteSwap(__m128i x) {
  return _mm_shuffle_epi8(x, Reverse());
}

// The 256-bit carry-less product hi:lo of two byte-reflected values, shifted left by one
// bit (the reflection) and reduced modulo x^128 + x^7 + x^2 + x + 1.
HW_VAES inline __m128i Reduce(__m128i lo, __m128i hi) {
  __m128i t7 = _mm_srli_epi32(lo, 31);
  __m128i t8 = _mm_srli_epi32(hi, 31);
  lo = _mm_slli_epi32(lo, 1);
  hi = _mm_slli_epi32(hi, 1);
  __m128i t9 = _mm_srli_si128(t7, 12);
  t8 = _mm_slli_si128(t8, 4);
  t7 = _mm_slli_si128(t7, 4);
  lo = _mm_or_si128(lo, t7);
  hi = _mm_or_si128(hi, t8);
  hi = _mm_or_si128(hi, t9);
  t7 = _mm_slli_epi32(lo, 31);
  t8 = _mm_slli_epi32(lo, 30);
  t9 = _mm_slli_epi32(lo, 25);
  t7 = _mm_xor_si128(t7, t8);
  t7 = _mm_xor_si128(t7, t9);
  t8 = _mm_srli_si128(t7, 4);
  t7 = _mm_slli_si128(t7, 12);
  lo = _mm_xor_si128(lo, t7);
  __m128i t2 = _mm_srli_epi32(lo, 1);
  __m128i t4 = _mm_srli_epi32(lo, 2);
  __m128i t5 = _mm_srli_epi32(lo, 7);
  t2 = _mm_xor_si128(t2, t4);
  t2 = _mm_xor_si128(t2, t5);
  t2 = _mm_xor_si128(t2, t8);
  lo = _mm_xor_si128(lo, t2);
  return _mm_xor_si128(hi, lo);
}

// Folds the middle products into lo and hi, then reduces.
HW_VAES inline __m128i Finish(__m128i lo, __m128i mid, __m128i hi) {
  lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
  hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
  return Reduce(lo, hi);
}

HW_VAES inline __m128i GfMul(__m128i a, __m128i b) {
  __m128i lo = _mm_clmulepi64_si128(a, b, 0x00);
  __m128i hi = _mm_clmulepi64_si128(a, b, 0x11);
  __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10), _mm_clmulepi64_si128(a, b, 0x01));
  return Finish(lo, mid, hi);
}

HW_VAES inline __m128i Fold(__m512i v) {
  __m256i x = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  return _mm_xor_si128(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
}

HW_VAES inline __m128i EncryptBlock(const uint8_t (*rk)[16], __m128i block) {
  block = _mm_xor_si128(block, _mm_load_si128(reinterpret_cast<const __m128i*>(rk[0])));
  for (int r = 1; r < 14; ++r) {
    block = _mm_aesenc_si128(block, _mm_load_si128(reinterpret_cast<const __m128i*>(rk[r])));
  }
  return _mm_aesenclast_si128(block, _mm_load_si128(reinterpret_cast<const __m128i*>(rk[14])));
}

// AES-256 key expansion (FIPS-197), as in Intel's AES-NI white paper.
HW_VAES inline __m128i ExpandA(__m128i t1, __m128i t2) {
  t2 = _mm_shuffle_epi32(t2, 0xff);
  __m128i t4 = _mm_slli_si128(t1, 4);
  t1 = _mm_xor_si128(t1, t4);
  t4 = _mm_slli_si128(t4, 4);
  t1 = _mm_xor_si128(t1, t4);
  t4 = _mm_slli_si128(t4, 4);
  t1 = _mm_xor_si128(t1, t4);
  return _mm_xor_si128(t1, t2);
}

HW_VAES inline __m128i ExpandB(__m128i t1, __m128i t3) {
  __m128i t2 = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(t1, 0x00), 0xaa);
  __m128i t4 = _mm_slli_si128(t3, 4);
  t3 = _mm_xor_si128(t3, t4);
  t4 = _mm_slli_si128(t4, 4);
  t3 = _mm_xor_si128(t3, t4);
  t4 = _mm_slli_si128(t4, 4);
  t3 = _mm_xor_si128(t3, t4);
  return _mm_xor_si128(t3, t2);
}

HW_VAES void ExpandKey(const uint8_t* key, uint8_t (*rk)[16]) {
  auto store = [&](int i, __m128i v) { _mm_store_si128(reinterpret_cast<__m128i*>(rk[i]), v); };
  __m128i t1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
  __m128i t3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key + 16));
  store(0, t1);
  store(1, t3);
#define HW_EXPAND(i, rcon)                               \
  t1 = ExpandA(t1, _mm_aeskeygenassist_si128(t3, rcon)); \
  store(i, t1);                                          \
  if ((i) < 14) {                                        \
    t3 = ExpandB(t1, t3);                                \
    store((i) + 1, t3);                                  \
  }
  HW_EXPAND(2, 0x01)
  HW_EXPAND(4, 0x02)
  HW_EXPAND(6, 0x04)
  HW_EXPAND(8, 0x08)
  HW_EXPAND(10, 0x10)
  HW_EXPAND(12, 0x20)
  HW_EXPAND(14, 0x40)
#undef HW_EXPAND
}

HW_VAES void Setup(const uint8_t* key, uint8_t (*rk)[16], uint8_t (*powers)[16]) {
  ExpandKey(key, rk);
  __m128i h = ByteSwap(EncryptBlock(rk, _mm_setzero_si128()));
  __m128i power = h;
  for (int i = 15; i >= 0; --i) {  // powers[15] = H, powers[0] = H^16
    _mm_store_si128(reinterpret_cast<__m128i*>(powers[i]), power);
    power = GfMul(power, h);
  }
}

// GHASH of the additional data into `y` (zero-padded blocks).
HW_VAES inline __m128i HashAd(__m128i y, __m128i h, const uint8_t* ad, size_t length) {
  for (size_t at = 0; at < length; at += 16) {
    size_t n = length - at < 16 ? length - at : 16;
    __m128i block = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << n) - 1), ad + at);
    y = GfMul(_mm_xor_si128(y, ByteSwap(block)), h);
  }
  return y;
}

// y <- (y + x0) H^16 + x1 H^15 + ... + x15 H over sixteen blocks of ciphertext (four to a
// vector, as on the wire), reduced once.
HW_VAES __attribute__((always_inline)) inline __m128i Hash16(__m128i y, __m512i d0, __m512i d1,
                                                             __m512i d2, __m512i d3,
                                                             __m512i reverse, __m512i p0,
                                                             __m512i p1, __m512i p2, __m512i p3) {
  __m512i x0 = _mm512_xor_si512(_mm512_shuffle_epi8(d0, reverse), _mm512_zextsi128_si512(y));
  __m512i x1 = _mm512_shuffle_epi8(d1, reverse);
  __m512i x2 = _mm512_shuffle_epi8(d2, reverse);
  __m512i x3 = _mm512_shuffle_epi8(d3, reverse);
#define HW_PRODUCT(imm)                                                     \
  _mm512_xor_si512(_mm512_xor_si512(_mm512_clmulepi64_epi128(x0, p0, imm),  \
                                    _mm512_clmulepi64_epi128(x1, p1, imm)), \
                   _mm512_xor_si512(_mm512_clmulepi64_epi128(x2, p2, imm),  \
                                    _mm512_clmulepi64_epi128(x3, p3, imm)))
  __m512i lo = HW_PRODUCT(0x00);
  __m512i hi = HW_PRODUCT(0x11);
  __m512i mid = _mm512_xor_si512(HW_PRODUCT(0x01), HW_PRODUCT(0x10));
#undef HW_PRODUCT
  return Finish(Fold(lo), Fold(mid), Fold(hi));
}

// Encrypts (or decrypts: the same keystream) `length` bytes from `in` to `out` in CTR mode
// from counter 2 of `nonce`, and returns the GHASH of the ciphertext (what is written
// when sealing, what is read when opening) continued from `y`. Each step hashes sixteen
// blocks while the AES rounds of sixteen others run: the ciphertext read when opening,
// the previous step's when sealing.
template <bool kSeal>
HW_VAES __m128i Crypt(const uint8_t (*rk)[16], const uint8_t (*powers)[16], __m128i y,
                      __m128i j0_reflected, uint8_t* out, const uint8_t* in, size_t length) {
  const __m512i reverse = _mm512_broadcast_i32x4(Reverse());
  __m512i keys[15];
  for (int r = 0; r < 15; ++r) {
    keys[r] = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(rk[r])));
  }
  const __m512i p0 = _mm512_load_si512(powers[0]);
  const __m512i p1 = _mm512_load_si512(powers[4]);
  const __m512i p2 = _mm512_load_si512(powers[8]);
  const __m512i p3 = _mm512_load_si512(powers[12]);
  // Counters kept byte-reflected, so that the big-endian 32-bit counter of the block is
  // the low lane's first dword and adds as a little-endian one.
  const __m512i four = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
  __m512i counter =
      _mm512_add_epi32(_mm512_broadcast_i32x4(j0_reflected),
                       _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1));
  __m512i q0 = _mm512_setzero_si512(), q1 = q0, q2 = q0, q3 = q0;  // sealed, not yet hashed
  bool pending = false;
  size_t done = 0;
  for (; length - done >= 256; done += 256) {
    __m512i c0 = counter;
    __m512i c1 = _mm512_add_epi32(c0, four);
    __m512i c2 = _mm512_add_epi32(c1, four);
    __m512i c3 = _mm512_add_epi32(c2, four);
    counter = _mm512_add_epi32(c3, four);
    __m512i k0 = _mm512_xor_si512(_mm512_shuffle_epi8(c0, reverse), keys[0]);
    __m512i k1 = _mm512_xor_si512(_mm512_shuffle_epi8(c1, reverse), keys[0]);
    __m512i k2 = _mm512_xor_si512(_mm512_shuffle_epi8(c2, reverse), keys[0]);
    __m512i k3 = _mm512_xor_si512(_mm512_shuffle_epi8(c3, reverse), keys[0]);
    __m512i d0 = _mm512_loadu_si512(in + done);
    __m512i d1 = _mm512_loadu_si512(in + done + 64);
    __m512i d2 = _mm512_loadu_si512(in + done + 128);
    __m512i d3 = _mm512_loadu_si512(in + done + 192);
    if constexpr (kSeal) {
      if (pending) y = Hash16(y, q0, q1, q2, q3, reverse, p0, p1, p2, p3);
    } else {
      y = Hash16(y, d0, d1, d2, d3, reverse, p0, p1, p2, p3);
    }
    for (int r = 1; r < 14; ++r) {
      k0 = _mm512_aesenc_epi128(k0, keys[r]);
      k1 = _mm512_aesenc_epi128(k1, keys[r]);
      k2 = _mm512_aesenc_epi128(k2, keys[r]);
      k3 = _mm512_aesenc_epi128(k3, keys[r]);
    }
    d0 = _mm512_xor_si512(d0, _mm512_aesenclast_epi128(k0, keys[14]));
    d1 = _mm512_xor_si512(d1, _mm512_aesenclast_epi128(k1, keys[14]));
    d2 = _mm512_xor_si512(d2, _mm512_aesenclast_epi128(k2, keys[14]));
    d3 = _mm512_xor_si512(d3, _mm512_aesenclast_epi128(k3, keys[14]));
    _mm512_storeu_si512(out + done, d0);
    _mm512_storeu_si512(out + done + 64, d1);
    _mm512_storeu_si512(out + done + 128, d2);
    _mm512_storeu_si512(out + done + 192, d3);
    if constexpr (kSeal) {
      q0 = d0, q1 = d1, q2 = d2, q3 = d3;
      pending = true;
    }
  }
  if (pending) y = Hash16(y, q0, q1, q2, q3, reverse, p0, p1, p2, p3);
  // The last blocks (fewer than sixteen) one at a time, the last one perhaps partial.
  const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(powers[15]));
  __m128i block_counter = _mm512_castsi512_si128(counter);
  for (; done < length; done += 16) {
    size_t n = length - done < 16 ? length - done : 16;
    auto mask = static_cast<__mmask16>((1u << n) - 1);
    __m128i d = _mm_maskz_loadu_epi8(mask, in + done);
    __m128i k = EncryptBlock(rk, ByteSwap(block_counter));
    block_counter = _mm_add_epi32(block_counter, _mm_set_epi32(0, 0, 0, 1));
    __m128i result = _mm_xor_si128(d, k);
    _mm_mask_storeu_epi8(out + done, mask, result);
    __m128i hashed = kSeal ? _mm_maskz_mov_epi8(mask, result) : d;
    y = GfMul(_mm_xor_si128(y, ByteSwap(hashed)), h);
  }
  return y;
}

HW_VAES __m128i Tag(const uint8_t (*rk)[16], const uint8_t (*powers)[16], const uint8_t* nonce,
                    const uint8_t* ad, size_t ad_length, uint8_t* out, const uint8_t* in,
                    size_t length, bool seal) {
  alignas(16) uint8_t j0[16] = {};
  std::memcpy(j0, nonce, AesGcm256::kNonceBytes);
  j0[15] = 1;
  __m128i j0_block = _mm_load_si128(reinterpret_cast<const __m128i*>(j0));
  const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(powers[15]));
  __m128i y = HashAd(_mm_setzero_si128(), h, ad, ad_length);
  y = seal ? Crypt<true>(rk, powers, y, ByteSwap(j0_block), out, in, length)
           : Crypt<false>(rk, powers, y, ByteSwap(j0_block), out, in, length);
  __m128i lengths =
      _mm_set_epi64x(static_cast<int64_t>(ad_length) * 8, static_cast<int64_t>(length) * 8);
  y = GfMul(_mm_xor_si128(y, lengths), h);
  return _mm_xor_si128(ByteSwap(y), EncryptBlock(rk, j0_block));
}

HW_VAES void SealImpl(const uint8_t (*rk)[16], const uint8_t (*powers)[16], uint8_t* out,
                      const uint8_t* plain, size_t length, const uint8_t* ad, size_t ad_length,
                      const uint8_t* nonce) {
  __m128i tag = Tag(rk, powers, nonce, ad, ad_length, out, plain, length, true);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + length), tag);
}

HW_VAES bool OpenImpl(const uint8_t (*rk)[16], const uint8_t (*powers)[16], uint8_t* out,
                      const uint8_t* sealed, size_t length, const uint8_t* ad, size_t ad_length,
                      const uint8_t* nonce) {
  // Read before `out` (which may overlap the ciphertext) is written.
  __m128i expected = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sealed + length));
  __m128i tag = Tag(rk, powers, nonce, ad, ad_length, out, sealed, length, false);
  __m128i diff = _mm_xor_si128(tag, expected);
  return _mm_testz_si128(diff, diff) != 0;  // all 128 bits at once: no early exit
}

}  // namespace

bool AesGcm256::Available() {
  // From CPUID itself: not every compiler's __builtin_cpu_supports knows VAES.
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  bool aes = c & (1u << 25), pclmul = c & (1u << 1), osxsave = c & (1u << 27);
  if (!aes || !pclmul || !osxsave) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  bool avx512 = (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31));  // F, BW, VL
  bool avx2 = b & (1u << 5);
  bool vaes = c & (1u << 9), vpclmul = c & (1u << 10);
  if (!avx512 || !avx2 || !vaes || !vpclmul) return false;
  // The kernel saves the vector registers: SSE, AVX, opmask and both halves of ZMM.
  unsigned lo = 0, hi = 0;
  __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0xe6) == 0xe6;
}

AesGcm256::AesGcm256(const uint8_t* key) {
  Setup(key, round_keys_, powers_);
}

AesGcm256::~AesGcm256() {
  sodium_memzero(round_keys_, sizeof round_keys_);
  sodium_memzero(powers_, sizeof powers_);
}

void AesGcm256::Seal(uint8_t* out, const uint8_t* plain, size_t length, const uint8_t* ad,
                     size_t ad_length, const uint8_t* nonce) const {
  SealImpl(round_keys_, powers_, out, plain, length, ad, ad_length, nonce);
}

bool AesGcm256::Open(uint8_t* out, const uint8_t* sealed, size_t length, const uint8_t* ad,
                     size_t ad_length, const uint8_t* nonce) const {
  return OpenImpl(round_keys_, powers_, out, sealed, length, ad, ad_length, nonce);
}

}  // namespace homeward
