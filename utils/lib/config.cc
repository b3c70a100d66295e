// TOML node configuration: parsing and validation.
#include "config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include <toml++/toml.h>

#include "error.h"

namespace homeward {

namespace {

constexpr size_t kClusterKeyBytes = 32;

bool ParseIpv4(const std::string& text, in_addr* out) {
  return inet_pton(AF_INET, text.c_str(), out) == 1;
}

std::string ReadKeyFile(const std::string& path, std::string* error);

class ConfigReader {
 public:
  ConfigReader(const toml::table& root, const std::string& path) : root_(root), path_(path) {}

  [[noreturn]] void Problem(std::string_view field, std::string_view problem) const {
    Fail(ErrorKind::kInvalidInput, "{}: {}: {}", path_, field, problem);
  }

  const toml::node* Find(std::string_view field) const { return root_.at_path(field).node(); }

  std::string RequiredString(std::string_view field) const {
    const toml::node* node = Find(field);
    if (!node) Problem(field, "missing (required)");
    return AsString(field, *node);
  }

  void OptionalString(std::string_view field, std::string* out) const {
    if (const toml::node* node = Find(field)) *out = AsString(field, *node);
  }

  int64_t Integer(std::string_view field, int64_t fallback, int64_t min, int64_t max) const {
    const toml::node* node = Find(field);
    if (!node) return fallback;
    // Checked before reading: toml++'s value<int64_t>() of a float such as 40e70 converts
    // it out of range (undefined behaviour) before it can refuse it.
    if (!node->is_integer()) Problem(field, "must be an integer");
    int64_t value = node->as_integer()->get();
    if (value < min || value > max) {
      Problem(field, fmt::format("{} is out of range [{}, {}]", value, min, max));
    }
    return value;
  }

  double Number(std::string_view field, double fallback, double min, double max) const {
    const toml::node* node = Find(field);
    if (!node) return fallback;
    if (!node->is_number()) Problem(field, "must be a number");
    double value = *node->value<double>();
    if (!(value >= min && value <= max)) {
      Problem(field, fmt::format("{} is out of range [{}, {}]", value, min, max));
    }
    return value;
  }

  bool Boolean(std::string_view field, bool fallback) const {
    const toml::node* node = Find(field);
    if (!node) return fallback;
    if (!node->is_boolean()) Problem(field, "must be true or false");
    return *node->value<bool>();
  }

  std::chrono::milliseconds Millis(std::string_view field,
                                   std::chrono::milliseconds fallback) const {
    return std::chrono::milliseconds(Integer(field, fallback.count(), 1, 24 * 3600 * 1000));
  }

  // The 32-byte key in the file `path`, which field names.
  std::vector<uint8_t> Key(std::string_view field, const std::string& path) const {
    std::string read_error;
    std::string key_text = ReadKeyFile(path, &read_error);
    if (!read_error.empty()) Problem(field, read_error);
    try {
      return ParseClusterKey(key_text);
    } catch (const Error& e) {
      Problem(field, fmt::format("{}: {}", path, e.what()));
    }
  }

  std::vector<Endpoint> Seeds(const std::string& field, uint16_t default_port) const {
    std::vector<Endpoint> endpoints;
    auto seeds = StringArray(field);
    for (size_t i = 0; i < seeds.size(); ++i) {
      try {
        endpoints.push_back(Endpoint::Parse(seeds[i], default_port));
      } catch (const Error& e) {
        Problem(fmt::format("{}[{}]", field, i), e.what());
      }
    }
    return endpoints;
  }

  // The number of tables in the array of tables `field` ([[field]]).
  size_t Tables(std::string_view field) const {
    const toml::node* node = Find(field);
    if (!node) return 0;
    if (!node->is_array_of_tables()) Problem(field, "must be a list of tables ([[partner]])");
    return node->as_array()->size();
  }

  std::vector<std::string> StringArray(std::string_view field) const {
    std::vector<std::string> result;
    const toml::node* node = Find(field);
    if (!node) return result;
    const toml::array* array = node->as_array();
    if (!array) Problem(field, "must be an array of strings");
    for (size_t i = 0; i < array->size(); ++i) {
      result.push_back(AsString(fmt::format("{}[{}]", field, i), *array->get(i)));
    }
    return result;
  }

 private:
  std::string AsString(std::string_view field, const toml::node& node) const {
    auto value = node.value<std::string>();
    if (!node.is_string() || !value) Problem(field, "must be a string");
    return *value;
  }

