// Tests of the move protocol across a restart of the home's daemon between a job's arrival
// on a new node and its old node's last word: the journal names the new node at once, the
// job's base (where the new node's output starts in mosrun's stream) pending until the old
// node's word, or after a restart until mosrun's offsets settle it.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "move_protocol.h"

namespace homeward::move {
namespace {

constexpr pid_t kPid = 4242;

// A job that ran on node2 (relay 1) and has arrived on node3 before node2's last word.
Protocol ArrivedBeforeTheWord(bool asked = true) {
  Protocol protocol = Protocol::Starting(kPid, "node2");
  protocol.Connected();
  if (asked) protocol.Ask("node3");
  EXPECT_TRUE(protocol.Arrived("node3"));
  return protocol;
}

Protocol Restarted(const Protocol& before, int64_t now_ms = 5000) {
  return Protocol::Reloaded(Record::Parse(before.record().Serialize()), now_ms);
}

std::string AskError(Protocol& protocol, const std::string& target) {
  try {
    protocol.Ask(target);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOverloaded);
    return e.what();
  }
  return "";
}

TEST(MoveProtocolRestart, AnArrivalNamesTheNewNodeWithItsBasePending) {
  for (bool asked : {true, false}) {
    Protocol protocol = ArrivedBeforeTheWord(asked);
    EXPECT_EQ(protocol.state(), State::kArrived);
    EXPECT_EQ(protocol.record().where, "node3");
    EXPECT_EQ(protocol.record().owed_by, "node2");
    EXPECT_TRUE(protocol.BasePending());
    EXPECT_TRUE(protocol.OldOutputOwed());
    std::string line = protocol.record().Serialize();
    EXPECT_NE(line.find("state=arrived"), std::string::npos) << line;
    EXPECT_NE(line.find("where=node3"), std::string::npos) << line;
    EXPECT_NE(line.find("owed=node2"), std::string::npos) << line;
    EXPECT_EQ(Record::Parse(line), protocol.record());
    // The old node still sends: mosrun's offsets settle nothing yet.
    EXPECT_FALSE(protocol.BaseSettled());
    EXPECT_TRUE(protocol.BasePending());
  }
}

// The old node's word, or its close without one (it died), settles the base: all it sent
// is in, and the journal can say where the new node's output starts.
TEST(MoveProtocolRestart, TheOldNodesWordOrCloseSettlesTheBase) {
  for (bool word : {true, false}) {
    Protocol protocol = ArrivedBeforeTheWord();
    Step step = word ? protocol.MovedOn(1, "node3", 1000) : protocol.Closed(1);
    EXPECT_FALSE(step.end);
    EXPECT_EQ(protocol.state(), State::kRunning);
    EXPECT_FALSE(protocol.BasePending());
    EXPECT_EQ(protocol.record().owed_by, "");
    EXPECT_EQ(protocol.record().Serialize().find("owed="), std::string::npos);
    protocol.Ask("node4");  // it may move again
  }
  // Announced first, the arrival owes nothing.
  Protocol announced = Protocol::Starting(kPid, "node2");
  announced.Connected();
  announced.MovedOn(1, "node3", 1000);
  ASSERT_TRUE(announced.Arrived("node3"));
  EXPECT_FALSE(announced.BasePending());
}

// The home restarted before the old node's word: the new node is awaited, the old one is
// not, and the base stays pending until mosrun comes back, whichever comes first.
TEST(MoveProtocolRestart, TheNewNodeIsTakenBackWithItsBasePending) {
  for (bool mosrun_first : {false, true}) {
    SCOPED_TRACE(mosrun_first ? "mosrun first" : "node first");
    Protocol protocol = Restarted(ArrivedBeforeTheWord());
    EXPECT_EQ(protocol.state(), State::kRelayLost);
    EXPECT_EQ(protocol.record().where, "node3");
    EXPECT_TRUE(protocol.BasePending());
    EXPECT_FALSE(protocol.OldOutputOwed());
    EXPECT_FALSE(protocol.record().waiting);
    EXPECT_FALSE(protocol.Rejoined("node2"));  // the old node has no job to give back
    if (mosrun_first) {
      EXPECT_TRUE(protocol.BaseSettled());
    }
    auto step = protocol.Rejoined("node3");
    ASSERT_TRUE(step);
    EXPECT_FALSE(step->end);
    EXPECT_EQ(protocol.state(), State::kRunning);
    EXPECT_EQ(protocol.record().migrations, 1u);  // counted once, at the arrival
    if (!mosrun_first) {
      EXPECT_TRUE(protocol.BasePending());
      EXPECT_EQ(AskError(protocol, "node4"),
                "job 4242 has just moved to node3: where its output goes on is known once its "
                "mosrun is back");
      EXPECT_TRUE(protocol.BaseSettled());
    }
    EXPECT_FALSE(protocol.BasePending());
    EXPECT_FALSE(protocol.BaseSettled());  // once
    protocol.Ask("node4");
    EXPECT_EQ(protocol.state(), State::kAsked);
  }
}

// Nothing from before the restart is current: the old node's late word or close changes
// nothing, and a new node that never attaches ends the job as any lost node does.
TEST(MoveProtocolRestart, LateEventsAndAnAttachThatNeverComes) {
  Protocol before = ArrivedBeforeTheWord();
  Protocol protocol = Restarted(before);
  for (uint32_t relay = 0; relay <= before.record().relay; ++relay) {
    EXPECT_FALSE(protocol.MovedOn(relay, "node3", 6000).end);
    EXPECT_FALSE(protocol.Closed(relay).end);
  }
  EXPECT_EQ(protocol.state(), State::kRelayLost);
  EXPECT_TRUE(protocol.BasePending());
  EXPECT_FALSE(protocol.Tick(5000 + kAttachTimeoutMs).end);
  Step step = protocol.Tick(5001 + kAttachTimeoutMs);
  EXPECT_TRUE(step.end);
  EXPECT_EQ(step.why,
            "lost contact with node node3, where the job ran: it did not come back within 30 s");
}

// A second restart before mosrun came back keeps the base pending; the job may turn up on
// a node it moved to meanwhile, still pending; the job's end or its mosrun's ends it.
TEST(MoveProtocolRestart, PendingAcrossASecondRestartAndAnotherMove) {
  Protocol twice = Restarted(Restarted(ArrivedBeforeTheWord()), 9000);
  EXPECT_EQ(twice.state(), State::kRelayLost);
  EXPECT_EQ(twice.record().owed_by, "node2");
  Protocol elsewhere = twice;
  ASSERT_TRUE(elsewhere.Arrived("node4"));
  EXPECT_EQ(elsewhere.state(), State::kRunning);
  EXPECT_EQ(elsewhere.record().where, "node4");
  EXPECT_TRUE(elsewhere.BasePending());
  EXPECT_TRUE(elsewhere.BaseSettled());
  Protocol exits = twice;
  ASSERT_TRUE(exits.Rejoined("node3"));
  EXPECT_TRUE(exits.Exited().end);
  EXPECT_TRUE(exits.ended());
  EXPECT_TRUE(twice.MosrunGone().end);
}

// Records of daemons that never journaled a pending base read as settled.
TEST(MoveProtocolRestart, OldRecordsReadAsSettled) {
  Record old = Record::Parse("state=running pid=7 where=node3 relay=2 migrations=1 due=0 waiting=0");
  EXPECT_EQ(old.owed_by, "");
  Protocol protocol = Protocol::Reloaded(old, 100);
  EXPECT_FALSE(protocol.BasePending());
  EXPECT_FALSE(protocol.BaseSettled());
  ASSERT_TRUE(protocol.Rejoined("node3"));
  protocol.Ask("node4");
}

// Every order of the word, the old relay's close and the arrival, with a restart after
// each step: the base is pending exactly from the arrival to the old node's word (or
// close), a restart keeps it so, and the job is always awaited from where it runs.
TEST(MoveProtocolRestart, EveryOrderWithARestartAtEachStep) {
  enum Event { kWord, kOldClosed, kArrival };
  std::vector<Event> events = {kWord, kOldClosed, kArrival};
  do {
    if (std::find(events.begin(), events.end(), kOldClosed) <
        std::find(events.begin(), events.end(), kWord)) {
      continue;  // the word and the close come on one stream, the word first
    }
    Protocol protocol = Protocol::Starting(kPid, "node2");
    protocol.Connected();
    protocol.Ask("node3");
    bool arrived = false, old_done = false;
    for (Event event : events) {
      if (event == kWord) {
        protocol.MovedOn(1, "node3", 1000);
        old_done = true;
      } else if (event == kOldClosed) {
        protocol.Closed(1);
        old_done = true;
      } else {
        ASSERT_TRUE(protocol.Arrived("node3"));
        arrived = true;
      }
      bool pending = arrived && !old_done;
      EXPECT_EQ(protocol.BasePending(), pending);
      Protocol reloaded = Restarted(protocol);
      EXPECT_EQ(reloaded.state(), State::kRelayLost);
      EXPECT_EQ(reloaded.BasePending(), pending);
      // Awaited from where it runs: the new node once it arrived, else the old one (which
      // may have moved it meanwhile: then the new node's attach is its arrival).
      EXPECT_EQ(reloaded.record().where, arrived ? "node3" : "node2");
      Protocol attached = reloaded;
      ASSERT_TRUE(arrived ? attached.Rejoined("node3").has_value()
                          : attached.Arrived("node3").has_value());
      EXPECT_EQ(attached.state(), State::kRunning);
      EXPECT_EQ(attached.record().migrations, 1u);
      EXPECT_EQ(attached.BaseSettled(), pending);
      EXPECT_FALSE(attached.BasePending());
    }
  } while (std::next_permutation(events.begin(), events.end()));
}

}  // namespace
}  // namespace homeward::move
