// Fault points: parsing the HOMEWARD_FAULT list, refusing names that are not fault points,
// and failing only at the selected points.
#include "fault.h"

#include <stdlib.h>

#include <gtest/gtest.h>

#include "error.h"

namespace homeward {
namespace {

TEST(FaultPoints, ParsesCommaSeparatedNames) {
  auto points = FaultPoints::Parse("stream-mid,,restore-after-criu");
  EXPECT_TRUE(points.Hit(Fault::kStreamMid));
  EXPECT_TRUE(points.Hit(Fault::kRestoreAfterCriu));
  EXPECT_FALSE(points.Hit(Fault::kStreamCorrupt));
  EXPECT_FALSE(points.empty());
  EXPECT_TRUE(FaultPoints::Parse("").empty());
}

TEST(FaultPoints, CheckThrowsOnlyWhenSelected) {
  auto points = FaultPoints::Parse("dump-before-criu");
  EXPECT_NO_THROW(points.Check(Fault::kStreamMid));
  try {
    points.Check(Fault::kDumpBeforeCriu);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFailed);
    EXPECT_NE(std::string(e.what()).find("dump-before-criu"), std::string::npos);
  }
}

// A typo would otherwise select nothing, and a failure test would pass without failing.
TEST(FaultPoints, UnknownNameIsRefusedWithTheKnownOnes) {
  for (const char* spec : {"stream-mid,restore-crui", "Stream-Mid", "stream", "stream-mid "}) {
    try {
      FaultPoints::Parse(spec);
      FAIL() << "accepted " << spec;
    } catch (const Error& e) {
      std::string message = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      EXPECT_NE(message.find("unknown fault point"), std::string::npos) << message;
      EXPECT_NE(message.find("restore-criu"), std::string::npos) << message;  // the known list
    }
  }
}

TEST(FaultPoints, FromEnvironmentRefusesAnUnknownName) {
  ::setenv("HOMEWARD_FAULT", "dump-crui", 1);
  EXPECT_THROW(FaultPoints::FromEnvironment(), Error);
  ::setenv("HOMEWARD_FAULT", "dump-criu", 1);
  EXPECT_TRUE(FaultPoints::FromEnvironment().Hit(Fault::kDumpCriu));
  ::unsetenv("HOMEWARD_FAULT");
  EXPECT_TRUE(FaultPoints::FromEnvironment().empty());
}

TEST(FaultPoints, EveryPointIsListedByItsOwnName) {
  auto all = AllFaults();
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(static_cast<size_t>(all[i].fault), i);
    EXPECT_TRUE(FaultPoints::Parse(all[i].name).Hit(all[i].fault)) << all[i].name;
    EXPECT_FALSE(all[i].effect.empty());
  }
}

}  // namespace
}  // namespace homeward
