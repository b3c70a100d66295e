#include "stream_writeback.h"

#include <gtest/gtest.h>

namespace homeward {
namespace {

constexpr uint64_t kMiB = 1 << 20;
using Range = StreamWriteback::Range;

TEST(StreamWritebackTest, EachChunkOfASequentialStreamIsHandedOnce) {
  StreamWriteback wb;
  for (uint64_t i = 0; i < 7; ++i) EXPECT_EQ(wb.Wrote(i * kMiB, kMiB), std::nullopt) << i;
  EXPECT_EQ(wb.Wrote(7 * kMiB, kMiB), (Range{0, 8 * kMiB}));
  for (uint64_t i = 8; i < 15; ++i) EXPECT_EQ(wb.Wrote(i * kMiB, kMiB), std::nullopt) << i;
  EXPECT_EQ(wb.Wrote(15 * kMiB, kMiB), (Range{8 * kMiB, 8 * kMiB}));
}

TEST(StreamWritebackTest, SmallWritesAddUpAndABigOneGoesAtOnce) {
  StreamWriteback wb;
  uint64_t at = 0;
  std::optional<Range> due;
  while (!due) {
    due = wb.Wrote(at, 4096);
    at += 4096;
  }
  EXPECT_EQ(*due, (Range{0, StreamWriteback::kChunk}));
  EXPECT_EQ(wb.Wrote(at, 16 * kMiB), (Range{at, 16 * kMiB}));
}

TEST(StreamWritebackTest, AWriteElsewhereStartsANewStream) {
  StreamWriteback wb;
  for (uint64_t i = 0; i < 6; ++i) EXPECT_EQ(wb.Wrote(i * kMiB, kMiB), std::nullopt);
  // Back to the start (a rewrite), then on from there: only what follows it counts.
  EXPECT_EQ(wb.Wrote(0, kMiB), std::nullopt);
  for (uint64_t i = 1; i < 7; ++i) EXPECT_EQ(wb.Wrote(i * kMiB, kMiB), std::nullopt) << i;
  EXPECT_EQ(wb.Wrote(7 * kMiB, kMiB), (Range{0, 8 * kMiB}));
}

TEST(StreamWritebackTest, RandomWritesHandNothing) {
  StreamWriteback wb;
  for (uint64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(wb.Wrote(((i * 7919) % 1000) * 64 * 1024, 64 * 1024), std::nullopt) << i;
  }
}

}  // namespace
}  // namespace homeward
