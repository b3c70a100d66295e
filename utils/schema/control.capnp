# The control protocol: the user commands talk to their node's mosnoded over a local
# unix socket, one framed ControlRequest answered by one framed ControlReply.
@0xd3a1f0c0b4e2a901;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("homeward::schema");

const controlVersion :UInt16 = 1;

struct ControlRequest {
  version @0 :UInt16;
  # The sender's controlVersion; a daemon answers a version it does not speak with an error.

  union {
    status @1 :Void;
    # Who is this node: name, address, version, uptime.
    listNodes @2 :Void;
    # The cluster as this node sees it (mosmon).
    homeMount @3 :HomeMountRequest;
    # Mount (up) or unmount /mosix/home/<name>: what membership does for each peer, by
    # hand (debugging, tests).
  }
}

struct ControlReply {
  union {
    error @0 :ControlError;
    status @1 :NodeStatus;
    nodes @2 :NodeList;
    done @3 :Void;
  }
}

struct ControlError {
  kind @0 :Text;
  # The ErrorKind's name: "invalid input", "not found", ...
  message @1 :Text;
}

struct NodeStatus {
  name @0 :Text;
  address @1 :Text;
  version @2 :Text;
  uptimeMs @3 :UInt64;
  gossipPort @4 :UInt16;
  peerPort @5 :UInt16;
  pid @6 :Int32;
}

struct NodeList {
  nodes @0 :List(NodeInfo);
}

struct NodeInfo {
  name @0 :Text;
  address @1 :Text;
  alive @2 :Bool;
}

struct HomeMountRequest {
  name @0 :Text;
  address @1 :Text;
  peerPort @2 :UInt16;
  up @3 :Bool;
}
