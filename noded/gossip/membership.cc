// Membership: merge by freshness and incarnation, SWIM probing with indirect probes,
// suspicion, death, refutation and the choice of each datagram's window.
#include "membership.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace homeward {

namespace {

// How many news items a node keeps waiting; older news beyond this is dropped (it has
// been sent the most) so that a burst of changes cannot grow memory without bound.
constexpr size_t kMaxNews = 256;

int Severity(MemberState state) {
  return static_cast<int>(state);
}

uint32_t AgeOf(int64_t origin_ms, int64_t now_ms) {
  int64_t age = now_ms - origin_ms;
  if (age < 0) return 0;
  if (age > std::numeric_limits<uint32_t>::max()) return std::numeric_limits<uint32_t>::max();
  return static_cast<uint32_t>(age);
}

}  // namespace

const char* MemberStateName(MemberState state) {
  switch (state) {
    case MemberState::kAlive:
      return "alive";
    case MemberState::kSuspect:
      return "suspect";
    case MemberState::kDead:
      return "dead";
  }
  return "unknown";
}

MembershipOptions MembershipOptions::FromConfig(const GossipConfig& gossip) {
  MembershipOptions options;
  options.interval_ms = gossip.interval.count();
  options.suspect_after_ms = gossip.suspect_after.count();
  options.dead_after_ms = gossip.dead_after.count();
  options.window = gossip.window;
  return options;
}

Membership::Membership(NodeRecord self, MembershipOptions options, uint64_t random_seed)
    : self_(std::move(self)), options_(options), random_(random_seed) {
  if (options_.forget_dead_after_ms <= 0)
    options_.forget_dead_after_ms = 4 * options_.dead_after_ms;
  if (options_.capacity < 1) options_.capacity = 1;
  if (options_.foreign_expire_after_ms <= 0)
    options_.foreign_expire_after_ms = 2 * options_.dead_after_ms;
}

void Membership::UpdateSelf(const NodeRecord& measured) {
  NodeRecord next = measured;
  next.name = self_.name;
  next.cluster = self_.cluster;
  next.group = self_.group;
  next.long_job_after_s = self_.long_job_after_s;
  next.address = self_.address;
  next.gossip_port = self_.gossip_port;
  next.peer_port = self_.peer_port;
  next.incarnation = self_.incarnation;
  self_ = std::move(next);
}

bool Membership::Sought() const {
  // A node of the multi-cluster that heard from other clusters' nodes but none of its
  // own would otherwise never find its cluster: their windows seldom carry it.
  if (options_.seek_cluster.empty()) return by_origin_.size() > foreign_by_origin_.size();
  for (const auto& [name, member] : members_) {
    if (member.state != MemberState::kDead && member.record.cluster == options_.seek_cluster) {
      return true;
    }
  }
  return false;
}

void Membership::AddSeed(const Endpoint& seed) {
  if (std::find(seeds_.begin(), seeds_.end(), seed) == seeds_.end()) seeds_.push_back(seed);
}

int Membership::NewsBudget() const {
  // SWIM's lambda * log(N): enough retransmissions that news reaches every node with
  // high probability, few enough that the window still carries fresh records. News
  // spreads within this cluster, so its size is what counts.
  double n = static_cast<double>(KinCount() + 2);
  return 3 * static_cast<int>(std::ceil(std::log2(n)));
}

void Membership::MakeNews(Member& member) {
  News fresh{WindowEntry{member.record, 0, member.state}, member.origin_ms, NewsBudget()};
  for (auto& news : news_) {
    if (news.entry.record.name == member.record.name) {
      news = std::move(fresh);
      return;
    }
  }
  if (news_.size() >= kMaxNews) news_.erase(news_.begin());
  news_.push_back(std::move(fresh));
}

void Membership::PassOn(const WindowEntry& entry, int64_t origin_ms) {
  auto key =
      std::make_tuple(entry.record.name, entry.record.incarnation, static_cast<int>(entry.state),
                      static_cast<int>(entry.record.load * 2));
  if (!passed_.insert(key).second) return;
  passed_order_.push_back(std::move(key));
  if (passed_order_.size() > kMaxNews) {
    passed_.erase(passed_order_.front());
    passed_order_.erase(passed_order_.begin());
  }
  if (news_.size() >= kMaxNews) news_.erase(news_.begin());
  news_.push_back(News{entry, origin_ms, NewsBudget()});
}

bool Membership::IsNews(const std::string& name) const {
  for (const auto& news : news_) {
    if (news.entry.record.name == name) return true;
  }
  return false;
}

