// Tests of the move protocol: every order in which the network can deliver a move's
// events, a cut at every step, an attach that never comes, and a restart at every step.
#include "move_protocol.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <vector>

namespace homeward::move {
namespace {

constexpr pid_t kPid = 4242;

MoveOutcome Figures(const std::string& where) {
  MoveOutcome figures;
  figures.where = where;
  figures.frozen_ms = 12;
  figures.total_ms = 80;
  figures.image_bytes = 1 << 20;
  return figures;
}

// A job running on node2 over relay 1.
Protocol Running() {
  Protocol protocol = Protocol::Starting(kPid, "node2");
  EXPECT_EQ(protocol.Connected(), 1u);
  EXPECT_EQ(protocol.state(), State::kRunning);
  return protocol;
}

TEST(MoveProtocol, StartsRunsAndExits) {
  Protocol protocol = Protocol::Starting(kPid, "node2");
  EXPECT_EQ(protocol.state(), State::kStarting);
  EXPECT_THROW(protocol.Ask("node3"), Error);  // still starting
  protocol.Connected();
  Step step = protocol.Exited();
  EXPECT_TRUE(step.end);
  EXPECT_EQ(step.why, "");
  EXPECT_FALSE(step.answer);
  EXPECT_TRUE(protocol.ended());
}

TEST(MoveProtocol, ANodeThatCannotBeReachedEndsAStartingJob) {
  Protocol protocol = Protocol::Starting(kPid, "node2");
  EXPECT_FALSE(protocol.ExpectsArrival());
  Step step = protocol.Lost("cannot reach node node2: refused");
  EXPECT_TRUE(step.end);
  EXPECT_EQ(step.why, "cannot reach node node2: refused");
  EXPECT_TRUE(protocol.ended());
  EXPECT_FALSE(protocol.Lost("again").end);  // ended once
  Protocol asked = Running();
  asked.Ask("node1");
  step = asked.Lost("cannot take it back");
  EXPECT_TRUE(step.end);
  ASSERT_TRUE(step.answer);
  EXPECT_EQ(step.answer->error, "cannot take it back");
}

TEST(MoveProtocol, AskRefusedWhereItCannotMove) {
  Protocol protocol = Running();
  try {
    protocol.Ask("node2");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
  }
  protocol.Ask("node3");
  EXPECT_EQ(protocol.state(), State::kAsked);
  try {
    protocol.Ask("node4");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOverloaded);
    EXPECT_NE(std::string(e.what()).find("already moving"), std::string::npos);
  }
}

// The events that end a move on: the arrival (the new node's attach, carrying the old
// node's figures, or none when that node could not give them), the old node's last word
// (`movedOn`, after the output it owed) and the old relay's close, in every order the
// network allows (the word and the close come on one stream, so the word is first of
// those two; a close with no word is AnOldNodeThatClosesWithoutAWord), with a daemon
// restart after every step. The waiter hears once, at the arrival, however much output
// the old node still owes; the new place's output is held from the arrival until the old
// node's word or close.
TEST(MoveProtocol, EveryOrderOfAMoveEndsWithTheJobMoved) {
  enum Event { kWord, kOldClosed, kArrival };
  std::vector<Event> events = {kWord, kOldClosed, kArrival};
  int orders = 0;
  do {
    if (std::find(events.begin(), events.end(), kOldClosed) <
        std::find(events.begin(), events.end(), kWord)) {
      continue;
    }
    for (int variant = 0; variant < 4; ++variant) {
      bool asked = variant & 1;         // asked by the home, or decided by the job's node
      bool with_figures = variant & 2;  // the old node told the target how it went
      SCOPED_TRACE(testing::Message() << "order " << events[0] << events[1] << events[2]
                                      << (asked ? " asked" : " unasked")
                                      << (with_figures ? " with figures" : " without"));
      Protocol protocol = Running();
      if (asked) protocol.Ask("node3");
      uint32_t old_relay = protocol.record().relay;
      std::vector<MoveOutcome> answers;
      bool arrived = false, old_done = false;
      for (size_t i = 0; i < events.size(); ++i) {
        Step step;
        if (events[i] == kWord) {
          step = protocol.MovedOn(old_relay, "node3", 1000);
          old_done = true;
        } else if (events[i] == kOldClosed) {
          step = protocol.Closed(old_relay);
          old_done = true;
        } else {
          auto arrival = protocol.Arrived("node3", with_figures ? Figures("node3") : MoveOutcome());
          ASSERT_TRUE(arrival);
          step = *arrival;
          arrived = true;
          // Answered at the arrival, whatever the old node still owes.
          EXPECT_EQ(step.answer.has_value(), asked);
        }
        EXPECT_FALSE(step.end);
        if (step.answer) answers.push_back(*step.answer);
        EXPECT_EQ(protocol.OldOutputOwed(), arrived && !old_done);
        EXPECT_EQ(protocol.record().waiting, asked && !arrived);
        // A restart now: the job must attach again, whatever the step.
        Protocol reloaded =
            Protocol::Reloaded(Record::Parse(protocol.record().Serialize()), 2000);
        EXPECT_EQ(reloaded.state(), State::kRelayLost);
        EXPECT_FALSE(reloaded.OldOutputOwed());
        EXPECT_FALSE(reloaded.record().waiting);
        ASSERT_TRUE(reloaded.Arrived("node3"));
        EXPECT_EQ(reloaded.state(), State::kRunning);
        // The restart's new relay is current: no relay from before it ends the job.
        Protocol cut = Protocol::Reloaded(protocol.record(), 2000);
        EXPECT_FALSE(cut.Closed(old_relay).end);
        EXPECT_FALSE(cut.Closed(old_relay + 1).end);
        EXPECT_FALSE(cut.MovedOn(old_relay, "node3", 2000).end);
        EXPECT_EQ(cut.state(), State::kRelayLost);
      }
      EXPECT_EQ(protocol.state(), State::kRunning);
      EXPECT_EQ(protocol.record().where, "node3");
      EXPECT_EQ(protocol.record().migrations, 1u);
      EXPECT_FALSE(protocol.record().waiting);
      ASSERT_EQ(answers.size(), asked ? 1u : 0u);
      if (asked) {
        EXPECT_EQ(answers[0].error, "");
        EXPECT_EQ(answers[0].where, "node3");
        EXPECT_EQ(answers[0].image_bytes, with_figures ? 1u << 20 : 0u);
        EXPECT_EQ(answers[0].frozen_ms, with_figures ? 12u : 0u);
      }
      // The new relay is current: the old one's late events change nothing, and the
      // job can move again.
      EXPECT_FALSE(protocol.Closed(old_relay).end);
      EXPECT_FALSE(protocol.MovedOn(old_relay, "node3", 3000).end);
      EXPECT_EQ(protocol.state(), State::kRunning);
      protocol.Ask("node4");
      EXPECT_EQ(protocol.state(), State::kAsked);
    }
    ++orders;
  } while (std::next_permutation(events.begin(), events.end()));
  EXPECT_EQ(orders, 3);
}

// An old node that closes its relay without its word (it died as the move ended): the job
// moved if it has arrived (answered then; its new output is let go at the close); if it
// has not, contact with it is lost.
TEST(MoveProtocol, AnOldNodeThatClosesWithoutAWord) {
  Protocol arrived = Running();
  arrived.Ask("node3");
  auto arrival = arrived.Arrived("node3", Figures("node3"));
  ASSERT_TRUE(arrival);
  ASSERT_TRUE(arrival->answer);
  EXPECT_EQ(arrival->answer->error, "");
  EXPECT_EQ(arrived.state(), State::kArrived);
  EXPECT_TRUE(arrived.OldOutputOwed());
  Step step = arrived.Closed(1);
  EXPECT_FALSE(step.end);
  EXPECT_FALSE(step.answer);  // answered once, at the arrival
  EXPECT_EQ(arrived.state(), State::kRunning);
  EXPECT_FALSE(arrived.OldOutputOwed());

  Protocol not_yet = Running();
  not_yet.Ask("node3");
  step = not_yet.Closed(1);
  EXPECT_TRUE(step.end);
  ASSERT_TRUE(step.answer);
  EXPECT_EQ(step.answer->kind, ErrorKind::kDisconnected);
  EXPECT_FALSE(not_yet.Arrived("node3"));  // a copy that shows up later is not taken
}

// While its old node still sends what it owed, a job that was just answered as moved is
// not moved again: the home would have two old relays to order.
TEST(MoveProtocol, ANewMoveWaitsForTheOldNodesLastWord) {
  Protocol protocol = Running();
  protocol.Ask("node3");
  ASSERT_TRUE(protocol.Arrived("node3", Figures("node3")));
  try {
    protocol.Ask("node4");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOverloaded);
    EXPECT_EQ(std::string(e.what()),
              "job 4242 has just moved to node3: its old node still sends the output it owed");
  }
  protocol.MovedOn(1, "node3", 0);
  protocol.Ask("node4");
  EXPECT_EQ(protocol.state(), State::kAsked);
}