  const toml::table& root_;
  const std::string& path_;
};

std::string ReadWholeFile(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = fmt::format("cannot read {}: {}", path, std::strerror(errno));
    return {};
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// The cluster key opens every node of the cluster: a key file that anyone but its owner
// (the daemon's user) may read or change is refused, as ssh refuses a private key.
std::string ReadKeyFile(const std::string& path, std::string* error) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    *error = fmt::format("cannot read {}: {}", path, std::strerror(errno));
    return {};
  }
  struct stat st;
  std::string text;
  if (::fstat(fd, &st) != 0) {
    *error = fmt::format("cannot stat {}: {}", path, std::strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    *error = fmt::format("{} is not a regular file", path);
  } else if (st.st_uid != ::geteuid()) {
    *error = fmt::format("{} belongs to uid {}, not to this daemon's uid {}: chown it", path,
                         st.st_uid, ::geteuid());
  } else if (st.st_mode & 077) {
    *error = fmt::format("{} may be read or changed by others (mode {:04o}): chmod 600 it", path,
                         st.st_mode & 07777);
  } else {
    // A key is 64 hexadecimal digits: a file much larger is not a key, and is not read
    // whole (a key_file naming something endless must not take the daemon's memory).
    char buffer[4096];
    ssize_t n;
    while ((n = ::read(fd, buffer, sizeof buffer)) > 0 && text.size() <= sizeof buffer) {
      text.append(buffer, static_cast<size_t>(n));
    }
    if (n < 0) *error = fmt::format("cannot read {}: {}", path, std::strerror(errno));
    if (text.size() > sizeof buffer) *error = fmt::format("{} is too long for a key", path);
  }
  ::close(fd);
  return error->empty() ? text : std::string();
}

// [[partner]] tables: each a cluster with a key of the partnership's own.
void ReadPartners(const ConfigReader& reader, NodeConfig* config) {
  size_t count = reader.Tables("partner");
  for (size_t i = 0; i < count; ++i) {
    PartnerConfig partner;
    std::string at = fmt::format("partner[{}].", i);
    partner.name = reader.RequiredString(at + "name");
    if (!ValidNodeName(partner.name)) {
      reader.Problem(at + "name", fmt::format("'{}' is not a valid cluster name", partner.name));
    }
    if (partner.name == config->cluster) {
      reader.Problem(at + "name", fmt::format("'{}' is this node's own cluster", partner.name));
    }
    for (const auto& other : config->partners) {
      if (other.name == partner.name) {
        reader.Problem(at + "name", fmt::format("cluster '{}' is a partner twice", partner.name));
      }
    }
    partner.key_file = reader.RequiredString(at + "key_file");
    partner.key = reader.Key(at + "key_file", partner.key_file);
    // A partner that held this cluster's key could speak as any of its nodes.
    if (partner.key == config->cluster_key) {
      reader.Problem(at + "key_file", "is the cluster's own key; a partnership needs a key of "
                                      "its own");
    }
    partner.seeds = reader.Seeds(at + "seeds", config->gossip_port);
    partner.priority = static_cast<int>(reader.Integer(at + "priority", partner.priority, 1, 65535));
    partner.send = reader.Boolean(at + "send", partner.send);
    partner.accept = reader.Boolean(at + "accept", partner.accept);
    config->partners.push_back(std::move(partner));
  }
}

}  // namespace

const PartnerConfig* NodeConfig::Partner(const std::string& name) const {
  for (const auto& partner : partners) {
    if (partner.name == name) return &partner;
  }
  return nullptr;
}

const std::vector<uint8_t>* NodeConfig::KeyFor(const std::string& name) const {
  if (OwnCluster(name)) return &cluster_key;
  const PartnerConfig* partner = Partner(name);
  return partner ? &partner->key : nullptr;
}

PeerCredentials NodeConfig::CredentialsFor(const std::string& name) const {
  if (OwnCluster(name)) return PeerCredentials(cluster_key);
  const PartnerConfig* partner = Partner(name);
  if (!partner) {
    Fail(ErrorKind::kNotFound, "cluster '{}' is no partner of this node's cluster '{}'", name,
         cluster);
  }
  return PeerCredentials(partner->key, cluster);
}

bool ValidNodeName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return name != "." && name != "..";
}

