// Executable kinds: the system's own dynamic programs, a static program built for the
// test, scripts, and files that are not executables at all.
#include "elf_info.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "error.h"
#include "scratch_dir.h"

namespace homeward {
namespace {

using ::testing::HasSubstr;

class ElfInfoTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  ScratchDir scratch_{"homeward-elf"};
  std::string dir_ = scratch_.path();
};

TEST_F(ElfInfoTest, SystemProgramsAreDynamic) {
  ExecutableInfo info = ReadExecutableInfo("/bin/sh");
  EXPECT_EQ(info.kind, ExecutableKind::kDynamic);
  EXPECT_THAT(info.interpreter, HasSubstr("ld-linux"));
}

TEST_F(ElfInfoTest, StaticProgramsHaveNoInterpreter) {
  EXPECT_EQ(ReadExecutableInfo(HOMEWARD_TEST_STATIC).kind, ExecutableKind::kStatic);
}

TEST_F(ElfInfoTest, ScriptsNameTheirInterpreter) {
  ExecutableInfo info = ReadExecutableInfo(Write("s", "#! /bin/sh -e\necho hi\n"));
  EXPECT_EQ(info.kind, ExecutableKind::kScript);
  EXPECT_EQ(info.interpreter, "/bin/sh");
  EXPECT_EQ(ReadExecutableInfo(Write("p", "#!/usr/bin/python3\n")).interpreter, "/usr/bin/python3");
}

TEST_F(ElfInfoTest, OtherFilesAreRefusedByName) {
  std::string text = Write("text", "hello world, not a program\n");
  try {
    ReadExecutableInfo(text);
    FAIL() << "a text file read as an executable";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_THAT(e.what(), HasSubstr(text));
  }
  EXPECT_THROW(ReadExecutableInfo(Write("empty", "")), Error);
  EXPECT_THROW(ReadExecutableInfo(Write("bang", "#!\n")), Error);
  EXPECT_THROW(ReadExecutableInfo(Write("cut", std::string("\x7f"
                                                           "ELF\x02\x01\x01",
                                                           7))),
               Error);
  try {
    ReadExecutableInfo(dir_ + "/missing");
    FAIL() << "a missing file was read";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
  }
}

TEST_F(ElfInfoTest, TruncatedProgramHeadersAreRefused) {
  std::ifstream in("/bin/sh", std::ios::binary);
  std::string head(64, '\0');
  in.read(head.data(), 64);  // The ELF header only: its program headers are past the end.
  EXPECT_THROW(ReadExecutableInfo(Write("head", head)), Error);
}

}  // namespace
}  // namespace homeward