TEST(MoveProtocol, AMoveHomeIsAnArrivalToo) {
  Protocol protocol = Running();
  protocol.Ask("node1");
  uint32_t old_relay = protocol.record().relay;
  auto step = protocol.Arrived("node1", Figures("node1"));
  ASSERT_TRUE(step);
  ASSERT_TRUE(step->answer);
  EXPECT_EQ(step->answer->where, "node1");
  EXPECT_EQ(step->answer->frozen_ms, 12u);
  EXPECT_TRUE(protocol.OldOutputOwed());
  EXPECT_FALSE(protocol.MovedOn(old_relay, "node1", 0).answer);
  EXPECT_EQ(protocol.state(), State::kRunning);
}

// The arrival names where the job is: figures that say otherwise, or carry an error,
// do not change the answer's success.
TEST(MoveProtocol, TheArrivalSaysWhereTheJobIs) {
  Protocol protocol = Running();
  protocol.Ask("node3");
  MoveOutcome odd = Figures("elsewhere");
  odd.error = "stale";
  auto step = protocol.Arrived("node3", odd);
  ASSERT_TRUE(step && step->answer);
  EXPECT_EQ(step->answer->where, "node3");
  EXPECT_EQ(step->answer->error, "");
  EXPECT_EQ(step->answer->total_ms, 80u);
}

