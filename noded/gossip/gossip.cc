// Gossip on libuv: one UDP socket and one timer driving Membership.
#include "gossip.h"

#include <arpa/inet.h>
#include <sys/time.h>

#include <chrono>
#include <cstdlib>
#include <set>

#include <spdlog/spdlog.h>

#include "c_boundary.h"
#include "error.h"
#include "uv_error.h"

namespace homeward {

namespace {

// One buffer for every datagram: a datagram larger than the limit arrives truncated
// (UV_UDP_PARTIAL) and is dropped as oversized, so garbage never allocates.
constexpr size_t kReceiveBuffer = kMaxGossipDatagram + 1;
// Drops are logged at most this often, with the counts since the last line.
constexpr int64_t kDropLogIntervalMs = 10'000;

uint64_t WallMicros() {
  timeval now{};
  gettimeofday(&now, nullptr);
  return static_cast<uint64_t>(now.tv_sec) * 1'000'000 + static_cast<uint64_t>(now.tv_usec);
}

uint64_t StartIncarnation() {
  // Wall-clock milliseconds: a restarted daemon starts above anything its former life
  // could have raised its incarnation to by refuting suspicions.
  timeval now{};
  gettimeofday(&now, nullptr);
  return static_cast<uint64_t>(now.tv_sec) * 1000 + static_cast<uint64_t>(now.tv_usec) / 1000;
}

uint64_t RandomSeed(const NodeConfig& config) {
  uint64_t seed = 0;
  randombytes_buf(&seed, sizeof seed);
  return seed ^ std::hash<std::string>{}(config.name);
}

NodeRecord SelfRecord(const NodeConfig& config) {
  NodeRecord self;
  self.name = config.name;
  self.cluster = config.cluster;
  self.group = config.group;
  self.long_job_after_s = static_cast<uint32_t>(config.long_job_after.count());
  self.address = config.address;
  self.gossip_port = config.gossip_port;
  self.peer_port = config.peer_port;
  self.incarnation = StartIncarnation();
  return self;
}

MembershipOptions RingOptions(const NodeConfig& config, const std::string& partner) {
  MembershipOptions options = MembershipOptions::FromConfig(config.gossip);
  options.seek_cluster = partner;
  return options;
}

}  // namespace

Gossip::Ring::Ring(const std::string& partner_name, const std::vector<uint8_t>& key,
                   const NodeConfig& config, const NodeRecord& self)
    : partner(partner_name),
      takes_guests(partner_name.empty() || config.Partner(partner_name)->accept),
      codec(key),
      replay(config.gossip.replay_window.count()),
      membership(self, RingOptions(config, partner_name), RandomSeed(config)) {}

Gossip::Gossip(uv_loop_t* loop, const NodeConfig& config)
    : loop_(loop),
      config_(config),
      metrics_(config.speed),
      epoch_(std::chrono::steady_clock::now()),
      receive_buffer_(new char[kReceiveBuffer]) {
  NodeRecord self = SelfRecord(config_);
  rings_.push_back(std::make_unique<Ring>("", config_.cluster_key, config_, self));
  for (const auto& seed : config_.seeds) rings_.front()->membership.AddSeed(seed);
  rings_.front()->membership.SetChangeListener([this](const NodeRecord& peer, bool alive) {
    spdlog::info("gossip: {} ({}) is {}", peer.name, peer.address, alive ? "alive" : "dead");
    for (const auto& callback : subscribers_) callback(peer, alive);
  });
  for (const PartnerConfig& partner : config_.partners) {
    auto ring = std::make_unique<Ring>(partner.name, partner.key, config_, self);
    // The partner's seeds find the partner, this cluster's own bring its nodes into the
    // ring; the seeds are knocked at while no live partner node is known.
    for (const auto& seed : partner.seeds) ring->membership.AddSeed(seed);
    for (const auto& seed : config_.seeds) ring->membership.AddSeed(seed);
    ring->membership.SetChangeListener(
        [this, name = partner.name](const NodeRecord& peer, bool alive) {
          if (peer.cluster != name || IsOwnName(peer.name)) return;  // ours: our ring tells
          spdlog::info("gossip: {} ({}) of partner cluster {} is {}", peer.name, peer.address,
                       name, alive ? "alive" : "dead");
          for (const auto& callback : subscribers_) callback(peer, alive);
        });
    rings_.push_back(std::move(ring));
  }
  NodeRecord measured = Measured();
  for (auto& ring : rings_) UpdateSelf(*ring, measured);
}

void Gossip::UpdateSelf(Ring& ring, NodeRecord measured) {
  // The nodes of a partner this cluster takes no guests from see this one blocked.
  if (!ring.takes_guests) measured.blocked = true;
  ring.membership.UpdateSelf(measured);
}

Gossip::~Gossip() {
  Stop();
}

int64_t Gossip::NowMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               epoch_)
      .count();
}