int64_t Membership::SuspicionMs() const {
  // Refuting a suspicion takes news two trips across the cluster (out to the suspect,
  // back from it), O(log N) rounds each: in a large cluster a fixed time would bury
  // live nodes, so the suspicion lasts at least 2 log2(N) rounds, as in memberlist.
  // Only this cluster's nodes suspect, so N is this cluster's size.
  int64_t configured = options_.dead_after_ms - options_.suspect_after_ms;
  double n = static_cast<double>(KinCount() + 2);
  int64_t scaled = 2 * static_cast<int64_t>(std::ceil(std::log2(n))) * options_.interval_ms;
  return std::max(configured, scaled);
}

void Membership::List(Member& member) {
  if (member.state == MemberState::kDead) return;
  by_origin_.insert({member.origin_ms, &member});
  if (!member.kin) foreign_by_origin_.insert({member.origin_ms, &member});
}

void Membership::Unlist(Member& member) {
  if (member.state == MemberState::kDead) return;
  by_origin_.erase({member.origin_ms, &member});
  if (!member.kin) foreign_by_origin_.erase({member.origin_ms, &member});
}

void Membership::Index(Member& member, int64_t new_origin) {
  if (member.origin_ms == new_origin) return;
  Unlist(member);
  member.origin_ms = new_origin;
  List(member);
}

void Membership::SetState(Member& member, MemberState state, int64_t now_ms) {
  MemberState old = member.state;
  if (old == state) return;
  const std::string& name = member.record.name;
  Unlist(member);
  member.state = state;
  member.state_since_ms = now_ms;
  List(member);
  if (state == MemberState::kAlive) {
    not_alive_.erase(name);
  } else {
    not_alive_.insert(name);
  }
  if (old == MemberState::kDead) ++alive_count_;
  if (state == MemberState::kDead) --alive_count_;
  if (state == MemberState::kSuspect) ++stats_.suspicions;
  if (state == MemberState::kDead) {
    ++stats_.deaths;
    if (listener_) listener_(member.record, false);
  } else if (old == MemberState::kDead && listener_) {
    listener_(member.record, true);
  }
}

void Membership::Refute(uint64_t at_least) {
  self_.incarnation = std::max(self_.incarnation, at_least) + 1;
  ++stats_.refutations;
}

void Membership::Forget(const std::string& name) {
  auto it = members_.find(name);
  if (it == members_.end()) return;
  if (it->second.state != MemberState::kDead) --alive_count_;
  Unlist(it->second);
  if (!it->second.kin) --foreign_count_;
  not_alive_.erase(name);
  members_.erase(it);
}

void Membership::EvictIfFull() {
  while (KinCount() > options_.capacity) EvictOne(true);
  while (foreign_count_ > options_.foreign_capacity) EvictOne(false);
}

void Membership::EvictOne(bool kin) {
  // A tombstone of the kind goes first, else the stalest record of the kind.
  std::string victim;
  for (const auto& name : not_alive_) {
    const Member& member = members_.at(name);
    if (member.kin == kin && member.state == MemberState::kDead) {
      victim = name;
      break;
    }
  }
  bool was_alive = victim.empty();
  if (was_alive && !kin) victim = foreign_by_origin_.begin()->second->record.name;
  for (auto it = by_origin_.begin(); was_alive && kin; ++it) {
    if (it->second->kin) {
      victim = it->second->record.name;
      break;
    }
  }
  NodeRecord record = members_.at(victim).record;
  Forget(victim);
  ++stats_.evictions;
  if (was_alive && listener_) listener_(record, false);
}

void Membership::ExpireForeign(int64_t now_ms) {
  // Another cluster's nodes are not probed here: one whose record stopped coming is
  // dead or cut off, whatever its cluster managed to say.
  while (!foreign_by_origin_.empty() &&
         now_ms - foreign_by_origin_.begin()->first >= options_.foreign_expire_after_ms) {
    NodeRecord record = foreign_by_origin_.begin()->second->record;
    Forget(record.name);
    ++stats_.expiries;
    if (listener_) listener_(record, false);
  }
}

void Membership::Exchange(int64_t now_ms, std::vector<Outgoing>* out) {
  // One datagram a round to another cluster's node, answered with its window: how
  // news of the multi-cluster crosses between clusters (push-pull, no probe).
  // The partner is drawn from the freshest records of other clusters: nodes heard from
  // lately, which the windows bring in at random from all over the multi-cluster.
  if (foreign_by_origin_.empty()) return;
  size_t among = std::min(foreign_by_origin_.size(),
                          static_cast<size_t>(std::max(options_.window, 1)));
  auto it = foreign_by_origin_.rbegin();
  std::advance(it, static_cast<long>(random_() % among));
  const NodeRecord& target = it->second->record;
  out->push_back({target.gossip_endpoint(),
                  Build(GossipMessage::Kind::kPing, NextSeq(), target.name, now_ms)});
  ++stats_.exchanges;
}