TEST(MoveProtocol, TheNodeRefusesTheMoveAndTheJobRunsOn) {
  Protocol protocol = Running();
  protocol.Ask("node3");
  Step step = protocol.Refused(1, "restore failed");
  EXPECT_FALSE(step.end);
  ASSERT_TRUE(step.answer);
  EXPECT_EQ(step.answer->error, "job 4242 stays on node2: restore failed");
  EXPECT_EQ(step.answer->kind, ErrorKind::kFailed);
  EXPECT_EQ(protocol.state(), State::kRunning);
  protocol.Ask("node3");  // and may be asked again
  // A node busy a moment (the job just arrived) says so: the asker tries again.
  step = protocol.Refused(1, "the job is migrating", ErrorKind::kOverloaded);
  ASSERT_TRUE(step.answer);
  EXPECT_EQ(step.answer->kind, ErrorKind::kOverloaded);
}

TEST(MoveProtocol, AnErrorWhileRunningEndsTheJob) {
  Protocol protocol = Running();
  Step step = protocol.Refused(1, "no such program");
  EXPECT_TRUE(step.end);
  EXPECT_EQ(step.why, "node node2 cannot run the job: no such program");
  EXPECT_TRUE(protocol.ended());
  EXPECT_FALSE(protocol.Refused(1, "again").end);  // ended once
}

TEST(MoveProtocol, AnAttachThatNeverComesEndsTheJobAtTheDeadline) {
  Protocol protocol = Running();
  protocol.Ask("node3");
  protocol.MovedOn(1, "node3", 1000);
  EXPECT_EQ(protocol.state(), State::kAnnounced);
  EXPECT_EQ(protocol.record().moved_to, "node3");
  EXPECT_EQ(protocol.record().attach_due_ms, 1000 + kAttachTimeoutMs);
  EXPECT_FALSE(protocol.Closed(1).end);  // the old relay's close is expected
  EXPECT_FALSE(protocol.Tick(1000 + kAttachTimeoutMs).end);
  Step step = protocol.Tick(1001 + kAttachTimeoutMs);
  EXPECT_TRUE(step.end);
  EXPECT_EQ(step.why, "the job left node node2 and no node took it over");
  ASSERT_TRUE(step.answer);
  EXPECT_EQ(step.answer->kind, ErrorKind::kDisconnected);
  EXPECT_FALSE(protocol.Arrived("node3"));  // too late
}

