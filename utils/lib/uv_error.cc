// libuv error checking.
#include "uv_error.h"

#include <uv.h>

#include "error.h"

namespace homeward {

int CheckUv(int status, std::string_view what) {
  if (status < 0) {
    throw Error(KindForErrno(-status), fmt::format("{}: {}", what, uv_strerror(status)), -status);
  }
  return status;
}

}  // namespace homeward
