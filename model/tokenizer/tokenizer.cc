#include "model/tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json_depth.h"
#include "common/status_macros.h"
#include "glog/logging.h"
#include "storage/file_util.h"

namespace moec::model {
namespace {

using nlohmann::json;

// tokenizer.json nests about 6 levels (post_processor.single[0].SpecialToken.id); anything much
// deeper is hostile, and nlohmann's recursive parser must never see it.
constexpr int kMaxJsonDepth = 32;
constexpr int kMaxProcessorDepth = 8;


absl::StatusOr<json> ParseJson(absl::string_view text, absl::string_view source) {
  if (!JsonNestingWithin(text, kMaxJsonDepth)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer file ", source, ": JSON nested deeper than ", kMaxJsonDepth));
  }
  json parsed = json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer file ", source, ": malformed JSON"));
  }
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer file ", source, ": top level is not a JSON object"));
  }
  return parsed;
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  absl::StatusOr<std::string> data = storage::ReadFileToString(path.string(), kMaxTokenizerJsonBytes);
  if (!data.ok()) return Annotate(data.status(), "tokenizer file");
  return data;
}

// A token named in tokenizer_config.json: a string, null, or an AddedToken object.
absl::StatusOr<std::optional<std::string>> ConfigToken(const json& config, absl::string_view key,
                                                       const JsonPath& at) {
  const json* v = FindField(config, key);
  if (v == nullptr || v->is_null()) return std::optional<std::string>();
  if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
  if (v->is_object()) {
    MOEC_ASSIGN_OR_RETURN(std::string content, RequiredString(*v, "content", at.Field(key)));
    return std::optional<std::string>(std::move(content));
  }
  return at.Field(key).Invalid("expected a string, null or an object with 'content'");
}

// A template item: (is_sequence, special token name).
using TemplateItems = std::vector<std::pair<bool, std::string>>;

// The items of the string form of a template ("<s> $A </s>").
absl::Status TemplateItemsFromString(const std::string& single, const JsonPath& at,
                                     TemplateItems* items) {
  for (absl::string_view part : absl::StrSplit(single, ' ', absl::SkipEmpty())) {
    if (absl::StartsWith(part, "$")) {
      absl::string_view seq = part.substr(1);
      seq = seq.substr(0, seq.find(':'));
      if (seq != "" && seq != "A" && seq != "0") {
        return at.Unimplemented(absl::StrCat("single template uses sequence '", part, "'"));
      }
      items->emplace_back(true, "");
    } else {
      items->emplace_back(false, std::string(part.substr(0, part.rfind(':'))));
    }
  }
  return absl::OkStatus();
}

