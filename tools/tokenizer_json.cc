#include "tools/tokenizer_json.h"

namespace moec::tools {
namespace {

using nlohmann::ordered_json;

ordered_json PostProcessor(const ByteLevelBpeTokenizer& t) {
  if (t.bos.empty()) return nullptr;
  int64_t bos_id = -1;
  for (const auto& [id, content] : t.specials) {
    if (content == t.bos) bos_id = id;
  }
  const std::string& bos = t.bos;
  return {{"type", "TemplateProcessing"},
          {"single",
           {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"pair",
           {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
            {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
            {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
}

}  // namespace

ordered_json ByteLevelJson() {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", true}};
}

ordered_json AddedTokenJson(int64_t id, const std::string& content) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

std::string ByteLevelBpeTokenizerJson(const ByteLevelBpeTokenizer& t) {
  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < t.tokens.size(); ++id) vocab[t.tokens[id]] = id;
  ordered_json added = ordered_json::array();
  for (const auto& [id, content] : t.specials) added.push_back(AddedTokenJson(id, content));
  const ordered_json byte_level = ByteLevelJson();
  const ordered_json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", PostProcessor(t)},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", t.merges}}},
  };
  return tok.dump(2) + "\n";
}

}  // namespace moec::tools
