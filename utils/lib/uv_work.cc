// Thread-pool work with a completion on the loop.
#include "uv_work.h"

#include <memory>

#include "c_boundary.h"

namespace homeward {

namespace {

struct Work {
  uv_work_t req;
  std::function<void()> work;
  std::function<void()> done;
};

}  // namespace

int QueueWork(uv_loop_t* loop, std::function<void()> work, std::function<void()> done) {
  auto* item = new Work{{}, std::move(work), std::move(done)};
  item->req.data = item;
  int status = uv_queue_work(
      loop, &item->req,
      [](uv_work_t* req) {
        GuardedCall("work on the thread pool", [req] { static_cast<Work*>(req->data)->work(); });
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<Work> item(static_cast<Work*>(req->data));
        GuardedCall("completion of thread-pool work", [&item] { item->done(); });
      });
  if (status < 0) delete item;
  return status;
}

}  // namespace homeward
