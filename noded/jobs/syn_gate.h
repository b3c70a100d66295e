// A guest's TCP connection attempts held until its carrier knows what the target says, so
// that the job's `connect` answers as a connect at home (or from the node) would:
// ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, or a timeout, not a connection that the carrier
// accepted and then resets. The guest's rules (guest_network.cc) queue each SYN that would
// go to the carrier (NFQUEUE, queue kSynQueue of its namespace) before TPROXY. The carrier
// reads them here, opens the connection at home or from the node, and then gives each its
// verdict: a mark, and the SYN goes through the rules again: kSynPassMark to the carrier's
// listener (whose accept then finds the connection already made), a refusal mark to the
// namespace's filter table, which rejects it with a reset or the ICMP error the target
// gave. A target that never answers: the SYNs are dropped and the job's kernel gives up as
// against a silent host.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "fd.h"
#include "guest_icmp.h"
#include "loopback_stream.h"

struct mnl_socket;

namespace homeward {

constexpr uint16_t kSynQueue = 2710;
// Marks a verdict gives a held SYN (the job cannot set marks: CAP_NET_ADMIN).
constexpr uint32_t kSynPassMark = 0x2711;             // to the carrier
constexpr uint32_t kSynResetMark = 0x2712;            // refused: ECONNREFUSED
constexpr uint32_t kSynHostUnreachableMark = 0x2713;  // EHOSTUNREACH (IPv6)
constexpr uint32_t kSynNetUnreachableMark = 0x2714;   // ENETUNREACH (IPv6)

struct HeldSyn {
  uint32_t id = 0;  // the queue's packet id, for the verdict
  LoopbackTarget source;  // the job's socket
  LoopbackTarget target;  // where it connects
  std::vector<uint8_t> head;  // its IP header and the first 8 bytes of its TCP header
  std::string Key() const { return source.ToString() + ">" + target.ToString(); }
};

class SynGate {
 public:
  // Binds queue kSynQueue in the network namespace the calling thread is in; throws Error
  // (a kernel without NFQUEUE, a queue bound already).
  SynGate();
  SynGate(const SynGate&) = delete;
  SynGate& operator=(const SynGate&) = delete;
  ~SynGate();

  int fd() const;  // readable when SYNs wait
  // Every SYN waiting now (without blocking); a packet that is not a TCP SYN is passed.
  std::vector<HeldSyn> Receive();
  // Lets the SYNs `packets` (of one connection) go on to the carrier. Safe from any thread.
  void Pass(const std::vector<uint32_t>& packets);
  // Refuses the connection whose first SYN is `first` (and whose SYNs are `packets`) as
  // `error` says: ECONNREFUSED by a reset, EHOSTUNREACH and ENETUNREACH (every other
  // refusal is EHOSTUNREACH) by the ICMP error a router would send, ETIMEDOUT (and
  // ECANCELED) by dropping them: the job's kernel times out as against a silent host.
  void Refuse(const HeldSyn& first, const std::vector<uint32_t>& packets, int error);

 private:
  bool Send(const void* message, size_t size);
  void Verdict(uint32_t id, uint32_t mark);  // mark 0: dropped
  mnl_socket* socket_ = nullptr;
  GuestIcmp icmp_;  // IPv4's unreachable errors
  uint32_t port_id_ = 0;
  std::mutex send_mutex_;
};

}  // namespace homeward
