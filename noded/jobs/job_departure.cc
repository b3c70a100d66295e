// A job leaving this node on a move: its side of move::Departure (here -> dumping ->
// sending -> handing over -> arrived -> left), journaled for a job of this home, and what
// is left of the copy here once it has gone.
#include "job.h"
#include "job_stream.h"

namespace homeward {

void Job::Depart(move::DumpKind kind, const std::string& target, bool journaled) {
  departure_.Start(kind, target, journaled);
  if (departure_.journaled()) JournalDeparture();
  set_migrating(true);
}

void Job::Departed(const move::Departure& departure) {
  bool was_journaled = departure_.journaled();
  departure_ = departure;
  // A job that left is abandoned (AbandonAfterMove): its keeper and journal writer are
  // gone, and its entry stays until the registry writes the job's record away over it.
  if (departure_.left()) return;
  if (was_journaled && !departure_.journaled()) JournalDeparture();
  if (!departure_.leaving()) set_migrating(false);  // its input flows on
}

move::Stay Job::Stay(const std::string& why) {
  move::Departure departure = departure_;
  move::Stay stay = departure.Failed(why);
  Departed(departure);
  return stay;
}

std::function<void(const move::Departure&)> Job::DepartureJournal() const {
  if (!journal_write_ || !keeper_.running() || init_pid() <= 0) return nullptr;
  // A copy of the writer, with the job's pids: nothing of the job is touched off the loop
  // but the output bases, which change only while the job is taken back, never during a
  // move.
  return
      [write = journal_write_, init = init_pid(), init_start = init_start_, keeper = keeper_.pid(),
       keeper_start = keeper_.start_time()](const move::Departure& departure) mutable {
        write(init, init_start, keeper, keeper_start, departure);
      };
}

void Job::AwaitTakeOver(move::Departure departure) {
  departure_ = std::move(departure);
  set_migrating(true);
}

move::Stay Job::TickDeparture(int64_t now_ms) {
  move::Departure departure = departure_;
  move::Stay stay = departure.Tick(now_ms);
  if (!departure.leaving()) Departed(departure);
  return stay;
}

void Job::LeftFrozen() {
  move::Departure departure = departure_;
  departure.Dumped();
  departure.Arrived();
  Departed(departure);
}

void Job::AbandonAfterMove() {
  if (finished_) return;
  finished_ = true;
  // The job is frozen: what it wrote before the dump is still in our pipes. Relay it
  // before the copy here goes, so that no byte of output is lost by the move.
  for (Stream* stream : {stdout_.get(), stderr_.get()}) {
    if (!stream) continue;
    Pump(*stream, true);
    output_base_[stream->fd] += stream->sent;  // what mosrun has had: output_total()
  }
  exit_watch_.Close();
  KillInit();  // the frozen source copy
  pidfd_.Reset();
  if (launch_.guest) {
    Forget();  // a guest moved on is its new node's to journal
  } else {
    // The keeper goes; the journal entry stays until the registry writes the job's
    // record away over it, so that no moment is without one.
    keeper_.Stop();
    journal_write_ = nullptr;
    journal_remove_ = nullptr;
  }
  // Input still queued for the old copy goes with it: mosrun holds every byte the job's
  // new place has not acknowledged, and sends it again from where the job resumes.
  input_paused_ = false;  // the relay's reading is for its new handlers to decide
  input_held_ = true;
  input_queue_.clear();
  CloseInput();
  stdin_read_.Reset();
  stdout_.reset();
  stderr_.reset();
  status_.reset();
  relay_.OnDrain(nullptr);
}

}  // namespace homeward
