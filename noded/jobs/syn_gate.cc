#include "syn_gate.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <vector>

extern "C" {
#include <libnetfilter_queue/libnetfilter_queue.h>
}

#include "error.h"

namespace homeward {

namespace {

// Enough of each packet for its IP header (IPv4 options included) and the TCP ports and
// flags; the rest of a SYN is never read.
constexpr int kCopyBytes = 128;
constexpr uint8_t kTcp = 6;
constexpr uint8_t kSyn = 0x02, kAck = 0x10;

// The SYN's addresses, ports and flags from the packet as the queue gives it (from its IP
// header on); false: not a TCP SYN this gate knows how to read.
bool ReadSyn(const uint8_t* packet, size_t size, HeldSyn* syn) {
  if (size < 1) return false;
  size_t tcp = 0;
  if (packet[0] >> 4 == 4) {
    if (size < 20 || packet[9] != kTcp) return false;
    tcp = (packet[0] & 0x0f) * 4u;
    syn->source.family = syn->target.family = AF_INET;
    std::memcpy(syn->source.address.data(), packet + 12, 4);
    std::memcpy(syn->target.address.data(), packet + 16, 4);
  } else if (packet[0] >> 4 == 6) {
    if (size < 40 || packet[6] != kTcp) return false;  // extension headers: not a SYN of ours
    tcp = 40;
    syn->source.family = syn->target.family = AF_INET6;
    std::memcpy(syn->source.address.data(), packet + 8, 16);
    std::memcpy(syn->target.address.data(), packet + 24, 16);
  } else {
    return false;
  }
  if (size < tcp + 14) return false;
  syn->head.assign(packet, packet + tcp + 8);
  syn->source.port = static_cast<uint16_t>(packet[tcp] << 8 | packet[tcp + 1]);
  syn->target.port = static_cast<uint16_t>(packet[tcp + 2] << 8 | packet[tcp + 3]);
  uint8_t flags = packet[tcp + 13];
  return (flags & kSyn) && !(flags & kAck);
}

struct Received {
  std::vector<HeldSyn> syns;
  std::vector<uint32_t> others;  // queued but no SYN: passed as they are
};

int OnPacket(const nlmsghdr* message, void* data) {
  auto* received = static_cast<Received*>(data);
  nlattr* attributes[NFQA_MAX + 1] = {};
  if (nfq_nlmsg_parse(message, attributes) < 0 || !attributes[NFQA_PACKET_HDR]) return MNL_CB_OK;
  auto* header = static_cast<nfqnl_msg_packet_hdr*>(mnl_attr_get_payload(attributes[NFQA_PACKET_HDR]));
  HeldSyn syn;
  syn.id = ntohl(header->packet_id);
  if (attributes[NFQA_PAYLOAD] &&
      ReadSyn(static_cast<const uint8_t*>(mnl_attr_get_payload(attributes[NFQA_PAYLOAD])),
              mnl_attr_get_payload_len(attributes[NFQA_PAYLOAD]), &syn)) {
    received->syns.push_back(syn);
  } else {
    received->others.push_back(syn.id);
  }
  return MNL_CB_OK;
}

}  // namespace

SynGate::SynGate() {
  socket_ = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
  if (!socket_) Fail(ErrorKind::kFailed, "netfilter netlink socket: {}", strerror(errno));
  if (mnl_socket_bind(socket_, 0, MNL_SOCKET_AUTOPID) < 0) {
    int error = errno;
    mnl_socket_close(socket_);
    Fail(ErrorKind::kFailed, "bind a netfilter netlink socket: {}", strerror(error));
  }
  port_id_ = mnl_socket_get_portid(socket_);
  // Bind the queue, then ask for the packets' first bytes; each acknowledged, so that a
  // queue another socket holds is an error here, not silence.
  for (int step = 0; step < 2; ++step) {
    std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
    nlmsghdr* message = nfq_nlmsg_put(buffer.data(), NFQNL_MSG_CONFIG, kSynQueue);
    message->nlmsg_flags |= NLM_F_ACK;
    if (step == 0) {
      nfq_nlmsg_cfg_put_cmd(message, AF_INET, NFQNL_CFG_CMD_BIND);
    } else {
      nfq_nlmsg_cfg_put_params(message, NFQNL_COPY_PACKET, kCopyBytes);
    }
    ssize_t got = -1;
    if (Send(message, message->nlmsg_len)) {
      got = mnl_socket_recvfrom(socket_, buffer.data(), buffer.size());
    }
    if (got < 0 || mnl_cb_run(buffer.data(), got, 0, port_id_, nullptr, nullptr) < 0) {
      int error = errno;
      mnl_socket_close(socket_);
      Fail(ErrorKind::kFailed, "take netfilter queue {} of the guest's namespace: {}", kSynQueue,
           strerror(error));
    }
  }
  int fd = mnl_socket_get_fd(socket_);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

SynGate::~SynGate() {
  // Closing unbinds the queue: the kernel drops what it still holds, and the job's kernel
  // sends those SYNs again.
  if (socket_) mnl_socket_close(socket_);
}

int SynGate::fd() const {
  return mnl_socket_get_fd(socket_);
}

std::vector<HeldSyn> SynGate::Receive() {
  Received received;
  std::vector<char> buffer(MNL_SOCKET_BUFFER_SIZE);
  for (;;) {
    ssize_t got = mnl_socket_recvfrom(socket_, buffer.data(), buffer.size());
    if (got < 0) {
      // ENOBUFS: the socket overflowed and SYNs were lost; their jobs send them again.
      if (errno == EINTR || errno == ENOBUFS) continue;
      break;  // EAGAIN: all read
    }
    mnl_cb_run(buffer.data(), got, 0, port_id_, OnPacket, &received);
  }
  for (uint32_t id : received.others) Verdict(id, kSynPassMark);
  return received.syns;
}

void SynGate::Pass(const std::vector<uint32_t>& packets) {
  for (uint32_t id : packets) Verdict(id, kSynPassMark);
}

void SynGate::Refuse(const HeldSyn& first, const std::vector<uint32_t>& packets, int error) {
  uint32_t mark = 0;
  if (error == ECONNREFUSED || error == ECONNRESET) {
    mark = kSynResetMark;
  } else if (error != ETIMEDOUT && error != ECANCELED) {
    bool net = error == ENETUNREACH;
    if (first.source.family == AF_INET6) {
      mark = net ? kSynNetUnreachableMark : kSynHostUnreachableMark;
    } else {
      // A REJECT in the namespace cannot answer for a target off its loopback (the kernel
      // would send from the target's address, which no device there has).
      icmp_.Unreachable(first.source, net ? ENETUNREACH : EHOSTUNREACH, first.head);
    }
  }
  for (uint32_t id : packets) Verdict(id, mark);
}

void SynGate::Verdict(uint32_t id, uint32_t mark) {
  char buffer[MNL_SOCKET_BUFFER_SIZE / 8];
  nlmsghdr* message = nfq_nlmsg_put(buffer, NFQNL_MSG_VERDICT, kSynQueue);
  if (mark == 0) {
    nfq_nlmsg_verdict_put(message, static_cast<int>(id), NF_DROP);
  } else {
    nfq_nlmsg_verdict_put(message, static_cast<int>(id), NF_REPEAT);
    nfq_nlmsg_verdict_put_mark(message, mark);
  }
  Send(message, message->nlmsg_len);
}

bool SynGate::Send(const void* message, size_t size) {
  std::lock_guard lock(send_mutex_);
  if (mnl_socket_sendto(socket_, message, size) >= 0) return true;
  // A verdict that is not taken: the kernel holds the SYN until the queue goes, and the
  // job's kernel sends it again meanwhile.
  spdlog::warn("netfilter queue {}: a message not sent: {}", kSynQueue, strerror(errno));
  return false;
}

}  // namespace homeward