// A cut of the current relay at every step of a move ends the job, and a waiter hears
// that contact was lost.
TEST(MoveProtocol, ACutAtEveryStep) {
  struct Case {
    const char* name;
    std::function<void(Protocol&)> reach;
    bool waiting;
  };
  std::vector<Case> cases = {
      {"running", [](Protocol&) {}, false},
      {"asked", [](Protocol& p) { p.Ask("node3"); }, true},
      {"arrived before the word (answered at the arrival)",
       [](Protocol& p) {
         p.Ask("node3");
         p.Arrived("node3");
       },
       false},
      {"arrived unasked", [](Protocol& p) { p.Arrived("node3"); }, false},
      {"moved, then cut on the new relay",
       [](Protocol& p) {
         p.Ask("node3");
         p.MovedOn(1, "node3", 0);
         p.Arrived("node3");
       },
       false},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.name);
    Protocol protocol = Running();
    c.reach(protocol);
    Step step = protocol.Closed(protocol.record().relay);
    EXPECT_TRUE(step.end);
    EXPECT_NE(step.why.find("lost contact with node"), std::string::npos);
    EXPECT_EQ(step.answer.has_value(), c.waiting);
    if (step.answer) {
      EXPECT_EQ(step.answer->kind, ErrorKind::kDisconnected);
    }
    EXPECT_TRUE(protocol.ended());
  }
  // Announced, the old relay is no longer current: only the deadline ends the job.
  Protocol announced = Running();
  announced.MovedOn(1, "node3", 0);
  EXPECT_FALSE(announced.Closed(1).end);
  EXPECT_FALSE(announced.Closed(announced.record().relay).end);
  EXPECT_EQ(announced.state(), State::kAnnounced);
}

TEST(MoveProtocol, MosrunGoneAtEveryStepEndsTheJobOnce) {
  std::vector<std::function<Protocol()>> reach = {
      [] { return Protocol::Starting(kPid, "node2"); },
      [] { return Running(); },
      [] {
        Protocol p = Running();
        p.Ask("node3");
        return p;
      },
      [] {
        Protocol p = Running();
        p.Ask("node3");
        p.MovedOn(1, "node3", 0);
        return p;
      },
      [] {
        Protocol p = Running();
        p.Ask("node3");
        p.Arrived("node3");
        return p;
      },
      [] { return Protocol::Frozen(kPid, 0); },
      [] {
        Protocol p = Protocol::Frozen(kPid, 0);
        p.Continue();
        return p;
      },
  };
  for (auto& make : reach) {
    Protocol protocol = make();
    SCOPED_TRACE(StateName(protocol.state()));
    bool waiting = protocol.record().waiting;
    Step step = protocol.MosrunGone();
    EXPECT_TRUE(step.end);
    EXPECT_EQ(step.answer.has_value(), waiting);
    EXPECT_TRUE(protocol.ended());
    EXPECT_FALSE(protocol.MosrunGone().end);
    EXPECT_FALSE(protocol.Exited().end);
    EXPECT_FALSE(protocol.Arrived("node3"));
  }
}

TEST(MoveProtocol, FrozenJobsContinueOnce) {
  Protocol protocol = Protocol::Frozen(kPid, 2);
  EXPECT_THROW(protocol.Ask("node3"), Error);
  EXPECT_FALSE(protocol.Arrived("node3"));
  protocol.Continue();
  EXPECT_THROW(protocol.Continue(), Error);  // one restore at a time
  protocol.ContinueDone(false);
  EXPECT_EQ(protocol.state(), State::kFrozen);
  protocol.Continue();
  protocol.ContinueDone(true);
  EXPECT_TRUE(protocol.ended());
  Protocol running = Running();
  EXPECT_THROW(running.Continue(), Error);
}

TEST(MoveProtocol, RecordsReadBackAsTheyWereWritten) {
  Protocol protocol = Running();
  protocol.Ask("node3");
  Record record = protocol.record();
  EXPECT_EQ(Record::Parse(record.Serialize()), record);
  EXPECT_EQ(Record::Parse(Protocol::Frozen(kPid, 3).record().Serialize()),
            Protocol::Frozen(kPid, 3).record());
  Protocol announced = Running();
  announced.Ask("node3");
  announced.MovedOn(1, "node3", 77);
  EXPECT_EQ(Record::Parse(announced.record().Serialize()), announced.record());
  Protocol arrived = Running();
  arrived.Ask("node3");
  arrived.Arrived("node3", Figures("node3"));
  EXPECT_EQ(Record::Parse(arrived.record().Serialize()), arrived.record());
  EXPECT_THROW(Record::Parse("state=flying"), Error);
  EXPECT_THROW(Record::Parse("nonsense"), Error);
  EXPECT_THROW(Record::Parse(
                   "state=running pid=x where=a relay=1 migrations=0 due=0 waiting=0 moved=,0,0,0"),
               Error);
}

