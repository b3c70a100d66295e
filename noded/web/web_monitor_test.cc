#include "web_monitor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "error.h"

namespace homeward {
namespace {

using ::testing::HasSubstr;

WebSources Sources() {
  return {.nodes =
              [](schema::NodeList::Builder list) {
                auto nodes = list.initNodes(2);
                nodes[0].setName("node2");
                nodes[0].setCluster("lab");
                nodes[0].setAlive(true);
                nodes[0].setCores(2);
                nodes[0].setLoad(1.25f);
                nodes[1].setName("node1");
                nodes[1].setCluster("lab");
                nodes[1].setAlive(true);
                nodes[1].setIsSelf(true);
                nodes[1].setCores(4);
                nodes[1].setLoad(0.5f);
                nodes[1].setClockKnown(false);
              },
          .jobs =
              [](schema::JobList::Builder list) {
                auto jobs = list.initJobs(1);
                jobs[0].setHomePid(42);
                jobs[0].setHome("node1");
                jobs[0].setWhere("node2");
                jobs[0].setUid(0);
                jobs[0].setCmd("sleep 100");
              },
          .metrics = [] { return std::string("homeward_load{node=\"node1\"} 0.5\n"); }};
}

TEST(WebMonitorTest, TheApiHasTheShapesOfMosmonAndMosps) {
  WebMonitor web(nullptr, "127.0.0.1:1", Sources());
  auto nodes = web.Answer("GET", "/api/nodes");
  EXPECT_EQ(nodes.status, 200);
  EXPECT_EQ(nodes.type, "application/json");
  auto json = nlohmann::json::parse(nodes.body);
  ASSERT_EQ(json["nodes"].size(), 2u);
  EXPECT_EQ(json["nodes"][0]["name"], "node1");  // sorted by cluster and name
  EXPECT_EQ(json["nodes"][0]["clock_offset_ms"], nullptr);
  EXPECT_EQ(json["clusters"]["lab"]["cpus"], 6);
  EXPECT_EQ(json["clusters"]["lab"]["load"], 1.75);
  auto jobs = nlohmann::json::parse(web.Answer("GET", "/api/jobs").body);
  EXPECT_EQ(jobs["jobs"][0]["pid"], 42);
  EXPECT_EQ(jobs["jobs"][0]["user"], "root");
  EXPECT_EQ(jobs["jobs"][0]["where"], "node2");
}

TEST(WebMonitorTest, ServesThePageMetricsAndRefusesTheRest) {
  WebMonitor web(nullptr, "127.0.0.1:1", Sources());
  auto page = web.Answer("GET", "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_EQ(page.type, "text/html; charset=utf-8");
  EXPECT_THAT(page.body, HasSubstr("<script src=\"/monitor.js\""));
  EXPECT_EQ(web.Answer("GET", "/monitor.js").type, "text/javascript; charset=utf-8");
  EXPECT_EQ(web.Answer("GET", "/monitor.css").status, 200);
  auto metrics = web.Answer("GET", "/metrics");
  EXPECT_EQ(metrics.type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(web.Answer("GET", "/etc/passwd").status, 404);
  EXPECT_EQ(web.Answer("GET", "/../web_monitor.cc").status, 404);
  EXPECT_EQ(web.Answer("POST", "/api/jobs").status, 405);
}

TEST(WebMonitorTest, ABadListenAddressIsNamed) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  for (const char* listen : {"127.0.0.1", "localhost:80", "127.0.0.1:0", "127.0.0.1:99999"}) {
    WebMonitor web(&loop, listen, Sources());
    try {
      web.Start();
      ADD_FAILURE() << listen << " was taken";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("is not ADDRESS:PORT")) << listen;
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

// A real request over TCP, answered on the loop thread.
TEST(WebMonitorTest, AnswersOverHttpOnTheLoop) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  // A free port: bind one, note it, let it go.
  int probe = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ::getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(probe);
  int port = ntohs(addr.sin_port);
  std::string reply;
  std::atomic<bool> done{false};
  {
    WebMonitor web(&loop, "127.0.0.1:" + std::to_string(port), Sources());
    web.Start();
    std::thread client([&] {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
        std::string request = "GET /api/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        (void)!::write(fd, request.data(), request.size());
        char buffer[4096];
        ssize_t n;
        while ((n = ::read(fd, buffer, sizeof buffer)) > 0) reply.append(buffer, static_cast<size_t>(n));
      }
      ::close(fd);
      done = true;
    });
    // Serve until the client has read the whole answer (the server closes the connection).
    while (!done) uv_run(&loop, UV_RUN_ONCE);
    client.join();
    web.Stop();
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  EXPECT_THAT(reply, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(reply, HasSubstr("\"pid\":42"));
  EXPECT_THAT(reply, HasSubstr("Cache-Control: no-store"));
}

}  // namespace
}  // namespace homeward
