// The web monitor's server and routes.
#include "web_monitor.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <cstring>

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "error.h"
#include "monitor_json.h"
#include "uv_error.h"
#include "web_assets.h"

namespace homeward {
namespace {

constexpr unsigned kConnectionLimit = 64;
constexpr unsigned kConnectionTimeoutS = 30;

sockaddr_in ParseListen(const std::string& listen) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  auto colon = listen.rfind(':');
  unsigned long port = 0;
  if (colon != std::string::npos) {
    char* end = nullptr;
    port = std::strtoul(listen.c_str() + colon + 1, &end, 10);
    if (*end != '\0') port = 0;
  }
  if (colon == std::string::npos || port == 0 || port > 65535 ||
      inet_pton(AF_INET, listen.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    Fail(ErrorKind::kInvalidInput, "web.listen '{}' is not ADDRESS:PORT (an IPv4 address)",
         listen);
  }
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

MHD_Result Queue(MHD_Connection* connection, const WebMonitor::Response& answer) {
  MHD_Response* response = MHD_create_response_from_buffer(
      answer.body.size(), const_cast<char*>(answer.body.data()), MHD_RESPMEM_MUST_COPY);
  if (!response) return MHD_NO;
  MHD_add_response_header(response, "Content-Type", answer.type.c_str());
  // Live data: never cached; the page and its API from this server only.
  MHD_add_response_header(response, "Cache-Control", "no-store");
  MHD_add_response_header(response, "X-Content-Type-Options", "nosniff");
  MHD_add_response_header(response, "Content-Security-Policy",
                          "default-src 'self'; img-src 'self' data:");
  MHD_Result queued = MHD_queue_response(connection, static_cast<unsigned>(answer.status), response);
  MHD_destroy_response(response);
  return queued;
}

MHD_Result OnRequest(void* self, MHD_Connection* connection, const char* url, const char* method,
                     const char*, const char*, size_t* upload_data_size, void** state) {
  // A failure closes the connection (MHD_NO) and is logged; the server serves on.
  int result = GuardedCall("web request", [&]() -> int {
    // The first call for a request only says it began; answer on the second. A body
    // (there should be none) is read and ignored.
    if (*state == nullptr) {
      *state = connection;
      return MHD_YES;
    }
    if (*upload_data_size != 0) {
      *upload_data_size = 0;
      return MHD_YES;
    }
    return Queue(connection, static_cast<WebMonitor*>(self)->Answer(method, url));
  });
  return result == MHD_YES ? MHD_YES : MHD_NO;
}

std::string JsonText(const nlohmann::json& json) { return json.dump() + "\n"; }

}  // namespace

WebMonitor::WebMonitor(uv_loop_t* loop, std::string listen, WebSources sources)
    : loop_(loop), listen_(std::move(listen)), sources_(std::move(sources)) {}

WebMonitor::~WebMonitor() { Stop(); }

void WebMonitor::Start() {
  sockaddr_in addr = ParseListen(listen_);
  server_ = MHD_start_daemon(
      MHD_USE_EPOLL | MHD_USE_ERROR_LOG, ntohs(addr.sin_port), nullptr, nullptr,
      &OnRequest, this, MHD_OPTION_SOCK_ADDR, &addr,
      MHD_OPTION_CONNECTION_LIMIT, kConnectionLimit, MHD_OPTION_CONNECTION_TIMEOUT,
      kConnectionTimeoutS, MHD_OPTION_END);
  if (!server_) {
    Fail(ErrorKind::kFailed, "web monitor: cannot listen on {} (web.listen): the address is "
         "not this machine's, or the port is taken", listen_);
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(server_, MHD_DAEMON_INFO_EPOLL_FD);
  CheckUv(uv_poll_init(loop_, poll_.get(), info->epoll_fd), "web monitor poll");
  poll_.get()->data = this;
  CheckUv(uv_poll_start(poll_.get(), UV_READABLE,
                        [](uv_poll_t* poll, int, int) {
                          GuardedCall("web monitor poll",
                                      [&] { static_cast<WebMonitor*>(poll->data)->Run(); });
                        }),
          "web monitor poll");
  CheckUv(uv_timer_init(loop_, timer_.get()), "web monitor timer");
  timer_.get()->data = this;
  ArmTimer();
  spdlog::info("web monitor at http://{}/", listen_);
}

void WebMonitor::Stop() {
  poll_.Close();
  timer_.Close();
  if (server_) {
    MHD_stop_daemon(server_);
    server_ = nullptr;
  }
}

void WebMonitor::Run() {
  MHD_run(server_);
  ArmTimer();
}

void WebMonitor::ArmTimer() {
  // Connections time out and closed ones are cleaned up in MHD_run: call it when
  // libmicrohttpd says, or once a second at most otherwise.
  MHD_UNSIGNED_LONG_LONG timeout_ms = 1000;
  if (MHD_get_timeout(server_, &timeout_ms) != MHD_YES || timeout_ms > 1000) timeout_ms = 1000;
  uv_timer_start(
      timer_.get(),
      [](uv_timer_t* timer) {
        GuardedCall("web monitor timer", [&] { static_cast<WebMonitor*>(timer->data)->Run(); });
      },
      timeout_ms, 0);
}

WebMonitor::Response WebMonitor::Answer(const std::string& method, const std::string& path) const {
  if (method != "GET" && method != "HEAD") {
    return {405, "text/plain; charset=utf-8", "read-only: GET only\n"};
  }
  if (path == "/api/nodes") {
    capnp::MallocMessageBuilder message;
    auto list = message.initRoot<schema::NodeList>();
    sources_.nodes(list);
    return {200, "application/json", JsonText(NodesJson(list.asReader()))};
  }
  if (path == "/api/jobs") {
    capnp::MallocMessageBuilder message;
    auto list = message.initRoot<schema::JobList>();
    sources_.jobs(list);
    return {200, "application/json", JsonText(JobsJson(list.asReader()))};
  }
  if (path == "/metrics") {
    return {200, "text/plain; version=0.0.4; charset=utf-8", sources_.metrics()};
  }
  std::string asset = path == "/" ? "/index.html" : path;
  for (const WebAsset& file : WebAssets()) {
    if (asset == std::string("/") + file.name) return {200, file.type, std::string(file.body)};
  }
  return {404, "text/plain; charset=utf-8", "no such page: " + path + "\n"};
}

}  // namespace homeward