// Lines an older daemon wrote carry the old node's figures in `moved`, always: they read,
// keeping only the node, and write back without the figures.
TEST(MoveProtocol, OldJournalLinesStillRead) {
  Record running = Record::Parse(
      "state=running pid=4242 where=node2 relay=1 migrations=0 due=0 waiting=0 moved=,0,0,0");
  EXPECT_EQ(running, Running().record());
  EXPECT_EQ(running.Serialize(),
            "state=running pid=4242 where=node2 relay=1 migrations=0 due=0 waiting=0");
  Record announced = Record::Parse(
      "state=announced pid=4242 where=node2 relay=2 migrations=0 due=31000 waiting=1 "
      "moved=node3,12,80,1048576 generation=2");
  EXPECT_EQ(announced.state, State::kAnnounced);
  EXPECT_EQ(announced.moved_to, "node3");
  EXPECT_EQ(announced.generation, 2u);
  EXPECT_EQ(Record::Parse(announced.Serialize()), announced);
  Record arrived = Record::Parse(
      "state=arrived pid=4242 where=node3 relay=2 migrations=1 due=0 waiting=1 moved=,0,0,0");
  Protocol reloaded = Protocol::Reloaded(arrived, 100);
  EXPECT_EQ(reloaded.state(), State::kRelayLost);
  EXPECT_EQ(reloaded.record().where, "node3");
}

// A job restarted from a checkpoint is a new run: its generation goes with its record, and
// a record without one (never restarted) reads as run 0.
TEST(MoveProtocol, TheGenerationOfARestartedJobIsKept) {
  Protocol protocol = Running();
  protocol.SetGeneration(3);
  EXPECT_EQ(Record::Parse(protocol.record().Serialize()).generation, 3u);
  EXPECT_EQ(Record::Parse(protocol.record().Serialize()), protocol.record());
  EXPECT_EQ(Record::Parse(Running().record().Serialize()).generation, 0u);
  EXPECT_THROW(Record::Parse("state=running pid=1 generation=2"), Error);  // incomplete
}

// A daemon restart at every step: the record is saved, read back, and the machine says
// what it means now. Everything that ran somewhere waits for its node to attach again,
// within the timeout, and nobody waits for an answer any more.
TEST(MoveProtocol, ARestartAtEveryStep) {
  struct Case {
    std::function<Protocol()> reach;
    State after;
  };
  std::vector<Case> cases = {
      {[] { return Protocol::Starting(kPid, "node2"); }, State::kEnded},
      {[] { return Running(); }, State::kRelayLost},
      {[] {
         Protocol p = Running();
         p.Ask("node3");
         return p;
       },
       State::kRelayLost},
      {[] {
         Protocol p = Running();
         p.Ask("node3");
         p.MovedOn(1, "node3", 0);
         return p;
       },
       State::kRelayLost},
      {[] {
         Protocol p = Running();
         p.Ask("node3");
         p.Arrived("node3");
         return p;
       },
       State::kRelayLost},
      {[] { return Protocol::Frozen(kPid, 1); }, State::kFrozen},
      {[] {
         Protocol p = Protocol::Frozen(kPid, 1);
         p.Continue();
         return p;
       },
       State::kFrozen},
      {[] {
         Protocol p = Running();
         p.Exited();
         return p;
       },
       State::kEnded},
  };
  for (auto& c : cases) {
    Protocol before = c.reach();
    SCOPED_TRACE(StateName(before.state()));
    std::string saved = before.record().Serialize();
    Protocol after = Protocol::Reloaded(Record::Parse(saved), 5000);
    EXPECT_EQ(after.state(), c.after);
    EXPECT_FALSE(after.record().waiting);
    EXPECT_EQ(after.record().home_pid, kPid);
    if (c.after != State::kRelayLost) continue;
    // No relay from before the restart is current.
    EXPECT_FALSE(after.Closed(before.record().relay).end);
    // It attaches again...
    Protocol attached = after;
    ASSERT_TRUE(attached.Arrived("node5"));
    EXPECT_EQ(attached.state(), State::kRunning);
    EXPECT_EQ(attached.record().where, "node5");
    // ...or the deadline ends it.
    EXPECT_FALSE(after.Tick(5000 + kAttachTimeoutMs).end);
    EXPECT_TRUE(after.Tick(5001 + kAttachTimeoutMs).end);
  }
}

