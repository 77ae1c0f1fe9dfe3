#include "report/svg.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moec::report {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// A value in a title or legend: 4 significant digits, and k, M, G, T from 10^4 up (no exponents).
std::string Num(double v) {
  const double a = std::fabs(v);
  if (!(a >= 1e4) || a >= 1e15) return absl::StrFormat("%.4g", v);
  static const char* kSuffix[] = {"k", "M", "G", "T"};
  int i = 0;
  double unit = 1e3;
  while (i < 3 && a >= unit * 1e3) unit *= 1e3, ++i;
  return absl::StrFormat("%.4g%s", v / unit, kSuffix[i]);
}

std::string Header(int width, int height, const std::string& title) {
  return absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n"
      "<text x=\"%d\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">%s</text>\n",
      width, height, width, height, width, height, width / 2, Escape(title));
}

void Range(const std::vector<double>& v, double* lo, double* hi) {
  *lo = std::numeric_limits<double>::infinity();
  *hi = -*lo;
  for (double x : v) {
    if (!std::isfinite(x)) continue;
    *lo = std::min(*lo, x);
    *hi = std::max(*hi, x);
  }
  if (!std::isfinite(*lo)) *lo = *hi = 0;
  if (*hi == *lo) *hi = *lo + 1;
}

// An axis: its range, its ticks (1, 2 or 5 × 10^k apart, or decades on a log axis) and where a
// value falls on it.
struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  double step = 0;  // linear axes: the ticks' step (their labels' precision)
  std::vector<double> ticks;
  double Frac(double v) const {
    if (log) return (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return (v - lo) / (hi - lo);
  }
};

// The smallest of 1, 2 or 5 × 10^k that is at least span / target.
double NiceStep(double span, int target) {
  const double raw = span / target;
  const double decade = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (m * decade >= raw * (1 - 1e-9)) return m * decade;
  }
  return 10 * decade;
}

// [lo, hi] widened to whole steps of NiceStep, about `target` intervals.
Axis LinearAxis(double lo, double hi, int target) {
  if (!(hi > lo)) hi = lo + 1;
  Axis a;
  a.step = NiceStep(hi - lo, target);
  a.lo = std::floor(lo / a.step + 1e-9) * a.step;
  a.hi = std::ceil(hi / a.step - 1e-9) * a.step;
  for (int i = 0; a.lo + i * a.step <= a.hi + a.step * 1e-6; ++i) {
    const double t = a.lo + i * a.step;
    a.ticks.push_back(std::fabs(t) < a.step * 1e-6 ? 0.0 : t);
  }
  return a;
}

// Whole decades around [lo, hi] (lo > 0), with 2 and 5 × 10^k between them over two decades or
// fewer.
Axis LogAxis(double lo, double hi) {
  Axis a;
  a.log = true;
  const int e0 = static_cast<int>(std::floor(std::log10(lo) + 1e-9));
  int e1 = static_cast<int>(std::ceil(std::log10(hi) - 1e-9));
  if (e1 <= e0) e1 = e0 + 1;
  a.lo = std::pow(10.0, e0);
  a.hi = std::pow(10.0, e1);
  for (int e = e0; e <= e1; ++e) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m > 1 && e1 - e0 > 2) continue;
      const double v = m * std::pow(10.0, e);
      if (v <= a.hi * (1 + 1e-9)) a.ticks.push_back(v);
    }
  }
  return a;
}

// The axis of `values` (finite ones): logarithmic when all are positive and span a factor of
// 50 or more, else linear (through 0 with `with_zero`), padded by 4% so that no point sits on
// the frame.
Axis AxisOf(const std::vector<double>& values, bool with_zero, int target) {
  double lo, hi;
  Range(values, &lo, &hi);
  if (!with_zero && lo > 0 && hi / lo >= 50) {
    const double pad = std::pow(hi / lo, 0.04);
    return LogAxis(lo / pad, hi * pad);
  }
  if (with_zero) {
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
    return LinearAxis(lo, hi, target);
  }
  const double pad = (hi - lo) * 0.04;
  return LinearAxis(lo - pad, hi + pad, target);
}

