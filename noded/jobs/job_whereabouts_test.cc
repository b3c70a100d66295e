#include "job_whereabouts.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace homeward {
namespace {

using namespace std::chrono_literals;

// A loop on a thread of its own, as the daemon's, answering from a fixed table.
class Answering : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    ASSERT_EQ(uv_async_init(&loop_, &stop_, [](uv_async_t* async) {
                auto* self = static_cast<Answering*>(async->data);
                self->where_.Stop();
                uv_close(reinterpret_cast<uv_handle_t*>(async), nullptr);
              }),
              0);
    stop_.data = this;
    where_.Start(&loop_, [this](pid_t pid) -> std::vector<std::string> {
      ++asked_;
      if (pid == 100) return {"node2"};
      if (pid == 200) return {"node2", "node3"};
      return {};
    });
    thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
  }
  void TearDown() override {
    StopLoop();
    uv_loop_close(&loop_);
  }
  void StopLoop() {
    if (!thread_.joinable()) return;
    uv_async_send(&stop_);
    thread_.join();
  }

  uv_loop_t loop_;
  uv_async_t stop_;
  JobWhereabouts where_;
  std::atomic<int> asked_{0};
  std::thread thread_;
};

TEST_F(Answering, AnswersOnTheLoopWhenAsked) {
  EXPECT_EQ(where_.NodesOf(100), std::vector<std::string>{"node2"});
  EXPECT_EQ(where_.NodesOf(200), (std::vector<std::string>{"node2", "node3"}));
  EXPECT_TRUE(where_.NodesOf(300).empty());
  EXPECT_EQ(asked_, 3);  // once per question, never between them
}

TEST_F(Answering, ManyThreadsAskAtOnce) {
  std::vector<std::thread> askers;
  std::atomic<int> right{0};
  for (int i = 0; i < 8; ++i) {
    askers.emplace_back([&] {
      for (int j = 0; j < 50; ++j) right += where_.NodesOf(100) == std::vector<std::string>{"node2"};
    });
  }
  for (auto& asker : askers) asker.join();
  EXPECT_EQ(right, 400);
}

TEST_F(Answering, NoNodesOnceStopped) {
  StopLoop();
  EXPECT_TRUE(where_.NodesOf(100, 50ms).empty());
}

TEST(JobWhereabouts, NoNodesBeforeStart) {
  JobWhereabouts where;
  EXPECT_TRUE(where.NodesOf(100, 10ms).empty());
}

}  // namespace
}  // namespace homeward
