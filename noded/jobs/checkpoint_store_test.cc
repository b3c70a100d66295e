// CheckpointStore: numbered checkpoints appear only when complete, a failed one leaves
// nothing, -N prunes, and a restart takes only what the daemon sealed.
#include "checkpoint_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "error.h"
#include "scratch_dir.h"

namespace homeward {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class CheckpointStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    who_ = {::geteuid(), ::getegid(), {}};
    key_ = CheckpointKey(std::vector<uint8_t>(32, 7));
    manifest_.launch.argv = {"sh", "job.sh"};
    manifest_.launch.cwd = "/data";
    manifest_.launch.home = "node1";
    manifest_.launch.identity.uid = who_.uid;
    manifest_.launch.pid_base = 3 << 22;
    manifest_.pipes = {{11, "stdin"}, {12, "stdout"}};
  }

  // A dump that writes two image files with `tag` in them.
  static CheckpointDump FakeDump(const std::string& tag) {
    return [tag](const std::string& dir, CheckpointManifest&) {
      std::ofstream(dir + "/pstree.img") << "tree " << tag;
      std::ofstream(dir + "/pages-1.img") << std::string(300000, 'p') << tag;
      return migrate::DumpResult{};
    };
  }
  std::vector<std::string> Names(const std::string& dir) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }
  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  std::string Copy() {
    std::string copy = root_ + "/copy";
    fs::remove_all(copy);
    fs::create_directory(copy);
    return copy;
  }

  ScratchDir scratch_{"homeward-checkpoints"};
  std::string root_ = scratch_.path();
  FsIdentity who_;
  std::vector<uint8_t> key_;
  CheckpointManifest manifest_;
};

TEST_F(CheckpointStoreTest, WritesNumberedCheckpointsAndRestartsFromTheNewest) {
  std::string dir = root_ + "/ckpts";
  auto first = WriteCheckpoint(dir, who_, 0, key_, manifest_, FakeDump("one"));
  auto second = WriteCheckpoint(dir, who_, 0, key_, manifest_, FakeDump("two"));
  EXPECT_EQ(first.number, 1u);
  EXPECT_EQ(second.number, 2u);
  EXPECT_EQ(second.path, dir + "/ckpt-2");
  EXPECT_THAT(Names(dir), ElementsAre("ckpt-1", "ckpt-2"));
  EXPECT_THAT(Names(dir + "/ckpt-2"), ElementsAre("manifest", "pages-1.img", "pstree.img"));
  std::string copy = Copy();
  auto manifest = CopyNewestCheckpoint(dir, who_, false, key_, copy);
  EXPECT_EQ(manifest.number, 2u);
  EXPECT_EQ(manifest.launch.argv, manifest_.launch.argv);
  EXPECT_EQ(manifest.launch.pid_base, manifest_.launch.pid_base);
  ASSERT_EQ(manifest.pipes.size(), 2u);
  EXPECT_EQ(manifest.pipes[1].role, "stdout");
  EXPECT_EQ(Read(copy + "/pstree.img"), "tree two");
  EXPECT_THAT(Names(copy), ElementsAre("pages-1.img", "pstree.img"));
}

TEST_F(CheckpointStoreTest, KeepsTheNewestN) {
  std::string dir = root_ + "/ckpts";
  for (int i = 0; i < 4; ++i) WriteCheckpoint(dir, who_, 2, key_, manifest_, FakeDump("x"));
  EXPECT_THAT(Names(dir), ElementsAre("ckpt-3", "ckpt-4"));
}

TEST_F(CheckpointStoreTest, TheInputPlaceMeasuredAtTheDumpIsSealedInTheManifest) {
  std::string dir = root_ + "/ckpts";
  WriteCheckpoint(dir, who_, 0, key_, manifest_, FakeDump("unmeasured"));
  EXPECT_FALSE(CopyNewestCheckpoint(dir, who_, false, key_, Copy()).input_offset);
  WriteCheckpoint(dir, who_, 0, key_, manifest_,
                  [](const std::string& image_dir, CheckpointManifest& manifest) {
                    std::ofstream(image_dir + "/pages-1.img") << "measured";
                    manifest.input_offset = 42;
                    return migrate::DumpResult{};
                  });
  auto manifest = CopyNewestCheckpoint(dir, who_, false, key_, Copy());
  EXPECT_EQ(manifest.number, 2u);
  EXPECT_EQ(manifest.input_offset, 42u);
}

TEST_F(CheckpointStoreTest, AFailedCheckpointLeavesNothingAndTheLastStays) {
  std::string dir = root_ + "/ckpts";
  WriteCheckpoint(dir, who_, 0, key_, manifest_, FakeDump("good"));
  EXPECT_THROW(WriteCheckpoint(dir, who_, 0, key_, manifest_,
                               [](const std::string& image_dir,
                                  CheckpointManifest&) -> migrate::DumpResult {
                                 std::ofstream(image_dir + "/pages-1.img") << "half";
                                 Fail(ErrorKind::kFailed, "No space left on device");
                               }),
               Error);
  EXPECT_THAT(Names(dir), ElementsAre("ckpt-1"));
  auto manifest = CopyNewestCheckpoint(dir, who_, false, key_, Copy());
  EXPECT_EQ(manifest.number, 1u);
}

TEST_F(CheckpointStoreTest, AChangedCheckpointIsPassedOver) {
  std::string dir = root_ + "/ckpts";
  WriteCheckpoint(dir, who_, 0, key_, manifest_, FakeDump("good"));
  WriteCheckpoint(dir, who_, 0, key_, manifest_, FakeDump("changed"));
  WriteCheckpoint(dir, who_, 0, key_, manifest_, FakeDump("forged"));
  // An image changed after it was sealed.
  std::ofstream(dir + "/ckpt-2/pstree.img") << "tree evil";
  // A manifest rewritten (say, to run as root), its seal kept.
  std::string text = Read(dir + "/ckpt-3/manifest");
  size_t uid = text.find("\"uid\":");
  ASSERT_NE(uid, std::string::npos);
  text.replace(uid, 6, "\"uid\":0,\"x\":");
  std::ofstream(dir + "/ckpt-3/manifest") << text;
  auto manifest = CopyNewestCheckpoint(dir, who_, false, key_, Copy());
  EXPECT_EQ(manifest.number, 1u);
  // Another cluster's key seals nothing of ours.
  try {
    CopyNewestCheckpoint(dir, who_, false, CheckpointKey(std::vector<uint8_t>(32, 8)), Copy());
    FAIL() << "restored with another key";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_THAT(e.what(), HasSubstr("seal does not match"));
  }
}

TEST_F(CheckpointStoreTest, AnotherUsersCheckpointIsRefused) {
  std::string dir = root_ + "/ckpts";
  manifest_.launch.identity.uid = who_.uid + 1;
  WriteCheckpoint(dir, who_, 0, key_, manifest_, FakeDump("theirs"));
  EXPECT_THROW(CopyNewestCheckpoint(dir, who_, false, key_, Copy()), Error);
  EXPECT_EQ(CopyNewestCheckpoint(dir, who_, true, key_, Copy()).number, 1u);
}

}  // namespace
}  // namespace homeward
