# The gossip protocol: UDP datagrams between node daemons. Each datagram carries the
# sender's own fresh record and a window of the freshest records it knows, each tagged
# with its age, plus the SWIM probe fields (ping, ack, ping-req). The codec wraps this
# message in a header and a MAC made with the cluster key (noded/gossip/gossip_codec.h).
@0xb6c1e0f4a7d3c215;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("homeward::schema");

# 2: the codec's header carries the sender's stamp, against replays.
const gossipVersion :UInt16 = 2;

enum MemberState {
  alive @0;
  suspect @1;
  dead @2;
}

struct NodeRecord {
  name @0 :Text;
  address @1 :Text;          # IPv4, where peers reach the node
  gossipPort @2 :UInt16;
  peerPort @3 :UInt16;
  cores @4 :UInt16;          # usable cores (the daemon's CPU affinity)
  speed @5 :Float32;         # relative CPU speed, 1.0 = the reference machine
  load @6 :Float32;          # runnable processes, smoothed
  homewardLoad @7 :Float32;  # the part of load that is Homeward jobs and guests
  memFreeMb @8 :UInt32;
  memTotalMb @9 :UInt32;
  swapFreeMb @10 :UInt32;
  swapTotalMb @11 :UInt32;
  jobsAway @12 :UInt32;      # home jobs running on other nodes
  guestsHere @13 :UInt32;    # other nodes' jobs running here
  incarnation @14 :UInt64;   # raised at every start and to refute a suspicion
  blocked @15 :Bool;         # accepts no guests (mosctl block)
  cluster @16 :Text;         # the node's [cluster] name
  bootTimeS @17 :UInt64;     # when the machine booted, seconds since the epoch (its uptime)
  users @18 :UInt16;         # users logged in (utmp), as w(1) counts them
  group @19 :Text;           # [node] group: the node's sub-cluster; empty: none
  longJobAfterS @20 :UInt32; # [node] long_job_s: guests that have run this long are long
                             # jobs here (a node for short jobs); 0: none
}

struct WindowEntry {
  record @0 :NodeRecord;
  ageMs @1 :UInt32;          # how old the record was when this datagram left
  state @2 :MemberState;     # the sender's opinion of that node
}

struct Datagram {
  version @0 :UInt16;        # gossipVersion of the sender
  kind @1 :Kind;
  seq @2 :UInt64;            # probe sequence number (ping, ack, pingReq)
  sender @3 :NodeRecord;     # always fresh: age 0
  entries @4 :List(WindowEntry);
  probeName @5 :Text;        # pingReq: the node to probe for the sender; ack: who answered
  probeAddress @6 :Text;
  probePort @7 :UInt16;
  newsCount @8 :UInt16;      # the first newsCount entries are news; the rest, the window

  enum Kind {
    ping @0;                 # answer with an ack carrying the same seq
    ack @1;
    pingReq @2;              # probe probeName for me; relay its ack with my seq
  }
}
