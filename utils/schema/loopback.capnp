# Loopback connections a guest makes, carried to its home: on the peer service
# "loopback", the guest's daemon sends one LoopbackOpen, the home's daemon answers one
# LoopbackOpened, and from then on the connection carries the job's bytes both ways
# (noded/peers/loopback_stream.h). Each message is framed as a 4-byte little-endian length
# and the message's flat array. A UDP flow (transport udp, version 2: a home that speaks
# only version 1 refuses it rather than take it for TCP) then carries datagrams, each as a
# 2-byte little-endian length and its bytes.
@0xc6d716c27257a755;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("homeward::schema");

const loopbackVersion :UInt16 = 1;
# Requests for a UDP flow carry this version (TCP ones stay at 1).
const loopbackUdpVersion :UInt16 = 2;

enum LoopbackTransport {
  tcp @0;
  udp @1;
}

struct LoopbackOpen {
  version @0 :UInt16;
  homePid @1 :UInt32;  # the job, by its home pid (its mosrun at home)
  address @2 :Data;    # 4 bytes (IPv4) or 16 (IPv6): where on its loopback the job connected
  port @3 :UInt16;
  transport @4 :LoopbackTransport;  # version 2 and later
}

struct LoopbackOpened {
  version @0 :UInt16;
  error @1 :Int32;     # 0: connected at home; else the errno of the refusal
  message @2 :Text;    # why, for the guest's log
}
