// Gossip datagram codec: framing, authentication and conversion to GossipMessage.
#include "gossip_codec.h"

#include <cstring>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include "error.h"
#include "schema/gossip.capnp.h"

namespace homeward {

namespace {

constexpr size_t kWord = sizeof(capnp::word);
// A datagram is at most 32 KiB: 4 Ki words is more than any honest message needs.
constexpr size_t kTraversalLimitWords = kMaxGossipDatagram / kWord;
constexpr size_t kMaxTextBytes = 255;
constexpr size_t kMaxEntries = 256;

void PutU32(uint8_t* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(value >> (24 - 8 * i));
}
uint32_t GetU32(const uint8_t* in) {
  return (uint32_t{in[0]} << 24) | (uint32_t{in[1]} << 16) | (uint32_t{in[2]} << 8) | in[3];
}
void PutU64(uint8_t* out, uint64_t value) {
  PutU32(out, static_cast<uint32_t>(value >> 32));
  PutU32(out + 4, static_cast<uint32_t>(value));
}
uint64_t GetU64(const uint8_t* in) {
  return (uint64_t{GetU32(in)} << 32) | GetU32(in + 4);
}

void ToWire(const NodeRecord& record, schema::NodeRecord::Builder out) {
  out.setName(record.name);
  out.setAddress(record.address);
  out.setGossipPort(record.gossip_port);
  out.setPeerPort(record.peer_port);
  out.setCores(record.cores);
  out.setSpeed(record.speed);
  out.setLoad(record.load);
  out.setHomewardLoad(record.homeward_load);
  out.setMemFreeMb(record.mem_free_mb);
  out.setMemTotalMb(record.mem_total_mb);
  out.setSwapFreeMb(record.swap_free_mb);
  out.setSwapTotalMb(record.swap_total_mb);
  out.setJobsAway(record.jobs_away);
  out.setGuestsHere(record.guests_here);
  out.setIncarnation(record.incarnation);
  out.setBlocked(record.blocked);
  out.setCluster(record.cluster);
  out.setBootTimeS(record.boot_time_s);
  out.setUsers(record.users);
  out.setGroup(record.group);
  out.setLongJobAfterS(record.long_job_after_s);
}

// Bounded text: a peer with the key is trusted to be a peer, not to be bug-free. No NUL
// inside: "node2\0x" would be one name here and "node2" wherever it is used as a C string.
bool GetText(capnp::Text::Reader text, std::string* out) {
  if (text.size() > kMaxTextBytes || std::memchr(text.begin(), '\0', text.size())) return false;
  out->assign(text.cStr(), text.size());
  return true;
}

bool FiniteNonNegative(float value) {
  return value >= 0.0f && value < 1e9f;
}

bool FromWire(schema::NodeRecord::Reader in, NodeRecord* out) {
  if (!GetText(in.getName(), &out->name) || out->name.empty()) return false;
  if (!GetText(in.getAddress(), &out->address)) return false;
  out->gossip_port = in.getGossipPort();
  out->peer_port = in.getPeerPort();
  out->cores = in.getCores();
  out->speed = in.getSpeed();
  out->load = in.getLoad();
  out->homeward_load = in.getHomewardLoad();
  if (!FiniteNonNegative(out->speed) || !FiniteNonNegative(out->load) ||
      !FiniteNonNegative(out->homeward_load)) {
    return false;
  }
  out->mem_free_mb = in.getMemFreeMb();
  out->mem_total_mb = in.getMemTotalMb();
  out->swap_free_mb = in.getSwapFreeMb();
  out->swap_total_mb = in.getSwapTotalMb();
  out->jobs_away = in.getJobsAway();
  out->guests_here = in.getGuestsHere();
  out->incarnation = in.getIncarnation();
  out->blocked = in.getBlocked();
  if (!GetText(in.getCluster(), &out->cluster)) return false;
  out->boot_time_s = in.getBootTimeS();
  out->users = in.getUsers();
  if (!GetText(in.getGroup(), &out->group)) return false;
  out->long_job_after_s = in.getLongJobAfterS();
  return true;
}

schema::Datagram::Kind KindToWire(GossipMessage::Kind kind) {
  switch (kind) {
    case GossipMessage::Kind::kPing:
      return schema::Datagram::Kind::PING;
    case GossipMessage::Kind::kAck:
      return schema::Datagram::Kind::ACK;
    case GossipMessage::Kind::kPingReq:
      return schema::Datagram::Kind::PING_REQ;
  }
  return schema::Datagram::Kind::PING;
}

}  // namespace

const char* DropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kTruncated:
      return "truncated";
    case DropReason::kOversized:
      return "oversized";
    case DropReason::kBadMagic:
      return "not gossip";
    case DropReason::kBadVersion:
      return "unknown version";
    case DropReason::kBadMac:
      return "bad MAC";
    case DropReason::kMalformed:
      return "malformed";
    case DropReason::kStale:
      return "out of the time window";
    case DropReason::kReplayed:
      return "replayed";
    case DropReason::kCount:
      break;
  }
  return "?";
}

uint64_t DropCounters::total() const {
  uint64_t sum = 0;
  for (uint64_t n : by_reason) sum += n;
  return sum;
}

GossipCodec::GossipCodec(const std::vector<uint8_t>& key) {
  if (sodium_init() < 0) Fail(ErrorKind::kFailed, "libsodium cannot initialise");
  if (key.size() != key_.size()) {
    Fail(ErrorKind::kInvalidInput, "a cluster key is {} bytes, got {}", key_.size(), key.size());
  }
  std::memcpy(key_.data(), key.data(), key_.size());
}

std::vector<uint8_t> GossipCodec::Encode(const GossipMessage& message) const {
  return EncodeWithVersion(message, schema::GOSSIP_VERSION);
}