void Membership::Merge(const WindowEntry& entry, int64_t now_ms, bool news) {
  const NodeRecord& incoming = entry.record;
  if (incoming.name == self_.name) {
    // Others suspect or buried this node, or remember a later life of it (a restart with
    // a clock that went back): answer with a higher incarnation.
    if ((entry.state != MemberState::kAlive && incoming.incarnation >= self_.incarnation) ||
        incoming.incarnation > self_.incarnation) {
      Refute(incoming.incarnation);
    }
    return;
  }
  int64_t origin = now_ms - static_cast<int64_t>(entry.age_ms);
  auto it = members_.find(incoming.name);
  if (it != members_.end() && incoming.incarnation > it->second.record.incarnation &&
      IsKin(incoming) != it->second.kin) {
    // A new life in another cluster (an administrator moved the node): a new member.
    Forget(incoming.name);
    it = members_.end();
  }
  // News is this cluster's: other clusters' changes are their own nodes' to spread, so
  // a node's news traffic does not grow with the multi-cluster.
  bool kin = IsKin(incoming);
  news = news && kin;
  if (it == members_.end()) {
    // Another cluster's record that would be forgotten unheard here comes back no more.
    if (!kin && now_ms - origin >= options_.foreign_expire_after_ms) return;
    size_t room = kin ? options_.capacity : options_.foreign_capacity;
    size_t held = kin ? KinCount() : foreign_count_;
    // Only a live record makes a member: a suspicion or death of a node this table does
    // not hold (never knew, or evicted) would otherwise bury it here unheard. As news,
    // it is passed on all the same.
    if (entry.state != MemberState::kAlive || held >= room) {
      if (news) PassOn(entry, origin);
      if (entry.state != MemberState::kAlive || room == 0) return;
    }
    Member member;
    member.record = incoming;
    member.state = entry.state;
    member.origin_ms = origin;
    member.state_since_ms = now_ms;
    member.kin = kin;
    auto& added = members_.emplace(incoming.name, std::move(member)).first->second;
    if (!kin) ++foreign_count_;
    List(added);
    ++alive_count_;
    if (added.state != MemberState::kAlive) not_alive_.insert(incoming.name);
    // A join is news while the table has room; once it is full, newly learned records
    // only replace the stalest ones and would otherwise crowd fresh records out of every
    // window.
    if (news && held + 1 < room) MakeNews(added);
    if (listener_) listener_(added.record, true);
    EvictIfFull();
    return;
  }
  Member& member = it->second;
  if (incoming.incarnation > member.record.incarnation) {
    // A new life (restart) or a refutation: everything about the old one is superseded.
    member.record = incoming;
    Index(member, origin);
    SetState(member, entry.state, now_ms);
    if (kin) MakeNews(member);
    return;
  }
  if (incoming.incarnation < member.record.incarnation) return;
  if (Severity(entry.state) > Severity(member.state)) {
    SetState(member, entry.state, now_ms);
    if (kin) MakeNews(member);
  }
  if (member.state != MemberState::kDead && origin > member.origin_ms) {
    bool rise = incoming.load >= member.record.load + options_.news_load_step;
    member.record = incoming;
    Index(member, origin);
    if (rise && kin) MakeNews(member);
  }
}

void Membership::MergeSender(const NodeRecord& sender, int64_t now_ms) {
  Merge(WindowEntry{sender, 0, MemberState::kAlive}, now_ms, true);
}