Endpoint Endpoint::Parse(const std::string& text, uint16_t default_port) {
  Endpoint endpoint;
  endpoint.port = default_port;
  std::string host = text;
  if (auto colon = text.rfind(':'); colon != std::string::npos) {
    host = text.substr(0, colon);
    std::string port = text.substr(colon + 1);
    char* end = nullptr;
    unsigned long value = std::strtoul(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || value == 0 || value > 65535) {
      Fail(ErrorKind::kInvalidInput, "'{}' has a bad port (want 1-65535)", text);
    }
    endpoint.port = static_cast<uint16_t>(value);
  }
  in_addr addr;
  if (!ParseIpv4(host, &addr)) {
    Fail(ErrorKind::kInvalidInput, "'{}' is not an IPv4 address", host);
  }
  endpoint.host = host;
  return endpoint;
}

sockaddr_in Endpoint::ToSockaddr() const {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
  return addr;
}

std::string Endpoint::ToString() const {
  return fmt::format("{}:{}", host, port);
}

std::vector<uint8_t> ParseClusterKey(const std::string& text) {
  std::string hex;
  for (char c : text) {
    if (!std::isspace(static_cast<unsigned char>(c))) hex.push_back(c);
  }
  if (hex.size() != kClusterKeyBytes * 2) {
    Fail(ErrorKind::kInvalidInput, "a cluster key is {} hexadecimal digits, found {} characters",
         kClusterKeyBytes * 2, hex.size());
  }
  std::vector<uint8_t> key;
  for (size_t i = 0; i < hex.size(); i += 2) {
    auto digit = [&](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      Fail(ErrorKind::kInvalidInput, "a cluster key holds only hexadecimal digits, found '{}'", c);
    };
    key.push_back(static_cast<uint8_t>(digit(hex[i]) * 16 + digit(hex[i + 1])));
  }
  return key;
}

NodeConfig ParseNodeConfig(const std::string& text, const std::string& path) {
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    Fail(ErrorKind::kInvalidInput, "{}:{}:{}: {}", path, where.line, where.column, e.description());
  }
  ConfigReader reader(root, path);
  NodeConfig config;
  config.config_path = path;

  config.name = reader.RequiredString("node.name");
  if (!ValidNodeName(config.name)) {
    reader.Problem("node.name", fmt::format("'{}' is not a valid node name (letters, digits, "
                                            "'-', '_' and '.', at most 63)",
                                            config.name));
  }
  config.address = reader.RequiredString("node.address");
  in_addr addr;
  if (!ParseIpv4(config.address, &addr)) {
    reader.Problem("node.address", fmt::format("'{}' is not an IPv4 address", config.address));
  }
  reader.OptionalString("node.state_dir", &config.state_dir);
  reader.OptionalString("node.mosix_root", &config.mosix_root);
  reader.OptionalString("node.export_root", &config.export_root);
  reader.OptionalString("node.log_level", &config.log_level);
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    if (config.log_level == level) goto level_ok;
  }
  reader.Problem("node.log_level", fmt::format("'{}' is not one of trace, debug, info, warn, "
                                               "error, critical, off",
                                               config.log_level));
