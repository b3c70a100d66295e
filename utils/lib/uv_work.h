// Running blocking work (a peer handshake, a CRIU dump) off the event loop.
#pragma once

#include <uv.h>

#include <functional>

namespace homeward {

// Runs `work` on libuv's thread pool, then `done` on the loop's thread. Returns 0, or the
// negative libuv error when the work could not be queued (then neither runs).
int QueueWork(uv_loop_t* loop, std::function<void()> work, std::function<void()> done);

}  // namespace homeward
