#include "job_whereabouts.h"

#include <spdlog/spdlog.h>

#include <exception>

#include "c_boundary.h"
#include "uv_error.h"

namespace homeward {

void JobWhereabouts::Start(uv_loop_t* loop, Lookup lookup) {
  lookup_ = std::move(lookup);
  CheckUv(uv_async_init(loop, asked_.get(),
                        [](uv_async_t* async) {
                          GuardedCall("answering where a job runs", [async] {
                            static_cast<JobWhereabouts*>(async->data)->Answer();
                          });
                        }),
          "job whereabouts");
  asked_.get()->data = this;
  uv_unref(asked_.base());  // keeps no loop alive
  std::lock_guard lock(mutex_);
  open_ = true;
}

void JobWhereabouts::Stop() {
  std::deque<std::shared_ptr<Question>> waiting;
  {
    std::lock_guard lock(mutex_);
    open_ = false;
    waiting.swap(questions_);
  }
  for (auto& question : waiting) question->answer.set_value({});
  asked_.Close();
}

void JobWhereabouts::Answer() {
  std::deque<std::shared_ptr<Question>> asked;
  {
    std::lock_guard lock(mutex_);
    asked.swap(questions_);
  }
  for (auto& question : asked) {
    std::vector<std::string> nodes;
    try {
      nodes = lookup_(question->home_pid);
    } catch (const std::exception& e) {  // no nodes: the connection is refused
      spdlog::error("where job {} runs: {}", question->home_pid, e.what());
    }
    question->answer.set_value(std::move(nodes));
  }
}

std::vector<std::string> JobWhereabouts::NodesOf(pid_t home_pid,
                                                 std::chrono::milliseconds patience) {
  auto question = std::make_shared<Question>();
  question->home_pid = home_pid;
  std::future<std::vector<std::string>> answer = question->answer.get_future();
  {
    std::lock_guard lock(mutex_);
    if (!open_) return {};
    questions_.push_back(question);
    // Under the lock, so Stop cannot close the handle in between.
    uv_async_send(asked_.get());
  }
  if (answer.wait_for(patience) != std::future_status::ready) return {};
  try {
    return answer.get();
  } catch (const std::future_error&) {  // dropped unanswered: as no nodes
    return {};
  }
}

}  // namespace homeward
