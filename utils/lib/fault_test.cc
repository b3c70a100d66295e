// Fault points: parsing the HOMEWARD_FAULT list and failing only at the named points.
#include "fault.h"

#include <gtest/gtest.h>

#include "error.h"

namespace homeward {
namespace {

TEST(FaultPoints, ParsesCommaSeparatedNames) {
  auto points = FaultPoints::Parse("stream-mid,,restore-after-criu");
  EXPECT_TRUE(points.Hit("stream-mid"));
  EXPECT_TRUE(points.Hit("restore-after-criu"));
  EXPECT_FALSE(points.Hit("stream"));
  EXPECT_FALSE(points.empty());
  EXPECT_TRUE(FaultPoints::Parse("").empty());
}

TEST(FaultPoints, CheckThrowsOnlyWhenSelected) {
  auto points = FaultPoints::Parse("dump-before-criu");
  EXPECT_NO_THROW(points.Check("stream-mid"));
  try {
    points.Check("dump-before-criu");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFailed);
    EXPECT_NE(std::string(e.what()).find("dump-before-criu"), std::string::npos);
  }
}

}  // namespace
}  // namespace homeward