level_ok:
  config.speed = reader.Number("node.speed", 0, 0.01, 1000);
  reader.OptionalString("node.group", &config.group);
  if (!config.group.empty() && !ValidNodeName(config.group)) {
    reader.Problem("node.group", fmt::format("'{}' is not a valid group name (letters, digits, "
                                             "'-', '_' and '.', at most 63)",
                                             config.group));
  }
  config.others_priority =
      static_cast<int>(reader.Integer("node.others_priority", config.others_priority, 1, 65535));
  config.long_job_after = std::chrono::seconds(
      reader.Integer("node.long_job_s", config.long_job_after.count(), 0, 365 * 86400));
  config.long_job_priority = static_cast<int>(
      reader.Integer("node.long_job_priority", config.long_job_priority, 1, 65535));
  config.gossip_port = static_cast<uint16_t>(reader.Integer("ports.gossip", 4700, 1, 65535));
  config.peer_port = static_cast<uint16_t>(reader.Integer("ports.peer", 4701, 1, 65535));
  config.control_socket = config.state_dir + "/control.sock";
  reader.OptionalString("control.socket", &config.control_socket);

  reader.OptionalString("cluster.name", &config.cluster);
  if (!ValidNodeName(config.cluster)) {
    reader.Problem("cluster.name", fmt::format("'{}' is not a valid cluster name (letters, "
                                               "digits, '-', '_' and '.', at most 63)",
                                               config.cluster));
  }
  config.key_file = reader.RequiredString("cluster.key_file");
  config.cluster_key = reader.Key("cluster.key_file", config.key_file);
  config.seeds = reader.Seeds("cluster.seeds", config.gossip_port);
  ReadPartners(reader, &config);

  config.gossip.interval = reader.Millis("gossip.interval_ms", config.gossip.interval);
  config.gossip.suspect_after = reader.Millis("gossip.suspect_ms", config.gossip.suspect_after);
  config.gossip.dead_after = reader.Millis("gossip.dead_ms", config.gossip.dead_after);
  config.gossip.window =
      static_cast<int>(reader.Integer("gossip.window", config.gossip.window, 1, 64));
  if (config.gossip.dead_after <= config.gossip.suspect_after) {
    reader.Problem("gossip.dead_ms", "must be greater than gossip.suspect_ms");
  }
  config.files_trust_root = reader.Boolean("files.trust_root", config.files_trust_root);
  config.files_idle_disconnect = std::chrono::seconds(reader.Integer(
      "files.idle_disconnect_s", config.files_idle_disconnect.count(), 1, 86399));
  config.files_sync_replay_log =
      reader.Boolean("files.sync_replay_log", config.files_sync_replay_log);
  config.files_write_behind = reader.Boolean("files.write_behind", config.files_write_behind);
  config.files_io_uring = reader.Boolean("files.io_uring", config.files_io_uring);
  config.gossip.replay_window =
      reader.Millis("gossip.replay_window_ms", config.gossip.replay_window);
  PeerConfig& peer = config.peer;
  peer.max_pending_per_source = static_cast<int>(
      reader.Integer("peer.max_pending_per_source", peer.max_pending_per_source, 1, 4096));
  peer.max_pending =
      static_cast<int>(reader.Integer("peer.max_pending", peer.max_pending, 1, 4096));
  peer.handshake = reader.Millis("peer.handshake_ms", peer.handshake);
  BalanceConfig& balance = config.balance;
  balance.automatic = reader.Boolean("balance.automatic", balance.automatic);
  balance.interval = reader.Millis("balance.interval_ms", balance.interval);
  balance.min_residency = reader.Millis("balance.min_residency_ms", balance.min_residency);
  balance.hysteresis_percent = static_cast<int>(
      reader.Integer("balance.hysteresis_percent", balance.hysteresis_percent, 0, 1000));
  balance.usher_free_mb = static_cast<uint32_t>(
      reader.Integer("balance.usher_free_mb", balance.usher_free_mb, 0, 1 << 30));
  config.recovery.home_grace = std::chrono::seconds(
      reader.Integer("recovery.home_grace_s", config.recovery.home_grace.count(), 1, 86399));
  std::string frozen = config.recovery.frozen_go_home ? "home" : "continue";
  reader.OptionalString("recovery.frozen_guests", &frozen);
  if (frozen != "continue" && frozen != "home") {
    Fail(ErrorKind::kInvalidInput, "{}: recovery.frozen_guests is \"{}\"; it is \"continue\" or "
         "\"home\"", path, frozen);
  }
  config.recovery.frozen_go_home = frozen == "home";
  config.migration.lazy_pages = reader.Boolean("migration.lazy_pages", config.migration.lazy_pages);
  reader.OptionalString("web.listen", &config.web_listen);
  if (!config.web_listen.empty()) {
    auto colon = config.web_listen.rfind(':');
    std::string port = colon == std::string::npos ? "" : config.web_listen.substr(colon + 1);
    in_addr web_addr;
    bool port_ok = !port.empty() && port.size() <= 5 &&
                   port.find_first_not_of("0123456789") == std::string::npos &&
                   std::stoi(port) >= 1 && std::stoi(port) <= 65535;
    if (!port_ok || !ParseIpv4(config.web_listen.substr(0, colon), &web_addr)) {
      reader.Problem("web.listen", fmt::format("'{}' is not ADDRESS:PORT (an IPv4 address and "
                                               "a port, for example 127.0.0.1:4780)",
                                               config.web_listen));
    }
  }
  return config;
}

NodeConfig LoadNodeConfig(const std::string& path) {
  std::string read_error;
  std::string text = ReadWholeFile(path, &read_error);
  if (!read_error.empty()) Fail(ErrorKind::kInvalidInput, "{}", read_error);
  return ParseNodeConfig(text, path);
}

}  // namespace homeward