// A tick's label: as many decimals as the step needs (a log axis: as the value needs), and k, M,
// G, T for 10^4 and above.
std::string TickLabel(double v, double step) {
  const double a = std::fabs(v);
  if (a == 0) return "0";
  if (a >= 1e4) return Num(v);
  const double q = step > 0 ? step : a;
  const int decimals = q >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(q) - 1e-9));
  return absl::StrFormat("%.*f", decimals, v);
}

// Grid lines and labels of `axis`, horizontal (`x`: along [x0, x0 + len] at baseline y) or
// vertical (labels left of x, from y + len up to y).
std::string AxisMarks(const Axis& axis, bool x, int x0, int y0, int len, int across) {
  std::string out;
  for (double t : axis.ticks) {
    const int at = static_cast<int>(std::lround(axis.Frac(t) * len));
    if (x) {
      out += absl::StrFormat("<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#e4e4e4\"/>\n",
                             x0 + at, y0 - across, x0 + at, y0);
      out += absl::StrFormat("<text class=\"tick\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                             x0 + at, y0 + 14, TickLabel(t, axis.step));
    } else {
      out += absl::StrFormat("<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#e4e4e4\"/>\n",
                             x0, y0 + len - at, x0 + across, y0 + len - at);
      out += absl::StrFormat("<text class=\"tick\" x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n",
                             x0 - 4, y0 + len - at + 4, TickLabel(t, axis.step));
    }
  }
  return out;
}

}  // namespace

std::string HeatColor(double value, double lo, double hi) {
  const double t = std::clamp((value - lo) / (hi - lo), 0.0, 1.0);
  // White (255, 255, 255) to dark blue (8, 48, 107).
  const int r = static_cast<int>(std::lround(255 + t * (8 - 255)));
  const int g = static_cast<int>(std::lround(255 + t * (48 - 255)));
  const int b = static_cast<int>(std::lround(255 + t * (107 - 255)));
  return absl::StrFormat("#%02x%02x%02x", r, g, b);
}

std::string SvgHeatMap(const std::string& title, const std::string& row_axis,
                       const std::string& col_axis, const std::vector<std::vector<double>>& values,
                       const std::string& value_label) {
  const int rows = static_cast<int>(values.size());
  int cols = 0;
  std::vector<double> all;
  for (const auto& row : values) {
    cols = std::max(cols, static_cast<int>(row.size()));
    all.insert(all.end(), row.begin(), row.end());
  }
  double lo, hi;
  Range(all, &lo, &hi);
  const int cell = std::max(8, std::min(28, 560 / std::max(1, cols)));
  const int left = 60, top = 40, legend = 90;
  const int width = left + cols * cell + legend, height = top + rows * cell + 50;
  std::string out = Header(width, height, title);
  for (int r = 0; r < rows; ++r) {
    out += absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%d</text>\n", left - 6,
                           top + r * cell + cell / 2 + 4, r);
    for (int c = 0; c < static_cast<int>(values[r].size()); ++c) {
      const double v = values[r][c];
      const std::string fill = std::isfinite(v) ? HeatColor(v, lo, hi) : "#dddddd";
      out += absl::StrFormat(
          "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" "
          "stroke=\"white\"><title>%s %d, %s %d: %s</title></rect>\n",
          left + c * cell, top + r * cell, cell, cell, fill, Escape(row_axis), r, Escape(col_axis),
          c, std::isfinite(v) ? Num(v) : "none");
    }
  }
  for (int c = 0; c < cols; c += std::max(1, cols / 16)) {
    out += absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%d</text>\n",
                           left + c * cell + cell / 2, top + rows * cell + 14, c);
  }
  out += absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                         left + cols * cell / 2, top + rows * cell + 32, Escape(col_axis));
  out += absl::StrFormat(
      "<text x=\"14\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 14 %d)\">%s</text>\n",
      top + rows * cell / 2, top + rows * cell / 2, Escape(row_axis));
  // Colour scale: 10 steps from lo (bottom) to hi (top).
  const int lx = left + cols * cell + 20;
  for (int i = 0; i < 10; ++i) {
    out += absl::StrFormat("<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"10\" fill=\"%s\"/>\n", lx,
                           top + (9 - i) * 10, HeatColor(lo + (hi - lo) * i / 9.0, lo, hi));
  }
  out += absl::StrFormat("<text x=\"%d\" y=\"%d\">%s</text>\n", lx + 18, top + 8, Num(hi));
  out += absl::StrFormat("<text x=\"%d\" y=\"%d\">%s</text>\n", lx + 18, top + 100, Num(lo));
  out += absl::StrFormat("<text x=\"%d\" y=\"%d\">%s</text>\n", lx, top + 118, Escape(value_label));
  return out + "</svg>\n";
}

