// The jobs' journal: entries read back as written, torn or foreign files refused, and
// atomic writes that leave no temporary file.
#include "job_journal.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "error.h"

namespace homeward {
namespace {

JournalEntry Sample() {
  JournalEntry entry;
  entry.slot = 3;
  entry.mosrun_start = 123456;
  entry.launch.identity.home_pid = 4242;
  entry.launch.identity.home_ppid = 4000;
  entry.launch.identity.uid = 1002;
  entry.launch.identity.gid = 1003;
  entry.launch.identity.umask = 027;
  entry.launch.identity.groups = {1003, 27};
  entry.launch.identity.limits = {{7, 1024, 4096}};
  entry.launch.argv = {"sh", "-c", "echo 'a b' % \n done", ""};
  entry.launch.cwd = "/home/some one";
  entry.launch.home = "node1";
  entry.launch.pid_base = 1 << 22;
  entry.launch.started_unix_ms = 1700000000000;
  entry.launch.locked = true;
  entry.launch.min_free_mb = 64;
  entry.init_pid = 5000;
  entry.init_start = 777;
  entry.keeper_pid = 5001;
  entry.keeper_start = 778;
  return entry;
}

TEST(JobJournal, EntryReadsBackAsWritten) {
  JournalEntry entry = Sample();
  JournalEntry back = ParseJournalEntry(FormatJournalEntry(entry));
  EXPECT_EQ(back.slot, 3);
  EXPECT_EQ(back.mosrun_start, 123456u);
  EXPECT_EQ(back.launch.identity.home_pid, 4242);
  EXPECT_EQ(back.launch.identity.home_ppid, 4000);
  EXPECT_EQ(back.launch.identity.uid, 1002u);
  EXPECT_EQ(back.launch.identity.umask, 027u);
  EXPECT_EQ(back.launch.identity.groups, (std::vector<gid_t>{1003, 27}));
  ASSERT_EQ(back.launch.identity.limits.size(), 1u);
  EXPECT_EQ(back.launch.identity.limits[0].hard, 4096u);
  EXPECT_EQ(back.launch.argv, entry.launch.argv);
  EXPECT_EQ(back.launch.cwd, "/home/some one");
  EXPECT_EQ(back.launch.home, "node1");
  EXPECT_EQ(back.launch.pid_base, 1 << 22);
  EXPECT_EQ(back.launch.started_unix_ms, 1700000000000);
  EXPECT_TRUE(back.launch.locked);
  EXPECT_FALSE(back.launch.guest);
  EXPECT_EQ(back.init_pid, 5000);
  EXPECT_EQ(back.keeper_start, 778u);
  EXPECT_FALSE(back.away);
  EXPECT_EQ(back.departure, move::Leave::kHere);
  EXPECT_EQ(back.Name(), "4242");
}

TEST(JobJournal, CheckpointPlanAndRunAreKept) {
  JournalEntry entry = Sample();
  entry.launch.generation = 3;
  entry.launch.checkpoint = {"/home/some one/ckpt", 60000, 4, SIGUSR2};
  JournalEntry back = ParseJournalEntry(FormatJournalEntry(entry));
  EXPECT_EQ(back.launch.generation, 3u);
  EXPECT_EQ(back.launch.checkpoint.dir, "/home/some one/ckpt");
  EXPECT_EQ(back.launch.checkpoint.every_ms, 60000);
  EXPECT_EQ(back.launch.checkpoint.keep, 4u);
  EXPECT_EQ(back.launch.checkpoint.signal, SIGUSR2);
}

TEST(JobJournal, AFrozenJobKeepsItsImagesAndPipes) {
  JournalEntry entry = Sample();
  entry.away = true;
  entry.record = "state frozen";
  entry.frozen_dir = "/var/lib/homeward/frozen/job 4242";
  entry.pipes = {{1001, "stdin"}, {1002, "stdout"}, {1003, "stderr"}, {1004, "status"}};
  JournalEntry back = ParseJournalEntry(FormatJournalEntry(entry));
  EXPECT_EQ(back.frozen_dir, entry.frozen_dir);
  ASSERT_EQ(back.pipes.size(), 4u);
  EXPECT_EQ(back.pipes[1].inode, 1002u);
  EXPECT_EQ(back.pipes[3].role, "status");
  EXPECT_TRUE(ParseJournalEntry(FormatJournalEntry(Sample())).frozen_dir.empty());
}

TEST(JobJournal, GuestsAndJobsAwayKeepWhatTheyNeed) {
  JournalEntry guest = Sample();
  guest.slot = -1;
  guest.launch.guest = true;
  guest.launch.home_host = "127.77.1.1";
  guest.launch.home_port = 4701;
  guest.launch.root = "/mosix/home/node1";
  JournalEntry back = ParseJournalEntry(FormatJournalEntry(guest));
  EXPECT_TRUE(back.launch.guest);
  EXPECT_EQ(back.launch.home_host, "127.77.1.1");
  EXPECT_EQ(back.launch.home_port, 4701);
  EXPECT_EQ(back.launch.root, "/mosix/home/node1");
  EXPECT_EQ(back.Name(), "guest-node1-4242");

  JournalEntry away = Sample();
  away.away = true;
  away.departure = move::Leave::kArrived;
  away.departure_to = "node 2";
  away.record = "state 1 where node2 relay 3";
  away.base[1] = 25893;
  away.base[2] = 261;
  back = ParseJournalEntry(FormatJournalEntry(away));
  EXPECT_TRUE(back.away);
  EXPECT_EQ(back.departure, move::Leave::kArrived);
  EXPECT_EQ(back.departure_to, "node 2");
  EXPECT_EQ(back.record, away.record);
  EXPECT_EQ(back.base[1], 25893u);
  EXPECT_EQ(back.base[2], 261u);
  EXPECT_FALSE(back.base_pending);

  // Arrived before its old node's last output: where that output ends is not known yet.
  away.base_pending = true;
  std::string text = FormatJournalEntry(away);
  EXPECT_NE(text.find("base pending\n"), std::string::npos) << text;
  back = ParseJournalEntry(text);
  EXPECT_TRUE(back.base_pending);
  EXPECT_EQ(back.base[1], 0u);
  EXPECT_EQ(back.base[2], 0u);
}

// A journal written before departures were named ("moving 1") reads as a dump under way.
TEST(JobJournal, TheOldMovingLineReadsAsADumpUnderWay) {
  std::string text = FormatJournalEntry(Sample());
  text.insert(text.find("init "), "moving 1\n");
  EXPECT_EQ(ParseJournalEntry(text).departure, move::Leave::kDumping);
  text.replace(text.find("moving 1"), 8, "departure nowhere");
  EXPECT_THROW(ParseJournalEntry(text), Error);
}

TEST(JobJournal, AGuestFrozenPastItsHomesGraceKeepsItsPlanAndItsOutput) {
  JournalEntry guest = Sample();
  guest.slot = -1;
  guest.launch.guest = true;
  guest.launch.home_host = "127.77.1.1";
  guest.launch.home_port = 4701;
  guest.frozen_dir = "/var/lib/homeward/frozen/guest-node1-4242";
  guest.frozen_go_home = true;
  guest.migrations = 2;
  JournalEntry back = ParseJournalEntry(FormatJournalEntry(guest));
  EXPECT_EQ(back.frozen_dir, guest.frozen_dir);
  EXPECT_TRUE(back.frozen_go_home);
  EXPECT_EQ(back.migrations, 2u);
  guest.frozen_go_home = false;  // the plan "continue"
  EXPECT_FALSE(ParseJournalEntry(FormatJournalEntry(guest)).frozen_go_home);

  char tmpl[] = "/tmp/homeward-frozen-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  FrozenOutput output;
  output.start[1] = 262144;
  output.data[1] = std::string("line 1\n\0binary", 15);
  output.start[2] = 7;
  SaveFrozenOutput(dir, output);
  FrozenOutput loaded = LoadFrozenOutput(dir);
  EXPECT_EQ(loaded.start[1], 262144u);
  EXPECT_EQ(loaded.data[1], output.data[1]);
  EXPECT_EQ(loaded.start[2], 7u);
  EXPECT_EQ(loaded.data[2], "");
  // A torn file is refused, not read short.
  std::filesystem::resize_file(dir + "/" + kFrozenOutput,
                               std::filesystem::file_size(dir + "/" + kFrozenOutput) - 1);
  EXPECT_THROW(LoadFrozenOutput(dir), Error);
  std::filesystem::remove_all(dir);
}

TEST(JobJournal, TornOrForeignTextIsRefused) {
  std::string text = FormatJournalEntry(Sample());
  // Cut before its last line (the keeper's): a write that never finished.
  std::string torn = text.substr(0, text.rfind("keeper"));
  EXPECT_THROW(ParseJournalEntry(torn), Error);
  EXPECT_THROW(ParseJournalEntry(""), Error);
  EXPECT_THROW(ParseJournalEntry("slot 1\nkeeper 1 2\n"), Error);
  JournalEntry sneaky = Sample();
  sneaky.launch.guest = true;
  sneaky.launch.home = "../etc";
  EXPECT_THROW(ParseJournalEntry(FormatJournalEntry(sneaky)), Error);
}

TEST(JobJournal, WritesAtomicallyAndRemoves) {
  std::string dir = ::testing::TempDir() + "/journal-" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  JobJournal journal(dir);
  journal.Write(Sample());
  JournalEntry other = Sample();
  other.launch.identity.home_pid = 99;
  journal.Write(other);
  // A temporary file left by a write that was cut is removed, and a broken entry too.
  { std::ofstream(dir + "/7.new") << "half"; }
  { std::ofstream(dir + "/8") << "homeward-job 1\nslot 1\n"; }
  auto entries = journal.ReadAll();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_FALSE(std::filesystem::exists(dir + "/7.new"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/8"));
  journal.Remove("4242");
  journal.Remove("99");
  EXPECT_TRUE(journal.ReadAll().empty());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace homeward
