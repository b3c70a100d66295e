#include "output_base.h"

#include "error.h"

namespace homeward {

SettledBase SettleOutputBase(pid_t job, bool pending, bool frozen, uint64_t origin[3],
                             const uint64_t had[3]) {
  SettledBase settled;
  for (int fd : {1, 2}) {
    if (pending) {
      settled.changed = true;
      origin[fd] = had[fd];
      continue;
    }
    if (had[fd] >= origin[fd]) continue;
    if (frozen) {
      Fail(ErrorKind::kInvalidInput, "job {}: mosrun has {} bytes of its fd {}, fewer than {}",
           job, had[fd], fd, origin[fd]);
    }
    settled.lost[fd] = origin[fd] - had[fd];
    origin[fd] = had[fd];
    settled.changed = true;
  }
  return settled;
}

}  // namespace homeward