std::string SvgBarChart(const std::string& title, const std::vector<std::string>& labels,
                        const std::vector<double>& values, const std::string& value_label) {
  const Axis axis = AxisOf(values, /*with_zero=*/true, 4);
  const int n = static_cast<int>(values.size());
  const int bar = std::max(10, std::min(40, 560 / std::max(1, n)));
  const int left = 60, top = 40, plot = 200;
  const int width = left + n * bar + 30, height = top + plot + 50;
  std::string out = Header(width, height, title);
  auto y_of = [&](double v) {
    return top + plot - static_cast<int>(std::lround(std::clamp(axis.Frac(v), 0.0, 1.0) * plot));
  };
  out += AxisMarks(axis, /*x=*/false, left, top, plot, n * bar);
  out += absl::StrFormat("<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left,
                         top, left, top + plot);
  for (int i = 0; i < n; ++i) {
    const double v = values[i];
    if (std::isfinite(v)) {
      const int y = y_of(v), y0 = y_of(0);
      out += absl::StrFormat(
          "<rect class=\"bar\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#4878a8\">"
          "<title>%s: %s</title></rect>\n",
          left + i * bar + 2, std::min(y, y0), bar - 4, std::abs(y0 - y), Escape(labels[i]), Num(v));
    }
    out += absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                           left + i * bar + bar / 2, top + plot + 14, Escape(labels[i]));
  }
  out += absl::StrFormat(
      "<text x=\"14\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 14 %d)\">%s</text>\n",
      top + plot / 2, top + plot / 2, Escape(value_label));
  return out + "</svg>\n";
}

std::string SvgStackedBars(const std::string& title, const std::vector<std::string>& labels,
                           const std::vector<std::string>& series,
                           const std::vector<std::vector<double>>& values,
                           const std::string& value_label) {
  static const char* kColours[] = {"#4878a8", "#e49444", "#6a9f58", "#d1615d",
                                   "#85b6b2", "#967662", "#a87c9f", "#b0b0b0"};
  const auto part = [&](size_t r, size_t s) {
    const double v = s < values[r].size() ? values[r][s] : 0;
    return std::isfinite(v) && v > 0 ? v : 0.0;
  };
  double most = 0;
  for (size_t r = 0; r < labels.size(); ++r) {
    double sum = 0;
    for (size_t s = 0; s < series.size(); ++s) sum += part(r, s);
    most = std::max(most, sum);
  }
  const Axis axis = LinearAxis(0, most > 0 ? most : 1, 5);
  const double hi = axis.hi;
  const int left = 130, top = 40, plot = 440, bar = 22;
  const int rows = static_cast<int>(labels.size());
  const int height = std::max(top + rows * bar + 50, top + 16 * static_cast<int>(series.size()) + 20);
  std::string out = Header(left + plot + 200, height, title);
  out += AxisMarks(axis, /*x=*/true, left, top + rows * bar, plot, rows * bar);
  for (int r = 0; r < rows; ++r) {
    const int y = top + r * bar;
    out += absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", left - 4,
                           y + bar / 2 + 4, Escape(labels[r]));
    double at = 0;
    for (size_t s = 0; s < series.size(); ++s) {
      const double v = part(r, s);
      if (v <= 0) continue;
      const int x0 = left + static_cast<int>(std::lround(at / hi * plot));
      at += v;
      const int x1 = left + static_cast<int>(std::lround(at / hi * plot));
      out += absl::StrFormat(
          "<rect class=\"segment\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\">"
          "<title>%s, %s: %s</title></rect>\n",
          x0, y + 3, std::max(1, x1 - x0), bar - 6, kColours[s % 8], Escape(labels[r]),
          Escape(series[s]), Num(v));
    }
    out += absl::StrFormat("<text x=\"%d\" y=\"%d\">%s</text>\n",
                           left + static_cast<int>(std::lround(at / hi * plot)) + 4,
                           y + bar / 2 + 4, Num(at));
  }
  out += absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                         left + plot / 2, top + rows * bar + 32, Escape(value_label));
  for (size_t s = 0; s < series.size(); ++s) {
    const int y = top + 16 * static_cast<int>(s);
    out += absl::StrFormat("<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"%s\"/>"
                           "<text x=\"%d\" y=\"%d\">%s</text>\n",
                           left + plot + 50, y, kColours[s % 8], left + plot + 64, y + 9,
                           Escape(series[s]));
  }
  return out + "</svg>\n";
}

