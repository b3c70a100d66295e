#include "metrics_text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace homeward {
namespace {

using ::testing::HasSubstr;

MetricsFigures Figures() {
  MetricsFigures f;
  f.node = "node1";
  f.cluster = "lab";
  f.self.load = 1.5f;
  f.self.cores = 4;
  f.self.mem_free_mb = 1024;
  f.nodes_alive = 3;
  f.nodes_dead = 1;
  f.moves.moved = 7;
  f.moves.failed = 2;
  f.moves.frozen_ms = 1500;
  f.drops.Count(DropReason::kStale);
  f.file_requests = 10;
  f.file_micros = 2500000;
  return f;
}

TEST(MetricsTextTest, EachFamilyHasHelpTypeAndLabelledSamples) {
  std::string text = MetricsTextOf(Figures());
  EXPECT_THAT(text, HasSubstr("# HELP homeward_load "));
  EXPECT_THAT(text, HasSubstr("# TYPE homeward_load gauge\nhomeward_load{node=\"node1\","
                              "cluster=\"lab\"} 1.5\n"));
  EXPECT_THAT(text, HasSubstr("homeward_cores{node=\"node1\",cluster=\"lab\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("homeward_memory_free_bytes{node=\"node1\",cluster=\"lab\"} 1073741824\n"));
  EXPECT_THAT(text, HasSubstr("homeward_cluster_nodes{node=\"node1\",cluster=\"lab\",state=\"dead\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE homeward_migrations_total counter\n"));
  EXPECT_THAT(text, HasSubstr("homeward_migrations_total{node=\"node1\",cluster=\"lab\","
                              "outcome=\"moved\"} 7\n"));
  EXPECT_THAT(text, HasSubstr("outcome=\"failed\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("homeward_migration_frozen_seconds_total{node=\"node1\","
                              "cluster=\"lab\"} 1.5\n"));
  EXPECT_THAT(text, HasSubstr("homeward_gossip_dropped_total{node=\"node1\",cluster=\"lab\","
                              "reason=\"out_of_the_time_window\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("homeward_file_request_seconds_total{node=\"node1\","
                              "cluster=\"lab\"} 2.5\n"));
  // Every line is a comment or "name{labels} value".
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    EXPECT_THAT(line, ::testing::MatchesRegex("(# (HELP|TYPE) .*|homeward_[a-z_]+\\{.*\\} [-0-9.e+]+)"))
        << line;
  }
}

TEST(MetricsTextTest, LabelValuesAreEscaped) {
  MetricsFigures f = Figures();
  f.cluster = "a\"b\\c";
  EXPECT_THAT(MetricsTextOf(f), HasSubstr("cluster=\"a\\\"b\\\\c\""));
}

}  // namespace
}  // namespace homeward