// The items of the serialized list form of a template.
absl::Status TemplateItemsFromList(const json& single, const JsonPath& at, TemplateItems* items) {
  for (size_t i = 0; i < single.size(); ++i) {
    const json& item = single[i];
    if (const json* seq = FindField(item, "Sequence")) {
      MOEC_ASSIGN_OR_RETURN(std::string id,
                            RequiredString(*seq, "id", at.Index(i).Field("Sequence")));
      if (id != "A") {
        return at.Index(i).Unimplemented(
            absl::StrCat("single template uses sequence '", id, "'"));
      }
      items->emplace_back(true, "");
    } else if (const json* tok = FindField(item, "SpecialToken")) {
      MOEC_ASSIGN_OR_RETURN(std::string id,
                            RequiredString(*tok, "id", at.Index(i).Field("SpecialToken")));
      items->emplace_back(false, std::move(id));
    } else {
      return at.Index(i).Invalid("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return absl::OkStatus();
}

// Splits a template ("<s> $A </s>" or its serialized list form) into the ids before and after
// sequence A.
absl::Status ParseTemplate(const json& single, const json& special_tokens, const JsonPath& at,
                           std::vector<int32_t>* prefix, std::vector<int32_t>* suffix) {
  TemplateItems items;
  if (single.is_string()) {
    MOEC_RETURN_IF_ERROR(
        TemplateItemsFromString(single.get_ref<const std::string&>(), at, &items));
  } else if (single.is_array()) {
    MOEC_RETURN_IF_ERROR(TemplateItemsFromList(single, at, &items));
  } else {
    return at.Invalid("expected a template string or list");
  }
  int sequences = 0;
  for (const auto& [is_sequence, name] : items) {
    if (is_sequence) {
      ++sequences;
      continue;
    }
    const json* entry = FindField(special_tokens, name);
    const JsonPath eat = at.Field("special_tokens").Field(name);
    if (entry == nullptr) return eat.Invalid("template names a missing special token");
    const json* ids = FindField(*entry, "ids");
    if (ids == nullptr || !ids->is_array()) return eat.Field("ids").Invalid("missing array");
    for (size_t k = 0; k < ids->size(); ++k) {
      MOEC_ASSIGN_OR_RETURN(int32_t id, AsTokenId((*ids)[k], eat.Field("ids").Index(k)));
      (sequences == 0 ? prefix : suffix)->push_back(id);
    }
  }
  if (sequences != 1) return at.Invalid("single template must contain sequence $A exactly once");
  return absl::OkStatus();
}

// A TemplateProcessing post-processor: the ids its `single` template puts around the text.
absl::Status ParseTemplateProcessor(const json& value, const JsonPath& at,
                                    std::vector<int32_t>* prefix, std::vector<int32_t>* suffix) {
  const json* single = FindField(value, "single");
  if (single == nullptr) return at.Field("single").Invalid("missing template");
  const json* special = FindField(value, "special_tokens");
  static const json kEmpty = json::object();
  return ParseTemplate(*single, special == nullptr ? kEmpty : *special, at.Field("single"),
                       prefix, suffix);
}

// A BertProcessing or RobertaProcessing post-processor: its cls and sep ids.
absl::Status ParseClsSepProcessor(const json& value, const JsonPath& at,
                                  std::vector<int32_t>* prefix, std::vector<int32_t>* suffix) {
  for (const char* key : {"cls", "sep"}) {
    const json* v = FindField(value, key);
    if (v == nullptr || !v->is_array() || v->size() != 2) {
      return at.Field(key).Invalid("expected [token, id]");
    }
    MOEC_ASSIGN_OR_RETURN(int32_t id, AsTokenId((*v)[1], at.Field(key).Index(1)));
    (absl::string_view(key) == "cls" ? prefix : suffix)->push_back(id);
  }
  return absl::OkStatus();
}

// The id of `token`, which tokenizer_config.json names under `key`; InvalidArgument when it is
// not in the vocabulary.
absl::StatusOr<int32_t> ConfigTokenId(const Tokenizer& tokenizer, const std::string& token,
                                      absl::string_view key, const JsonPath& at) {
  std::optional<int32_t> id = tokenizer.TokenToId(token);
  if (!id) return at.Field(key).Invalid(absl::StrCat("'", token, "' is not in the vocabulary"));
  return *id;
}

// add_bos_token's default for the tokenizer_config.json's tokenizer_class: true for the Llama
// and Gemma classes.
absl::StatusOr<bool> DefaultAddBos(const json& config, const JsonPath& at) {
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> cls,
                        OptionalString(config, "tokenizer_class", at));
  const std::string lower_cls = absl::AsciiStrToLower(cls.value_or(""));
  return absl::StrContains(lower_cls, "llama") || absl::StrContains(lower_cls, "gemma");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir_or_file) {
  std::error_code ec;
  std::filesystem::path file(dir_or_file);
  if (std::filesystem::is_directory(file, ec)) file /= "tokenizer.json";
  MOEC_ASSIGN_OR_RETURN(std::string text, ReadFile(file));
  const std::filesystem::path config_path = file.parent_path() / "tokenizer_config.json";
  std::string config;
  if (std::filesystem::exists(config_path, ec)) {
    MOEC_ASSIGN_OR_RETURN(config, ReadFile(config_path));
  }
  return FromJson(text, config, file.string());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(
    absl::string_view tokenizer_json, absl::string_view tokenizer_config_json,
    absl::string_view source_name) {
  MOEC_ASSIGN_OR_RETURN(json root, ParseJson(tokenizer_json, source_name));
  const JsonPath at{source_name, ""};
  std::unique_ptr<Tokenizer> t(new Tokenizer());

  const json* model = FindField(root, "model");
  if (model == nullptr || !model->is_object()) return at.Field("model").Invalid("missing object");
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> type,
                        OptionalString(*model, "type", at.Field("model")));
  if (!type.has_value() && FindField(*model, "merges") == nullptr) {
    return at.Field("model").Unimplemented(
        "model has no 'type' and no 'merges'; only BPE is supported");
  }
  if (type.has_value() && *type != "BPE") {
    return at.Field("model.type")
        .Unimplemented(
            absl::StrCat("tokenizer model type '", *type, "' is not supported; supported: BPE"));
  }
  MOEC_ASSIGN_OR_RETURN(t->model_, BpeModel::FromJson(*model, at.Field("model")));

  static const json kNull;
  auto field = [&](const char* key) -> const json& {
    const json* v = FindField(root, key);
    return v == nullptr ? kNull : *v;
  };
  MOEC_ASSIGN_OR_RETURN(t->normalizer_,
                        Normalizer::FromJson(field("normalizer"), at.Field("normalizer")));
  MOEC_ASSIGN_OR_RETURN(t->pre_tokenizer_,
                        PreTokenizer::FromJson(field("pre_tokenizer"), at.Field("pre_tokenizer")));
  MOEC_ASSIGN_OR_RETURN(t->decoder_, Decoder::FromJson(field("decoder"), at.Field("decoder")));
  MOEC_RETURN_IF_ERROR(t->ParseAddedTokens(root, at));
  MOEC_RETURN_IF_ERROR(
      t->ParsePostProcessor(field("post_processor"), at.Field("post_processor"), 0));

  if (!tokenizer_config_json.empty()) {
    // The config sits beside tokenizer.json; name it that way in errors.
    const std::string config_name =
        (std::filesystem::path(std::string(source_name)).parent_path() / "tokenizer_config.json")
            .string();
    MOEC_ASSIGN_OR_RETURN(json config, ParseJson(tokenizer_config_json, config_name));
    MOEC_RETURN_IF_ERROR(t->ApplyConfig(config, JsonPath{config_name, ""}));
  }

  t->vocab_size_ = t->model_->id_limit();
  for (const AddedToken& a : t->added_tokens_) t->vocab_size_ = std::max(t->vocab_size_, a.id + 1);
  return t;
}

absl::Status Tokenizer::ParseAddedTokens(const json& root, const JsonPath& root_at) {
  const JsonPath at = root_at.Field("added_tokens");
  const json* list = FindField(root, "added_tokens");
  if (list == nullptr || list->is_null()) return absl::OkStatus();
  if (!list->is_array()) return at.Invalid("expected an array");
  added_tokens_.reserve(list->size());
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const JsonPath eat = at.Index(i);
    if (!e.is_object()) return eat.Invalid("expected an object");
    AddedToken a;
    const json* id = FindField(e, "id");
    if (id == nullptr) return eat.Field("id").Invalid("missing token id");
    MOEC_ASSIGN_OR_RETURN(a.id, AsTokenId(*id, eat.Field("id")));
    MOEC_ASSIGN_OR_RETURN(a.content, RequiredString(e, "content", eat));
    MOEC_ASSIGN_OR_RETURN(a.special, OptionalBool(e, "special", false, eat));
    MOEC_ASSIGN_OR_RETURN(a.normalized, OptionalBool(e, "normalized", true, eat));
    MOEC_ASSIGN_OR_RETURN(a.lstrip, OptionalBool(e, "lstrip", false, eat));
    MOEC_ASSIGN_OR_RETURN(a.rstrip, OptionalBool(e, "rstrip", false, eat));
    MOEC_ASSIGN_OR_RETURN(a.single_word, OptionalBool(e, "single_word", false, eat));
    if (a.content.empty()) continue;  // ignored by `tokenizers` too
    // `tokenizers` gives a token already in the model vocabulary its vocabulary id.
    if (std::optional<int32_t> vid = model_->TokenToId(a.content); vid && *vid != a.id) {
      LOG(WARNING) << "tokenizer " << at.source << ": added token '" << a.content << "' has id "
                   << a.id << " but the vocabulary says " << *vid << "; using " << *vid;
      a.id = *vid;
    }
    a.pattern = a.normalized && !normalizer_.empty() ? normalizer_.Apply(a.content) : a.content;
    added_tokens_.push_back(std::move(a));
  }
  std::vector<const AddedToken*> raw, normalized;
  for (size_t i = 0; i < added_tokens_.size(); ++i) {
    const AddedToken& a = added_tokens_[i];
    added_by_content_[a.content] = a.id;
    added_by_id_[a.id] = i;
    if (a.special) special_contents_.insert(a.content);
    (a.normalized ? normalized : raw).push_back(&a);
  }
  raw_matcher_ = AddedTokenMatcher(raw);
  normalized_matcher_ = AddedTokenMatcher(normalized);
  return absl::OkStatus();
}

absl::Status Tokenizer::ParsePostProcessor(const json& value, const JsonPath& at, int depth) {
  if (value.is_null()) return absl::OkStatus();
  if (!value.is_object()) return at.Invalid("expected an object or null");
  MOEC_ASSIGN_OR_RETURN(std::string type, RequiredString(value, "type", at));
  std::vector<int32_t> prefix, suffix;
  if (type == "Sequence") {
    if (depth >= kMaxProcessorDepth) return at.Invalid("Sequence nested too deeply");
    const json* list = FindField(value, "processors");
    if (list == nullptr || !list->is_array())
      return at.Field("processors").Invalid("missing array");
    for (size_t i = 0; i < list->size(); ++i) {
      MOEC_RETURN_IF_ERROR(
          ParsePostProcessor((*list)[i], at.Field("processors").Index(i), depth + 1));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // only trims offsets
  if (type == "TemplateProcessing") {
    MOEC_RETURN_IF_ERROR(ParseTemplateProcessor(value, at, &prefix, &suffix));
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    MOEC_RETURN_IF_ERROR(ParseClsSepProcessor(value, at, &prefix, &suffix));
  } else {
    return at.Field("type").Unimplemented(
        absl::StrCat("unsupported post_processor type '", type,
                     "'; supported: TemplateProcessing, BertProcessing, RobertaProcessing, "
                     "ByteLevel, Sequence"));
  }
  // Processors run in turn, each wrapping the previous result.
  prefix_ids_.insert(prefix_ids_.begin(), prefix.begin(), prefix.end());
  suffix_ids_.insert(suffix_ids_.end(), suffix.begin(), suffix.end());
  return absl::OkStatus();
}

absl::Status Tokenizer::ApplyConfig(const json& config, const JsonPath& at) {
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> bos, ConfigToken(config, "bos_token", at));
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> eos, ConfigToken(config, "eos_token", at));
  if (bos.has_value()) {
    MOEC_ASSIGN_OR_RETURN(bos_id_, ConfigTokenId(*this, *bos, "bos_token", at));
  }
  if (eos.has_value()) {
    MOEC_ASSIGN_OR_RETURN(eos_id_, ConfigTokenId(*this, *eos, "eos_token", at));
  }
  const json* add_bos = FindField(config, "add_bos_token");
  const json* add_eos = FindField(config, "add_eos_token");
  const bool has_bos_flag = add_bos != nullptr && !add_bos->is_null();
  const bool has_eos_flag = add_eos != nullptr && !add_eos->is_null();
  if (!has_bos_flag && !has_eos_flag) return absl::OkStatus();
  // As transformers' LlamaTokenizerFast / GPTNeoXTokenizerFast update_post_processor(): the
  // flags replace the template with [bos] $A [eos]. An absent flag takes the class default
  // (add_bos_token is true for the Llama and Gemma classes).
  MOEC_ASSIGN_OR_RETURN(const bool bos_default, DefaultAddBos(config, at));
  MOEC_ASSIGN_OR_RETURN(bool want_bos, OptionalBool(config, "add_bos_token", bos_default, at));
  MOEC_ASSIGN_OR_RETURN(bool want_eos, OptionalBool(config, "add_eos_token", false, at));
  if (want_bos && !bos_id_)
    return at.Field("bos_token").Invalid("add_bos_token is true but bos_token is missing");
  if (want_eos && !eos_id_)
    return at.Field("eos_token").Invalid("add_eos_token is true but eos_token is missing");
  prefix_ids_.clear();
  suffix_ids_.clear();
  if (want_bos) prefix_ids_.push_back(*bos_id_);
  if (want_eos) suffix_ids_.push_back(*eos_id_);
  return absl::OkStatus();
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view text, bool add_special_tokens) const {
  std::vector<Piece> pieces;
  if (!text.empty()) pieces.push_back(Piece{std::string(text), -1, true});
  // AddedVocabulary::extract_and_normalize.
  raw_matcher_.Split(&pieces);
  if (!normalizer_.empty()) {
    for (Piece& p : pieces) {
      if (p.added_token_id < 0) p.text = normalizer_.Apply(p.text);
    }
  }
  normalized_matcher_.Split(&pieces);
  pre_tokenizer_.Apply(&pieces);

  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + prefix_ids_.size() + suffix_ids_.size() + 1);
  if (add_special_tokens) ids = prefix_ids_;
  for (const Piece& p : pieces) {
    if (p.added_token_id >= 0) {
      ids.push_back(p.added_token_id);
    } else {
      model_->EncodeWord(p.text, &ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* token = nullptr;
    if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
      // `tokenizers` decodes a normalized added token from its normalized form.
      const AddedToken& a = added_tokens_[it->second];
      token = a.normalized ? &a.pattern : &a.content;
    } else {
      token = model_->IdToToken(id);
    }
    if (token == nullptr) continue;
    if (skip_special_tokens && special_contents_.contains(*token)) continue;
    tokens.push_back(*token);
  }
  return decoder_.Decode(std::move(tokens));
}

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (auto it = added_by_content_.find(token); it != added_by_content_.end()) return it->second;
  return model_->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
    return added_tokens_[it->second].content;
  }
  if (const std::string* t = model_->IdToToken(id)) return *t;
  return std::nullopt;
}

}  // namespace moec::model