GossipMessage Membership::Build(GossipMessage::Kind kind, uint64_t seq,
                                const std::string& recipient, int64_t now_ms) {
  GossipMessage message;
  message.kind = kind;
  message.seq = seq;
  message.sender = self_;
  size_t window = static_cast<size_t>(std::max(options_.window, 0));
  message.entries.reserve(2 * window + 1);
  std::vector<const Member*> chosen;
  auto add = [&](Member& member) {
    chosen.push_back(&member);
    message.entries.push_back(
        WindowEntry{member.record, AgeOf(member.origin_ms, now_ms), member.state});
  };
  auto taken = [&](const Member* member) {
    return std::find(chosen.begin(), chosen.end(), member) != chosen.end();
  };
  // The recipient hears first what we believe about it, so that it can refute.
  if (auto it = members_.find(recipient);
      it != members_.end() && it->second.state != MemberState::kAlive) {
    add(it->second);
  }
  // Then news, least sent first, each a limited number of times.
  size_t news_room =
      options_.news_per_datagram > 0 ? static_cast<size_t>(options_.news_per_datagram) : window;
  if (!news_.empty()) {
    std::vector<std::pair<int, size_t>> order;  // (-left, index)
    order.reserve(news_.size());
    for (size_t i = 0; i < news_.size(); ++i) order.push_back({-news_[i].left, i});
    size_t n = std::min(news_room, order.size());
    std::partial_sort(order.begin(), order.begin() + static_cast<long>(n), order.end());
    // A datagram to another cluster carries this cluster's news too (a partner learns of
    // a death from it) but does not use up its sends, which are for this cluster.
    auto recipient_member = members_.find(recipient);
    bool counts = recipient_member == members_.end() || recipient_member->second.kin ||
                  KinCount() == 0;
    for (size_t k = 0; k < n; ++k) {
      News& news = news_[order[k].second];
      if (counts) --news.left;
      if (news.entry.record.name == recipient) continue;
      auto it = members_.find(news.entry.record.name);
      if (it != members_.end()) {
        if (!taken(&it->second)) add(it->second);  // what we know now, fresher perhaps
        continue;
      }
      message.entries.push_back(news.entry);
      message.entries.back().age_ms = AgeOf(news.origin_ms, now_ms);
    }
    std::erase_if(news_, [](const News& news) { return news.left <= 0; });
  }
  message.news = static_cast<uint16_t>(message.entries.size());
  size_t limit = message.entries.size() + window;
  // Then the freshest records: the MOSIX window, which keeps the age of what every node
  // knows bounded however large the cluster grows.
  for (auto it = by_origin_.rbegin(); it != by_origin_.rend(); ++it) {
    if (message.entries.size() >= limit) break;
    Member* member = it->second;
    if (member->record.name == recipient || taken(member)) continue;
    add(*member);
  }
  return message;
}

std::string Membership::NextProbeTarget() {
  for (int pass = 0; pass < 2; ++pass) {
    while (probe_next_ < probe_order_.size()) {
      const std::string& name = probe_order_[probe_next_++];
      auto it = members_.find(name);
      if (it != members_.end() && it->second.kin && it->second.state != MemberState::kDead) {
        return name;
      }
    }
    // A new random order each cycle: every member is probed once per cycle, in an
    // order no one can predict (SWIM's round-robin probe selection).
    probe_order_.clear();
    for (const auto& [name, member] : members_) {
      if (member.kin && member.state != MemberState::kDead) probe_order_.push_back(name);
    }
    std::shuffle(probe_order_.begin(), probe_order_.end(), random_);
    probe_next_ = 0;
  }
  return {};
}

