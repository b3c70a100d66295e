// Mount: the single owner of a mount point. Move-only; detaches the mount on destruction.
#pragma once

#include <string>
#include <utility>

namespace homeward {

// How many mounts are stacked at `target`, as /proc/self/mountinfo lists them (read
// from the kernel's table: nothing on the mounts themselves is touched, so a hung FUSE
// mount cannot block the count).
int MountsAt(const std::string& target);
// The device number ("MAJ:MIN", as /sys/class/bdi names a mount's) of the topmost mount at
// `target`, from the same table; empty when nothing is mounted there.
std::string TopMountDevice(const std::string& target);
// Lazily detaches (MNT_DETACH) every mount stacked at `target`; returns how many.
int DetachAll(const std::string& target);

class Mount {
 public:
  Mount() = default;
  // Bind-mounts `source` at `target` (recursively when `recursive`).
  static Mount Bind(const std::string& source, const std::string& target, bool recursive);
  // Mounts a filesystem of `type` at `target`.
  static Mount Create(const std::string& source, const std::string& target,
                      const std::string& type, unsigned long flags, const std::string& data);
  // Takes ownership of an existing mount at `target`.
  static Mount Adopt(std::string target) { return Mount(std::move(target)); }

  Mount(Mount&& other) noexcept : target_(std::exchange(other.target_, {})) {}
  Mount& operator=(Mount&& other) noexcept {
    if (this != &other) {
      Unmount();
      target_ = std::exchange(other.target_, {});
    }
    return *this;
  }
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;
  ~Mount() { Unmount(); }

  const std::string& target() const { return target_; }
  bool mounted() const { return !target_.empty(); }
  // Lazily detaches the mount (MNT_DETACH), so busy mounts never block shutdown.
  void Unmount();

 private:
  explicit Mount(std::string target) : target_(std::move(target)) {}
  std::string target_;
};

}  // namespace homeward