std::string SvgScatter(const std::string& title, const std::string& x_label,
                       const std::string& y_label, const std::vector<ScatterPoint>& points) {
  std::vector<double> xs, ys;
  for (const ScatterPoint& p : points) {
    xs.push_back(p.x);
    ys.push_back(p.y);
  }
  const Axis ax = AxisOf(xs, /*with_zero=*/false, 5), ay = AxisOf(ys, /*with_zero=*/false, 5);
  const int left = 70, top = 40, w = 520, h = 300;
  const int rows = static_cast<int>(points.size());
  std::string out = Header(left + w + 220, std::max(top + h + 50, top + 14 * rows + 20), title);
  auto px = [&](double x) { return left + static_cast<int>(std::lround(ax.Frac(x) * w)); };
  auto py = [&](double y) { return top + h - static_cast<int>(std::lround(ay.Frac(y) * h)); };
  out += AxisMarks(ax, /*x=*/true, left, top + h, w, h);
  out += AxisMarks(ay, /*x=*/false, left, top, h, w);
  out += absl::StrFormat("<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
                         "stroke=\"black\"/>\n", left, top, w, h);
  // Points are numbered in the plot (labels of close points would overlap) and listed, with
  // their values, in the legend on the right.
  const int lx = left + w + 12;
  for (size_t i = 0; i < points.size(); ++i) {
    const ScatterPoint& p = points[i];
    const char* fill = p.highlight ? "#c0392b" : "#4878a8";
    out += absl::StrFormat(
        "<circle class=\"point\" cx=\"%d\" cy=\"%d\" r=\"%d\" fill=\"%s\"><title>%s: %s, %s</title>"
        "</circle>\n<text x=\"%d\" y=\"%d\" font-size=\"9\">%d</text>\n",
        px(p.x), py(p.y), p.highlight ? 6 : 4, fill, Escape(p.label), Num(p.x), Num(p.y), px(p.x) + 7,
        py(p.y) + 3, i + 1);
    const int ly = top + 8 + static_cast<int>(i) * 14;
    out += absl::StrFormat(
        "<circle cx=\"%d\" cy=\"%d\" r=\"4\" fill=\"%s\"/>\n<text x=\"%d\" y=\"%d\" "
        "font-size=\"9\">%d %s (%s, %s)</text>\n",
        lx + 4, ly - 3, fill, lx + 12, ly, i + 1, Escape(p.label), Num(p.x), Num(p.y));
  }
  out += absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", left + w / 2,
                         top + h + 34, Escape(x_label));
  out += absl::StrFormat(
      "<text x=\"16\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 16 %d)\">%s</text>\n",
      top + h / 2, top + h / 2, Escape(y_label));
  return out + "</svg>\n";
}

}  // namespace moec::report