void Membership::Tick(int64_t now_ms, std::vector<Outgoing>* out) {
  last_tick_ms_ = now_ms;
  // Overdue probes: ask k others to try, then suspect.
  for (auto it = probes_.begin(); it != probes_.end();) {
    Probe& probe = it->second;
    auto member = members_.find(probe.target);
    if (member == members_.end() || member->second.state == MemberState::kDead) {
      it = probes_.erase(it);
      continue;
    }
    int64_t waited = now_ms - probe.started_ms;
    if (waited >= options_.suspect_after_ms) {
      if (member->second.state == MemberState::kAlive) {
        SetState(member->second, MemberState::kSuspect, now_ms);
        MakeNews(member->second);
      }
      it = probes_.erase(it);
      continue;
    }
    if (!probe.indirect_sent &&
        waited >= std::min(options_.interval_ms, options_.suspect_after_ms / 2)) {
      probe.indirect_sent = true;
      // k distinct live helpers drawn at random from this cycle's probe order.
      std::vector<std::string> helpers;
      for (int tries = 0; tries < 4 * options_.indirect_probes && !probe_order_.empty() &&
                          helpers.size() < static_cast<size_t>(options_.indirect_probes);
           ++tries) {
        const std::string& name = probe_order_[random_() % probe_order_.size()];
        auto m = members_.find(name);
        if (name == probe.target || m == members_.end() || m->second.state != MemberState::kAlive ||
            std::find(helpers.begin(), helpers.end(), name) != helpers.end()) {
          continue;
        }
        helpers.push_back(name);
      }
      for (const auto& helper : helpers) {
        GossipMessage request = Build(GossipMessage::Kind::kPingReq, it->first, helper, now_ms);
        request.probe_name = probe.target;
        request.probe = probe.endpoint;
        out->push_back({members_.at(helper).record.gossip_endpoint(), std::move(request)});
        ++stats_.indirect_probes;
      }
    }
    ++it;
  }
  // Suspicion that nobody refuted becomes death; old tombstones are forgotten.
  int64_t suspicion_ms = SuspicionMs();
  std::vector<std::string> forget;
  std::vector<std::string> watched(not_alive_.begin(), not_alive_.end());
  for (const auto& name : watched) {
    Member& member = members_.at(name);
    // Another cluster's suspect is its own cluster's to bury (or to forget, unheard).
    if (member.state == MemberState::kSuspect && member.kin &&
        now_ms - member.state_since_ms >= suspicion_ms) {
      SetState(member, MemberState::kDead, now_ms);
      MakeNews(member);
    } else if (member.state == MemberState::kDead &&
               now_ms - member.state_since_ms >= options_.forget_dead_after_ms && !IsNews(name)) {
      forget.push_back(name);
    }
  }
  for (const auto& name : forget) Forget(name);
  ExpireForeign(now_ms);
  std::erase_if(relays_, [&](const auto& item) {
    return now_ms - item.second.started_ms >= options_.suspect_after_ms;
  });
  // This round's probe, which also carries the window (the gossip proper).
  std::string target = NextProbeTarget();
  if (!target.empty()) {
    uint64_t seq = NextSeq();
    Endpoint endpoint = members_.at(target).record.gossip_endpoint();
    probes_[seq] = Probe{target, endpoint, now_ms, false};
    out->push_back({endpoint, Build(GossipMessage::Kind::kPing, seq, target, now_ms)});
    ++stats_.probes;
  }
  Exchange(now_ms, out);
  // Alone (a newcomer, or every peer gone): knock at the seeds until someone answers.
  if (!Sought()) {
    for (const auto& seed : seeds_) {
      if (seed == self_.gossip_endpoint()) continue;
      out->push_back({seed, Build(GossipMessage::Kind::kPing, 0, {}, now_ms)});
    }
  }
}

void Membership::Receive(const GossipMessage& message, const Endpoint& from, int64_t now_ms,
                         std::vector<Outgoing>* out) {
  if (message.sender.name == self_.name) return;  // our own datagram, or a namesake
  MergeSender(message.sender, now_ms);
  for (size_t i = 0; i < message.entries.size(); ++i) {
    Merge(message.entries[i], now_ms, i < message.news);
  }
  switch (message.kind) {
    case GossipMessage::Kind::kPing:
      out->push_back(
          {from, Build(GossipMessage::Kind::kAck, message.seq, message.sender.name, now_ms)});
      break;
    case GossipMessage::Kind::kAck:
      if (probes_.erase(message.seq) == 0) {
        if (auto relay = relays_.find(message.seq); relay != relays_.end()) {
          GossipMessage ack =
              Build(GossipMessage::Kind::kAck, relay->second.requester_seq, {}, now_ms);
          ack.probe_name = message.sender.name;
          out->push_back({relay->second.requester, std::move(ack)});
          relays_.erase(relay);
        }
      }
      break;
    case GossipMessage::Kind::kPingReq: {
      if (message.probe_name.empty() || message.probe_name == self_.name) break;
      if (relays_.size() >= kMaxNews) break;  // bounded, whatever peers ask
      uint64_t seq = NextSeq();
      relays_[seq] = Relay{from, message.seq, now_ms};
      out->push_back(
          {message.probe, Build(GossipMessage::Kind::kPing, seq, message.probe_name, now_ms)});
      break;
    }
  }
}

std::vector<MemberView> Membership::Picture(int64_t now_ms) const {
  std::vector<MemberView> picture;
  picture.reserve(members_.size() + 1);
  picture.push_back(MemberView{self_, MemberState::kAlive, 0, true});
  for (const auto& [name, member] : members_) {
    picture.push_back(MemberView{member.record, member.state,
                                 static_cast<int64_t>(AgeOf(member.origin_ms, now_ms)), false});
  }
  return picture;
}

const MemberView* Membership::Find(const std::string& name, int64_t now_ms,
                                   MemberView* storage) const {
  if (name == self_.name) {
    *storage = MemberView{self_, MemberState::kAlive, 0, true};
    return storage;
  }
  auto it = members_.find(name);
  if (it == members_.end()) return nullptr;
  *storage = MemberView{it->second.record, it->second.state,
                        static_cast<int64_t>(AgeOf(it->second.origin_ms, now_ms)), false};
  return storage;
}

}  // namespace homeward
