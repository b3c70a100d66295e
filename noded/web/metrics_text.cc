// Prometheus text for /metrics.
#include "metrics_text.h"

#include <cctype>

#include <fmt/format.h>

namespace homeward {
namespace {

// Label values escape backslash, double quote and newline.
std::string Escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// A name as a label value: "bad MAC" -> "bad_mac".
std::string LabelOf(std::string name) {
  for (char& c : name) c = c == ' ' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

class Writer {
 public:
  explicit Writer(const MetricsFigures& f)
      : labels_(fmt::format("node=\"{}\",cluster=\"{}\"", Escape(f.node), Escape(f.cluster))) {}

  void Family(const char* name, const char* type, const char* help) {
    text_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  void Sample(const char* name, double value, const std::string& extra = {}) {
    text_ += fmt::format("{}{{{}{}}} {}\n", name, labels_, extra.empty() ? "" : "," + extra, value);
  }
  void One(const char* name, const char* type, const char* help, double value) {
    Family(name, type, help);
    Sample(name, value);
  }
  std::string text() const { return text_; }

 private:
  std::string labels_;
  std::string text_;
};

}  // namespace

std::string MetricsTextOf(const MetricsFigures& f) {
  Writer w(f);
  w.One("homeward_up_seconds", "gauge", "Seconds since this node's daemon started.", f.uptime_s);
  w.One("homeward_load", "gauge", "The node's load as it publishes it (runnable tasks).",
        f.self.load);
  w.One("homeward_cores", "gauge", "The node's cores.", f.self.cores);
  w.One("homeward_speed", "gauge", "The node's CPU speed (measured, or node.speed).", f.self.speed);
  w.One("homeward_memory_free_bytes", "gauge", "Free memory.", f.self.mem_free_mb * 1048576.0);
  w.One("homeward_memory_total_bytes", "gauge", "Total memory.", f.self.mem_total_mb * 1048576.0);
  w.One("homeward_swap_free_bytes", "gauge", "Free swap.", f.self.swap_free_mb * 1048576.0);
  w.One("homeward_swap_total_bytes", "gauge", "Total swap.", f.self.swap_total_mb * 1048576.0);
  w.One("homeward_jobs_away", "gauge", "Jobs of this home running on other nodes.",
        f.self.jobs_away);
  w.One("homeward_guests", "gauge", "Other homes' jobs running here.", f.self.guests_here);
  w.Family("homeward_cluster_nodes", "gauge", "This cluster's nodes as this node's gossip sees them.");
  w.Sample("homeward_cluster_nodes", static_cast<double>(f.nodes_alive), "state=\"alive\"");
  w.Sample("homeward_cluster_nodes", static_cast<double>(f.nodes_dead), "state=\"dead\"");

  w.Family("homeward_migrations_total", "counter", "Moves of jobs from this node, by outcome.");
  w.Sample("homeward_migrations_total", static_cast<double>(f.moves.moved), "outcome=\"moved\"");
  w.Sample("homeward_migrations_total", static_cast<double>(f.moves.failed), "outcome=\"failed\"");
  w.One("homeward_migration_frozen_seconds_total", "counter",
        "The time jobs that moved from this node were frozen, in all.",
        static_cast<double>(f.moves.frozen_ms) / 1000);

  w.One("homeward_gossip_probes_total", "counter", "Gossip rounds' direct probes.",
        static_cast<double>(f.gossip.probes));
  w.One("homeward_gossip_indirect_probes_total", "counter", "Probes through other nodes.",
        static_cast<double>(f.gossip.indirect_probes));
  w.One("homeward_gossip_suspicions_total", "counter", "Nodes this node suspected.",
        static_cast<double>(f.gossip.suspicions));
  w.One("homeward_gossip_deaths_total", "counter", "Nodes this node declared dead.",
        static_cast<double>(f.gossip.deaths));
  w.Family("homeward_gossip_dropped_total", "counter", "Gossip datagrams dropped, by reason.");
  for (size_t i = 0; i < f.drops.by_reason.size(); ++i) {
    w.Sample("homeward_gossip_dropped_total", static_cast<double>(f.drops.by_reason[i]),
             fmt::format("reason=\"{}\"", LabelOf(DropReasonName(static_cast<DropReason>(i)))));
  }

  w.One("homeward_file_requests_total", "counter",
        "Requests the file service answered (homefs calls of jobs away from this home).",
        static_cast<double>(f.file_requests));
  w.One("homeward_file_request_errors_total", "counter", "Of those, the ones that failed.",
        static_cast<double>(f.file_errors));
  w.One("homeward_file_request_seconds_total", "counter",
        "The time spent handling them, in all (divide by the requests for the mean).",
        static_cast<double>(f.file_micros) / 1e6);
  return w.text();
}

}  // namespace homeward
