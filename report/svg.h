// Small, dependency-free SVG figures for job reports: heat maps (layers × experts), bar charts
// (stacked too) and scatter plots with a legend, with axes, titles and a colour scale. Output is deterministic
// (fixed number formatting, no timestamps), so reports can be compared byte for byte.
#ifndef MOEC_REPORT_SVG_H_
#define MOEC_REPORT_SVG_H_

#include <string>
#include <vector>

namespace moec::report {

// values[r][c]; NaN cells are drawn empty (grey). The colour runs from white (min) to dark blue
// (max) over [min, max] of the finite values; each cell carries a <title> with its value.
std::string SvgHeatMap(const std::string& title, const std::string& row_axis,
                       const std::string& col_axis, const std::vector<std::vector<double>>& values,
                       const std::string& value_label);

// One bar per label (NaN: no bar).
std::string SvgBarChart(const std::string& title, const std::vector<std::string>& labels,
                        const std::vector<double>& values, const std::string& value_label);

// One horizontal bar per label, split into one segment per series (values[label][series] >= 0;
// NaN or <= 0: no segment), with the series' colours in a legend and each bar's total at its end.
std::string SvgStackedBars(const std::string& title, const std::vector<std::string>& labels,
                           const std::vector<std::string>& series,
                           const std::vector<std::vector<double>>& values,
                           const std::string& value_label);

struct ScatterPoint {
  std::string label;
  double x = 0, y = 0;
  bool highlight = false;  // drawn larger and red
};
// Points are numbered in the plot and listed (number, label, x, y) in a legend on the right.
std::string SvgScatter(const std::string& title, const std::string& x_label,
                       const std::string& y_label, const std::vector<ScatterPoint>& points);

// The fill colour SvgHeatMap gives `value` on [lo, hi], as "#rrggbb".
std::string HeatColor(double value, double lo, double hi);

}  // namespace moec::report

#endif  // MOEC_REPORT_SVG_H_
