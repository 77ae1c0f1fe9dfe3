#include "report/svg.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <regex>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace moec::report {
namespace {

int Count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST(SvgTest, HeatMapHasOneCellPerValueWithItsColour) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::string svg =
      SvgHeatMap("usage <share>", "layer", "expert", {{0.0, 0.5, 1.0}, {0.25, nan, 1.0}}, "share");
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_EQ(Count(svg, "<rect class=\"cell\""), 6);
  EXPECT_NE(svg.find("usage &lt;share&gt;"), std::string::npos);  // escaped title
  // min -> white, max -> dark blue, NaN -> grey, with the value in the cell's title.
  EXPECT_EQ(HeatColor(0.0, 0.0, 1.0), "#ffffff");
  EXPECT_EQ(HeatColor(1.0, 0.0, 1.0), "#08306b");
  EXPECT_NE(svg.find("fill=\"#08306b\" stroke=\"white\"><title>layer 0, expert 2: 1</title>"),
            std::string::npos);
  EXPECT_NE(svg.find("fill=\"#dddddd\" stroke=\"white\"><title>layer 1, expert 1: none</title>"),
            std::string::npos);
  // Balanced tags: cells are closed, the other rects self-closed.
  EXPECT_EQ(Count(svg, "<rect class=\"cell\""), Count(svg, "</rect>"));
  EXPECT_EQ(Count(svg, "<text"), Count(svg, "</text>"));
  EXPECT_EQ(Count(svg, "<title>"), Count(svg, "</title>"));
  EXPECT_EQ(svg, SvgHeatMap("usage <share>", "layer", "expert", {{0.0, 0.5, 1.0}, {0.25, nan, 1.0}},
                            "share"));  // deterministic
}

TEST(SvgTest, BarsAndScatterPoints) {
  const std::string bars = SvgBarChart("similarity", {"0", "1", "2"}, {0.9, std::nan(""), 0.7}, "cos");
  EXPECT_EQ(Count(bars, "<rect class=\"bar\""), 2);
  EXPECT_EQ(Count(bars, "<text"), Count(bars, "</text>"));
  const std::string scatter = SvgScatter("ppl", "MiB", "ppl",
                                         {{"original", 13.5, 92.1, false}, {"mc-moe", 2.0, 95.0, true}});
  EXPECT_EQ(Count(scatter, "<circle class=\"point\""), 2);
  EXPECT_NE(scatter.find("fill=\"#c0392b\"><title>mc-moe: 2, 95</title>"), std::string::npos);
  EXPECT_NE(scatter.find("fill=\"#c0392b\"/>\n<text x=\"614\" y=\"62\" font-size=\"9\">2 mc-moe (2, 95)</text>"),
            std::string::npos);  // legend entry, second row
  EXPECT_EQ(Count(scatter, "<text"), Count(scatter, "</text>"));
}

// The tick labels of a figure, in order.
std::vector<std::string> Ticks(const std::string& svg) {
  std::vector<std::string> out;
  const std::regex tick("<text class=\"tick\"[^>]*>([^<]*)</text>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tick); it != std::sregex_iterator(); ++it) {
    out.push_back((*it)[1]);
  }
  return out;
}

using Strings = std::vector<std::string>;

// The demo's perplexity-against-size figure used to label its axes 1.056, 4.407, 7.757 ... and
// 98.11, 99.09 ...: ticks are now 1, 2 or 5 × 10^k apart and labelled with the digits they need.
TEST(SvgTest, AxesTickAtOneTwoOrFiveTimesAPowerOfTen) {
  const std::string scatter = SvgScatter("Perplexity against size", "size on disk (MiB)", "perplexity",
                                         {{"original", 13.53, 98.38, false}, {"mc-moe-2.5", 1.981, 101.8, true}});
  EXPECT_EQ(Ticks(scatter), (Strings{"0", "5", "10", "15", "98", "99", "100", "101", "102"}));
  const std::string small = SvgScatter("s", "x", "y", {{"a", 0.12, 0.5, false}, {"b", 0.31, 0.52, false}});
  EXPECT_EQ(Ticks(small), (Strings{"0.10", "0.15", "0.20", "0.25", "0.30", "0.35", "0.495", "0.500",
                                   "0.505", "0.510", "0.515", "0.520", "0.525"}));
  const std::string time = SvgStackedBars("time", {"stats", "quant"}, {"forward", "solve"},
                                          {{1.2, 1.1}, {2.0, 4.945}}, "seconds");
  EXPECT_EQ(Ticks(time), (Strings{"0", "2", "4", "6", "8"}));
  const std::string bars = SvgBarChart("similarity", {"0", "1"}, {0.93, 0.71}, "cos");
  EXPECT_EQ(Ticks(bars), (Strings{"0", "0.5", "1.0"}));
  const std::string big = SvgScatter("s", "x", "y", {{"a", 12000, 1, false}, {"b", 61000, 2, false}});
  const Strings big_ticks = Ticks(big);
  EXPECT_EQ(Strings(big_ticks.begin(), big_ticks.begin() + 5), (Strings{"0", "20k", "40k", "60k", "80k"}));
}