NodeRecord Gossip::Measured() const {
  NodeRecord record;
  record.cores = static_cast<uint16_t>(metrics_.cores());
  record.speed = static_cast<float>(metrics_.speed());
  record.load = static_cast<float>(metrics_.load());
  record.homeward_load = homeward_load_;
  const MemInfo& memory = metrics_.memory();
  record.mem_free_mb = memory.mem_free_mb;
  record.mem_total_mb = memory.mem_total_mb;
  record.swap_free_mb = memory.swap_free_mb;
  record.swap_total_mb = memory.swap_total_mb;
  record.jobs_away = jobs_away_;
  record.guests_here = guests_here_;
  record.blocked = blocked_;
  record.boot_time_s = metrics_.boot_time_s();
  record.users = static_cast<uint16_t>(metrics_.users());
  return record;
}

void Gossip::Start() {
  CheckUv(uv_udp_init(loop_, socket_.get()), "gossip socket");
  socket_.get()->data = this;
  sockaddr_in addr = Endpoint{config_.address, config_.gossip_port}.ToSockaddr();
  CheckUv(uv_udp_bind(socket_.get(), reinterpret_cast<const sockaddr*>(&addr), 0),
          fmt::format("bind gossip socket {}:{}/udp", config_.address, config_.gossip_port));
  CheckUv(uv_udp_recv_start(
              socket_.get(),
              [](uv_handle_t* handle, size_t, uv_buf_t* buf) {
                auto* self = static_cast<Gossip*>(handle->data);
                buf->base = self->receive_buffer_.get();
                buf->len = kReceiveBuffer;
              },
              [](uv_udp_t* handle, ssize_t nread, const uv_buf_t* buf, const sockaddr* addr,
                 unsigned flags) {
                GuardedCall("gossip receive", [&] {
                  auto* self = static_cast<Gossip*>(handle->data);
                  if (flags & UV_UDP_PARTIAL) {
                    self->drops_.Count(DropReason::kOversized);
                    return;
                  }
                  self->OnDatagram(nread, buf, addr);
                });
              }),
          "gossip receive");
  CheckUv(uv_timer_init(loop_, timer_.get()), "gossip timer");
  timer_.get()->data = this;
  auto interval = static_cast<uint64_t>(config_.gossip.interval.count());
  CheckUv(uv_timer_start(
              timer_.get(),
              [](uv_timer_t* timer) {
                GuardedCall("gossip round",
                            [timer] { static_cast<Gossip*>(timer->data)->Round(); });
              },
              0, interval),
          "gossip timer");
  started_ = true;
  spdlog::info("gossip: cluster {} listening on {}:{}/udp, every {} ms, {} seed(s), {} partner "
               "cluster(s)",
               config_.cluster, config_.address, config_.gossip_port, interval,
               config_.seeds.size(), config_.partners.size());
}

void Gossip::Stop() {
  if (!started_) return;
  started_ = false;
  socket_.Close();
  timer_.Close();
}

std::vector<MemberView> Gossip::Picture() const {
  return rings_.front()->membership.Picture(NowMs());
}

std::vector<MemberView> Gossip::PartnerPicture() const {
  std::vector<MemberView> picture;
  std::set<std::string> names;
  for (const auto& member : Picture()) names.insert(member.record.name);
  for (size_t i = 1; i < rings_.size(); ++i) {
    for (auto& member : rings_[i]->membership.Picture(NowMs())) {
      // A partnership's key speaks for the partner's nodes only, and a name of this
      // cluster stays this cluster's.
      if (member.record.cluster != rings_[i]->partner) continue;
      if (!names.insert(member.record.name).second) continue;
      picture.push_back(std::move(member));
    }
  }
  return picture;
}

bool Gossip::IsOwnName(const std::string& name) const {
  if (name == config_.name) return true;
  for (const auto& member : rings_.front()->membership.Picture(NowMs())) {
    if (member.record.name == name) return true;
  }
  return false;
}

void Gossip::SetLocalJobs(uint32_t jobs_away, uint32_t guests_here, float homeward_load,
                          bool blocked) {
  jobs_away_ = jobs_away;
  guests_here_ = guests_here;
  homeward_load_ = homeward_load;
  blocked_ = blocked;
  NodeRecord measured = Measured();  // one record for every ring
  for (auto& ring : rings_) UpdateSelf(*ring, measured);
}

// Runs inside a libuv callback: nothing may throw out of it.
void Gossip::Round() {
  int64_t now = NowMs();
  metrics_.Sample(static_cast<double>(now - last_round_ms_));
  last_round_ms_ = now;
  NodeRecord measured = Measured();
  for (auto& ring : rings_) {
    try {
      UpdateSelf(*ring, measured);
      ring->membership.Tick(now, &ring->outbox);
      SendAll(*ring);
    } catch (const std::exception& e) {
      ring->outbox.clear();
      spdlog::error("gossip: round failed: {}", e.what());
    }
  }
  LogDrops();
}

