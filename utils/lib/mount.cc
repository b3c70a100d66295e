// Mount ownership.
#include "mount.h"

#include <sys/mount.h>

#include "error.h"

namespace homeward {

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