// Positive data spanning a factor of 50 or more is drawn on a log axis with decades.
TEST(SvgTest, DataOverDecadesGetALogAxis) {
  const std::string scatter = SvgScatter("s", "size (MiB)", "perplexity",
                                         {{"a", 0.5, 10, false}, {"b", 20, 12, false}, {"c", 900, 11, false}});
  const Strings ticks = Ticks(scatter);
  EXPECT_EQ(Strings(ticks.begin(), ticks.begin() + 6), (Strings{"0.1", "1", "10", "100", "1000", "10k"}));
  // Within two decades the 2s and 5s are ticked too.
  const std::string two = SvgScatter("s", "x", "y", {{"a", 1.5, 1, false}, {"b", 80, 2, false}});
  const Strings t2 = Ticks(two);
  EXPECT_EQ(Strings(t2.begin(), t2.begin() + 7), (Strings{"1", "2", "5", "10", "20", "50", "100"}));
}

// The figures as images: rendered by librsvg and compared with golden PNGs
// (tests/checks/compare_png.py). After a deliberate change, MOEC_UPDATE_GOLDEN=1 rewrites
// tests/golden/figures/*.png, to be looked at before committing.
TEST(SvgTest, RenderedFiguresMatchTheirGoldenImages) {
  testing::TempDir dir;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::pair<std::string, std::string>> figures = {
      {"ppl_vs_size.svg", SvgScatter("Perplexity against size", "size on disk (MiB)", "perplexity",
                                     {{"original", 13.53, 98.38, false}, {"mc-moe-2.5", 1.981, 101.8, true},
                                      {"gptq-w3", 3.2, 100.4, false}})},
      {"ppl_vs_size_log.svg", SvgScatter("Perplexity against size", "size on disk (MiB)", "perplexity",
                                         {{"original", 93000, 3.8, false}, {"w2", 21000, 5.1, true},
                                          {"pruned-w2", 1500, 9.7, false}})},
      {"time.svg", SvgStackedBars("Where the time went (rank 0)", {"stats", "loss", "quant", "out"},
                                  {"load", "forward", "solve", "factor_io"},
                                  {{0.1, 1.2, 0, 0.3}, {0.1, 0.8, 2.4, 0.2}, {0.2, 1.5, 3.3, 0.9}, {0, 0, 0, 0.9}},
                                  "seconds")},
      {"similarity.svg", SvgBarChart("Similarity per layer", {"0", "1", "2", "3"}, {0.93, 0.81, nan, 0.97}, "cosine")},
      {"bits.svg", SvgHeatMap("Bit allocation", "layer", "expert", {{2, 3, 2, 3}, {3, 3, 2, 2}}, "bits")},
  };
  std::string args;
  for (const auto& [name, svg] : figures) {
    std::ofstream(dir.Join(name)) << svg;
    args += " " + dir.Join(name);
  }
  const std::string update = std::getenv("MOEC_UPDATE_GOLDEN") != nullptr ? "--update " : "";
  const std::string cmd = "python3 " MOEC_SOURCE_DIR "/tests/checks/compare_png.py " + update +
                          MOEC_SOURCE_DIR "/tests/golden/figures" + args;
  const int rc = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(rc)) << cmd;
  EXPECT_NE(WEXITSTATUS(rc), 2) << "rsvg-convert is missing: deploy/setup-debian.sh installs librsvg2-bin";
  EXPECT_EQ(WEXITSTATUS(rc), 0) << cmd;
}

}  // namespace
}  // namespace moec::report