// A node whose daemon was killed closes its relay; the home waits (RelayLost) and the same
// node, its daemon restarted, takes the job up again: unmoved, over a new relay.
TEST(MoveProtocol, NodeRejoinsAfterItsDaemonRestarted) {
  Protocol p = Running();
  uint32_t old_relay = p.record().relay;
  uint32_t migrations = p.record().migrations;
  std::string where = p.record().where;
  Protocol waiting = p;
  EXPECT_FALSE(waiting.RelayLost(old_relay + 1, 100));  // not the current relay
  ASSERT_TRUE(waiting.RelayLost(old_relay, 100));
  EXPECT_EQ(waiting.state(), State::kRelayLost);
  EXPECT_FALSE(waiting.RelayLost(waiting.record().relay, 100));  // once
  EXPECT_FALSE(waiting.Closed(old_relay).end);  // the lost relay's close is no end
  EXPECT_THROW(waiting.Ask("node3"), Error);
  EXPECT_FALSE(waiting.Rejoined("elsewhere"));
  auto step = waiting.Rejoined(where);
  ASSERT_TRUE(step);
  EXPECT_FALSE(step->end);
  EXPECT_FALSE(step->answer);
  EXPECT_EQ(waiting.state(), State::kRunning);
  EXPECT_EQ(waiting.record().where, where);
  EXPECT_EQ(waiting.record().migrations, migrations);
  EXPECT_GT(waiting.record().relay, old_relay);
  // Only once: a running job is not rejoined, and an ended one never.
  EXPECT_FALSE(waiting.Rejoined(where));
  Protocol ended = p;
  ASSERT_TRUE(ended.RelayLost(old_relay, 100));
  Step gone = ended.Tick(101 + kAttachTimeoutMs);
  EXPECT_TRUE(gone.end);
  // Its node never moved it: mosrun hears that the node was lost, not that a move failed.
  EXPECT_EQ(gone.why, fmt::format("lost contact with node {}, where the job ran: it did not "
                                  "come back within 30 s",
                                  where));
  EXPECT_FALSE(ended.Rejoined(where));
}

// Only a job that simply runs waits for its node: a relay lost in the middle of a move is
// the move's end, as Closed decides it.
TEST(MoveProtocol, ARelayLostDuringAMoveIsNotAwaited) {
  Protocol asked = Running();
  asked.Ask("node3");
  EXPECT_FALSE(asked.RelayLost(1, 0));
  EXPECT_EQ(asked.state(), State::kAsked);
  Protocol frozen = Protocol::Frozen(kPid, 1);
  EXPECT_FALSE(frozen.RelayLost(0, 0));
  EXPECT_EQ(frozen.state(), State::kFrozen);
}

// While the home waits for a lost node, the job may turn up on another one (its node
// moved it before the relay could say so): that is its arrival.
TEST(MoveProtocol, AJobAwaitedWhereItRanArrivesElsewhere) {
  Protocol p = Running();
  ASSERT_TRUE(p.RelayLost(1, 0));
  auto step = p.Arrived("node3");
  ASSERT_TRUE(step);
  EXPECT_FALSE(step->end);
  EXPECT_EQ(p.state(), State::kRunning);
  EXPECT_EQ(p.record().where, "node3");
  EXPECT_EQ(p.record().migrations, 1u);
  EXPECT_FALSE(p.Rejoined("node2"));  // its old node comes back too late
}

// The state is written down and read back by its name.
TEST(MoveProtocol, ALostRelayIsJournaledAsSuch) {
  Protocol p = Running();
  ASSERT_TRUE(p.RelayLost(1, 0));
  Record back = Record::Parse(p.record().Serialize());
  EXPECT_EQ(back, p.record());
  EXPECT_NE(p.record().Serialize().find("state=relay-lost"), std::string::npos);
}

}  // namespace
}  // namespace homeward::move
