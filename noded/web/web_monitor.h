// The web monitor: an HTTP server on the daemon's event loop (libmicrohttpd in its external
// mode, its epoll descriptor watched by libuv), off unless [web] listen names an address.
// It serves the page (page/: plain HTML, CSS and JS, built into the daemon, nothing from
// outside), a read-only JSON API in the shapes of `mosmon --json` (/api/nodes) and
// `mosps --json` (/api/jobs), and /metrics in Prometheus's text format. Every request is
// answered on the loop thread from the daemon's own state; nothing can be changed here.
#pragma once

#include <uv.h>

#include <functional>
#include <string>

#include "schema/control.capnp.h"
#include "uv_handle.h"

struct MHD_Daemon;

namespace homeward {

struct WebSources {
  std::function<void(schema::NodeList::Builder)> nodes;  // what mosmon lists
  std::function<void(schema::JobList::Builder)> jobs;    // what mosps lists (as root)
  std::function<std::string()> metrics;                  // the Prometheus text
};

class WebMonitor {
 public:
  // listen: "ADDRESS:PORT" (IPv4).
  WebMonitor(uv_loop_t* loop, std::string listen, WebSources sources);
  WebMonitor(const WebMonitor&) = delete;
  WebMonitor& operator=(const WebMonitor&) = delete;
  ~WebMonitor();

  // Binds and starts serving. Throws Error naming the address when it cannot.
  void Start();
  void Stop();

  struct Response {
    int status = 200;
    std::string type;
    std::string body;
  };
  // What GET `path` is answered with (the routes), for the server and its tests.
  Response Answer(const std::string& method, const std::string& path) const;

 private:
  void Run();        // lets libmicrohttpd do what is ready, then re-arms the timer
  void ArmTimer();

  uv_loop_t* loop_;
  std::string listen_;
  WebSources sources_;
  MHD_Daemon* server_ = nullptr;
  UvHandle<uv_poll_t> poll_;
  UvHandle<uv_timer_t> timer_;
};

}  // namespace homeward
