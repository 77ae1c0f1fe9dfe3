#include "client/svg.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace moec::client {
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

}  // namespace
}  // namespace moec::client