std::vector<uint8_t> GossipCodec::EncodeWithVersion(const GossipMessage& message,
                                                    uint16_t version) const {
  capnp::MallocMessageBuilder builder;
  auto datagram = builder.initRoot<schema::Datagram>();
  datagram.setVersion(version);
  datagram.setKind(KindToWire(message.kind));
  datagram.setSeq(message.seq);
  ToWire(message.sender, datagram.initSender());
  auto entries = datagram.initEntries(static_cast<unsigned>(message.entries.size()));
  for (size_t i = 0; i < message.entries.size(); ++i) {
    const WindowEntry& entry = message.entries[i];
    auto out = entries[static_cast<unsigned>(i)];
    ToWire(entry.record, out.initRecord());
    out.setAgeMs(entry.age_ms);
    out.setState(static_cast<schema::MemberState>(entry.state));
  }
  datagram.setNewsCount(message.news);
  if (!message.probe_name.empty()) {
    datagram.setProbeName(message.probe_name);
    datagram.setProbeAddress(message.probe.host);
    datagram.setProbePort(message.probe.port);
  }
  auto words = capnp::messageToFlatArray(builder);
  auto payload = words.asBytes();
  size_t size = kGossipHeaderBytes + payload.size() + kGossipMacBytes;
  if (size > kMaxGossipDatagram) {
    Fail(ErrorKind::kInvalidInput, "a gossip datagram of {} bytes exceeds the {} byte limit", size,
         kMaxGossipDatagram);
  }
  std::vector<uint8_t> out(size);
  PutU32(out.data(), kGossipMagic);
  out[4] = static_cast<uint8_t>(version >> 8);
  out[5] = static_cast<uint8_t>(version);
  PutU64(out.data() + 8, message.stamp);
  std::memcpy(out.data() + kGossipHeaderBytes, payload.begin(), payload.size());
  size_t signed_bytes = size - kGossipMacBytes;
  crypto_auth(out.data() + signed_bytes, out.data(), signed_bytes, key_.data());
  return out;
}

std::optional<GossipMessage> GossipCodec::Decode(std::span<const uint8_t> datagram,
                                                 DropCounters* drops) const {
  auto drop = [&](DropReason reason) -> std::optional<GossipMessage> {
    drops->Count(reason);
    return std::nullopt;
  };
  if (datagram.size() > kMaxGossipDatagram) return drop(DropReason::kOversized);
  if (datagram.size() < kGossipHeaderBytes + kWord + kGossipMacBytes) {
    return drop(DropReason::kTruncated);
  }
  if (GetU32(datagram.data()) != kGossipMagic) return drop(DropReason::kBadMagic);
  uint16_t version = static_cast<uint16_t>((datagram[4] << 8) | datagram[5]);
  if (version != schema::GOSSIP_VERSION) return drop(DropReason::kBadVersion);
  size_t signed_bytes = datagram.size() - kGossipMacBytes;
  if (crypto_auth_verify(datagram.data() + signed_bytes, datagram.data(), signed_bytes,
                         key_.data()) != 0) {
    return drop(DropReason::kBadMac);
  }
  size_t payload_bytes = signed_bytes - kGossipHeaderBytes;
  if (payload_bytes % kWord != 0) return drop(DropReason::kMalformed);
  // Cap'n Proto reads aligned words: copy into a bounded, aligned buffer.
  std::array<capnp::word, kMaxGossipDatagram / kWord> words;
  std::memcpy(words.data(), datagram.data() + kGossipHeaderBytes, payload_bytes);
  GossipMessage message;
  message.stamp = GetU64(datagram.data() + 8);
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = kTraversalLimitWords;
    options.nestingLimit = 16;
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(words.data(), payload_bytes / kWord),
                                         options);
    auto root = reader.getRoot<schema::Datagram>();
    if (root.getVersion() != schema::GOSSIP_VERSION) return drop(DropReason::kBadVersion);
    switch (root.getKind()) {
      case schema::Datagram::Kind::PING:
        message.kind = GossipMessage::Kind::kPing;
        break;
      case schema::Datagram::Kind::ACK:
        message.kind = GossipMessage::Kind::kAck;
        break;
      case schema::Datagram::Kind::PING_REQ:
        message.kind = GossipMessage::Kind::kPingReq;
        break;
      default:
        return drop(DropReason::kMalformed);
    }
    message.seq = root.getSeq();
    if (!root.hasSender() || !FromWire(root.getSender(), &message.sender)) {
      return drop(DropReason::kMalformed);
    }
    auto entries = root.getEntries();
    if (entries.size() > kMaxEntries) return drop(DropReason::kMalformed);
    message.entries.resize(entries.size());
    for (unsigned i = 0; i < entries.size(); ++i) {
      auto entry = entries[i];
      auto state = entry.getState();
      if (static_cast<unsigned>(state) > static_cast<unsigned>(schema::MemberState::DEAD) ||
          !FromWire(entry.getRecord(), &message.entries[i].record)) {
        return drop(DropReason::kMalformed);
      }
      message.entries[i].age_ms = entry.getAgeMs();
      message.entries[i].state = static_cast<MemberState>(state);
    }
    if (!GetText(root.getProbeName(), &message.probe_name) ||
        !GetText(root.getProbeAddress(), &message.probe.host)) {
      return drop(DropReason::kMalformed);
    }
    message.probe.port = root.getProbePort();
    message.news =
        std::min<uint16_t>(root.getNewsCount(), static_cast<uint16_t>(message.entries.size()));
  } catch (const kj::Exception&) {
    return drop(DropReason::kMalformed);
  }
  return message;
}

}  // namespace homeward
