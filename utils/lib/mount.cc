// Mount ownership.
#include "mount.h"

#include <sys/mount.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "error.h"

namespace homeward {

namespace {

// mountinfo escapes space, tab, newline and backslash in paths as \ooo.
std::string Unescape(const std::string& field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      int value = 0;
      bool octal = true;
      for (size_t k = 1; k <= 3; ++k) {
        char c = field[i + k];
        if (c < '0' || c > '7') octal = false;
        value = value * 8 + (c - '0');
      }
      if (octal) {
        out.push_back(static_cast<char>(value));
        i += 3;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

// The device numbers ("MAJ:MIN") of the mounts stacked at `target`, bottom first.
std::vector<std::string> DevicesAt(const std::string& target) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::vector<std::string> devices;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, device, root, mount_point;
    if (fields >> id >> parent >> device >> root >> mount_point && Unescape(mount_point) == target) {
      devices.push_back(device);
    }
  }
  return devices;
}

}  // namespace

int MountsAt(const std::string& target) {
  return static_cast<int>(DevicesAt(target).size());
}

std::string TopMountDevice(const std::string& target) {
  auto devices = DevicesAt(target);
  return devices.empty() ? std::string() : devices.back();
}

int DetachAll(const std::string& target) {
  int detached = 0;
  for (int n = MountsAt(target); n > 0; --n) {
    if (::umount2(target.c_str(), MNT_DETACH) != 0) break;
    ++detached;
  }
  return detached;
}

Mount Mount::Bind(const std::string& source, const std::string& target, bool recursive) {
  unsigned long flags = MS_BIND | (recursive ? MS_REC : 0);
  HW_SYSCALL(::mount(source.c_str(), target.c_str(), nullptr, flags, nullptr),
             "bind mount {} at {}", source, target);
  return Mount(target);
}

Mount Mount::Create(const std::string& source, const std::string& target,
                    const std::string& type, unsigned long flags, const std::string& data) {
  HW_SYSCALL(::mount(source.c_str(), target.c_str(), type.c_str(), flags,
                     data.empty() ? nullptr : data.c_str()),
             "mount {} ({}) at {}", source, type, target);
  return Mount(target);
}

void Mount::Unmount() {
  if (target_.empty()) return;
  ::umount2(target_.c_str(), MNT_DETACH);
  target_.clear();
}

}  // namespace homeward
