// A pre-parse guard for untrusted JSON: nlohmann's parser and destructor recurse per nesting
// level, so hostile input ("[[[[...") must be refused before it reaches them.
#ifndef MOEC_COMMON_JSON_DEPTH_H_
#define MOEC_COMMON_JSON_DEPTH_H_

#include "absl/strings/string_view.h"

namespace moec {

// True when no object/array in `text` nests deeper than `max_depth` (strings are skipped,
// escapes honoured). Linear time; does not validate the JSON otherwise.
inline bool JsonNestingWithin(absl::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

}  // namespace moec

#endif  // MOEC_COMMON_JSON_DEPTH_H_
