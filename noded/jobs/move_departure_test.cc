// Tests of a departure, the move protocol's side on the node a job leaves: every step of a
// move, one dump at a time, a failure and a daemon restart at every step.
#include "move_protocol.h"

#include <gtest/gtest.h>

namespace homeward::move {
namespace {

Departure Leaving(DumpKind kind = DumpKind::kMove, bool journaled = true) {
  Departure departure;
  departure.Start(kind, kind == DumpKind::kMove ? "node2" : "", journaled);
  return departure;
}

TEST(MoveDeparture, AMoveGoesThroughEveryStep) {
  Departure departure;
  EXPECT_EQ(departure.state(), Leave::kHere);
  EXPECT_FALSE(departure.leaving());
  EXPECT_FALSE(departure.journaled());
  departure.Start(DumpKind::kMove, "node2", true);
  EXPECT_EQ(departure.state(), Leave::kDumping);
  EXPECT_TRUE(departure.leaving());
  EXPECT_TRUE(departure.journaled());
  EXPECT_EQ(departure.target(), "node2");
  departure.Sent();  // out of order: nothing
  departure.Arrived();
  EXPECT_EQ(departure.state(), Leave::kDumping);
  departure.Dumped();
  EXPECT_EQ(departure.state(), Leave::kSending);
  departure.Arrived();  // not before every image is sent
  EXPECT_EQ(departure.state(), Leave::kSending);
  departure.Sent();
  EXPECT_EQ(departure.state(), Leave::kHandingOver);
  departure.Migrated();  // not before the target's word
  EXPECT_EQ(departure.state(), Leave::kHandingOver);
  departure.Arrived();
  EXPECT_EQ(departure.state(), Leave::kArrived);
  EXPECT_TRUE(departure.leaving());
  EXPECT_TRUE(departure.journaled());  // the target's word is journaled
  EXPECT_FALSE(departure.awaiting());  // nobody waits: this daemon records it next
  departure.Migrated();
  EXPECT_EQ(departure.state(), Leave::kLeft);
  EXPECT_TRUE(departure.left());
  EXPECT_FALSE(departure.leaving());
  EXPECT_FALSE(departure.journaled());  // the registry journals the job as away instead
  // Gone: a late failure changes nothing and continues nothing; it cannot leave again.
  Stay stay = departure.Failed("late");
  EXPECT_FALSE(stay.continue_job);
  EXPECT_TRUE(departure.left());
  try {
    departure.Start(DumpKind::kMove, "node3");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
  }
}

TEST(MoveDeparture, OneDumpAtATime) {
  for (DumpKind kind : {DumpKind::kMove, DumpKind::kFreeze, DumpKind::kCheckpoint}) {
    Departure departure = Leaving(kind);
    try {
      departure.Start(DumpKind::kCheckpoint);
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kOverloaded);
    }
    departure.Failed("no");
    EXPECT_NO_THROW(departure.Start(DumpKind::kMove, "node3"));
  }
}

// Every way a move fails before the job has left, at the step where it fails: the job
// stays, is continued once criu has stopped it, and can move again.
TEST(MoveDeparture, AFailedMoveLeavesTheJobHereAtEveryStep) {
  struct Case {
    const char* what;
    int steps;  // Dumped, then Sent, before the failure
    bool continued;
  };
  for (Case c :
       {Case{"the dump fails", 0, false}, Case{"the target refuses the job", 1, true},
        Case{"the stream breaks", 1, true}, Case{"the target dies mid-move (no answer)", 2, true},
        Case{"the target's restore fails", 2, true}}) {
    SCOPED_TRACE(c.what);
    Departure departure = Leaving();
    if (c.steps > 0) departure.Dumped();
    if (c.steps > 1) departure.Sent();
    Stay stay = departure.Failed(c.what);
    EXPECT_EQ(stay.continue_job, c.continued);
    EXPECT_EQ(stay.why, c.what);
    EXPECT_EQ(departure.state(), Leave::kHere);
    EXPECT_FALSE(departure.journaled());
    EXPECT_EQ(departure.target(), "");
    EXPECT_FALSE(departure.Failed("twice").continue_job);  // once only
    departure.Start(DumpKind::kMove, "node3");
    EXPECT_EQ(departure.target(), "node3");
  }
}

TEST(MoveDeparture, ACheckpointLeavesTheJobRunning) {
  Departure departure = Leaving(DumpKind::kCheckpoint, false);
  EXPECT_FALSE(departure.journaled());
  departure.Dumped();
  EXPECT_EQ(departure.state(), Leave::kDumping);  // no stream: Done ends it
  departure.Arrived();
  EXPECT_FALSE(departure.left());
  Stay stay = departure.Done();
  EXPECT_FALSE(stay.continue_job);  // it never stopped
  EXPECT_EQ(stay.why, "");
  EXPECT_EQ(departure.state(), Leave::kHere);
}

TEST(MoveDeparture, AFreezeLeavesOnceItsImagesAreOnDisk) {
  Departure departure = Leaving(DumpKind::kFreeze, true);
  departure.Arrived();  // not dumped yet
  EXPECT_EQ(departure.state(), Leave::kDumping);
  departure.Dumped();
  EXPECT_EQ(departure.state(), Leave::kDumping);  // no stream for a freeze
  EXPECT_TRUE(departure.journaled());
  departure.Arrived();
  EXPECT_TRUE(departure.left());
  // A freeze whose images could not be kept after the dump: continued here.
  Departure failed = Leaving(DumpKind::kFreeze, true);
  failed.Dumped();
  EXPECT_TRUE(failed.Failed("no room").continue_job);
}

// The daemon of the job's node killed at every step of a departure: the next one finds the
// state in its journal. A job stopped by a dump, a stream or a handover is continued here
// (a copy the target restored without a word that reached this home is refused); one the
// target said it has waits, stopped, for the target to take it over.
TEST(MoveDeparture, ARestartAtEveryStep) {
  for (Leave saved : {Leave::kHere, Leave::kDumping, Leave::kSending, Leave::kHandingOver,
                      Leave::kArrived, Leave::kLeft}) {
    SCOPED_TRACE(LeaveName(saved));
    Stay stay;
    Departure departure = Departure::Reloaded(saved, "node2", 1000, &stay);
    bool has_it = saved == Leave::kArrived;
    bool stopped =
        saved == Leave::kDumping || saved == Leave::kSending || saved == Leave::kHandingOver;
    EXPECT_EQ(stay.continue_job, stopped);
    EXPECT_EQ(stay.why.empty(), !stopped);
    EXPECT_EQ(departure.awaiting(), has_it);
    EXPECT_EQ(departure.leaving(), has_it);  // mosps: migrating; its input held
    EXPECT_EQ(departure.journaled(), has_it);
    if (!has_it) {
      EXPECT_EQ(departure.state(), Leave::kHere);
      continue;
    }
    EXPECT_EQ(departure.state(), Leave::kArrived);
    EXPECT_EQ(departure.target(), "node2");
  }
  // A journal without the target (none was written): nothing to wait for.
  Stay stay;
  Departure departure = Departure::Reloaded(Leave::kArrived, "", 1000, &stay);
  EXPECT_TRUE(stay.continue_job);
  EXPECT_FALSE(departure.awaiting());
}

// Between Arrived and Migrated: the target restored the job and said so, and the home died
// before it journaled the job away. The target attaches it again: the job has left.
TEST(MoveDeparture, TheTargetTakesOverAJobWhoseHandoverARestartCut) {
  Stay stay;
  Departure departure = Departure::Reloaded(Leave::kArrived, "node2", 1000, &stay);
  EXPECT_FALSE(stay.continue_job);
  EXPECT_FALSE(departure.TakenOver("node3"));                          // not the target
  EXPECT_FALSE(departure.Tick(1000 + kAttachTimeoutMs).continue_job);  // not yet overdue
  EXPECT_TRUE(departure.awaiting());
  EXPECT_TRUE(departure.TakenOver("node2"));
  EXPECT_TRUE(departure.left());
  EXPECT_FALSE(departure.awaiting());
  EXPECT_FALSE(departure.TakenOver("node2"));  // once
  EXPECT_FALSE(departure.Tick(1000 + 10 * kAttachTimeoutMs).continue_job);
  EXPECT_FALSE(departure.Failed("late").continue_job);
}

// The target never attaches (it died, or its daemon lost the job): past the attach timeout
// the job is continued here, once, and can move again; a late attach is refused.
TEST(MoveDeparture, AJobItsTargetDoesNotTakeOverGoesOnHere) {
  Stay stay;
  Departure departure = Departure::Reloaded(Leave::kArrived, "node2", 1000, &stay);
  Stay late = departure.Tick(1001 + kAttachTimeoutMs);
  EXPECT_TRUE(late.continue_job);
  EXPECT_EQ(late.why, "node2 did not take it over within 30 s");
  EXPECT_EQ(departure.state(), Leave::kHere);
  EXPECT_FALSE(departure.journaled());
  EXPECT_FALSE(departure.Tick(1002 + kAttachTimeoutMs).continue_job);  // once
  EXPECT_FALSE(departure.TakenOver("node2"));
  EXPECT_NO_THROW(departure.Start(DumpKind::kMove, "node3", true));
}

TEST(MoveDeparture, StatesAreJournaledByName) {
  for (Leave state : {Leave::kHere, Leave::kDumping, Leave::kSending, Leave::kHandingOver,
                      Leave::kArrived, Leave::kLeft}) {
    EXPECT_EQ(LeaveNamed(LeaveName(state)), state);
  }
  EXPECT_EQ(LeaveName(Leave::kHandingOver), "handing-over");
  EXPECT_THROW(LeaveNamed("moving"), Error);
}

}  // namespace
}  // namespace homeward::move
