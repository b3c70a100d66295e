// Where this home's jobs run away from home, for threads other than the loop's. Only the
// loop may read the job table, and a loopback connection is opened rarely next to the
// loop's turns, so a question is answered on the loop when it is asked (no table copied
// on every turn): the loopback service (on its own threads) asks, the registry answers.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "uv_handle.h"

namespace homeward {

class JobWhereabouts {
 public:
  // On the loop: the nodes job `home_pid` may be running on right now (where it runs, and
  // during a move the node it was announced to have moved to); empty: none.
  using Lookup = std::function<std::vector<std::string>(pid_t home_pid)>;

  // On the loop: answer questions with `lookup` from now on.
  void Start(uv_loop_t* loop, Lookup lookup);
  // On the loop: questions still waiting, and later ones, get no nodes.
  void Stop();

  // From any thread but the loop's: the loop's answer, or no nodes when the loop has not
  // answered within `patience` (busy or stopping) or the registry has stopped.
  std::vector<std::string> NodesOf(pid_t home_pid,
                                   std::chrono::milliseconds patience = std::chrono::seconds(2));

 private:
  struct Question {
    pid_t home_pid;
    std::promise<std::vector<std::string>> answer;
  };
  void Answer();

  std::mutex mutex_;
  bool open_ = false;
  std::deque<std::shared_ptr<Question>> questions_;
  Lookup lookup_;
  UvHandle<uv_async_t> asked_;
};

}  // namespace homeward