void Gossip::OnDatagram(ssize_t nread, const uv_buf_t* buf, const sockaddr* addr) {
  if (nread == 0 || addr == nullptr) return;  // nothing more to read now
  if (nread < 0) {
    spdlog::debug("gossip: receive error: {}", uv_strerror(static_cast<int>(nread)));
    return;
  }
  std::span datagram(reinterpret_cast<const uint8_t*>(buf->base), static_cast<size_t>(nread));
  // The ring is the one whose key made the datagram's MAC; a datagram no key made counts
  // as its first decoding (with this cluster's key) says.
  Ring* ring = nullptr;
  std::optional<GossipMessage> message;
  DropCounters first;  // why the cluster's own key refused it
  for (auto& candidate : rings_) {
    DropCounters drops;
    message = candidate->codec.Decode(datagram, &drops);
    if (message) {
      ring = candidate.get();
      break;
    }
    if (candidate == rings_.front()) first = drops;
    if (drops[DropReason::kBadMac] == 0) break;  // no other key changes that
  }
  if (!message) {
    for (size_t i = 0; i < first.by_reason.size(); ++i) drops_.by_reason[i] += first.by_reason[i];
    return;
  }
  if (addr->sa_family != AF_INET) return;
  try {
    // Authentic is not enough: a datagram recorded and sent again must not be believed
    // or answered. Checked after the MAC, so only a key holder's stamps are remembered.
    // Its stamp also tells how far the sender's clock is from ours; a stale one too,
    // since a clock far off is what makes a peer's datagrams stale.
    uint64_t now_us = WallMicros();
    const std::string& sender_cluster =
        message->sender.cluster.empty() ? config_.cluster : message->sender.cluster;
    int64_t offset_ms = (static_cast<int64_t>(message->stamp) - static_cast<int64_t>(now_us)) / 1000;
    auto [clock, first] = clock_offsets_ms_.try_emplace({sender_cluster, message->sender.name}, 0);
    if (std::abs(offset_ms) > kClockWarnMs && (first || std::abs(clock->second) <= kClockWarnMs)) {
      spdlog::warn("gossip: {}'s clock is {} ms {} this node's: keep the nodes' clocks "
                   "synchronised (mosctl check)",
                   message->sender.name, std::abs(offset_ms), offset_ms > 0 ? "ahead of" : "behind");
    }
    clock->second = offset_ms;
    switch (ring->replay.Check(message->sender.name, message->sender.incarnation, message->stamp,
                               now_us)) {
      case ReplayGuard::Verdict::kFresh:
        break;
      case ReplayGuard::Verdict::kStale:
        drops_.Count(DropReason::kStale);
        return;
      case ReplayGuard::Verdict::kReplayed:
        drops_.Count(DropReason::kReplayed);
        return;
    }
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    char host[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    ring->membership.Receive(*message, Endpoint{host, ntohs(in->sin_port)}, NowMs(), &ring->outbox);
    SendAll(*ring);
  } catch (const std::exception& e) {
    ring->outbox.clear();
    spdlog::error("gossip: handling a datagram failed: {}", e.what());
  }
}

std::optional<int64_t> Gossip::ClockOffsetMs(const std::string& cluster,
                                             const std::string& name) const {
  auto it = clock_offsets_ms_.find({cluster, name});
  if (it == clock_offsets_ms_.end()) return std::nullopt;
  return it->second;
}

void Gossip::SendAll(Ring& ring) {
  for (auto& outgoing : ring.outbox) Send(ring, outgoing);
  ring.outbox.clear();
}

void Gossip::Send(Ring& ring, Outgoing& outgoing) {
  std::vector<uint8_t> datagram;
  GossipMessage& message = outgoing.message;
  message.stamp = stamps_.Next(WallMicros() + static_cast<uint64_t>(stamp_skew_us_));
  try {
    datagram = ring.codec.Encode(message);
  } catch (const Error&) {
    // A window too large for one datagram: send the sender's record alone.
    message.entries.clear();
    message.news = 0;
    datagram = ring.codec.Encode(message);
  }
  sockaddr_in addr = outgoing.to.ToSockaddr();
  uv_buf_t buf =
      uv_buf_init(reinterpret_cast<char*>(datagram.data()), static_cast<unsigned>(datagram.size()));
  // try_send: a datagram that cannot leave now is lost, as UDP may lose it anyway.
  int status = uv_udp_try_send(socket_.get(), &buf, 1, reinterpret_cast<const sockaddr*>(&addr));
  if (status < 0 && ++send_failures_ % 100 == 1) {
    spdlog::debug("gossip: send to {} failed: {} ({} failures)", outgoing.to.ToString(),
                  uv_strerror(status), send_failures_);
  }
}

void Gossip::LogDrops() {
  uint64_t total = drops_.total();
  int64_t now = NowMs();
  if (total == drops_logged_ || now - drops_logged_at_ms_ < kDropLogIntervalMs) return;
  std::string reasons;
  for (size_t i = 0; i < drops_.by_reason.size(); ++i) {
    if (drops_.by_reason[i] == 0) continue;
    if (!reasons.empty()) reasons += ", ";
    reasons +=
        fmt::format("{} {}", drops_.by_reason[i], DropReasonName(static_cast<DropReason>(i)));
  }
  spdlog::warn("gossip: dropped {} datagram(s) since the last report ({} in all: {})",
               total - drops_logged_, total, reasons);
  drops_logged_ = total;
  drops_logged_at_ms_ = now;
}

}  // namespace homeward
