// StreamWriteback: when the home starts writing a file's sequential stream of writes to its
// disk, rather than leaving it all dirty in memory until the writer's fsync or the
// kernel's flusher (which starts only past dirty_background_ratio of memory, or after
// 30 s). Each kChunk written one after another is handed to the disk at once
// (sync_file_range(SYNC_FILE_RANGE_WRITE), which does not wait for it), while the writer
// sends the next: a job that writes a big file and syncs it waits for the last chunk
// rather than for the whole file, as it would on a local disk the flusher kept up with.
// Writes elsewhere in the file start a new stream; a file written under kChunk at a
// stretch is left to the kernel.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>

namespace homeward {

class StreamWriteback {
 public:
  static constexpr uint64_t kChunk = 8 << 20;

  struct Range {
    uint64_t offset = 0, length = 0;
    bool operator==(const Range&) const = default;
  };

  // A write of `length` bytes landed at `offset`: the range to hand to the disk now, if
  // any.
  std::optional<Range> Wrote(uint64_t offset, uint64_t length) {
    std::lock_guard lock(mutex_);
    if (offset != end_) start_ = offset;  // not where the stream was: a new one starts here
    end_ = offset + length;
    if (end_ - start_ < kChunk) return std::nullopt;
    Range due{start_, end_ - start_};
    start_ = end_;
    return due;
  }

 private:
  std::mutex mutex_;
  uint64_t start_ = 0;  // where the part of the stream not yet handed to the disk starts
  uint64_t end_ = 0;    // where the stream's last write ended
};

}  // namespace homeward
